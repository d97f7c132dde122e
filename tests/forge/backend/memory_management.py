"""backend/memory_management.py stand-in: devices, dtypes and Forge's model loading (`load_models_gpu`), made observable
on a CPU-only machine.

The "GPU" is `gpu = torch.device("cpu", 0)`: tensors moved there stay in host memory (torch treats it as the CPU), but the
device object differs from `cpu = torch.device("cpu")`, so a patcher's `current_device`, `load_device` and every move are
observable. Every load / unload is appended to `events` as (action, torch module of the patcher, device; None for an unload
without moving) -- the module, not the patcher, so the log does not keep patchers alive; `current_loaded_models` is Forge's list
of LoadedModel (most recently used first).

Modelled from Forge (backend/memory_management.py:443-690): LoadedModel equality is by PATCHER identity (`self.model is
other.model`), so a new clone of the UNet patcher is a new load and `unload_model_clones` first unloads the loaded patcher of
the same torch module (avoid_model_moving=True); loading = `model_patches_to`, `forge_patch_model(device)` (object patches,
model.to(device)), `refresh_loras()` (weights merged in place); models already loaded move to the front; no
de-duplication within one call (a patcher listed twice is loaded twice, as in Forge); `model_patches_to(device)` then
`model_patches_to(model_dtype())` -- None for the UNet, so a patch object with `.to` gets `.to(None)` too;
`free_memory(memory_required, device, keep_loaded)` first drops patchers nobody else references (sys.getrefcount <= 2),
then unloads least recently used ones until the simulated free memory suffices. Free memory is simulated:
`set_total_vram(bytes)` (default 1 TiB) minus the bytes of loaded models. Not modelled: partial loading / CPU swap ("GPU Weights"),
pinned memory, streams, xformers, real CUDA queries.
"""
from __future__ import annotations

import sys

import torch

from backend.args import args

cpu = torch.device("cpu")
gpu = torch.device("cpu", 0)  # stands for cuda:0; distinct from `cpu`, computes on the CPU

current_loaded_models: list["LoadedModel"] = []
events: list[tuple[str, torch.nn.Module, torch.device | None]] = []
total_vram = 1 << 40
current_inference_memory = 1024 * 1024 * 1024
signal_empty_cache = False
xpu_available = False


def reset():
    """No model loaded, no events, the default memory budget (harness reset)."""
    global total_vram
    while current_loaded_models:
        current_loaded_models.pop().model_unload(avoid_model_moving=True)
    events.clear()
    total_vram = 1 << 40


def set_total_vram(nbytes: int):
    """The simulated GPU size in bytes; free memory = this minus the loaded models' sizes."""
    global total_vram
    total_vram = int(nbytes)


def get_torch_device():
    return gpu


def unet_offload_device():
    return cpu


def unet_inital_load_device(parameters=0, dtype=None):
    return cpu


def text_encoder_device():
    return gpu


def text_encoder_offload_device():
    return cpu


def vae_device():
    return gpu


def vae_offload_device():
    return cpu


def intermediate_device():
    return cpu


