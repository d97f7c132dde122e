"""backend/patcher/base.py stand-in: ModelPatcher (Forge 2's own, API after ComfyUI's) and `set_model_options_patch_replace`.

Modelled (backend/patcher/base.py): `model_options = {"transformer_options": {}}`; `clone()` shares the model and
DEEP-COPIES model_options (a module or tensor held by a patch is duplicated unless it defines __deepcopy__ returning self);
`set_model_patch(patch, name)` appends to transformer_options["patches"][name] (the list is rebuilt: a clone's list is its own);
`set_model_patch_replace(patch, name, block_name, number, transformer_index=None)` stores
transformer_options["patches_replace"][name][(block_name, number, transformer_index)] -- a 2-tuple key when the index is None --
copying the dicts on the way (clones never alias); attn1/attn2 patch, replace and output-patch setters; input/output block
patches; sampler cfg / pre-cfg / post-cfg functions (the 3-argument legacy cfg function wrapped); unet function wrapper;
object patches applied by forge_patch_model; `add_patches` (weight patches, see lora.py); `model_patches_to` moving patch
objects that have `.to`; `is_clone`. Not modelled: VAE wrappers, key patches from state dicts.
"""
import copy
import inspect

from backend import memory_management, utils
from backend.patcher.lora import LoraLoader


def set_model_options_patch_replace(model_options, patch, name, block_name, number, transformer_index=None):
    to = dict(model_options["transformer_options"])
    replace = dict(to.get("patches_replace", {}))
    replace[name] = dict(replace.get(name, {}))
    key = (block_name, number, transformer_index) if transformer_index is not None else (block_name, number)
    replace[name][key] = patch
    to["patches_replace"] = replace
    model_options["transformer_options"] = to
    return model_options


