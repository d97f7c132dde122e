"""Test entry points for the Forge stand-in. Importing this module installs tests/forge on sys.path (so it must not be
imported in a process that uses the A1111 stand-in; tests get it through the `forge` fixture of tests/forge/pytest_support.py).

Typical use (see tests/test_forge_standin.py):

    def test_x(forge):                                   # fixture: a reset stand-in (skips outside its own process)
        forge.set_model(forge.tiny_unet("sdxl"), "sdxl") # a Forge 2 model with forge_objects around the tiny UNet
        forge.load_extension("/work/main/scripts/instantid.py", builtin_classes=[...])   # Forge startup + UI
        with forge.record_unet() as calls:               # every UNet call: rows, cond_or_uncond, cond_mark, patches, control
            result = forge.txt2img(prompt="a", steps=2, script_args={"InstantID": {...}}, enable_hr=True, hr_cfg=5)
        result.p, result.processed, calls.calls[0].cond_or_uncond
        client = forge.api_client()                      # TestClient over Forge's API-only app (raise_server_exceptions=False)

UI-path jobs use the UI's defaults (64x64 here instead of 512, Euler, 20 steps, hr_cfg 7.0, hr_upscaler "Latent",
hr_additional_modules ["Use same choices"]); API jobs get the API model's defaults (hr_cfg 1.0, hr_additional_modules None).
Also: forge.add_lora(name, {param: diff}) for `<lora:name:1>` prompts, forge.tiny_controlnet(kind) / controlnet_like for
other ControlNets, backend.memory_management.events for device moves, forge.reported() for swallowed script errors.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import torch

from tests.forge import FORGE_ROOT, install

install()


from backend import args as backend_args  # noqa: E402
from backend import memory_management  # noqa: E402
from modules import errors, extra_networks, infotext_utils, processing, script_callbacks, scripts, sd_models, shared, ui  # noqa: E402

import os  # noqa: E402

EXTENSION_ROOT = os.path.dirname(os.path.dirname(FORGE_ROOT))
EXTENSION_SCRIPT = os.path.join(EXTENSION_ROOT, "scripts", "instantid.py")
UI_DEFAULTS = dict(prompt="", negative_prompt="", steps=20, sampler_name="Euler", scheduler="Automatic", cfg_scale=7.0,
                   width=64, height=64, batch_size=1, n_iter=1, seed=-1)
TXT2IMG_UI_DEFAULTS = dict(hr_additional_modules=["Use same choices"], hr_upscaler="Latent", hr_cfg=7.0, hr_scale=2.0)


@dataclasses.dataclass
class JobResult:
    p: processing.StableDiffusionProcessing
    processed: processing.Processed


@dataclasses.dataclass
class UNetCall:
    rows: int
    x_shape: tuple
    timesteps: torch.Tensor
    contexts: tuple  # prompt per row ("<zero>" for zero rows, "?" for a context that is no prompt's, e.g. face tokens)
    context_shape: tuple
    has_y: bool
    cond_or_uncond: list
    cond_mark: torch.Tensor
    cond_indices: list
    uncond_indices: list
    sigmas: torch.Tensor
    attn2_replace_keys: tuple
    patch_names: tuple
    has_control: bool
    transformer_options: dict  # a shallow copy of the call's transformer_options (before the UNet mutates it)


class UNetCallRecorder:
    """Records every call of the current model's UNet (IntegratedUNet2DConditionModel) via a forward pre-hook."""

    def __init__(self, model=None):
        self.model = model or shared.sd_model
        self.calls: list[UNetCall] = []
        self.handle = None

    def _hook(self, module, args, kwargs):
        x, t = args[0], args[1] if len(args) > 1 else kwargs.get("timesteps")
        to = kwargs.get("transformer_options", {})
        context = kwargs.get("context")
        self.calls.append(UNetCall(
            rows=int(x.shape[0]), x_shape=tuple(x.shape), timesteps=t.detach().clone(),
            contexts=tuple(self.model.describe_context(context)) if context is not None else (),
            context_shape=tuple(context.shape) if context is not None else (), has_y=kwargs.get("y") is not None,
            cond_or_uncond=list(to.get("cond_or_uncond", [])), cond_mark=to.get("cond_mark"),
            cond_indices=list(to.get("cond_indices", [])), uncond_indices=list(to.get("uncond_indices", [])),
            sigmas=to.get("sigmas"), attn2_replace_keys=tuple(to.get("patches_replace", {}).get("attn2", {})),
            patch_names=tuple(to.get("patches", {})), has_control=kwargs.get("control") is not None, transformer_options=dict(to)))

    def __enter__(self):
        unet = self.model.forge_objects_original.unet.model.diffusion_model
        self.handle = unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def layouts(self):
        return [call.cond_or_uncond for call in self.calls]


