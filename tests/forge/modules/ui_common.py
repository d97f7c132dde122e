"""modules/ui_common.py stand-in, reduced to the part of a tab's output panel extensions hook into: the infotext HTML
(`html_info_<tab>`) and the hidden generation-info textbox (`generation_info_<tab>`, the JSON of `Processed.js()`
each generation writes), made in that order inside the tab while `scripts_current` is its runner, as Forge's
create_output_panel does. The gallery, its buttons and the "Send to" bindings are not modelled."""
from __future__ import annotations

import dataclasses

import gradio as gr


@dataclasses.dataclass
class OutputPanel:
    infotext: gr.HTML
    generation_info: gr.Textbox


def create_output_panel(tabname: str, outdir=None, toprow=None) -> OutputPanel:
    with gr.Column(elem_id=f"{tabname}_results"):
        infotext = gr.HTML(elem_id=f"html_info_{tabname}", elem_classes="infotext")
        generation_info = gr.Textbox(visible=False, elem_id=f"generation_info_{tabname}")
    return OutputPanel(infotext, generation_info)
