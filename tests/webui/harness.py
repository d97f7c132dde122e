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

Apps and auth (see WebUI.api_app):
    webui.api_client(api_auth="u:p")                 # --api-auth: /sdapi/* need HTTP Basic; pass auth=("u", "p")
                                                     # (a TestClient kwarg) to send it with every request
    webui.ui_client(gradio_auth="u:p", logged_in=True)  # UI mode: gradio's App (app.auth, app.tokens), logged in
                                                     # through gradio's own /login like a browser (cookies)
    webui.login(client, "u", "p")                    # the same login for an existing client
With the UI built (load_extension's default) the app is gradio's routes.App (WebUI with --api); without it a plain
FastAPI (--nowebui) that has no `auth`/`tokens`.

Send to img2img / inpaint (see WebUI.send_to):
    sent = webui.send_to("img2img", {"InstantID weight": 0.5})   # source values by label / elem_id / component
    sent["img2img_prompt"], sent.arrived("InstantID weight"), sent.script_overrides()
Uploads the way gradio 3.41 hands them over (see WebUI.gradio_files):
    webui.uploaded_files(path, ...)  -> the gr.File value the browser holds (FileData dicts)
    webui.gradio_files(path, ...)    -> what a script gets from gr.File(file_count="multiple"): a list of
                                        tempfile._TemporaryFileWrapper (.name = the uploaded copy, .orig_name)
Paths (see WebUI.set_data_dir):
    webui.set_data_dir(tmp_path)     # --data-dir: data_path, models_path, extensions_dir move; script_path stays
    webui.install_extension()        # the repository linked into extensions_dir, like an installed extension
Checkpoints, refiner, hires checkpoint (see sd_models, sd_samplers_common.apply_refiner):
    ckpt = webui.add_tiny_checkpoints()          # base loaded; ckpt.same_arch (in-place swaps), ckpt.refiner (new object)
    webui.add_checkpoint(unet, "sdxl", "x.safetensors")   # any other checkpoint file, not loaded
    webui.txt2img(refiner_checkpoint=ckpt.refiner.title, refiner_switch_at=0.5, ...)  # UI path: the Refiner accordion
    webui.txt2img(enable_hr=True, hr_checkpoint_name=ckpt.same_arch.name, ...)
Replacement UNets (see sd_unet): webui.activate_unet(ZeroUnet() or ForwardingUnet(other_unet)), deactivate_unet().
Low VRAM, upscalers, repeated processing (see tests/test_webui_standin_jobs.py):
    lv = webui.set_low_vram("medvram")   # or "medvram-sdxl" / "lowvram"; devices.device = torch.device("cpu", 0)
    lv.moves, lv.events_named("vae decode")[0].placement["model"], lv.placement(), lv.device_of(module)
    webui.txt2img(enable_hr=True, hr_upscaler="ESRGAN_4x", ...)   # shared.sd_upscalers: None, Lanczos, Nearest, ESRGAN_4x
    webui.img2img(select="SD upscale", script_args={"SD upscale": {"Tile overlap": 16, "Upscaler": 1}}, ...)
    webui.img2img_batch(input_dir, mask_dir, select=None, to_scale=False, scale_by=1.0, ...)   # the Batch tab
    webui.img2img_tab(mode=2, init_img_with_mask={"image": im, "mask": rgba}, ...)   # modules.img2img.img2img
    webui.load_extension(..., extra_script_classes=[kohya_like.KohyaLikeScript])   # a Kohya Hires.fix-like neighbour
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.webui import WEBUI_ROOT, install

install()

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from modules import errors, paths, paths_internal, processing, script_callbacks, scripts, sd_models, shared  # noqa: E402
from modules import infotext_utils, shared_cmd_options, ui  # noqa: E402
from modules import sd_unet  # noqa: E402

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


# --- checkpoints and replacement UNets (sd_models / sd_unet) ---------------------------------------------------

# A tiny sgm UNet of another architecture than tiny_models' SDXL one (narrower text context and pooled vector,
# two transformer levels of depth 1): what an SDXL *refiner* is to the base -- a different config, so a swap to it
# builds a new model object.
REFINER_UNET_CONFIG = dict(context_dim=48, adm_in_channels=8 + 6 * 8, channel_mult=[1, 2, 2], transformer_depth=[0, 1, 1])


def tiny_refiner_unet(seed: int = 0) -> torch.nn.Module:
    """A tiny fp32 sgm UNetModel (eval, random non-degenerate weights) with REFINER_UNET_CONFIG over tiny_models'
    SDXL arguments; as an "sdxl" checkpoint its model has context_dim 48 and pooled_dim 8."""
    from tests.fixtures import tiny_models as tm
    unet_class = tm._sgm_unet_class()
    with tm._seeded(seed), tm._quiet_logger("imaginairy.modules.sgm.attention"):
        unet = unet_class(**{**tm.A1111_CONFIGS["sdxl"], **REFINER_UNET_CONFIG})
        tm._randomise_(unet)
    return unet.eval()


@dataclasses.dataclass
class TinyCheckpoints:
    """Checkpoints registered by WebUI.add_tiny_checkpoints: `base` (loaded), `same_arch` (the same UNet
    architecture, other weights: swaps load in place) and `refiner` (another architecture: swaps make a new
    model object)."""
    base: sd_models.CheckpointInfo
    same_arch: sd_models.CheckpointInfo
    refiner: sd_models.CheckpointInfo


class ZeroUnet(sd_unet.SdUnet):
    """A replacement UNet that returns zeros (eps 0) and records its calls: (x shape, timesteps, context shape,
    keyword names)."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.activated = self.deactivated = 0

    def forward(self, x, timesteps, context, *args, **kwargs):
        self.calls.append((tuple(x.shape), timesteps, None if context is None else tuple(context.shape), tuple(sorted(kwargs))))
        return self.output(x, timesteps, context, *args, **kwargs)

    def output(self, x, timesteps, context, *args, **kwargs):
        return torch.zeros_like(x)

    def activate(self):
        self.activated += 1

    def deactivate(self):
        self.deactivated += 1


class ForwardingUnet(ZeroUnet):
    """A replacement UNet that runs another UNet module (e.g. a copy with other weights) with that class's own,
    undispatched forward, the way a TensorRT engine computes the UNet elsewhere: forward hooks on `unet` itself do
    not fire, hooks on its blocks do."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def output(self, x, timesteps, context, *args, **kwargs):
        return sd_unet.unpatched_forward(self.unet)(x, timesteps, context, *args, **kwargs)


class FakeUnetOption(sd_unet.SdUnetOption):
    def __init__(self, label, model_name, unet):
        self.label, self.model_name, self.unet = label, model_name, unet

    def create_unet(self):
        return self.unet


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
        self.reset_sd_unet()
        sd_models.reset()
        ui.demo = None
        self.set_data_dir(None)
        self.reset_jobs_state()

    # --- environment ---------------------------------------------------------------------------------------

    def set_models_path(self, path):
        """Point models_path (paths_internal, paths and shared copies) at `path`."""
        path = str(path)
        paths_internal.models_path = paths.models_path = shared.models_path = path

    def set_model(self, unet, kind, name=None, **kwargs):
        """Load `unet` as the current checkpoint (fires on_model_loaded)."""
        return sd_models.load_model(unet, kind, name, **kwargs)

    @staticmethod
    def add_checkpoint(unet, kind="sdxl", name=None, **kwargs) -> sd_models.CheckpointInfo:
        """Register a checkpoint file (a model of `kind` around a copy of `unet`, with its current weights) without
        loading it; refiner_checkpoint / hr_checkpoint_name / override_settings can then name it (its name,
        title or hash)."""
        return sd_models.register_checkpoint(unet, kind, name, **kwargs)

    def add_tiny_checkpoints(self, base_unet=None, *, seed=1) -> TinyCheckpoints:
        """The tiny SDXL base loaded as "tiny-sdxl.safetensors" (base_unet, default tiny_unet("sdxl")), plus
        "tiny-sdxl-other.safetensors" (same architecture, weights of tiny_unet("sdxl", seed)) and
        "tiny-sdxl-refiner.safetensors" (tiny_refiner_unet(seed), another architecture)."""
        from tests.fixtures import tiny_models as tm
        base_unet = tm.tiny_unet("sdxl") if base_unet is None else base_unet
        self.set_model(base_unet, "sdxl", "tiny-sdxl.safetensors")
        same_arch = self.add_checkpoint(tm.tiny_unet("sdxl", seed=seed), "sdxl", "tiny-sdxl-other.safetensors")
        refiner = self.add_checkpoint(tiny_refiner_unet(seed), "sdxl", "tiny-sdxl-refiner.safetensors")
        return TinyCheckpoints(shared.sd_model.sd_checkpoint_info, same_arch, refiner)

    @staticmethod
    def activate_unet(unet=None, *, label="Stand-in TRT", automatic=False) -> sd_unet.SdUnet:
        """Make `unet` (an sd_unet.SdUnet; default a new ZeroUnet) the replacement UNet the A1111 way: an
        SdUnetOption in sd_unet.unet_options, then opts.sd_unet = label (applied at once, as the setting's onchange
        does) -- or, automatic=True, an option named after the loaded checkpoint picked by "Automatic" through
        sd_unet.apply_unet() (what a job start does). Returns sd_unet.current_unet."""
        unet = ZeroUnet() if unet is None else unet
        model_name = shared.sd_model.sd_checkpoint_info.model_name if automatic else None
        sd_unet.unet_options.append(FakeUnetOption(label, model_name, unet))
        if automatic:
            sd_unet.apply_unet()
        else:
            shared.opts.set("sd_unet", label)
        return sd_unet.current_unet

    @staticmethod
    def deactivate_unet():
        """opts.sd_unet = "None" (the replacement's deactivate() runs, the built-in UNet is used again)."""
        shared.opts.set("sd_unet", "None")
        sd_unet.apply_unet("None")

    @staticmethod
    def reset_sd_unet():
        """No replacement UNet and no options (deactivate() of an active one is called; part of reset())."""
        if sd_unet.current_unet is not None:
            sd_unet.current_unet.deactivate()
        sd_unet.current_unet = sd_unet.current_unet_option = None
        sd_unet.unet_options.clear()

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

    _BUILTIN = {"steps": ("Sampler", 0), "sampler_name": ("Sampler", 1), "scheduler": ("Sampler", 2), "seed": ("Seed", 0),
                "refiner_checkpoint": ("Refiner", 1), "refiner_switch_at": ("Refiner", 2)}

    def _make(self, cls, is_img2img, script_args, kwargs, select=None):
        builtin = {key: kwargs.pop(key) for key in list(kwargs) if key in self._BUILTIN}
        overrides = dict(script_args or {})
        for key, value in builtin.items():
            title, index = self._BUILTIN[key]
            overrides.setdefault(title, {})
            if isinstance(overrides[title], dict):
                overrides[title][index] = value
        if builtin.get("refiner_checkpoint") is not None and isinstance(overrides["Refiner"], dict):
            overrides["Refiner"].setdefault(0, True)  # choosing a refiner in the UI means opening its accordion
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

    def api_app(self, *, api_auth=None, gradio_auth=None):
        """If the UI was built (load_extension's default) this is a WebUI started with --api: gradio's App for the
        demo (app.auth from --gradio-auth, app.tokens), the Api on it, then on_app_started(demo, app). Otherwise it
        is --nowebui: a plain FastAPI, the Api builds the UI, then on_before_ui and on_app_started(None, app).
        api_auth / gradio_auth ("user:pass[,user2:pass2]") set --api-auth / --gradio-auth first."""
        from modules.api.api import create_api
        ui_built = bool(scripts.scripts_txt2img.scripts)
        self._set_auth_flags(api_auth, gradio_auth)
        shared.cmd_opts.api, shared.cmd_opts.nowebui = ui_built, not ui_built
        return create_api(demo=ui.demo if ui_built else None)

    @staticmethod
    def _set_auth_flags(api_auth, gradio_auth):
        if api_auth is not None:
            shared.cmd_opts.api_auth = api_auth
        if gradio_auth is not None:
            shared.cmd_opts.gradio_auth = gradio_auth

    @staticmethod
    def _client(app, auth=None, https=False):
        from fastapi.testclient import TestClient
        client = TestClient(app, base_url="https://testserver" if https else "http://testserver")
        if auth is not None:
            client.auth = auth  # httpx: sent as HTTP Basic with every request
        return client

    def api_client(self, *, api_auth=None, gradio_auth=None, auth=None, https=False):
        """A TestClient over api_app(api_auth=..., gradio_auth=...); `auth=(user, password)` sends HTTP Basic
        credentials with every request (otherwise none are sent)."""
        return self._client(self.api_app(api_auth=api_auth, gradio_auth=gradio_auth), auth, https)

    def ui_client(self, *, gradio_auth=None, logged_in=False, api=True, api_auth=None, auth=None, https=False):
        """A TestClient over the UI-mode app, the one a browser session talks to: gradio's routes.App with
        app.auth from --gradio-auth (None without it) and app.tokens; the UI is built first if it was not.
        api: start with --api (the /sdapi routes exist). logged_in: log in as the first --gradio-auth user through
        gradio's POST /login, which records the token in app.tokens and sets the cookies `access-token` (Secure)
        and `access-token-unsecure`; like a browser, the client sends the Secure one only over https (https=True;
        the default base URL is http://testserver). The app is `client.app`."""
        from modules.api.api import create_api, gradio_auth_creds
        if not scripts.scripts_txt2img.scripts:
            self.build_ui()
        self._set_auth_flags(api_auth, gradio_auth)
        shared.cmd_opts.api, shared.cmd_opts.nowebui = api, False
        client = self._client(create_api(demo=ui.demo, api=api), auth, https)
        if logged_in:
            users = gradio_auth_creds()
            if not users:
                raise ValueError("logged_in needs --gradio-auth credentials (gradio_auth='user:pass')")
            response = self.login(client, *users[0])
            assert response.status_code == 200, response.text
        return client

    @staticmethod
    def login(client, username, password):
        """Log `client` in the way gradio's login page does (POST /login, form fields username/password); returns
        the response (200 and the cookies on success, 400 "Incorrect credentials." otherwise)."""
        return client.post("/login", data={"username": username, "password": password})

    # --- "Send to img2img / inpaint" and uploads (gradio 3.41's own pre/postprocessing) ----------------------

    def send_to(self, tabname="img2img", values=None, *, source="txt2img") -> "SentValues":
        """Click the `source` tab's "Send to <tabname>" button (tabname "img2img" or "inpaint"), the way gradio runs
        its click events: every input component's browser value (`values` {label | elem_id | component: value},
        else the component's current `.value`; for a gr.File give local paths, which are uploaded first, see
        uploaded_files) is preprocessed by that component, the handler runs, and every output is postprocessed by
        the destination component. Returns what the destination components received. An exception in that
        processing propagates (in the browser the event fails and no component changes). Only A1111's own fields
        and script fields with *string* names in the binding's list are carried (see infotext_utils)."""
        if ui.demo is None:
            raise RuntimeError("the UI is not built (load_extension(..., build_ui=True) or build_ui())")
        demo = ui.demo
        button_id = f"{source}_send_to_{tabname}"
        binding = next((b for b in infotext_utils.registered_param_bindings if b.paste_button.elem_id == button_id), None)
        if binding is None:
            raise KeyError(f"no button {button_id}")
        values = dict(values or {})
        source_components = self._tab_components(source)
        unknown = [key for key in values if not any(self._matches(c, key) for c in source_components)]
        if unknown:
            raise KeyError(f"no {source} component with label/elem_id {unknown}")

        sent = SentValues(tabname, self.runner(tabname != "txt2img"))
        for fn_index, dependency in enumerate(demo.dependencies):
            if binding.paste_button._id not in dependency["targets"] or demo.fns[fn_index].fn is None:
                continue
            # a component missing from the demo (e.g. from an earlier build) makes gradio raise InvalidBlockError
            inputs = [demo.blocks.get(i) for i in dependency["inputs"]]
            outputs = [demo.blocks.get(i) for i in dependency["outputs"]]
            browser_values = [self._browser_value(component, values) for component in inputs]
            processed = demo.preprocess_data(fn_index, browser_values, state={})
            predictions = demo.fns[fn_index].fn(*processed)
            received = demo.postprocess_data(fn_index, predictions, state={})
            sent.pairs.extend(zip(inputs, outputs))
            sent.received.update(zip(outputs, received))
        return sent

    @staticmethod
    def _matches(component, key):
        return component is key or key in (getattr(component, "label", None), getattr(component, "elem_id", None))

    def _tab_components(self, tabname):
        fields = infotext_utils.paste_fields.get(tabname, {}).get("fields") or []
        return [field[0] for field in fields] + [c for c in self.runner(tabname != "txt2img").inputs if c is not None]

    def _browser_value(self, component, values):
        if component is None:
            return None
        for key, value in values.items():
            if self._matches(component, key):
                if isinstance(component, gr.File) and value is not None:
                    paths = [value] if isinstance(value, (str, os.PathLike)) else list(value)
                    uploaded = self.uploaded_files(*paths)
                    return uploaded[0] if component.file_count == "single" else uploaded
                return value
        return component.value

    @staticmethod
    def uploaded_files(*paths) -> list[dict]:
        """The value a gr.File holds in the browser after the user uploaded these local files (gradio 3.41): the
        /upload route copied each one to <GRADIO_TEMP_DIR or /tmp/gradio>/<random>/<name>, and the frontend keeps
        {"name": that copy, "orig_name": the file's own name, "size", "data": "", "is_file": True}."""
        upload_dir = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")  # App.uploaded_file_dir
        found = []
        for path in map(Path, paths):
            target = upload_dir / secrets.token_hex(20) / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            found.append({"name": str(target), "orig_name": path.name, "size": target.stat().st_size, "data": "", "is_file": True})
        return found

    def gradio_files(self, *paths, component=None):
        """What a script receives for `component` (default: a new gr.File(file_count="multiple")) after the user
        uploaded `paths`: gradio 3.41's File.preprocess of the browser value. For type="file" a list (one item
        for file_count="single") of tempfile._TemporaryFileWrapper: each holds an open handle to an empty temp
        file, `.name` is re-pointed at a copy of the upload (<temp dir>/<sha1 of the file>/<name>) and
        `.orig_name` is the browser value's "name" (the upload's path, not the original file name). No paths:
        None (nothing uploaded)."""
        component = component if component is not None else gr.File(file_count="multiple")
        if not paths:
            return component.preprocess(None)
        return component.preprocess(self.uploaded_files(*paths))

    # --- paths ---------------------------------------------------------------------------------------------

    def set_data_dir(self, data_dir, models_dir=None):
        """As if started with `--data-dir data_dir [--models-dir models_dir]`: cmd_opts and the paths in
        paths_internal, paths and shared (data_path, models_path, extensions_dir; default_output_dir in
        paths_internal). script_path and extensions_builtin_dir do not move. None: back to the defaults (reset()
        does this). Returns the new paths."""
        data_dir = None if data_dir is None else str(data_dir)
        models_dir = None if models_dir is None else str(models_dir)
        values = paths_internal.apply_data_dir(data_dir, models_dir)
        for module in (paths, shared):
            for name in ("data_path", "models_path", "extensions_dir"):
                setattr(module, name, values[name])
        shared.cmd_opts.data_dir = values["data_path"]
        shared.cmd_opts.models_dir = models_dir
        return values

    def install_extension(self, name="sd-webui-instantid", source=EXTENSION_ROOT) -> Path:
        """Link `source` into paths.extensions_dir/<name> (where A1111 keeps installed extensions) and return that
        folder; load its scripts with load_extension(str(folder / "scripts" / "<file>.py")), so scripts.basedir()
        is this folder."""
        folder = Path(paths.extensions_dir) / name
        folder.parent.mkdir(parents=True, exist_ok=True)
        if not folder.exists():
            folder.symlink_to(source, target_is_directory=True)
        return folder

    # --- low VRAM, upscalers, the img2img Batch tab and UI handler (tests/test_webui_standin_jobs.py) ---------

    def reset_jobs_state(self):
        """Part of reset(): low-VRAM hooks and logs removed, devices.device back to cpu, the stand-in upscalers
        in shared.sd_upscalers, Kohya-like block wrappers undone, img2img.last_processing forgotten."""
        from modules import devices, img2img, lowvram
        lowvram.reset()
        devices.use_distinct_device(False)
        shared.parallel_processing_allowed = True
        shared.sd_upscalers[:] = standin_upscalers()
        img2img.last_processing = None
        kohya = sys.modules.get("tests.webui.kohya_like")
        if kohya is not None:
            kohya.restore_all()

    def set_low_vram(self, mode=None, *, distinct_device=True):
        """As if the WebUI had been started with --medvram / --medvram-sdxl / --lowvram (mode "medvram",
        "medvram-sdxl", "lowvram"; None: none of them). distinct_device: devices.device (and shared.device,
        device_esrgan, ...) becomes torch.device("cpu", 0), distinct from devices.cpu, standing for the GPU.
        Every registered checkpoint is then loaded again the A1111 way: lowvram.apply (or .to(devices.device))
        and the empty-prompt cond, which leaves the last model's text encoder on the "GPU". Call it after
        set_model; a model loaded later is set up when a job starts. Returns modules.lowvram: read
        `lowvram.moves` [(name, device)], `lowvram.events` / `events_named(name)` (each with `.placement`
        {component: device} at that moment), `lowvram.placement()` now and `lowvram.device_of(module)`."""
        from modules import devices, lowvram
        lowvram.reset()
        flags = {"medvram": "medvram", "medvram-sdxl": "medvram_sdxl", "lowvram": "lowvram"}
        if mode is not None and mode not in flags:
            raise ValueError(f"mode must be one of {list(flags)} or None, not {mode!r}")
        for flag in flags.values():
            setattr(shared.cmd_opts, flag, flags.get(mode) == flag)
        devices.use_distinct_device(distinct_device)
        current = shared.sd_model
        loaded = list(reversed(getattr(sd_models.model_data, "loaded_sd_models", None) or []))  # oldest first
        models = [m for m in loaded if m is not current] + ([current] if current is not None else [])
        for model in models:
            vars(model).pop("lowvram", None)
            lowvram.ensure_applied(model)
            with torch.no_grad():
                model.get_learned_conditioning([""])  # sd_models.get_empty_cond at load
        return lowvram

    def img2img_batch(self, input_dir, mask_dir="", output_dir="", *, script_args=None, opts=None, select=None,
                      to_scale=False, scale_by=1.0, use_png_info=False, png_info_props=None, png_info_dir=None,
                      **kwargs) -> JobResult:
        """The img2img tab's Batch tab "from dir": a p like the tab makes it (init_images [None], no mask;
        kwargs as for make_img2img), then modules.img2img.process_batch(p, input_dir, output_dir, mask_dir,
        p.script_args, ...) inside state.begin/closing(p); `select` picks a script that then runs per image. `input_dir`
        may also be a list of uploads (objects with .name). The result's processed is the collected Processed
        (an empty one when nothing was made)."""
        from modules import img2img
        kwargs.setdefault("init_images", [None])
        p = self.make_img2img(script_args, select, **kwargs)
        with self.options(**(opts or {})):
            shared.state.begin(job="standin")
            try:
                with contextlib.closing(p):
                    processed = img2img.process_batch(p, input_dir, output_dir, mask_dir, p.script_args, to_scale=to_scale,
                                                      scale_by=scale_by, use_png_info=use_png_info,
                                                      png_info_props=png_info_props, png_info_dir=png_info_dir)
                    if processed is None:
                        processed = processing.Processed(p, [], p.seed, "")
            finally:
                shared.state.end()
        return JobResult(p, processed)

    # the img2img tab's controls in the order modules/img2img.img2img takes them, with the UI's defaults
    IMG2IMG_TAB_DEFAULTS = dict(
        id_task="task(standin)", request=None, mode=0, prompt="", negative_prompt="", prompt_styles=[],
        init_img=None, sketch=None, init_img_with_mask=None, inpaint_color_sketch=None,
        inpaint_color_sketch_orig=None, init_img_inpaint=None, init_mask_inpaint=None, mask_blur=4, mask_alpha=0,
        inpainting_fill=1, n_iter=1, batch_size=1, cfg_scale=7.0, image_cfg_scale=1.5, denoising_strength=0.75,
        selected_scale_tab=0, height=512, width=512, scale_by=1.0, resize_mode=0, inpaint_full_res=0,
        inpaint_full_res_padding=32, inpainting_mask_invert=0, img2img_batch_input_dir="",
        img2img_batch_output_dir="", img2img_batch_inpaint_mask_dir="", override_settings_texts=[],
        img2img_batch_use_png_info=False, img2img_batch_png_info_props=[], img2img_batch_png_info_dir="",
        img2img_batch_source_type="upload", img2img_batch_upload=[],
    )

    def img2img_tab(self, script_args=None, opts=None, select=None, **values) -> JobResult:
        """Generate on the img2img tab: modules.img2img.img2img(...) with the tab's default control values
        overridden by `values` (its parameter names: mode, init_img, init_img_with_mask={"image", "mask"},
        init_img_inpaint / init_mask_inpaint, inpaint_full_res, ...) and the default script args (steps/seed
        go to the Sampler/Seed scripts as in make_img2img). The p it made is returned with the Processed."""
        from modules import img2img
        unknown = set(values) - set(self.IMG2IMG_TAB_DEFAULTS) - set(self._BUILTIN)
        if unknown:
            raise TypeError(f"img2img() has no control {sorted(unknown)}")
        overrides = dict(script_args or {})
        for key in [key for key in values if key in self._BUILTIN]:
            title, index = self._BUILTIN[key]
            overrides.setdefault(title, {})[index] = values.pop(key)
        args = self.script_args(overrides, is_img2img=True)
        if select is not None:
            runner = self.runner(True)
            args[0] = runner.selectable_scripts.index(runner.script(select)) + 1
        fields = {**self.IMG2IMG_TAB_DEFAULTS, **values}
        with self.options(**(opts or {})):
            shared.state.begin(job="standin")
            try:
                img2img.img2img(*fields.values(), *args)
            finally:
                shared.state.end()
        p = img2img.last_processing
        return JobResult(p, img2img.last_processed)

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


class SentValues:
    """What a "Send to" click delivered: `pairs` [(source component, destination component)] in the event's
    order, `received` {destination component: the value gradio sent to the browser (postprocessed)}."""

    def __init__(self, tabname, runner):
        self.tabname, self.runner = tabname, runner
        self.pairs: list[tuple] = []
        self.received: dict = {}

    def component(self, key):
        """The destination component received, by label, elem_id or the component itself (KeyError if none)."""
        found = [c for c in self.received if WebUI._matches(c, key)]
        if not found:
            raise KeyError(f"nothing was sent to a {self.tabname} component {key!r}; received: {self.labels()}")
        return found[0]

    def arrived(self, key) -> bool:
        return any(WebUI._matches(c, key) for c in self.received)

    def __getitem__(self, key):
        """The browser value the destination component now holds."""
        return self.received[self.component(key)]

    def get(self, key, default=None):
        return self[key] if self.arrived(key) else default

    def labels(self) -> list:
        return [getattr(c, "label", None) or getattr(c, "elem_id", None) for c in self.received]

    def script_value(self, key):
        """What a script of the destination tab gets for this component on Generate (its preprocess)."""
        component = self.component(key)
        return component.preprocess(self.received[component])

    def script_overrides(self) -> dict:
        """{script title: {relative index: value}} for the destination scripts' controls that received something,
        preprocessed as on Generate; pass as script_args= to webui.img2img / make_img2img."""
        overrides = {}
        for script in self.runner.scripts:
            for index, control in enumerate(script.controls or []):
                if control in self.received:
                    overrides.setdefault(script.title(), {})[index] = control.preprocess(self.received[control])
        return overrides


class StandInUpscaler:
    """An upscaler the way modules/upscaler.Upscaler.upscale runs one: the target is the size x scale rounded down
    to a multiple of 8; do_upscale (this upscaler's own step) is repeated up to 3 times until the image is at
    least that big (stopping when a pass changes nothing), then LANCZOS to the exact target.
    `model_scale` None: a plain resize by `scale` (Lanczos / Nearest); a number: a model-like upscaler that
    multiplies the size by it per pass on `device` (devices.device_esrgan, read at call time). Every call is
    logged in `calls` and recorded as an "upscale" event on modules.lowvram's timeline."""

    def __init__(self, name, resample=None, model_scale=None):
        self.name, self.resample, self.model_scale = name, resample, model_scale
        self.scale = 1
        self.calls: list[tuple[tuple[int, int], float]] = []  # (input size, scale) per upscale()

    @property
    def device(self):
        from modules import devices
        return devices.device_esrgan if self.model_scale else None

    def do_upscale(self, img, selected_model=None):
        if self.resample is None:  # "None"
            return img
        factor = self.model_scale or self.scale
        return img.resize((int(img.width * factor), int(img.height * factor)), resample=self.resample)

    def upscale(self, img, scale, selected_model=None):
        from PIL import Image
        from modules import lowvram
        self.calls.append((img.size, scale))
        lowvram.record("upscale", upscaler=self.name, scale=scale, device=self.device)
        self.scale = scale
        dest_w, dest_h = int((img.width * scale) // 8 * 8), int((img.height * scale) // 8 * 8)
        for attempt in range(3):
            if img.width >= dest_w and img.height >= dest_h and (attempt > 0 or scale != 1):
                break
            if shared.state.interrupted:
                break
            before = img.size
            img = self.do_upscale(img, selected_model)
            if img.size == before:
                break
        if img.size != (dest_w, dest_h):
            img = img.resize((int(dest_w), int(dest_h)), resample=Image.Resampling.LANCZOS)
        return img


@dataclasses.dataclass
class UpscalerData:
    """modules/upscaler.UpscalerData: what shared.sd_upscalers lists."""
    name: str
    data_path: str | None
    scaler: StandInUpscaler
    scale: int = 4
    model: Any = None


def standin_upscalers() -> list[UpscalerData]:
    """shared.sd_upscalers as a WebUI with one ESRGAN model lists them: None, Lanczos, Nearest first, then the
    model upscalers by name ("ESRGAN_4x": 4x per pass, on devices.device_esrgan)."""
    from PIL import Image
    made = [StandInUpscaler("None"), StandInUpscaler("Lanczos", Image.Resampling.LANCZOS),
            StandInUpscaler("Nearest", Image.Resampling.NEAREST),
            StandInUpscaler("ESRGAN_4x", Image.Resampling.BICUBIC, model_scale=4)]
    return [UpscalerData(u.name, None if u.model_scale is None else os.path.join(paths.models_path, "ESRGAN", "ESRGAN_4x.pth"), u)
            for u in made]


standin = WebUI()


@pytest.fixture
def webui():
    """A reset stand-in WebUI; reset again afterwards (callbacks, scripts, opts, model...)."""
    standin.reset()
    try:
        yield standin
    finally:
        standin.reset()
