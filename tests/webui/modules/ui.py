"""modules/ui.py stand-in: builds the two tabs' script UIs (see scripts.create_ui) and registers each tab's paste
fields: a few built-in fields with their API names, then the scripts' infotext_fields, as A1111's ui.py does."""
from __future__ import annotations

import gradio as gr

from modules import infotext_utils, script_callbacks, scripts
from modules.infotext_utils import PasteField

demo = None


def _builtin_paste_fields(is_img2img):
    """Hidden stand-ins for the built-in prompt/size/cfg controls (only their paste behaviour matters here)."""
    tab = "img2img" if is_img2img else "txt2img"
    prompt = gr.Textbox(label="Prompt", elem_id=f"{tab}_prompt", visible=False)
    negative_prompt = gr.Textbox(label="Negative prompt", elem_id=f"{tab}_neg_prompt", visible=False)
    cfg_scale = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, label='CFG Scale', value=7.0, elem_id=f"{tab}_cfg_scale", visible=False)
    width = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=512, elem_id=f"{tab}_width", visible=False)
    height = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=512, elem_id=f"{tab}_height", visible=False)
    batch_size = gr.Slider(minimum=1, maximum=8, step=1, label='Batch size', value=1, elem_id=f"{tab}_batch_size", visible=False)
    # (component, infotext key, request field of the API)
    table = [
        (prompt, "Prompt", "prompt"),
        (negative_prompt, "Negative prompt", "negative_prompt"),
        (cfg_scale, "CFG scale", "cfg_scale"),
        (width, "Size-1", "width"),
        (height, "Size-2", "height"),
        (batch_size, "Batch size", "batch_size"),
    ]
    fields = [PasteField(component, key, api=api) for component, key, api in table]
    if is_img2img:
        denoising_strength = gr.Slider(minimum=0.0, maximum=1.0, step=0.01, label='Denoising strength', value=0.75, elem_id=f"{tab}_denoising_strength", visible=False)
        fields.append(PasteField(denoising_strength, "Denoising strength", api="denoising_strength"))
    return fields


def create_ui():
    """on_ui_settings callbacks (A1111's UiSettings.register_settings), then both tabs; returns the gr.Blocks."""
    global demo
    script_callbacks.ui_settings_callback()
    with gr.Blocks(analytics_enabled=False) as demo:
        for is_img2img in (False, True):
            tab = "img2img" if is_img2img else "txt2img"
            runner = scripts.scripts_img2img if is_img2img else scripts.scripts_txt2img
            runner.initialize_scripts(is_img2img)
            builtin = _builtin_paste_fields(is_img2img)
            runner.prepare_ui()
            for category in scripts.ui_reorder_categories():
                if category == "scripts":
                    runner.setup_ui()
                else:
                    runner.setup_ui_for_section(category)
            infotext_utils.add_paste_fields(tab, None, builtin + list(runner.infotext_fields))
    scripts.scripts_current = None
    return demo
