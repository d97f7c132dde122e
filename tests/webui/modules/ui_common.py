"""modules/ui_common.py stand-in: the output panel of a tab, reduced to what the "Send to" buttons need.

create_output_panel builds the gallery, the three send buttons (elem_ids `<tab>_send_to_img2img`,
`<tab>_send_to_inpaint`, `<tab>_send_to_extras`), the hidden generation-info textbox and the infotext HTML, and
registers one ParamBinding per destination exactly as A1111 1.10 does: source_tabname is "txt2img" only for the
txt2img panel (the img2img panel's buttons carry the image only), and paste_field_names is the tab runner's
concatenated `paste_field_names` (the same list object, or a fresh empty one when it is empty). Save/zip/open
folder buttons and tooltips are not modelled.
"""
from __future__ import annotations

import dataclasses

import gradio as gr

import modules.infotext_utils as parameters_copypaste
import modules.scripts
from modules.ui_components import ToolButton


@dataclasses.dataclass
class OutputPanel:
    gallery = None
    generation_info = None
    infotext = None
    html_log = None
    button_upscale = None
    send_buttons = None  # stand-in only: {destination tab: button}


def create_output_panel(tabname, outdir, toprow=None):
    res = OutputPanel()
    with gr.Column(elem_id=f"{tabname}_results"):
        res.gallery = gr.Gallery(label='Output', show_label=False, elem_id=f"{tabname}_gallery", columns=4, preview=True)
        with gr.Row(elem_id=f"image_buttons_{tabname}", elem_classes="image-buttons"):
            buttons = {
                'img2img': ToolButton('🖼️', elem_id=f'{tabname}_send_to_img2img'),
                'inpaint': ToolButton('🎨️', elem_id=f'{tabname}_send_to_inpaint'),
                'extras': ToolButton('📐', elem_id=f'{tabname}_send_to_extras'),
            }
        res.send_buttons = buttons
        res.infotext = gr.HTML(elem_id=f'html_info_{tabname}', elem_classes="infotext")
        res.html_log = gr.HTML(elem_id=f'html_log_{tabname}', elem_classes="html-log")
        res.generation_info = gr.Textbox(visible=False, elem_id=f'generation_info_{tabname}')

        paste_field_names = []
        if tabname == "txt2img":
            paste_field_names = modules.scripts.scripts_txt2img.paste_field_names
        elif tabname == "img2img":
            paste_field_names = modules.scripts.scripts_img2img.paste_field_names

        for paste_tabname, paste_button in buttons.items():
            parameters_copypaste.register_paste_params_button(parameters_copypaste.ParamBinding(
                paste_button=paste_button, tabname=paste_tabname, source_tabname="txt2img" if tabname == "txt2img" else None,
                source_image_component=res.gallery, paste_field_names=paste_field_names,
            ))
    return res
