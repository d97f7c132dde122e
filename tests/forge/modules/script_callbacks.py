"""modules/script_callbacks.py stand-in (A1111 1.10's, which Forge keeps): `on_<event>(callback, *, name=None)` registers a
callback (the name defaults to the registering file; a second registration under the same name is another entry, as in
A1111); the `<event>_callback(...)` invokers call them in order and catch every exception with errors.report, so a failing
callback never stops generation. CFGDenoiserParams carries x, image_cond, sigma, sampling_step, total_sampling_steps,
text_cond, text_uncond, denoiser (Forge calls it per step, modules/sd_samplers_cfg_denoiser.py:183). `clear_callbacks()`
empties every list (done by scripts.load_scripts). `add_callback` / `sort_callbacks` serve ScriptRunner's ordering."""
import dataclasses
import inspect
import os
from typing import Any, Callable

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Callable
    name: str = None


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.sampling_step, self.total_sampling_steps, self.inner_model = x, sampling_step, total_sampling_steps, inner_model


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise, self.x, self.xi = noise, x, xi


class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image, self.p, self.filename, self.pnginfo = image, p, filename, pnginfo


EVENTS = ("app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved", "image_saved",
          "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component", "after_component",
          "image_grid", "infotext_pasted", "script_unloaded", "before_ui", "list_optimizers", "list_unets", "before_token_counter")
callback_map: dict[str, list[ScriptCallback]] = {f"callbacks_{event}": [] for event in EVENTS}
ordered_callbacks_map: dict[str, list] = {}


def _caller_file():
    for frame in inspect.stack()[2:]:
        if frame.filename != __file__:
            return frame.filename
    return "unknown"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    filename = filename or _caller_file()
    unique = name or f"{os.path.basename(filename)}/{category}"
    callbacks.append(ScriptCallback(filename, fun, unique))


def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    return list(unordered_callbacks)


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()
    ordered_callbacks_map.clear()


def remove_current_script_callbacks():
    filename = _caller_file()
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c.script != filename]


def remove_callbacks_for_function(callback_func):
    for callbacks in callback_map.values():
        callbacks[:] = [c for c in callbacks if c.callback != callback_func]


def _register(event, callback, name):
    add_callback(callback_map[f"callbacks_{event}"], callback, name=name, category=event)


def _run(event, *args) -> list[Any]:
    results = []
    for c in list(callback_map[f"callbacks_{event}"]):
        try:
            results.append(c.callback(*args))
        except Exception:
            errors.report(f"Error executing callback {event}_callback for {c.script}", exc_info=True)
    return results


def app_started_callback(demo, app):
    _run("app_started", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", sd_model)


def ui_tabs_callback():
    return [tab for result in _run("ui_tabs") for tab in (result or [])]


def ui_settings_callback():
    _run("ui_settings")


def before_image_saved_callback(params):
    _run("before_image_saved", params)


def image_saved_callback(params):
    _run("image_saved", params)


def extra_noise_callback(params):
    _run("extra_noise", params)


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def cfg_denoised_callback(params):
    _run("cfg_denoised", params)


def cfg_after_cfg_callback(params):
    _run("cfg_after_cfg", params)


def before_component_callback(component, **kwargs):
    _run_kw("before_component", component, kwargs)


def after_component_callback(component, **kwargs):
    _run_kw("after_component", component, kwargs)


def _run_kw(event, component, kwargs):
    for c in list(callback_map[f"callbacks_{event}"]):
        try:
            c.callback(component, **kwargs)
        except Exception:
            errors.report(f"Error executing callback {event}_callback for {c.script}", exc_info=True)


def infotext_pasted_callback(infotext: str, params: dict):
    _run("infotext_pasted", infotext, params)


def script_unloaded_callback():
    _run("script_unloaded")


def before_ui_callback():
    _run("before_ui")


def on_app_started(callback, *, name=None):
    _register("app_started", callback, name)


def on_model_loaded(callback, *, name=None):
    _register("model_loaded", callback, name)


def on_ui_tabs(callback, *, name=None):
    _register("ui_tabs", callback, name)


def on_ui_train_tabs(callback, *, name=None):
    _register("ui_train_tabs", callback, name)


def on_ui_settings(callback, *, name=None):
    _register("ui_settings", callback, name)


def on_before_image_saved(callback, *, name=None):
    _register("before_image_saved", callback, name)


def on_image_saved(callback, *, name=None):
    _register("image_saved", callback, name)


def on_extra_noise(callback, *, name=None):
    _register("extra_noise", callback, name)


def on_cfg_denoiser(callback, *, name=None):
    _register("cfg_denoiser", callback, name)


def on_cfg_denoised(callback, *, name=None):
    _register("cfg_denoised", callback, name)


def on_cfg_after_cfg(callback, *, name=None):
    _register("cfg_after_cfg", callback, name)


def on_before_component(callback, *, name=None):
    _register("before_component", callback, name)


def on_after_component(callback, *, name=None):
    _register("after_component", callback, name)


def on_infotext_pasted(callback, *, name=None):
    _register("infotext_pasted", callback, name)


def on_script_unloaded(callback, *, name=None):
    _register("script_unloaded", callback, name)


def on_before_ui(callback, *, name=None):
    _register("before_ui", callback, name)