def set_model_options_post_cfg_function(model_options, post_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_post_cfg_function"] = model_options.get("sampler_post_cfg_function", []) + [post_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


def set_model_options_pre_cfg_function(model_options, pre_cfg_function, disable_cfg1_optimization=False):
    model_options["sampler_pre_cfg_function"] = model_options.get("sampler_pre_cfg_function", []) + [pre_cfg_function]
    if disable_cfg1_optimization:
        model_options["disable_cfg1_optimization"] = True
    return model_options


class ModelPatcher:
    def __init__(self, model, load_device, offload_device, size=0, current_device=None, **kwargs):
        self.size = size
        self.model = model
        self.lora_patches = {}
        self.object_patches = {}
        self.object_patches_backup = {}
        self.model_options = {"transformer_options": {}}
        self.model_size()
        self.load_device = load_device
        self.offload_device = offload_device
        if not hasattr(model, "lora_loader"):
            model.lora_loader = LoraLoader(model)
        self.lora_loader = model.lora_loader
        self.current_device = offload_device if current_device is None else current_device

    def model_size(self):
        if self.size > 0:
            return self.size
        self.size = memory_management.module_size(self.model)
        return self.size

    def clone(self):
        n = ModelPatcher(self.model, self.load_device, self.offload_device, self.size, self.current_device)
        n.lora_patches = self.lora_patches.copy()
        n.object_patches = self.object_patches.copy()
        n.model_options = copy.deepcopy(self.model_options)
        return n

    def is_clone(self, other):
        return hasattr(other, "model") and self.model is other.model

    def add_patches(self, *, filename, patches, strength_patch=1.0, strength_model=1.0, online_mode=False):
        identifier = (filename, strength_patch, strength_model, online_mode)
        model_keys = {k for k, _ in self.model.named_parameters()}
        these, applied = {}, set()
        for k, value in patches.items():
            key, offset, function = (k, None, None) if isinstance(k, str) else (k[0], k[1], k[2] if len(k) > 2 else None)
            if key in model_keys:
                applied.add(k)
                these.setdefault(key, []).append([strength_patch, value, strength_model, offset, function])
        self.lora_patches[identifier] = these
        return applied

    def has_online_lora(self):
        return any(identifier[3] for identifier in self.lora_patches)

    def refresh_loras(self):
        self.lora_loader.refresh(lora_patches=self.lora_patches, offload_device=self.offload_device)

    def memory_required(self, input_shape):
        return self.model.memory_required(input_shape=input_shape)

    def set_model_sampler_cfg_function(self, sampler_cfg_function, disable_cfg1_optimization=False):
        if len(inspect.signature(sampler_cfg_function).parameters) == 3:
            self.model_options["sampler_cfg_function"] = lambda a: sampler_cfg_function(a["cond"], a["uncond"], a["cond_scale"])
        else:
            self.model_options["sampler_cfg_function"] = sampler_cfg_function
        if disable_cfg1_optimization:
            self.model_options["disable_cfg1_optimization"] = True

    def set_model_sampler_post_cfg_function(self, post_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_post_cfg_function(self.model_options, post_cfg_function, disable_cfg1_optimization)

    def set_model_sampler_pre_cfg_function(self, pre_cfg_function, disable_cfg1_optimization=False):
        self.model_options = set_model_options_pre_cfg_function(self.model_options, pre_cfg_function, disable_cfg1_optimization)

    def set_model_unet_function_wrapper(self, unet_wrapper_function):
        self.model_options["model_function_wrapper"] = unet_wrapper_function

    def set_model_denoise_mask_function(self, denoise_mask_function):
        self.model_options["denoise_mask_function"] = denoise_mask_function

    def set_model_patch(self, patch, name):
        to = self.model_options["transformer_options"]
        patches = to.setdefault("patches", {})
        patches[name] = patches.get(name, []) + [patch]

    def set_model_patch_replace(self, patch, name, block_name, number, transformer_index=None):
        self.model_options = set_model_options_patch_replace(self.model_options, patch, name, block_name, number, transformer_index)

    def set_model_attn1_patch(self, patch):
        self.set_model_patch(patch, "attn1_patch")

    def set_model_attn2_patch(self, patch):
        self.set_model_patch(patch, "attn2_patch")

    def set_model_attn1_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn1", block_name, number, transformer_index)

    def set_model_attn2_replace(self, patch, block_name, number, transformer_index=None):
        self.set_model_patch_replace(patch, "attn2", block_name, number, transformer_index)

    def set_model_attn1_output_patch(self, patch):
        self.set_model_patch(patch, "attn1_output_patch")

    def set_model_attn2_output_patch(self, patch):
        self.set_model_patch(patch, "attn2_output_patch")

    def set_model_input_block_patch(self, patch):
        self.set_model_patch(patch, "input_block_patch")

    def set_model_input_block_patch_after_skip(self, patch):
        self.set_model_patch(patch, "input_block_patch_after_skip")

    def set_model_output_block_patch(self, patch):
        self.set_model_patch(patch, "output_block_patch")

    def add_object_patch(self, name, obj):
        self.object_patches[name] = obj

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        if name in self.object_patches_backup:
            return self.object_patches_backup[name]
        return utils.get_attr(self.model, name)

    def model_patches_to(self, device):
        to = self.model_options["transformer_options"]
        for patch_list in to.get("patches", {}).values():
            for i, patch in enumerate(patch_list):
                if hasattr(patch, "to"):
                    patch_list[i] = patch.to(device)
        for patch_dict in to.get("patches_replace", {}).values():
            for k, patch in patch_dict.items():
                if hasattr(patch, "to"):
                    patch_dict[k] = patch.to(device)
        wrapper = self.model_options.get("model_function_wrapper")
        if hasattr(wrapper, "to"):
            self.model_options["model_function_wrapper"] = wrapper.to(device)

    def model_dtype(self):
        if hasattr(self.model, "get_dtype"):
            return self.model.get_dtype()

    def forge_patch_model(self, target_device=None):
        for k, item in self.object_patches.items():
            old = utils.get_attr(self.model, k)
            if k not in self.object_patches_backup:
                self.object_patches_backup[k] = old
            utils.set_attr_raw(self.model, k, item)
        if target_device is not None:
            self.model.to(target_device)
            self.current_device = target_device
        return self.model

    def forge_unpatch_model(self, target_device=None):
        if target_device is not None:
            self.model.to(target_device)
            self.current_device = target_device
        for k in list(self.object_patches_backup):
            utils.set_attr_raw(self.model, k, self.object_patches_backup[k])
        self.object_patches_backup = {}