def unet_dtype(device=None, model_params=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    """From the flags, not from a checkpoint: fp32 on this CPU-only stand-in unless --unet-in-bf16/fp16 (forge.md §5)."""
    if args.unet_in_bf16:
        return torch.bfloat16
    if args.unet_in_fp16:
        return torch.float16
    return torch.float32


def get_computation_dtype(inference_device=None, parameters=0, supported_dtypes=(torch.float16, torch.bfloat16, torch.float32)):
    return torch.float32


def text_encoder_dtype(device=None):
    return torch.float32


def vae_dtype(device=None, allowed_dtypes=()):
    return torch.float32


def dtype_size(dtype):
    if isinstance(dtype, torch.dtype):
        return torch.tensor([], dtype=dtype).element_size()
    return 4


def is_device_cpu(device):
    return device is None or torch.device(device).type == "cpu" and torch.device(device).index is None


def is_device_cuda(device):
    return torch.device(device) == gpu


def is_device_mps(device):
    return False


def mps_mode():
    return False


def cpu_mode():
    return False


def xformers_enabled():
    return False


def xformers_enabled_vae():
    return False


def pytorch_attention_enabled():
    return True


def soft_empty_cache(force=False):
    global signal_empty_cache
    signal_empty_cache = False


def module_size(module, exclude_device=None, include_device=None, return_split=False):
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if exclude_device is not None and tensor.device == exclude_device:
            continue
        total += tensor.nelement() * tensor.element_size()
    return total


def cast_to_device(tensor, device, dtype, copy=False):
    return tensor.to(device=device, dtype=dtype, copy=copy)


def loaded_bytes(device=gpu) -> int:
    return sum(m.size for m in current_loaded_models if m.device == device)


def get_free_memory(dev=None, torch_free_too=False):
    if dev is not None and torch.device(dev) != gpu:
        free = 1 << 40
    else:
        free = max(0, total_vram - loaded_bytes(gpu))
    return (free, free) if torch_free_too else free


def minimum_inference_memory():
    return current_inference_memory


class LoadedModel:
    def __init__(self, model):
        self.model = model  # a ModelPatcher
        self.device = model.load_device
        self.size = 0

    def model_load(self, model_gpu_memory_when_using_cpu_swap=-1):
        self.model.model_patches_to(self.device)
        self.model.model_patches_to(self.model.model_dtype())  # None for the UNet (KModel has no get_dtype): patch.to(None)
        self.real_model = self.model.forge_patch_model(self.device)
        self.model.current_device = self.model.load_device
        self.size = module_size(self.model.model)
        self.model.refresh_loras()
        events.append(("load", self.model.model, self.device))
        return self.real_model

    def model_unload(self, avoid_model_moving=False):
        if avoid_model_moving:
            self.model.forge_unpatch_model()
        else:
            self.model.forge_unpatch_model(self.model.offload_device)
            self.model.model_patches_to(self.model.offload_device)
        events.append(("unload", self.model.model, None if avoid_model_moving else self.model.offload_device))

    def __eq__(self, other):
        return self.model is other.model


def unload_model_clones(model):
    for i in range(len(current_loaded_models) - 1, -1, -1):
        if model.is_clone(current_loaded_models[i].model):
            current_loaded_models.pop(i).model_unload(avoid_model_moving=True)


def free_memory(memory_required, device, keep_loaded=(), free_all=False):
    for i in range(len(current_loaded_models) - 1, -1, -1):
        if sys.getrefcount(current_loaded_models[i].model) <= 2:  # abandoned patchers go first
            current_loaded_models.pop(i).model_unload(avoid_model_moving=True)
    if free_all:
        memory_required = 1e30
    for i in range(len(current_loaded_models) - 1, -1, -1):
        if not args.always_offload_from_vram and get_free_memory(device) > memory_required:
            break
        shift = current_loaded_models[i]
        if shift.device == device and shift not in keep_loaded:
            current_loaded_models.pop(i).model_unload()


def load_models_gpu(models, memory_required=0, hard_memory_preservation=0):
    memory_to_free = max(minimum_inference_memory(), memory_required) + hard_memory_preservation
    to_load, already = [], []
    for patcher in models:
        loaded = LoadedModel(patcher)
        if loaded in current_loaded_models:
            index = current_loaded_models.index(loaded)
            current_loaded_models.insert(0, current_loaded_models.pop(index))
            already.append(current_loaded_models[0])
        else:  # no de-duplication within one call, as in Forge
            to_load.append(loaded)
    if not to_load:
        for device in {m.device for m in already}:
            if device != cpu:
                free_memory(memory_to_free, device, already)
        return
    for loaded in to_load:
        unload_model_clones(loaded.model)
    required = {}
    for loaded in to_load:
        required[loaded.device] = required.get(loaded.device, 0) + module_size(loaded.model.model)
    for device, nbytes in required.items():
        if device != cpu:
            free_memory(nbytes * 1.3 + memory_to_free, device, already)
    for loaded in to_load:
        loaded.model_load()
        current_loaded_models.insert(0, loaded)


def load_model_gpu(model):
    return load_models_gpu([model])


def unload_all_models():
    free_memory(1e30, gpu, free_all=True)
