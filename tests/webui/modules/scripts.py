"""modules/scripts.py stand-in (A1111 1.10): Script, AlwaysVisible, ScriptRunner and the loader.

Faithful parts: hook signatures and defaults; `args_from/args_to` assigned while the UI is built (index 0 is the
script dropdown); every runner hook slices `p.script_args[script.args_from:script.args_to]` and wraps the call in
try/except Exception that only logs through `errors.report`; `ordered_scripts` skips scripts whose class does not
override the hook; `setup` honours `setup_for_ui_only`; `run()` of a selectable script is not wrapped.

Stand-in helpers (not in A1111): `load_script(path, basedir=None)` imports one extension script the way
`load_scripts` does and registers its Script subclasses in `scripts_data`; `load_scripts(paths)` clears everything
first (callbacks included) and loads the xyz_grid stand-in plus the given files; `create_ui(is_img2img)` builds one
tab's script UI inside a gr.Blocks (see modules/ui.py for both tabs).
"""
from __future__ import annotations

import inspect
import os
import re
import string
import sys
from collections import namedtuple
from dataclasses import dataclass

import gradio as gr

from modules import errors, paths, script_callbacks, script_loading, shared

AlwaysVisible = object()


# --- the argument objects handed to the hooks ------------------------------------------------------------------

class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent, self.init_latent, self.blended_latent = current_latent, init_latent, blended_latent
        self.mask, self.nmask = mask, nmask
        # denoiser/sigma are given for the per-step blends; the blend after sampling has neither
        self.denoiser, self.sigma = denoiser, sigma
        self.is_final_blend = denoiser is None


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image):
        self.image = image


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index = index
        self.mask_for_overlay, self.overlay_image = mask_for_overlay, overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


@dataclass
class OnComponent:
    component: gr.blocks.Block


_ID_CHARS = frozenset(string.ascii_lowercase + string.digits + "_")


class Script:
    name = None
    """script's internal name derived from title (set only if ui() returned controls)"""
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None
    paste_field_names = None
    api_info = None
    on_before_component_elem_id = None
    on_after_component_elem_id = None
    setup_for_ui_only = False
    controls = None

    def title(self):
        raise NotImplementedError()

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        return True

    def run(self, p, *args):
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def before_process_batch(self, p, *args, **kwargs):
        pass

    def after_extra_networks_activate(self, p, *args, **kwargs):
        pass

    def process_before_every_sampling(self, p, *args, **kwargs):
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba: MaskBlendArgs, *args):
        pass

    def post_sample(self, p, ps: PostSampleArgs, *args):
        pass

    def postprocess_image(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs, *args):
        pass

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def _queue_component_callback(self, attr, elem_id, callback):
        # queued per script; ScriptRunner.apply_on_before_component_callbacks moves them into its elem_id maps
        queued = getattr(self, attr) or []
        queued.append((elem_id, callback))
        setattr(self, attr, queued)

    def on_before_component(self, callback, *, elem_id):
        self._queue_component_callback("on_before_component_elem_id", elem_id, callback)

    def on_after_component(self, callback, *, elem_id):
        self._queue_component_callback("on_after_component_elem_id", elem_id, callback)

    def describe(self):
        return ""

    def _tab_prefix(self):
        """'txt2img_'/'img2img_' for a script shown the same way on both tabs (its ids would clash), else ''."""
        if self.show(True) != self.show(False):
            return ""
        return ("img2img" if self.is_img2img else "txt2img") + "_"

    def elem_id(self, item_id):
        spaced = re.sub(r'\s', '_', self.title().lower())
        slug = "".join(ch for ch in spaced if ch in _ID_CHARS)
        return f"script_{self._tab_prefix()}{slug}_{item_id}"

    def before_hr(self, p, *args):
        pass


class ScriptBuiltinUI(Script):
    setup_for_ui_only = True

    def elem_id(self, item_id):
        return self._tab_prefix() + item_id

    def show(self, is_img2img):
        return AlwaysVisible


