"""modules/lowvram.py stand-in: --medvram / --medvram-sdxl / --lowvram as A1111 1.10 does them.

Modelled (from the WebUI's behaviour):
  * `is_needed(sd_model)`: --lowvram or --medvram, or --medvram-sdxl for a model with a `conditioner` (SDXL) only;
    `apply(sd_model)` (what sd_models.send_model_to_device does at load) sets `sd_model.lowvram` and
    `shared.parallel_processing_allowed`; `is_enabled(sd_model)` is `sd_model.lowvram` (no default, as in A1111).
  * `setup_for_low_vram`: the model's big parts stay on CPU (VAE, text encoder, `sd_model.model`), everything
    else goes to `devices.device`; one forward pre-hook, `send_me_to_gpu`, with a single "module_in_gpu" slot
    (the previous occupant goes back to CPU). --medvram hooks the whole `sd_model.model` wrapper (the UNet goes
    to the GPU at the first `sd_model.model(...)` call of a sampling pass); --lowvram hooks time_embed, every
    input block, the middle block and every output block separately (the rest of the wrapper is moved once).
    The text encoder is `conditioner` (SDXL) or `cond_stage_model` (SD1, whose `transformer` hook has the
    whole cond_stage_model as parent). lowvram's pre-hooks are registered at load, so they run before hooks
    registered later (an extension's hook on a block sees the block already on the GPU).
  * `send_everything_to_cpu()`: empties the slot (processing calls it after each batch's VAE decode).

Stand-in specifics (the stand-in model has no VAE or text-encoder modules of its own):
  * The VAE is `sd_model.first_stage_model` if the model has one (its encode/decode wrapped, as in A1111);
    otherwise a parameterless placeholder module stands for it and the model's own `decode_first_stage` /
    `encode_first_stage` are wrapped instead. The stand-in's `get_learned_conditioning` does not run the text
    encoder module, so a wrapper on it stands for the encoder's forward (the hook is registered as well).
  * Tensors on `torch.device("cpu", 0)` still report "cpu", so placement is tracked here: every `.to()` this
    module makes is logged in `moves` as (name, device) and remembered for the moved module and all its
    submodules (`device_of`). Names: "sd_model" (the model without its big parts), "first_stage_model",
    "conditioner" / "cond_stage_model", "model" (the UNet wrapper; under --lowvram the wrapper without the
    hooked blocks), "model.diffusion_model.time_embed", "...input_blocks.<i>", "...middle_block",
    "...output_blocks.<i>".
  * `events` is a timeline the rest of the stand-in writes to (`record(name, **detail)`), in every mode:
    "vae decode", "vae encode", "text encode" (recorded right after the call, so the placement is the one
    during it), "upscale" (an upscaler call; the harness's upscalers record it with the device they run on),
    "sampling start"/"sampling end" (detail pass="txt2img"/"img2img"/"hires"; at the start the UNet has not moved
    yet), "send_everything_to_cpu". Each Event has the `placement()` at that moment and `moves`, the length of
    the move log then, so a test can ask where the UNet/VAE was at that point.
  * `ensure_applied(sd_model)`: send_model_to_device for a model the stand-in's loader never sent (processing
    calls it when a job starts / after a reload). `reset()` removes every hook and wrapper and clears the logs
    (the harness calls it).
  * The stand-in model's empty-prompt cond is computed on demand (A1111 caches it at load), so
    pad_cond_uncond during sampling moves the text encoder in; A1111 would not.
Not modelled: SD2/SD3 encoders (medvram_fields/medvram_modules), depth_model/embedder, the sd_unet and VAE-reload
paths, the live-preview approximation switch.
"""
from __future__ import annotations

import weakref
from collections import namedtuple

import torch

from modules import devices, shared

module_in_gpu = None
cpu = torch.device("cpu")

ModuleWithParent = namedtuple('ModuleWithParent', ['module', 'parent'], defaults=['None'])
Event = namedtuple("Event", ["name", "placement", "moves", "detail"])

moves: list[tuple[str, torch.device]] = []
events: list[Event] = []

