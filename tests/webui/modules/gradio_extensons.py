"""modules/gradio_extensons.py stand-in (sic: A1111's spelling), imported at start-up as A1111 does: every gradio
component and block context is created between the component callbacks, as A1111 1.10 patches
IOComponent.__init__ and BlockContext.__init__: `tooltip` popped into `webui_tooltip`, then the current runner's
before_component (which runs the scripts' on_before_component callbacks for that elem_id), the global
before_component callbacks, the original __init__, the global after_component callbacks and the runner's
after_component (the scripts' on_after_component callbacks for the component's elem_id). The gradio-<name> CSS
classes and the config patches are not modelled."""
from __future__ import annotations

from functools import wraps

import gradio as gr

from modules import script_callbacks, scripts


def _with_component_callbacks(original, pops_tooltip: bool):
    @wraps(original)
    def __init__(self, *args, **kwargs):
        if pops_tooltip:
            self.webui_tooltip = kwargs.pop("tooltip", None)
        if scripts.scripts_current is not None:
            scripts.scripts_current.before_component(self, **kwargs)
        script_callbacks.before_component_callback(self, **kwargs)
        result = original(self, *args, **kwargs)
        script_callbacks.after_component_callback(self, **kwargs)
        if scripts.scripts_current is not None:
            scripts.scripts_current.after_component(self, **kwargs)
        return result

    __init__._webui_standin = True
    return __init__


for _cls, _pops in ((gr.components.IOComponent, True), (gr.blocks.BlockContext, False)):
    if not getattr(_cls.__init__, "_webui_standin", False):
        _cls.__init__ = _with_component_callbacks(_cls.__init__, _pops)
