"""backend/patcher/unet.py stand-in: UnetPatcher, what `p.sd_model.forge_objects.unet` is.

Modelled (backend/patcher/unet.py): `clone()` = a new patcher on the SAME model (KModel) with model_options deep-copied,
lora/object patches and the extra-model-patcher list shallow-copied, and the ControlNet linked list SHARED by pointer (the
head object; adding to a clone re-points only the clone's head); `add_patched_controlnet(cnet)` inserts at the head
(cnet.previous_controlnet = old head); `list_controlnets()` head -> tail; transformer-option lists
(`block_modifiers`, `block_inner_modifiers`, `controlnet_conditioning_modifiers`), `set_controlnet_model_function_wrapper`,
`set_group_norm_wrapper` (stored; the stand-in UNet ignores it), conditioning modifiers, sampler pre-cfg functions, alphas-cumprod
modifiers (stored only), memory-peak estimation modifier; `add_extra_preserved_memory_during_sampling`,
`add_extra_model_patcher_during_sampling`, and `add_extra_torch_module_during_sampling(m, cast_to_unet_dtype=True)` whose
default reads `self.model.diffusion_model.dtype` -- which Forge's IntegratedUNet2DConditionModel (and this stand-in's) does
not have: AttributeError, as observed on Forge 2 (pass cast_to_unet_dtype=False).
"""
import copy

import torch

from backend.modules.k_model import KModel
from backend.patcher.base import ModelPatcher


class UnetPatcher(ModelPatcher):
    @classmethod
    def from_model(cls, model, diffusers_scheduler=None, config=None, k_predictor=None):
        model = KModel(model=model, diffusers_scheduler=diffusers_scheduler, k_predictor=k_predictor, config=config)
        return UnetPatcher(model, load_device=model.diffusion_model.load_device, offload_device=model.diffusion_model.offload_device,
                           current_device=model.diffusion_model.initial_device)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.controlnet_linked_list = None
        self.extra_preserved_memory_during_sampling = 0
        self.extra_model_patchers_during_sampling = []
        self.extra_concat_condition = None

    def clone(self):
        n = UnetPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        n.controlnet_linked_list = self.controlnet_linked_list
        n.extra_preserved_memory_during_sampling = self.extra_preserved_memory_during_sampling
        n.extra_model_patchers_during_sampling = self.extra_model_patchers_during_sampling.copy()
        n.extra_concat_condition = self.extra_concat_condition
        return n

    def add_extra_preserved_memory_during_sampling(self, memory_in_bytes: int):
        self.extra_preserved_memory_during_sampling += memory_in_bytes

    def add_extra_model_patcher_during_sampling(self, model_patcher: ModelPatcher):
        self.extra_model_patchers_during_sampling.append(model_patcher)

    def add_extra_torch_module_during_sampling(self, m: torch.nn.Module, cast_to_unet_dtype: bool = True):
        if cast_to_unet_dtype:
            m.to(self.model.diffusion_model.dtype)  # AttributeError on Forge 2: the UNet has no .dtype
        patcher = ModelPatcher(model=m, load_device=self.load_device, offload_device=self.offload_device)
        self.add_extra_model_patcher_during_sampling(patcher)
        return patcher

    def add_patched_controlnet(self, cnet):
        cnet.set_previous_controlnet(self.controlnet_linked_list)
        self.controlnet_linked_list = cnet

    def list_controlnets(self):
        results, pointer = [], self.controlnet_linked_list
        while pointer is not None:
            results.append(pointer)
            pointer = pointer.previous_controlnet
        return results

    def append_model_option(self, k, v, ensure_uniqueness=False):
        values = self.model_options.setdefault(k, [])
        if ensure_uniqueness and v in values:
            return
        values.append(v)

    def append_transformer_option(self, k, v, ensure_uniqueness=False):
        to = self.model_options.setdefault("transformer_options", {})
        values = to.setdefault(k, [])
        if ensure_uniqueness and v in values:
            return
        values.append(v)

    def set_transformer_option(self, k, v):
        self.model_options.setdefault("transformer_options", {})[k] = v

    def add_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option("conditioning_modifiers", modifier, ensure_uniqueness)

    def add_sampler_pre_cfg_function(self, modifier, ensure_uniqueness=False):
        self.append_model_option("sampler_pre_cfg_function", modifier, ensure_uniqueness)

    def set_memory_peak_estimation_modifier(self, modifier):
        self.model_options["memory_peak_estimation_modifier"] = modifier

    def add_alphas_cumprod_modifier(self, modifier, ensure_uniqueness=False):
        self.append_model_option("alphas_cumprod_modifiers", modifier, ensure_uniqueness)

    def add_block_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option("block_modifiers", modifier, ensure_uniqueness)

    def add_block_inner_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option("block_inner_modifiers", modifier, ensure_uniqueness)

    def add_controlnet_conditioning_modifier(self, modifier, ensure_uniqueness=False):
        self.append_transformer_option("controlnet_conditioning_modifiers", modifier, ensure_uniqueness)

    def set_group_norm_wrapper(self, wrapper):
        self.set_transformer_option("group_norm_wrapper", wrapper)

    def set_controlnet_model_function_wrapper(self, wrapper):
        self.set_transformer_option("controlnet_model_function_wrapper", wrapper)

    def set_model_replace_all(self, patch, target="attn1"):
        for block_name in ("input", "middle", "output"):
            for number in range(16):
                for transformer_index in range(16):
                    self.set_model_patch_replace(patch, target, block_name, number, transformer_index)
