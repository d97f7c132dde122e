"""Test entry points for the A1111 stand-in. Importing this module installs tests/webui on sys.path.

Typical use (see tests/test_webui_standin.py):

    from tests.webui import harness
    from tests.webui.harness import webui          # pytest fixture: reset before and after the test

    def test_x(webui):
        webui.set_model(tiny_unet("sdxl"), "sdxl")
        webui.load_extension("/work/main/scripts/instantid.py")     # A1111-style import + UI build
        result = webui.txt2img(prompt="a", steps=2, width=64, height=64, seed=1,
                               script_args={"InstantID": [True, ...]}, opts={"batch_cond_uncond": False})
        result.processed.images, result.p
        client = webui.api_client()                  # fastapi TestClient over create_api()
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any

import pytest

from tests.webui import WEBUI_ROOT, install

install()

import torch  # noqa: E402

from modules import errors, paths, paths_internal, processing, script_callbacks, scripts, sd_models, shared  # noqa: E402
from modules import infotext_utils, shared_cmd_options, ui  # noqa: E402

EXTENSION_ROOT = os.path.dirname(os.path.dirname(WEBUI_ROOT))  # the repository root = the extension folder
EXTENSION_SCRIPT = os.path.join(EXTENSION_ROOT, "scripts", "instantid.py")


@dataclasses.dataclass
class JobResult:
    p: processing.StableDiffusionProcessing
    processed: processing.Processed


@dataclasses.dataclass
class UNetCall:
    rows: int
    contexts: tuple  # prompt text per row ("+"/"-" prefix if ControlNet-marked, "<zero>" for zero rows)
    x_shape: tuple
    timesteps: torch.Tensor
    positional_t: bool  # SD1.5 calls diffusion_model(x, t, context=...); SDXL passes timesteps=...
    has_y: bool


class UNetCallRecorder:
    """Records every call of sd_model.model.diffusion_model (a forward pre-hook, so it also sees calls whose
    forward was replaced per instance)."""

    def __init__(self, model=None):
        self.model = model or shared.sd_model
        self.calls: list[UNetCall] = []
        self.handle = None

    def _hook(self, module, args, kwargs):
        x = args[0]
        t = args[1] if len(args) > 1 else kwargs.get("timesteps")
        context = kwargs.get("context")
        names = tuple(self.model.describe_context(context)) if context is not None else ()
        self.calls.append(UNetCall(int(x.shape[0]), names, tuple(x.shape), t.detach().clone(), len(args) > 1, kwargs.get("y") is not None))

    def __enter__(self):
        self.handle = self.model.model.diffusion_model.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    @property
    def layouts(self):
        return [call.contexts for call in self.calls]


class WebUI:
    """One stand-in WebUI session: state, model, loaded scripts, jobs and the API."""

    def reset(self):
        """Everything back to a fresh start: callbacks, loaded scripts and runners, options, cmd_opts, job state,
        cond caches, logged errors, registered checkpoints and paste fields."""
        script_callbacks.clear_callbacks()
        script_callbacks.extension_dirs.clear()
        scripts.scripts_data.clear()
        scripts.scripts_txt2img = scripts.ScriptRunner()
        scripts.scripts_img2img = scripts.ScriptRunner()
        shared.opts.reset()
        shared_cmd_options.reset()
        shared.state.__dict__.clear()
        processing.StableDiffusionProcessing.cached_c = [None, None]
        processing.StableDiffusionProcessing.cached_uc = [None, None]
        processing.StableDiffusionProcessingTxt2Img.cached_hr_c = [None, None]
        processing.StableDiffusionProcessingTxt2Img.cached_hr_uc = [None, None]
        errors.reports.clear()
        errors.exception_records.clear()
        infotext_utils.reset()
        sd_models.reset()
        ui.demo = None

    # --- environment ---------------------------------------------------------------------------------------

    def set_models_path(self, path):
        """Point models_path (paths_internal, paths and shared copies) at `path`."""
        path = str(path)
        paths_internal.models_path = paths.models_path = shared.models_path = path

    def set_model(self, unet, kind, name=None, **kwargs):
        """Load `unet` as the current checkpoint (fires on_model_loaded)."""
        return sd_models.load_model(unet, kind, name, **kwargs)

    def load_extension(self, *script_paths, extra_script_classes=(), build_ui=True):
        """A1111 startup: load the scripts (xyz stand-in, these files, extra classes, built-ins), then
        on_before_ui callbacks and the UI of both tabs (assigning args_from/args_to)."""
        scripts.load_scripts(script_paths or (), extra_script_classes=extra_script_classes)
        if build_ui:
            self.build_ui()
        return scripts.scripts_txt2img, scripts.scripts_img2img

    def build_ui(self):
        """webui.py: on_before_ui callbacks, then ui.create_ui() (on_ui_settings, both tabs' script UIs)."""
        script_callbacks.before_ui_callback()
        return ui.create_ui()

    def reload_scripts(self, *script_paths, extra_script_classes=()):
        """UI reload: on_script_unloaded callbacks, then a fresh load (which clears all callbacks)."""
        script_callbacks.script_unloaded_callback()
        return self.load_extension(*script_paths, extra_script_classes=extra_script_classes)

    # --- script args ---------------------------------------------------------------------------------------

    @staticmethod
    def runner(is_img2img=False):
        return scripts.scripts_img2img if is_img2img else scripts.scripts_txt2img

    @staticmethod
    def ui_value(component):
        """A control's default value as the UI submits it: gradio turns a type="index" Dropdown/Radio's label
        into its index; everything else is passed as its `.value` (no other preprocessing is modelled)."""
        value = getattr(component, "value", None)
        if getattr(component, "type", None) == "index" and isinstance(value, str):
            labels = [c[0] if isinstance(c, tuple) else c for c in getattr(component, "choices", None) or []]
            if value in labels:
                return labels.index(value)
        return value

    def default_script_args(self, is_img2img=False) -> list:
        """What the UI submits by default: the dropdown's index 0, then every control's value."""
        runner = self.runner(is_img2img)
        return [0] + [self.ui_value(component) for component in runner.inputs[1:]]

    def script_args(self, overrides=None, is_img2img=False) -> list:
        """Default UI args with overrides {script title: list (positional from args_from) or dict
        {relative index | control label | control elem_id: value}}."""
        runner = self.runner(is_img2img)
        args = self.default_script_args(is_img2img)
        for title, values in (overrides or {}).items():
            script = runner.script(title)
            if script is None:
                raise KeyError(f"no script titled {title!r}; have {list(runner.title_map)}")
            if isinstance(values, dict):
                for key, value in values.items():
                    if isinstance(key, int):
                        index = key
                    else:
                        index = next(i for i, c in enumerate(script.controls) if key in (getattr(c, "label", None), getattr(c, "elem_id", None)))
                    args[script.args_from + index] = value
            else:
                for i, value in enumerate(values):
                    args[script.args_from + i] = value
        return args

    # --- jobs (the UI path: modules/txt2img.py + call_queue) -------------------------------------------------

    _BUILTIN = {"steps": ("Sampler", 0), "sampler_name": ("Sampler", 1), "scheduler": ("Sampler", 2), "seed": ("Seed", 0)}

    def _make(self, cls, is_img2img, script_args, kwargs, select=None):
        builtin = {key: kwargs.pop(key) for key in list(kwargs) if key in self._BUILTIN}
        overrides = dict(script_args or {})
        for key, value in builtin.items():
            title, index = self._BUILTIN[key]
            overrides.setdefault(title, {})
            if isinstance(overrides[title], dict):
                overrides[title][index] = value
        if cls is processing.StableDiffusionProcessingTxt2Img:
            kwargs.setdefault("hr_upscaler", "Latent")  # the UI's default upscaler
        args = self.script_args(overrides, is_img2img)
        if select is not None:  # the script dropdown: 1 + index among the selectable scripts
            runner = self.runner(is_img2img)
            args[0] = runner.selectable_scripts.index(runner.script(select)) + 1
        p = cls(sd_model=shared.sd_model, **kwargs)
        p.scripts = self.runner(is_img2img)
        p.script_args = tuple(args)  # triggers setup (UI path: is_api False)
        return p

    def make_txt2img(self, script_args=None, select=None, **kwargs):
        """p as the txt2img tab creates it; steps/sampler_name/scheduler/seed go to the built-in Sampler/Seed
        scripts' args (their setup() copies them into p), everything else to the constructor; `select` picks a
        selectable script (e.g. "X/Y/Z plot") in the dropdown so run() hands the job to it."""
        return self._make(processing.StableDiffusionProcessingTxt2Img, False, script_args, kwargs, select)

    def make_img2img(self, script_args=None, select=None, **kwargs):
        return self._make(processing.StableDiffusionProcessingImg2Img, True, script_args, kwargs, select)

    def run(self, p, opts=None) -> processing.Processed:
        """state.begin, `with closing(p)`: selected script's run() or process_images(p), state.end.
        Exceptions propagate (the UI would show them); options in `opts` are set for the job and restored."""
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
        stored = {key: shared.opts.data.get(key) for key in values}
        for key, value in values.items():
            setattr(shared.opts, key, value)
        try:
            yield shared.opts
        finally:
            for key, value in stored.items():
                setattr(shared.opts, key, value)

    # --- API -----------------------------------------------------------------------------------------------

    def api_app(self):
        """If the UI was built (load_extension's default) this is a WebUI started with --api:
        on_app_started(demo, app). Otherwise it is --nowebui: the Api builds the UI, then on_before_ui and
        on_app_started(None, app)."""
        from modules.api.api import create_api
        ui_built = bool(scripts.scripts_txt2img.scripts)
        return create_api(demo=ui.demo if ui_built else None)

    def api_client(self):
        from fastapi.testclient import TestClient
        return TestClient(self.api_app())

    # --- inspection ----------------------------------------------------------------------------------------

    def record_unet(self, model=None) -> UNetCallRecorder:
        return UNetCallRecorder(model)

    @staticmethod
    def xyz_module():
        """The xyz_grid module the way extensions find it."""
        return next(x for x in scripts.scripts_data if x.script_class.__module__ == "xyz_grid.py").module

    @staticmethod
    def reported(substring="") -> list[tuple[str, Any]]:
        return [entry for entry in errors.reports if substring in entry[0]]


standin = WebUI()


@pytest.fixture
def webui():
    """A reset stand-in WebUI; reset again afterwards (callbacks, scripts, opts, model...)."""
    standin.reset()
    try:
        yield standin
    finally:
        standin.reset()
