"""modules/script_callbacks.py stand-in (A1111 1.10 registry).

Registration is `on_X(callback, *, name=None)`; each callback is stored as ScriptCallback(script=<caller file>,
callback, name=unique name) and run through a cached ordered list. Every run loop catches Exception and only logs
it. `clear_callbacks()` wipes everything (A1111 does this when scripts are (re)loaded).
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Optional

from modules import errors

# Extension folders known to the stand-in loader (modules.scripts.load_script adds to it): used to name callbacks
# "<extension>/<file>/<category>[/<name>]" like A1111's extensions.find_extension.
extension_dirs: dict[str, str] = {}


def _find_extension_name(filename: str) -> str | None:
    filename = os.path.abspath(filename)
    return next((name for folder, name in extension_dirs.items() if filename.startswith(folder + os.sep)), None)


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


# --- parameter objects (attribute names as in A1111) -----------------------------------------------------------

class ImageSaveParams:
    def __init__(self, image, p, filename, pnginfo):
        self.image, self.p = image, p
        self.filename, self.pnginfo = filename, pnginfo


class ExtraNoiseParams:
    def __init__(self, noise, x, xi):
        self.noise, self.x, self.xi = noise, x, xi


class CFGDenoiserParams:
    """What an on_cfg_denoiser callback sees (and may replace) just before the UNet rows are evaluated:
    x / image_cond / sigma are the batched model inputs (cond rows first, then uncond rows), text_cond and
    text_uncond the prompt and negative-prompt embeddings, sampling_step / total_sampling_steps the sampler's
    progress counters, denoiser the CFGDenoiser itself (denoiser.p is the processing object)."""

    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond = text_cond, text_uncond
        self.denoiser = denoiser


class CFGDenoisedParams:
    def __init__(self, x, sampling_step, total_sampling_steps, inner_model):
        self.x, self.inner_model = x, inner_model
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x = x
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps


class UiTrainTabParams:
    def __init__(self, txt2img_preview_params):
        self.txt2img_preview_params = txt2img_preview_params


class ImageGridLoopParams:
    def __init__(self, imgs, cols, rows):
        self.imgs, self.cols, self.rows = imgs, cols, rows


@dataclasses.dataclass
class BeforeTokenCounterParams:
    prompt: str
    steps: int
    styles: list
    is_positive: bool = True


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: Any
    name: str = "unnamed"


def _calling_file():
    """The first file on the call stack outside this module (the script that registers a callback)."""
    outside = next((frame.filename for frame in inspect.stack() if frame.filename != __file__), None)
    return outside or 'unknown file'


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        filename = _calling_file()

    owner = _find_extension_name(filename) or 'base'
    base_name = f"{owner}/{os.path.basename(filename)}/{category}" + (f'/{name}' if name is not None else '')
    taken = {entry.name for entry in callbacks}
    # a repeated name gets -1, -2, ... appended (A1111 gives up after 1000 tries and keeps the last candidate)
    candidate, suffix = base_name, 0
    while candidate in taken and suffix < 1000:
        suffix += 1
        candidate = f'{base_name}-{suffix}'
    callbacks.append(ScriptCallback(filename, fun, candidate))


def sort_callbacks(category, unordered_callbacks, *, enable_user_sort=True):
    """Extension metadata ordering is not modelled; the user's `prioritized_callbacks_<category>` option is."""
    from modules import shared

    result = list(unordered_callbacks)
    if not enable_user_sort:
        return result
    priority = getattr(shared.opts, 'prioritized_callbacks_' + category, None) or []
    # moving each prioritised name to the front, last one first, leaves them in the option's order
    for wanted in reversed(priority):
        found = next((entry for entry in result if entry.name == wanted), None)
        if found is not None:
            result.remove(found)
            result.insert(0, found)
    return result


def ordered_callbacks(category, unordered_callbacks=None, *, enable_user_sort=True):
    source = callback_map.get('callbacks_' + category, []) if unordered_callbacks is None else unordered_callbacks
    if not enable_user_sort:
        return sort_callbacks(category, source, enable_user_sort=False)

    # As in A1111 the cache is only rebuilt when the number of callbacks changes.
    cached = ordered_callbacks_map.get(category)
    if cached is None or len(cached) != len(source):
        cached = ordered_callbacks_map[category] = sort_callbacks(category, source)
    return cached


def enumerate_callbacks():
    prefix = 'callbacks_'
    for key, callbacks in callback_map.items():
        yield (key[len(prefix):] if key.startswith(prefix) else key), callbacks


# every category A1111 1.10 has, in its order; callback_map keys are 'callbacks_' + category
_CATEGORIES = ("app_started", "model_loaded", "ui_tabs", "ui_train_tabs", "ui_settings", "before_image_saved",
               "image_saved", "extra_noise", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_component",
               "after_component", "image_grid", "infotext_pasted", "script_unloaded", "before_ui", "on_reload",
               "list_optimizers", "list_unets", "before_token_counter")
callback_map = {f"callbacks_{category}": [] for category in _CATEGORIES}

ordered_callbacks_map = {}


def clear_callbacks():
    for registered in callback_map.values():
        registered.clear()
    ordered_callbacks_map.clear()


def _run(category, job, *args, reverse=False, **kwargs):
    """Calls every callback of the category in order (or reversed); an Exception is logged and skipped."""
    entries = ordered_callbacks(category)
    for entry in (reversed(entries) if reverse else entries):
        try:
            entry.callback(*args, **kwargs)
        except Exception:
            report_exception(entry, job)