current_basedir = paths.script_path


def basedir():
    """The base directory of the script being imported (the extension's folder), else the webui root."""
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])

scripts_data = []
postprocessing_scripts_data = []

XYZ_GRID_PATH = os.path.join(paths.script_path, "scripts", "xyz_grid.py")


def _register_scripts_from_module(module, scriptfile: ScriptFile):
    found = [obj for obj in vars(module).values() if inspect.isclass(obj) and issubclass(obj, Script)]
    scripts_data.extend(ScriptClassData(cls, scriptfile.path, scriptfile.basedir, module) for cls in found)


def load_script(path, basedir=None):
    """Stand-in helper: import one script file like A1111's load_scripts does (its extension base dir first on
    sys.path while importing, `scripts.basedir()` returning that dir) and register its Script subclasses.
    basedir defaults to the parent of the file's `scripts/` folder. Returns the module (or None on error,
    which is reported like A1111 does)."""
    global current_basedir
    path = os.path.abspath(path)
    home = os.path.abspath(basedir if basedir is not None else os.path.dirname(os.path.dirname(path)))
    if home != os.path.abspath(paths.script_path):
        script_callbacks.extension_dirs[home] = os.path.basename(home)

    scriptfile = ScriptFile(home, os.path.basename(path), path)
    saved_sys_path = sys.path
    module = None
    try:
        if home != paths.script_path:
            sys.path = [home, *saved_sys_path]
        current_basedir = home
        module = script_loading.load_module(path)
        _register_scripts_from_module(module, scriptfile)
    except Exception:
        errors.report(f"Error loading script: {scriptfile.filename}", exc_info=True)
    finally:
        sys.path = saved_sys_path
        current_basedir = paths.script_path
    return module


def load_scripts(extension_script_paths=(), *, include_xyz=True, extra_script_classes=()):
    """Stand-in for A1111's load_scripts: clears scripts_data and all script callbacks, loads the root scripts
    (the stand-ins in scripts/, sorted by file name like A1111's: loopback, outpainting_mk_2,
    poor_mans_outpainting, sd_upscale, xyz_grid; include_xyz=False skips them all), then the given extension
    scripts (and `extra_script_classes`, registered as if they came from an extension), then the built-in
    processing scripts (Sampler, Seed), and creates fresh runners."""
    global scripts_txt2img, scripts_img2img
    script_callbacks.clear_callbacks()
    for registry in (scripts_data, postprocessing_scripts_data):
        registry.clear()

    if include_xyz:
        root_dir = os.path.dirname(XYZ_GRID_PATH)
        for filename in sorted(name for name in os.listdir(root_dir) if name.endswith(".py")):
            load_script(os.path.join(root_dir, filename), basedir=paths.script_path)
    for path in extension_script_paths:
        load_script(path)
    for script_class in extra_script_classes:  # Script classes defined in test helpers, as if from an extension
        module = sys.modules[script_class.__module__]
        path = os.path.abspath(inspect.getfile(script_class))
        scripts_data.append(ScriptClassData(script_class, path, os.path.dirname(path), module))
    # A1111 lists modules/processing_scripts after the extensions (sorted by name): sampler.py, seed.py.
    builtin_dir = os.path.join(paths.script_path, "modules", "processing_scripts")
    for filename in sorted(name for name in os.listdir(builtin_dir) if name.endswith(".py")):
        load_script(os.path.join(builtin_dir, filename), basedir=paths.script_path)

    scripts_txt2img, scripts_img2img = ScriptRunner(), ScriptRunner()


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    """func(*args, **kwargs); an Exception is logged (with the file and function name) and `default` returned."""
    try:
        result = func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
        result = default
    return result


