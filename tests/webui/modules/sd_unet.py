"""modules/sd_unet.py stand-in: replacement UNets (TensorRT-style) and the class-level UNetModel.forward dispatch.

As in A1111 1.10:
  * `unet_options` (SdUnetOption objects, filled by list_unets() from on_list_unets callbacks), `current_unet_option`
    and `current_unet` are module globals; there is no shared.sd_unet.
  * apply_unet(option=None) resolves the option (None: opts.sd_unet; "None": none; "Automatic": the option whose
    model_name is the loaded checkpoint's model_name), returns if it is the current one, deactivates the old
    replacement, and on activation moves sd_model.model.diffusion_model to the CPU (a no-op here), creates the
    SdUnet and calls .activate(); setting opts.sd_unet applies it at once (A1111's onchange).
  * A1111's sd_hijack patches the CLASS-level forward of ldm's and sgm's UNetModel once at import: while
    current_unet is not None, forward(x, timesteps, context, ...) returns current_unet.forward(...). The stand-in
    installs the same dispatch on the classes its tiny UNets use (stable-diffusion-sdkit's ldm UNetModel and
    imaginAIry's sgm UNetModel) when this module is first imported (modules.sd_models imports it). So with a
    replacement active, forward hooks on the UNet module itself still fire (its __call__ runs) but nothing inside it
    runs: hooks on input/middle/output blocks never fire. A per-instance forward (ControlNet's) bypasses it.
Not modelled: the refresh button of the setting (call list_unets()).
"""
from __future__ import annotations

import importlib

import torch.nn

from modules import devices, script_callbacks, shared
from modules.options import OptionInfo

unet_options = []
current_unet_option = None
current_unet = None
original_forward = None  # not used, only kept as A1111 keeps it for compatibility

# the unpatched forward of each patched UNetModel class (A1111 keeps them as sd_hijack.ldm_original_forward /
# sgm_original_forward)
original_forwards: dict[type, object] = {}

UNET_CLASSES = (
    ("ldm.modules.diffusionmodules.openaimodel", "UNetModel"),
    ("imaginairy.modules.sgm.diffusionmodules.openaimodel", "UNetModel"),
    ("sgm.modules.diffusionmodules.openaimodel", "UNetModel"),
)


def list_unets():
    found = script_callbacks.list_unets_callback()
    unet_options.clear()
    unet_options.extend(found)


def get_unet_option(option=None):
    option = option or shared.opts.sd_unet
    if option == "None":
        return None
    if option == "Automatic":
        name = shared.sd_model.sd_checkpoint_info.model_name
        matching = [x for x in unet_options if x.model_name == name]
        option = matching[0].label if matching else "None"
    return next(iter([x for x in unet_options if x.label == option]), None)


def apply_unet(option=None):
    global current_unet_option, current_unet

    new_option = get_unet_option(option)
    if new_option == current_unet_option:
        return

    if current_unet is not None:
        print(f"Dectivating unet: {current_unet.option.label}")
        current_unet.deactivate()

    current_unet_option = new_option
    if current_unet_option is None:
        current_unet = None
        if not getattr(shared.sd_model, "lowvram", False):
            shared.sd_model.model.diffusion_model.to(devices.device)
        return

    shared.sd_model.model.diffusion_model.to(devices.cpu)
    devices.torch_gc()

    current_unet = current_unet_option.create_unet()
    current_unet.option = current_unet_option
    print(f"Activating unet: {current_unet.option.label}")
    current_unet.activate()


class SdUnetOption:
    model_name = None
    """name of related checkpoint - this option will be selected automatically for unet if the name of checkpoint matches this"""

    label = None
    """name of the unet in UI"""

    def create_unet(self):
        """returns SdUnet object to be used as a Unet instead of built-in unet when making pictures"""
        raise NotImplementedError()


class SdUnet(torch.nn.Module):
    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError()

    def activate(self):
        pass

    def deactivate(self):
        pass


def create_unet_forward(original_forward):
    def UNetModel_forward(self, x, timesteps=None, context=None, *args, **kwargs):
        if current_unet is not None:
            return current_unet.forward(x, timesteps, context, *args, **kwargs)
        return original_forward(self, x, timesteps, context, *args, **kwargs)

    UNetModel_forward.standin_original_forward = original_forward
    return UNetModel_forward


def _install_dispatch():
    """Patches the class-level forward of every available UNetModel class, once (idempotent)."""
    for module_name, class_name in UNET_CLASSES:
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except ImportError:
            continue
        if cls in original_forwards:
            continue
        original_forwards[cls] = cls.forward
        cls.forward = create_unet_forward(cls.forward)


def unpatched_forward(unet):
    """Stand-in helper: the UNet class's own forward, without the dispatch (to run a UNet from a replacement)."""
    for cls in type(unet).__mro__:
        if cls in original_forwards:
            return original_forwards[cls].__get__(unet, type(unet))
    return unet.forward


def _sd_unet_changed():
    apply_unet()


if "sd_unet" not in shared.opts.data_labels:
    shared.opts.add_option("sd_unet", OptionInfo("Automatic", "SD Unet"))
    shared.opts.onchange("sd_unet", _sd_unet_changed, call=False)

_install_dispatch()
