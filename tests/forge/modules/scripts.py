"""modules/scripts.py stand-in: Forge's Script API and ScriptRunner (modules/scripts.py @ dfdcbab6).

Modelled: Script with every hook Forge calls (setup, before_process, process, before_process_batch,
after_extra_networks_activate, process_batch, process_before_every_sampling(p, *args, **kwargs) -- kwargs x, noise, c, uc --,
before_hr, post_sample, on_mask_blend, postprocess_batch, postprocess_batch_list, postprocess_image, postprocess_maskoverlay,
postprocess_image_after_composite, postprocess, before_process_init_images), AlwaysVisible, elem_id, basedir();
`load_scripts(paths, builtin_classes, extra_classes)` loads script files the A1111 way (module named after the file,
its directory's basedir as current_basedir, errors reported) after clearing the callbacks -- built-in classes first, as
extensions-builtin load before extensions/; `initialize_scripts` instantiates in load order (AlwaysVisible scripts in
alwayson_scripts); `setup_ui` / `create_script_ui` assign args_from / args_to (script index 0 is the dropdown) and build the
api_info; every hook runs per script inside try/except -> errors.report and generation continues. Hook order: the
methods that the script class overrides, in alwayson order -- except process_before_every_sampling, which Forge defines twice
in ScriptRunner: the second definition wins, iterating ALL alwayson_scripts in load order (modules/scripts.py:888).
`run(p, *args)` hands the job to the selected script. Not modelled: script sorting settings, dependency ordering from
metadata.ini, postprocessing scripts, reload_sources.
"""
import inspect
import os
import sys
from collections import namedtuple

import gradio as gr

from modules import errors, paths, script_callbacks, script_loading

AlwaysVisible = object()


class MaskBlendArgs:
    def __init__(self, current_latent, nmask, init_latent, mask, blended_latent, denoiser=None, sigma=None):
        self.current_latent, self.nmask, self.init_latent, self.mask, self.blended_latent = current_latent, nmask, init_latent, mask, blended_latent
        self.denoiser, self.is_final_blend, self.sigma = denoiser, denoiser is None, sigma


class PostSampleArgs:
    def __init__(self, samples):
        self.samples = samples


class PostprocessImageArgs:
    def __init__(self, image, index=None):
        self.image, self.index = image, index


class PostProcessMaskOverlayArgs:
    def __init__(self, index, mask_for_overlay, overlay_image):
        self.index, self.mask_for_overlay, self.overlay_image = index, mask_for_overlay, overlay_image


class PostprocessBatchListArgs:
    def __init__(self, images):
        self.images = images