_where: "weakref.WeakKeyDictionary[torch.nn.Module, torch.device]" = weakref.WeakKeyDictionary()
_names: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()
_components: "weakref.WeakKeyDictionary[torch.nn.Module, dict]" = weakref.WeakKeyDictionary()  # model -> {name: module}
_handles: list = []  # hook handles, removed by reset()
_wrapped: list = []  # (object, attribute) instance attributes set here, deleted by reset()
_set_up: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()


class StandInVAE(torch.nn.Module):
    """Placeholder for the VAE module of a stand-in model that has none (it has no parameters)."""


# --- the A1111 functions -----------------------------------------------------------------------------------

def send_everything_to_cpu():
    global module_in_gpu

    if module_in_gpu is not None:
        _move(module_in_gpu, cpu)
    module_in_gpu = None
    record("send_everything_to_cpu")


def is_needed(sd_model):
    opts = shared.cmd_opts
    return opts.lowvram or opts.medvram or (opts.medvram_sdxl and hasattr(sd_model, 'conditioner'))


def apply(sd_model):
    enable = is_needed(sd_model)
    shared.parallel_processing_allowed = not enable
    if enable:
        setup_for_low_vram(sd_model, not shared.cmd_opts.lowvram)
    else:
        sd_model.lowvram = False


def _text_encoder(sd_model):
    """(name, module whose pre-hook A1111 uses, the module that is moved) for SDXL or SD1 models."""
    if hasattr(sd_model, 'conditioner'):
        return 'conditioner', sd_model.conditioner, sd_model.conditioner
    holder = sd_model.cond_stage_model
    return 'cond_stage_model', getattr(holder, 'transformer', None), holder


def setup_for_low_vram(sd_model, use_medvram):
    if getattr(sd_model, 'lowvram', False):
        return
    sd_model.lowvram = True
    _set_up.add(sd_model)

    parents = {}

    def send_me_to_gpu(module, _):
        """Pre-hook: this module to the GPU, the previous occupant of the single slot back to the CPU."""
        global module_in_gpu

        module = parents.get(module, module)
        if module_in_gpu == module:
            return
        if module_in_gpu is not None:
            _move(module_in_gpu, cpu)
        _move(module, devices.device)
        module_in_gpu = module

    # the weights were loaded on the CPU (sd_models.model_target_device) -- not a move
    _place(sd_model, cpu)

    vae = getattr(sd_model, 'first_stage_model', None)
    text_name, text_hooked, text_moved = _text_encoder(sd_model)
    if vae is None:
        vae = StandInVAE()
        _place(vae, cpu)
    components = {"first_stage_model": vae, text_name: text_moved, "model": sd_model.model}
    for name, module in components.items():
        _names[module] = name

    # the big parts are taken off the model while the rest of it goes to the GPU, then put back (on the CPU)
    held_back = [(sd_model, field) for field in ('first_stage_model', 'depth_model', 'embedder', 'model')]
    if text_name == 'conditioner':
        held_back.append((sd_model, 'conditioner'))
    elif text_hooked is not None:
        held_back.append((sd_model.cond_stage_model, 'transformer'))
    else:  # the stand-in's SD1 cond_stage_model has no transformer: it stands for the whole encoder
        held_back.append((sd_model, 'cond_stage_model'))
    _moved_without(sd_model, "sd_model", held_back)

    # the text encoder
    if text_hooked is not None:
        if text_hooked is not text_moved:
            parents[text_hooked] = text_moved
        _handles.append(text_hooked.register_forward_pre_hook(send_me_to_gpu))
    _wrap(sd_model, 'get_learned_conditioning', lambda: send_me_to_gpu(text_moved, None))

    # the VAE: it is used through encode/decode, not forward
    _handles.append(vae.register_forward_pre_hook(send_me_to_gpu))
    if getattr(sd_model, 'first_stage_model', None) is vae:
        _wrap(vae, 'encode', lambda: send_me_to_gpu(vae, None))
        _wrap(vae, 'decode', lambda: send_me_to_gpu(vae, None))
    else:
        _wrap(sd_model, 'encode_first_stage', lambda: send_me_to_gpu(vae, None))
        _wrap(sd_model, 'decode_first_stage', lambda: send_me_to_gpu(vae, None))

    if use_medvram:
        _handles.append(sd_model.model.register_forward_pre_hook(send_me_to_gpu))
    else:
        unet = sd_model.model.diffusion_model
        fields = ('input_blocks', 'middle_block', 'output_blocks', 'time_embed')
        _moved_without(sd_model.model, "model", [(unet, field) for field in fields])
        prefix = "model.diffusion_model."
        blocks = {prefix + "time_embed": unet.time_embed}
        blocks.update((f"{prefix}input_blocks.{i}", block) for i, block in enumerate(unet.input_blocks))
        blocks[prefix + "middle_block"] = unet.middle_block
        blocks.update((f"{prefix}output_blocks.{i}", block) for i, block in enumerate(unet.output_blocks))
        for name, block in blocks.items():
            _names[block] = name
            _handles.append(block.register_forward_pre_hook(send_me_to_gpu))
        components.update(blocks)
    _components[sd_model] = components