class Forge:
    """One stand-in Forge session: model, loaded scripts, jobs and the API."""

    # --- state -------------------------------------------------------------------------------------------------------
    def reset(self):
        """Everything back to a fresh start: callbacks, scripts and runners, options, flags, job state, cond caches, logged
        errors, extra networks (LoRA weights restored), memory manager (nothing loaded, events cleared), model, UI."""
        model = shared.sd_model
        if model is not None:
            for patcher in (model.forge_objects_original.unet,):
                patcher.lora_loader.refresh({})
        script_callbacks.clear_callbacks()
        scripts.scripts_data.clear()
        scripts.scripts_txt2img = scripts.ScriptRunner()
        scripts.scripts_img2img = scripts.ScriptRunner()
        scripts.scripts_current = None
        shared.opts.reset()
        shared.reset_cmd_opts()
        shared.state.reset()
        processing.StableDiffusionProcessing.cached_c = [None, None, None]
        processing.StableDiffusionProcessing.cached_uc = [None, None, None]
        processing.StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None, None]
        processing.StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None, None]
        errors.reports.clear()
        infotext_utils.reset()
        extra_networks.extra_network_registry.clear()
        from tests.forge import lora_like
        lora_like.networks.clear()
        memory_management.reset()
        backend_args.reset()
        sd_models.reset()
        ui.demo = shared.demo = None

    # --- model ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def tiny_unet(kind="sdxl", seed=0):
        from tests.fixtures import tiny_models
        return tiny_models.tiny_unet(kind, seed)

    def set_model(self, unet, kind="sdxl", name=None):
        """Load `unet` (a tiny sgm / ldm UNetModel) as the current checkpoint (fires on_model_loaded)."""
        return sd_models.load_model(unet, kind, name)

    @staticmethod
    def tiny_controlnet(template_unet=None, seed=0):
        """A plain other ControlNet (backend ControlNet around a tiny cldm built from the model's UNet architecture)."""
        from tests.forge import controlnet_like
        return controlnet_like.tiny_controlnet(template_unet if template_unet is not None else shared.sd_model.unet, seed)

    def add_lora(self, name, patches):
        """Register a LoRA-like network usable as <lora:name:multiplier>: patches {parameter name of unet.model (e.g.
        "diffusion_model.out.2.weight"): (diff tensor,)}."""
        from tests.forge import lora_like
        if "lora" not in extra_networks.extra_network_registry:
            lora_like.register()
        lora_like.networks[name] = {k: v if isinstance(v, tuple) else (v,) for k, v in patches.items()}
        return extra_networks.extra_network_registry["lora"]

    # --- scripts -------------------------------------------------------------------------------------------------------
    def load_extension(self, *script_paths, builtin_classes=(), extra_classes=(), build_ui=True):
        """Forge startup: load the scripts (built-in classes first, then these files, then extra classes), then on_before_ui
        and the UI of both tabs (args_from / args_to). build_ui=False leaves the UI to api_client() (API-only order)."""
        scripts.load_scripts(script_paths, builtin_classes=builtin_classes, extra_classes=extra_classes)
        if build_ui:
            script_callbacks.before_ui_callback()
            ui.create_ui()
        return scripts.scripts_txt2img, scripts.scripts_img2img

    def reload_scripts(self, *script_paths, **kwargs):
        script_callbacks.script_unloaded_callback()
        return self.load_extension(*script_paths, **kwargs)

    @staticmethod
    def runner(is_img2img=False):
        return scripts.scripts_img2img if is_img2img else scripts.scripts_txt2img

    def default_script_args(self, is_img2img=False) -> list:
        runner = self.runner(is_img2img)
        return [0] + [getattr(c, "value", None) for c in runner.inputs[1:]]

    def script_args(self, overrides=None, is_img2img=False) -> list:
        """UI defaults with overrides {script title: list (positional from args_from) or dict {relative index | label | elem_id: value}}."""
        runner = self.runner(is_img2img)
        args = self.default_script_args(is_img2img)
        for title, values in (overrides or {}).items():
            script = runner.script(title)
            if script is None:
                raise KeyError(f"no script titled {title!r}; have {list(runner.title_map)}")
            items = values.items() if isinstance(values, dict) else enumerate(values)
            for key, value in items:
                index = key if isinstance(key, int) else next(
                    i for i, c in enumerate(script.controls) if key in (getattr(c, "label", None), getattr(c, "elem_id", None)))
                args[script.args_from + index] = value
        return args

    # --- jobs (the UI path) --------------------------------------------------------------------------------------------
    def _make(self, cls, is_img2img, script_args, kwargs, select=None):
        fields = {**UI_DEFAULTS, **({} if is_img2img else TXT2IMG_UI_DEFAULTS), **kwargs}
        args = self.script_args(script_args, is_img2img)
        if select is not None:
            runner = self.runner(is_img2img)
            args[0] = runner.selectable_scripts.index(runner.script(select)) + 1
        p = cls(sd_model=shared.sd_model, **fields)
        p.scripts = self.runner(is_img2img)
        p.script_args = tuple(args)  # runs setup (UI path: is_api False)
        return p

    def make_txt2img(self, script_args=None, select=None, **kwargs):
        return self._make(processing.StableDiffusionProcessingTxt2Img, False, script_args, kwargs, select)

    def make_img2img(self, script_args=None, select=None, **kwargs):
        return self._make(processing.StableDiffusionProcessingImg2Img, True, script_args, kwargs, select)

    def run(self, p, opts=None) -> processing.Processed:
        with self.options(**(opts or {})):
            shared.state.begin(job="standin")
            try:
                with contextlib.closing(p):
                    processed = p.scripts.run(p, *p.script_args) if p.scripts is not None else None
                    if processed is None:
                        processed = processing.process_images(p)
            finally:
                shared.state.end()
        return processed

    def txt2img(self, script_args=None, opts=None, select=None, **kwargs) -> JobResult:
        p = self.make_txt2img(script_args, select, **kwargs)
        return JobResult(p, self.run(p, opts))

    def img2img(self, script_args=None, opts=None, select=None, **kwargs) -> JobResult:
        p = self.make_img2img(script_args, select, **kwargs)
        return JobResult(p, self.run(p, opts))

    @contextlib.contextmanager
    def options(self, **values):
        stored = {key: shared.opts.data.get(key, shared.opts.get_default(key)) for key in values}
        for key, value in values.items():
            setattr(shared.opts, key, value)
        try:
            yield shared.opts
        finally:
            for key, value in stored.items():
                setattr(shared.opts, key, value)

    # --- API -----------------------------------------------------------------------------------------------------------
    def api_app(self, *, api_auth=None):
        """Forge's app: with the UI built (load_extension's default) the WebUI started with --api (on_app_started(demo, app));
        otherwise --nowebui (the Api builds the script UI, then on_before_ui, then on_app_started(None, app))."""
        from modules.api.api import create_app
        if api_auth is not None:
            shared.cmd_opts.api_auth = api_auth
        demo = ui.demo if scripts.scripts_txt2img.scripts else None
        shared.cmd_opts.api, shared.cmd_opts.nowebui = demo is not None, demo is None
        return create_app(demo)

    def api_client(self, *, api_auth=None, auth=None, raise_server_exceptions=False):
        from fastapi.testclient import TestClient
        client = TestClient(self.api_app(api_auth=api_auth), raise_server_exceptions=raise_server_exceptions)
        if auth is not None:
            client.auth = auth
        return client

    # --- inspection ----------------------------------------------------------------------------------------------------
    def record_unet(self, model=None) -> UNetCallRecorder:
        return UNetCallRecorder(model)

    @staticmethod
    def reported(substring="") -> list[tuple[str, Any]]:
        return [entry for entry in errors.reports if substring in entry[0]]


standin = Forge()