def _collect(category, job, call):
    """Runs `call(entry.callback, collected)` for each callback; returns what they added to `collected`."""
    collected = []
    for entry in ordered_callbacks(category):
        try:
            call(entry.callback, collected)
        except Exception:
            report_exception(entry, job)
    return collected


def app_started_callback(demo: Optional[Any], app):
    _run('app_started', 'app_started_callback', demo, app)


def app_reload_callback():
    _run('on_reload', 'callbacks_on_reload')


def model_loaded_callback(sd_model):
    _run('model_loaded', 'model_loaded_callback', sd_model)


def ui_tabs_callback():
    # each callback returns a list of tabs (or None)
    return _collect('ui_tabs', 'ui_tabs_callback', lambda callback, tabs: tabs.extend(callback() or []))


def ui_train_tabs_callback(params: UiTrainTabParams):
    _run('ui_train_tabs', 'callbacks_ui_train_tabs', params)


def ui_settings_callback():
    _run('ui_settings', 'ui_settings_callback')


def before_image_saved_callback(params: ImageSaveParams):
    _run('before_image_saved', 'before_image_saved_callback', params)


def image_saved_callback(params: ImageSaveParams):
    _run('image_saved', 'image_saved_callback', params)


def extra_noise_callback(params: ExtraNoiseParams):
    _run('extra_noise', 'callbacks_extra_noise', params)


def cfg_denoiser_callback(params: CFGDenoiserParams):
    _run('cfg_denoiser', 'cfg_denoiser_callback', params)


def cfg_denoised_callback(params: CFGDenoisedParams):
    _run('cfg_denoised', 'cfg_denoised_callback', params)


def cfg_after_cfg_callback(params: AfterCFGCallbackParams):
    _run('cfg_after_cfg', 'cfg_after_cfg_callback', params)


def before_component_callback(component, **kwargs):
    _run('before_component', 'before_component_callback', component, **kwargs)


def after_component_callback(component, **kwargs):
    _run('after_component', 'after_component_callback', component, **kwargs)


def image_grid_callback(params: ImageGridLoopParams):
    _run('image_grid', 'image_grid', params)


def infotext_pasted_callback(infotext: str, params: dict[str, Any]):
    _run('infotext_pasted', 'infotext_pasted', infotext, params)


def script_unloaded_callback():
    _run('script_unloaded', 'script_unloaded', reverse=True)


def before_ui_callback():
    _run('before_ui', 'before_ui', reverse=True)


def list_optimizers_callback():
    # each callback appends to the list it is given
    return _collect('list_optimizers', 'list_optimizers', lambda callback, found: callback(found))


def list_unets_callback():
    return _collect('list_unets', 'list_unets', lambda callback, found: callback(found))


def before_token_counter_callback(params: BeforeTokenCounterParams):
    _run('before_token_counter', 'before_token_counter', params)


def _remove_where(predicate):
    """Drops the matching entries from every registered list and every cached ordered list."""
    for registry in (*callback_map.values(), *ordered_callbacks_map.values()):
        registry[:] = [entry for entry in registry if not predicate(entry)]


def remove_current_script_callbacks():
    filename = _calling_file()
    if filename != 'unknown file':
        _remove_where(lambda entry: entry.script == filename)


def remove_callbacks_for_function(callback_func):
    _remove_where(lambda entry: entry.callback == callback_func)


def _register(category, callback, name):
    add_callback(callback_map['callbacks_' + category], callback, name=name, category=category)


def on_app_started(callback, *, name=None):
    """callback(demo: gr.Blocks | None, app: FastAPI)"""
    _register('app_started', callback, name)


def on_before_reload(callback, *, name=None):
    _register('on_reload', callback, name)


def on_model_loaded(callback, *, name=None):
    """callback(sd_model)"""
    _register('model_loaded', callback, name)


def on_ui_tabs(callback, *, name=None):
    _register('ui_tabs', callback, name)


def on_ui_train_tabs(callback, *, name=None):
    _register('ui_train_tabs', callback, name)


def on_ui_settings(callback, *, name=None):
    _register('ui_settings', callback, name)


def on_before_image_saved(callback, *, name=None):
    _register('before_image_saved', callback, name)


def on_image_saved(callback, *, name=None):
    _register('image_saved', callback, name)


def on_extra_noise(callback, *, name=None):
    _register('extra_noise', callback, name)


def on_cfg_denoiser(callback, *, name=None):
    """callback(params: CFGDenoiserParams), called in CFGDenoiser.forward after the inner model inputs are built."""
    _register('cfg_denoiser', callback, name)


def on_cfg_denoised(callback, *, name=None):
    _register('cfg_denoised', callback, name)


def on_cfg_after_cfg(callback, *, name=None):
    _register('cfg_after_cfg', callback, name)


def on_before_component(callback, *, name=None):
    _register('before_component', callback, name)


def on_after_component(callback, *, name=None):
    _register('after_component', callback, name)


def on_image_grid(callback, *, name=None):
    _register('image_grid', callback, name)


def on_infotext_pasted(callback, *, name=None):
    """callback(infotext: str, params: dict)"""
    _register('infotext_pasted', callback, name)


def on_script_unloaded(callback, *, name=None):
    _register('script_unloaded', callback, name)


def on_before_ui(callback, *, name=None):
    _register('before_ui', callback, name)


def on_list_optimizers(callback, *, name=None):
    _register('list_optimizers', callback, name)


def on_list_unets(callback, *, name=None):
    _register('list_unets', callback, name)


def on_before_token_counter(callback, *, name=None):
    _register('before_token_counter', callback, name)