def is_enabled(sd_model):
    return sd_model.lowvram


# --- stand-in helpers ----------------------------------------------------------------------------------------

def ensure_applied(sd_model):
    """What sd_models.send_model_to_device does when a model is loaded (lowvram.apply, else the whole model to
    devices.device), for a model that has not been through it yet (the stand-in's loader does not call it)."""
    if sd_model is None or hasattr(sd_model, 'lowvram'):
        return
    apply(sd_model)
    if not sd_model.lowvram:
        sd_model.to(devices.device)


def _place(module, device):
    for sub in module.modules():
        _where[sub] = device


def _move(module, device, name=None):
    module.to(device)
    moves.append((name or _names.get(module) or type(module).__name__, device))
    _place(module, device)


def _moved_without(owner, name, held_back):
    """owner.to(devices.device) with the (object, attribute) submodules in `held_back` taken off meanwhile."""
    present = [(obj, field, getattr(obj, field)) for obj, field in held_back if getattr(obj, field, None) is not None]
    for obj, field, _ in present:
        setattr(obj, field, None)
    try:
        _move(owner, devices.device, name)
    finally:
        for obj, field, module in present:
            setattr(obj, field, module)


def _wrap(obj, attribute, before):
    """obj.<attribute> replaced by an instance attribute that calls before() first."""
    original = getattr(obj, attribute)

    def wrapper(*args, **kwargs):
        before()
        return original(*args, **kwargs)

    setattr(obj, attribute, wrapper)
    _wrapped.append((obj, attribute))


def device_of(module):
    """Where lowvram last put `module` (or the module it was moved with); devices.device for a module of a model
    that is not in low-VRAM mode; None for a module it does not know."""
    if module in _where:
        return _where[module]
    model = shared.sd_model
    if model is not None and not getattr(model, 'lowvram', False) and any(m is module for m in model.modules()):
        return devices.device
    return None


def placement(sd_model=None) -> dict:
    """{component name: device} for the model (default: shared.sd_model): "first_stage_model", the text encoder,
    "model", and under --lowvram every hooked UNet block. Without low-VRAM mode everything is on devices.device."""
    sd_model = shared.sd_model if sd_model is None else sd_model
    if sd_model is None:
        return {}
    components = _components.get(sd_model)
    if components is None or not getattr(sd_model, 'lowvram', False):
        text_name = 'conditioner' if hasattr(sd_model, 'conditioner') else 'cond_stage_model'
        return {name: devices.device for name in ("first_stage_model", text_name, "model")}
    return {name: _where.get(module) for name, module in components.items()}


def record(name, **detail):
    """Adds an event to the timeline with the current placement of shared.sd_model's parts."""
    events.append(Event(name, placement(), len(moves), detail))


def events_named(name) -> list[Event]:
    return [event for event in events if event.name == name]


def reset():
    """Stand-in only: remove every hook and wrapper installed here, forget the models set up, clear the logs."""
    global module_in_gpu
    for handle in _handles:
        handle.remove()
    _handles.clear()
    for obj, attribute in reversed(_wrapped):
        if attribute in vars(obj):
            delattr(obj, attribute)
    _wrapped.clear()
    for model in list(_set_up):
        if 'lowvram' in vars(model):
            del model.lowvram
    _set_up.clear()
    _where.clear()
    _names.clear()
    _components.clear()
    moves.clear()
    events.clear()
    module_in_gpu = None