class Script:
    name = None
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
    sorting_priority = 0

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
        """Similar to process(), called before every sampling. If you use high-res fix, this will be called two times."""
        pass

    def process_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch(self, p, *args, **kwargs):
        pass

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        pass

    def on_mask_blend(self, p, mba, *args):
        pass

    def post_sample(self, p, ps, *args):
        pass

    def postprocess_image(self, p, pp, *args):
        pass

    def postprocess_maskoverlay(self, p, ppmo, *args):
        pass

    def postprocess_image_after_composite(self, p, pp, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def before_component(self, component, **kwargs):
        pass

    def after_component(self, component, **kwargs):
        pass

    def on_before_component(self, callback, *, elem_id):
        if self.on_before_component_elem_id is None:
            self.on_before_component_elem_id = []
        self.on_before_component_elem_id.append((elem_id, callback))

    def on_after_component(self, callback, *, elem_id):
        if self.on_after_component_elem_id is None:
            self.on_after_component_elem_id = []
        self.on_after_component_elem_id.append((elem_id, callback))

    def describe(self):
        return ""

    def elem_id(self, item_id):
        import re
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"

    def before_hr(self, p, *args):
        pass


current_basedir = paths.script_path


def basedir():
    return current_basedir


ScriptFile = namedtuple("ScriptFile", ["basedir", "filename", "path"])
ScriptClassData = namedtuple("ScriptClassData", ["script_class", "path", "basedir", "module"])
scripts_data: list = []
postprocessing_scripts_data: list = []


def load_scripts(script_paths=(), builtin_classes=(), extra_classes=()):
    """Forge's startup load: callbacks cleared, then built-in script classes (extensions-builtin), the given script files
    (each from its folder's parent as basedir, e.g. the extension root), then extra classes; new runners."""
    global current_basedir, scripts_txt2img, scripts_img2img
    scripts_data.clear()
    script_callbacks.clear_callbacks()
    for cls in builtin_classes:
        scripts_data.append(ScriptClassData(cls, inspect.getfile(cls), paths.script_path, sys.modules[cls.__module__]))
    for path in script_paths:
        path = os.path.abspath(str(path))
        base = os.path.dirname(os.path.dirname(path))
        syspath = sys.path
        try:
            if base not in sys.path:
                sys.path = [base] + sys.path
            current_basedir = base
            module = script_loading.load_module(path)
            for obj in module.__dict__.values():
                if inspect.isclass(obj) and issubclass(obj, Script) and obj is not Script:
                    scripts_data.append(ScriptClassData(obj, path, base, module))
        except Exception:
            errors.report(f"Error loading script: {os.path.basename(path)}", exc_info=True)
        finally:
            sys.path = syspath
            current_basedir = paths.script_path
    for cls in extra_classes:
        scripts_data.append(ScriptClassData(cls, inspect.getfile(cls), paths.script_path, sys.modules[cls.__module__]))
    scripts_txt2img = ScriptRunner()
    scripts_img2img = ScriptRunner()


class ScriptRunner:
    def __init__(self):
        self.scripts = []
        self.selectable_scripts = []
        self.alwayson_scripts = []
        self.titles = []
        self.title_map = {}
        self.infotext_fields = []
        self.paste_field_names = []
        self.inputs = [None]
        self.on_before_component_elem_id = {}
        self.on_after_component_elem_id = {}

    def initialize_scripts(self, is_img2img):
        self.scripts.clear()
        self.alwayson_scripts.clear()
        self.selectable_scripts.clear()
        for script_data in scripts_data:
            try:
                script = script_data.script_class()
            except Exception:
                errors.report(f"Error # failed to initialize Script {script_data.module}: ", exc_info=True)
                continue
            script.filename = script_data.path
            script.is_txt2img = not is_img2img
            script.is_img2img = is_img2img
            script.tabname = "img2img" if is_img2img else "txt2img"
            visibility = script.show(script.is_img2img)
            if visibility == AlwaysVisible:
                self.scripts.append(script)
                self.alwayson_scripts.append(script)
                script.alwayson = True
            elif visibility:
                self.scripts.append(script)
                self.selectable_scripts.append(script)
        self.apply_on_before_component_callbacks()

    def apply_on_before_component_callbacks(self):
        for script in self.scripts:
            for elem_id, callback in script.on_before_component_elem_id or []:
                self.on_before_component_elem_id.setdefault(elem_id, []).append((callback, script))
            for elem_id, callback in script.on_after_component_elem_id or []:
                self.on_after_component_elem_id.setdefault(elem_id, []).append((callback, script))
            (script.on_before_component_elem_id or []).clear()
            (script.on_after_component_elem_id or []).clear()

    def create_script_ui(self, script):
        script.args_from = script.args_to = len(self.inputs)
        try:
            self.create_script_ui_inner(script)
        except Exception:
            errors.report(f"Error creating UI for {script.name}: ", exc_info=True)

    def create_script_ui_inner(self, script):
        import modules.api.models as api_models
        controls = wrap_call(script.ui, script.filename, "ui", script.is_img2img)
        script.controls = controls
        if controls is None:
            return
        script.name = wrap_call(script.title, script.filename, "title", default=script.filename).lower()
        api_args = []
        for control in controls:
            control.custom_script_source = os.path.basename(script.filename)
            arg_info = api_models.ScriptArg(label=getattr(control, "label", None) or "")
            for name in ("value", "minimum", "maximum", "step"):
                v = getattr(control, name, None)
                if v is not None:
                    setattr(arg_info, name, v)
            choices = getattr(control, "choices", None)
            if choices is not None:
                arg_info.choices = [x[0] if isinstance(x, tuple) else x for x in choices]
            api_args.append(arg_info)
        script.api_info = api_models.ScriptInfo(name=script.name, is_img2img=script.is_img2img, is_alwayson=script.alwayson, args=api_args)
        if script.infotext_fields is not None:
            self.infotext_fields += script.infotext_fields
        if script.paste_field_names is not None:
            self.paste_field_names += script.paste_field_names
        self.inputs += controls
        script.args_to = len(self.inputs)

    def setup_ui_for_section(self, section, scriptlist=None):
        scriptlist = sorted(self.alwayson_scripts if scriptlist is None else scriptlist, key=lambda x: x.sorting_priority)
        for script in scriptlist:
            if script.alwayson and script.section != section:
                continue
            if script.create_group:
                with gr.Group(visible=script.alwayson) as group:
                    self.create_script_ui(script)
                script.group = group
            else:
                self.create_script_ui(script)

    def prepare_ui(self):
        self.inputs = [None]

    def setup_ui(self):
        all_titles = [wrap_call(script.title, script.filename, "title") or script.filename for script in self.scripts]
        self.title_map = {title.lower(): script for title, script in zip(all_titles, self.scripts)}
        self.titles = [wrap_call(script.title, script.filename, "title") or f"{script.filename} [error]" for script in self.selectable_scripts]
        self.setup_ui_for_section(None)
        dropdown = gr.Dropdown(label="Script", elem_id="script_list", choices=["None"] + self.titles, value="None", type="index")
        self.inputs[0] = dropdown
        self.setup_ui_for_section(None, self.selectable_scripts)
        self.apply_on_before_component_callbacks()
        return self.inputs

    def run(self, p, *args):
        script_index = args[0]
        if script_index == 0 or script_index is None:
            return None
        script = self.selectable_scripts[script_index - 1]
        return script.run(p, *args[script.args_from:script.args_to])

    def ordered_scripts(self, method_name):
        scripts = self.scripts if method_name in ("before_component", "after_component") else self.alwayson_scripts
        return [s for s in scripts if getattr(s.__class__, method_name, None) is not getattr(Script, method_name, None)]

    def _each(self, method_name, p, *extra, **kwargs):
        for script in self.ordered_scripts(method_name):
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                getattr(script, method_name)(p, *extra, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running {method_name}: {script.filename}", exc_info=True)

    def setup_scrips(self, p, *, is_ui=True):
        for script in self.ordered_scripts("setup"):
            if not is_ui and script.setup_for_ui_only:
                continue
            try:
                script.setup(p, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running setup: {script.filename}", exc_info=True)

    def before_process(self, p):
        self._each("before_process", p)

    def process(self, p):
        self._each("process", p)

    def before_process_batch(self, p, **kwargs):
        self._each("before_process_batch", p, **kwargs)

    def before_process_init_images(self, p, pp, **kwargs):
        self._each("before_process_init_images", p, pp, **kwargs)

    def after_extra_networks_activate(self, p, **kwargs):
        self._each("after_extra_networks_activate", p, **kwargs)

    def process_batch(self, p, **kwargs):
        self._each("process_batch", p, **kwargs)

    def process_before_every_sampling(self, p, **kwargs):
        for script in self.alwayson_scripts:  # Forge's second definition (modules/scripts.py:888) wins
            try:
                script_args = p.script_args[script.args_from:script.args_to]
                script.process_before_every_sampling(p, *script_args, **kwargs)
            except Exception:
                errors.report(f"Error running process_before_every_sampling: {script.filename}", exc_info=True)

    def postprocess(self, p, processed):
        for script in self.ordered_scripts("postprocess"):
            try:
                script.postprocess(p, processed, *p.script_args[script.args_from:script.args_to])
            except Exception:
                errors.report(f"Error running postprocess: {script.filename}", exc_info=True)

    def postprocess_batch(self, p, images, **kwargs):
        for script in self.ordered_scripts("postprocess_batch"):
            try:
                script.postprocess_batch(p, *p.script_args[script.args_from:script.args_to], images=images, **kwargs)
            except Exception:
                errors.report(f"Error running postprocess_batch: {script.filename}", exc_info=True)

    def postprocess_batch_list(self, p, pp, **kwargs):
        self._each("postprocess_batch_list", p, pp, **kwargs)

    def post_sample(self, p, ps):
        self._each("post_sample", p, ps)

    def on_mask_blend(self, p, mba):
        self._each("on_mask_blend", p, mba)

    def postprocess_image(self, p, pp):
        self._each("postprocess_image", p, pp)

    def postprocess_maskoverlay(self, p, ppmo):
        self._each("postprocess_maskoverlay", p, ppmo)

    def postprocess_image_after_composite(self, p, pp):
        self._each("postprocess_image_after_composite", p, pp)

    def before_hr(self, p):
        self._each("before_hr", p)

    def before_component(self, component, **kwargs):
        for callback, script in self.on_before_component_elem_id.get(kwargs.get("elem_id"), []):
            try:
                callback(OnComponent(component=component))
            except Exception:
                errors.report(f"Error running on_before_component: {script.filename}", exc_info=True)
        for script in self.ordered_scripts("before_component"):
            try:
                script.before_component(component, **kwargs)
            except Exception:
                errors.report(f"Error running before_component: {script.filename}", exc_info=True)

    def after_component(self, component, **kwargs):
        for callback, script in self.on_after_component_elem_id.get(getattr(component, "elem_id", None), []):
            try:
                callback(OnComponent(component=component))
            except Exception:
                errors.report(f"Error running on_after_component: {script.filename}", exc_info=True)
        for script in self.ordered_scripts("after_component"):
            try:
                script.after_component(component, **kwargs)
            except Exception:
                errors.report(f"Error running after_component: {script.filename}", exc_info=True)

    def script(self, title):
        return self.title_map.get(title.lower())


class OnComponent:
    def __init__(self, component):
        self.component = component


def wrap_call(func, filename, funcname, *args, default=None, **kwargs):
    try:
        return func(*args, **kwargs)
    except Exception:
        errors.report(f"Error calling: {filename}/{funcname}", exc_info=True)
    return default


scripts_txt2img: ScriptRunner = ScriptRunner()
scripts_img2img: ScriptRunner = ScriptRunner()
scripts_current: ScriptRunner = None