def _describe_control(api_models, control):
    """A gradio control -> the ScriptArg the API lists for it."""
    described = api_models.ScriptArg(label=control.label or "")
    for attr in ("value", "minimum", "maximum", "step"):
        found = getattr(control, attr, None)
        if found is not None:
            setattr(described, attr, found)
    choices = getattr(control, 'choices', None)
    if choices is not None:  # gradio 3.41+ mixes plain strings with (label, value) tuples
        described.choices = [choice[0] if isinstance(choice, tuple) else choice for choice in choices]
    return described


class ScriptRunner:
    # A1111 logs these two under another hook's name.
    _logged_as = {'on_mask_blend': 'post_sample', 'postprocess_maskoverlay': 'postprocess_image'}

    def __init__(self):
        self.scripts, self.selectable_scripts, self.alwayson_scripts = [], [], []
        self.titles, self.title_map = [], {}
        self.infotext_fields, self.paste_field_names = [], []
        self.inputs = [None]  # slot 0 is the script dropdown
        self.callback_map = {}  # 'script_<hook>' -> (number of candidate scripts, ordered callbacks)
        # elem_id -> [(callback, script)], collected from Script.on_before_component / on_after_component
        self.on_before_component_elem_id, self.on_after_component_elem_id = {}, {}

    def initialize_scripts(self, is_img2img):
        for bucket in (self.scripts, self.alwayson_scripts, self.selectable_scripts):
            bucket.clear()

        tab = "img2img" if is_img2img else "txt2img"
        for data in scripts_data:
            try:
                instance = data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {data.module}: ", exc_info=True)
                continue
            instance.filename = data.path
            instance.is_img2img, instance.is_txt2img, instance.tabname = is_img2img, not is_img2img, tab

            visibility = instance.show(is_img2img)
            if visibility == AlwaysVisible:
                instance.alwayson = True
                self.alwayson_scripts.append(instance)
            elif visibility:
                self.selectable_scripts.append(instance)
            else:
                continue  # not shown on this tab at all
            self.scripts.append(instance)

        self.apply_on_before_component_callbacks()
        self.callback_map.clear()

    def apply_on_before_component_callbacks(self):
        targets = (("on_before_component_elem_id", self.on_before_component_elem_id),
                   ("on_after_component_elem_id", self.on_after_component_elem_id))
        for owner in self.scripts:
            for attr, by_elem_id in targets:
                queued = getattr(owner, attr) or []
                for elem_id, callback in queued:
                    by_elem_id.setdefault(elem_id, []).append((callback, owner))
                queued.clear()

    def create_script_ui(self, script):
        script.args_from = script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    def create_script_ui_inner(self, script):
        import modules.api.models as api_models

        controls = script.controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        if controls is None:
            return

        title = wrap_call(script.title, script.filename, "title", default=script.filename)
        script.name = title.lower()
        source = os.path.basename(script.filename)
        for control in controls:
            control.custom_script_source = source
        described = [_describe_control(api_models, control) for control in controls]
        script.api_info = api_models.ScriptInfo(name=script.name, is_img2img=script.is_img2img, is_alwayson=script.alwayson, args=described)

        self.infotext_fields.extend(script.infotext_fields or [])
        self.paste_field_names.extend(script.paste_field_names or [])
        self.inputs.extend(controls)
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        for script in self.alwayson_scripts if scriptlist is None else scriptlist:
            elsewhere = script.alwayson and script.section != section
            if elsewhere:
                continue
            if not script.create_group:
                self.create_script_ui(script)
                continue
            group = gr.Group(visible=script.alwayson)  # hidden for selectable scripts until chosen
            with group:
                self.create_script_ui(script)
            script.group = group

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        def title_of(script):
            return wrap_call(script.title, script.filename, "title")

        self.title_map = {(title_of(script) or script.filename).lower(): script for script in self.scripts}
        self.titles = [title_of(script) or f"{script.filename} [error]" for script in self.selectable_scripts]

        self.setup_ui_for_section(None)
        dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=["None", *self.titles], value="None", type="index")
        self.inputs[0] = dropdown
        self.setup_ui_for_section(None, self.selectable_scripts)

        def select_script(script_index):
            chosen = self.selectable_scripts[script_index - 1] if (script_index or 0) > 0 else None
            return [gr.update(visible=candidate is chosen) for candidate in self.selectable_scripts]

        dropdown.change(fn=select_script, inputs=[dropdown], outputs=[s.group for s in self.selectable_scripts])
        self.infotext_fields.append((dropdown, lambda params: gr.update(value=params.get('Script', 'None'))))
        self.apply_on_before_component_callbacks()
        return self.inputs

    def run(self, p, *args):
        chosen = args[0]  # 1-based index into selectable_scripts; 0 / None: no script
        if chosen == 0 or chosen is None:
            return None
        script = self.selectable_scripts[chosen - 1]
        if script is None:
            return None
        result = script.run(p, *args[script.args_from:script.args_to])
        shared.total_tqdm.clear()
        return result

    def list_scripts_for_method(self, method_name):
        # the component hooks go to every script, the processing hooks to the always-on ones only
        component_hook = method_name in ('before_component', 'after_component')
        return self.scripts if component_hook else self.alwayson_scripts

    def create_ordered_callbacks_list(self, method_name, *, enable_user_sort=True):
        category = f'script_{method_name}'
        inherited = getattr(Script, method_name, None)
        entries = []
        for script in self.list_scripts_for_method(method_name):
            if getattr(type(script), method_name, None) == inherited:
                continue  # the script does not override this hook
            script_callbacks.add_callback(entries, script, category=category, name=type(script).__name__, filename=script.filename)
        return script_callbacks.sort_callbacks(category, entries, enable_user_sort=enable_user_sort)

    def ordered_callbacks(self, method_name, *, enable_user_sort=True):
        """Cached per hook; rebuilt whenever the number of candidate scripts changed."""
        category = f'script_{method_name}'
        candidates = len(self.list_scripts_for_method(method_name))
        cached_for, cached = self.callback_map.get(category, (-1, None))
        if cached is not None and cached_for == candidates:
            return cached
        fresh = self.create_ordered_callbacks_list(method_name, enable_user_sort=enable_user_sort)
        self.callback_map[category] = candidates, fresh
        return fresh

    def ordered_scripts(self, method_name):
        return [entry.callback for entry in self.ordered_callbacks(method_name)]

    def _run_hook(self, method_name, p, *leading, _select=None, **kwargs):
        """script.<hook>(p, *leading, *this script's slice of p.script_args, **kwargs) for every script that
        overrides the hook (and passes `_select`); any Exception is only logged."""
        logged_name = self._logged_as.get(method_name, method_name)
        for script in self.ordered_scripts(method_name):
            if _select is not None and not _select(script):
                continue
            try:
                own_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *leading, *own_args, **kwargs)
            except Exception:
                errors.report(f"Error running {logged_name}: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._run_hook('before_process', p)

    def process(self, p):
        self._run_hook('process', p)

    def process_before_every_sampling(self, p, **kwargs):
        self._run_hook('process_before_every_sampling', p, **kwargs)

    def before_process_batch(self, p, **kwargs):
        self._run_hook('before_process_batch', p, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._run_hook('after_extra_networks_activate', p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._run_hook('process_batch', p, **kwargs)

    def postprocess(self, p, processed):
        self._run_hook('postprocess', p, processed)

    def postprocess_batch(self, p, images, **kwargs):
        self._run_hook('postprocess_batch', p, images=images, **kwargs)

    def postprocess_batch_list(self, p, pp: PostprocessBatchListArgs, **kwargs):
        self._run_hook('postprocess_batch_list', p, pp, **kwargs)

    def post_sample(self, p, ps: PostSampleArgs):
        self._run_hook('post_sample', p, ps)

    def on_mask_blend(self, p, mba: MaskBlendArgs):
        self._run_hook('on_mask_blend', p, mba)

    def postprocess_image(self, p, pp: PostprocessImageArgs):
        self._run_hook('postprocess_image', p, pp)

    def postprocess_maskoverlay(self, p, ppmo: PostProcessMaskOverlayArgs):
        self._run_hook('postprocess_maskoverlay', p, ppmo)

    def postprocess_image_after_composite(self, p, pp: PostprocessImageArgs):
        self._run_hook('postprocess_image_after_composite', p, pp)

    def _notify_component(self, when, component, elem_id, kwargs):
        """The on_<when>_component callbacks registered for this elem_id, then every script's <when>_component."""
        registry = self.on_before_component_elem_id if when == "before" else self.on_after_component_elem_id
        for callback, owner in registry.get(elem_id, []):
            try:
                callback(OnComponent(component=component))
            except Exception:
                errors.report(f"Error running on_{when}_component: {owner.filename}", exc_info=True)
        hook = f"{when}_component"
        for owner in self.ordered_scripts(hook):
            try:
                getattr(owner, hook)(component, **kwargs)
            except Exception:
                errors.report(f"Error running {hook}: {owner.filename}", exc_info=True)

    def before_component(self, component, **kwargs):
        self._notify_component("before", component, kwargs.get("elem_id"), kwargs)

    def after_component(self, component, **kwargs):
        self._notify_component("after", component, component.elem_id, kwargs)

    def script(self, title):
        return self.title_map.get(title.lower())

    def before_hr(self, p):
        self._run_hook('before_hr', p)

    def setup_scrips(self, p, *, is_ui=True):
        # (sic: A1111's name) API requests skip the scripts whose setup is for the UI only
        self._run_hook('setup', p, _select=lambda script: is_ui or not script.setup_for_ui_only)

    def set_named_arg(self, args, script_name, arg_elem_id, value, fuzzy=False):
        script = next((s for s in self.scripts if s.name == script_name), None)
        if script is None:
            raise RuntimeError(f"script {script_name} not found")

        def wanted(control):
            return arg_elem_id in control.elem_id if fuzzy else control.elem_id == arg_elem_id

        position = next((i for i, control in enumerate(script.controls) if wanted(control)), None)
        if position is None:
            raise RuntimeError(f"arg_elem_id {arg_elem_id} not found in script {script_name}")
        index = script.args_from + position
        if isinstance(args, list):
            args[index] = value
            return args
        if isinstance(args, tuple):
            return (*args[:index], value, *args[index + 1:])
        raise RuntimeError(f"args is not a list or tuple, but {type(args)}")


scripts_txt2img: ScriptRunner = ScriptRunner()
scripts_img2img: ScriptRunner = ScriptRunner()
scripts_current: ScriptRunner = None

# Built-in UI categories in their default order (shared_items.ui_reorder_categories_builtin_items).
ui_reorder_categories_builtin_items = ["prompt", "image", "inpaint", "sampler", "accordions", "checkboxes",
                                       "dimensions", "cfg", "denoising", "seed", "batch", "override_settings"]


def ui_reorder_categories():
    yield from ui_reorder_categories_builtin_items
    extra_sections = {}
    for script in scripts_txt2img.scripts + scripts_img2img.scripts:
        if isinstance(script.section, str) and script.section not in ui_reorder_categories_builtin_items:
            extra_sections[script.section] = 1
    yield from extra_sections
    yield "scripts"


def create_ui(is_img2img):
    """Stand-in helper: what modules/ui.py does for one tab's scripts: initialize the runner, then build every
    section in UI order inside a gr.Blocks (alwayson scripts of builtin sections such as "accordions" come before
    the "scripts" block, whose setup_ui() places the dropdown at inputs[0]). Returns (blocks, runner)."""
    runner = scripts_img2img if is_img2img else scripts_txt2img
    runner.initialize_scripts(is_img2img)
    with gr.Blocks() as blocks:
        runner.prepare_ui()
        for category in ui_reorder_categories():
            if category == "scripts":
                runner.setup_ui()
            else:
                runner.setup_ui_for_section(category)
    return blocks, runner
