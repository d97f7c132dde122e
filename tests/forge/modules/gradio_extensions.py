"""modules/gradio_extensions.py stand-in: this stand-in's own version of the gradio-4 compatibility layer Forge runs with
gradio 4.40.0 (A1111's shims, modules/gradio_extensions.py). Observable behaviour reproduced, for every gradio component and
layout class that has EVENTS:
  * constructor keywords the class does not accept are DROPPED with a GradioDeprecationWarning ("unexpected argument for X: k")
    -- e.g. gradio 3's tool=, brush_radius= --; `source=x` becomes `sources=[x]`; `tooltip=` is kept as `.webui_tooltip`;
  * every event listener accepts `_js=` (renamed `js=`), and so does `.then` of the returned Dependency;
  * `Component.update = gr.update`; `gr.Box = gr.Group`;
  * before/after_component callbacks (script_callbacks and the current ScriptRunner) run around every component's creation;
  * no .pyi files for classes marked webui_do_not_create_gradio_pyi_thank_you; gradio's `updateable` wrapper disabled.
Not shimmed (as in Forge): `.style(...)` (AttributeError), gr.File(type="file") (ValueError), gradio 3 sketch masks.
Installed once, on import (modules.ui_components and modules.ui import it)."""
import inspect
import warnings
from functools import wraps

import gradio as gr
import gradio.component_meta


class GradioDeprecationWarning(DeprecationWarning):
    pass


class _EventWrapper:
    def __init__(self, event):
        self.event = event

    def __call__(self, *args, **kwargs):
        if "_js" in kwargs:
            kwargs["js"] = kwargs.pop("_js")
        return self.event(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.event, name)


def _repair(cls):
    if not getattr(cls, "EVENTS", None) or getattr(cls.__init__, "_forge_standin_repaired", False):
        return
    original = cls.__init__
    allowed = inspect.signature(original).parameters

    @wraps(original)
    def __init__(self, *args, tooltip=None, source=None, **kwargs):
        if source:
            kwargs["sources"] = [source]
        fixed = {}
        for k, v in kwargs.items():
            if k in allowed:
                fixed[k] = v
            else:
                warnings.warn(f"unexpected argument for {cls.__name__}: {k}", GradioDeprecationWarning, stacklevel=2)
        original(self, *args, **fixed)
        self.webui_tooltip = tooltip
        for event in self.EVENTS:
            name = str(event)
            if hasattr(self, name):
                setattr(self, name, _EventWrapper(getattr(self, name)))

    __init__._forge_standin_repaired = True
    cls.__init__ = __init__
    cls.update = gr.update


def _component_init(original):
    @wraps(original)
    def __init__(self, *args, **kwargs):
        from modules import script_callbacks, scripts
        self.webui_tooltip = kwargs.pop("tooltip", None)
        runner = scripts.scripts_current
        if runner is not None:
            runner.before_component(self, **kwargs)
        script_callbacks.before_component_callback(self, **kwargs)
        result = original(self, *args, **kwargs)
        script_callbacks.after_component_callback(self, **kwargs)
        if runner is not None:
            runner.after_component(self, **kwargs)
        return result

    __init__._forge_standin_repaired = True
    return __init__


if not getattr(gr.components.Component.__init__, "_forge_standin_repaired", False):
    gr.components.Component.__init__ = _component_init(gr.components.Component.__init__)

_create_or_modify_pyi = gradio.component_meta.create_or_modify_pyi


def _no_pyi_for_webui_classes(component_class, class_name, events):
    if not hasattr(component_class, "webui_do_not_create_gradio_pyi_thank_you"):
        _create_or_modify_pyi(component_class, class_name, events)


gradio.component_meta.create_or_modify_pyi = _no_pyi_for_webui_classes
gradio.component_meta.updateable = lambda x: x

for _name in set(gr.components.__all__ + gr.layouts.__all__):
    _cls = getattr(gr, _name, None)
    if inspect.isclass(_cls):
        _repair(_cls)


class Dependency(gr.events.Dependency):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        original_then = self.then

        def then(*xargs, _js=None, **xkwargs):
            if _js:
                xkwargs["js"] = _js
            return original_then(*xargs, **xkwargs)

        self.then = then


gr.events.Dependency = Dependency
gr.Box = gr.Group
