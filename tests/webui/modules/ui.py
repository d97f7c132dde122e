"""modules/ui.py stand-in: builds the two tabs inside one gr.Blocks (`demo`) the way A1111 1.10's create_ui does,
reduced to what extensions interact with:

- `scripts_current` set to the tab's runner while its components are made (gradio_extensons: the component
  callbacks, the scripts' on_before/on_after_component ones among them);
- `infotext_utils.reset()` first (paste fields and "Send to" bindings of an earlier build are dropped);
- per tab: hidden stand-ins for the built-in controls that have paste fields, the scripts' UI (script sections in
  UI order, see scripts.create_ui), the output panel (ui_common: the "Send to" buttons and their ParamBindings) and
  the paste fields: the built-in ones, then `*runner.infotext_fields`. As in A1111, only the txt2img built-ins carry
  API names (`PasteField(..., api=...)`); img2img's are plain tuples, so an API img2img request's `infotext` fills
  no request field through them. "inpaint" reuses the img2img list, "extras" has no fields;
- the ↙ paste button of each tab (pastes its prompt box as infotext);
- `infotext_utils.connect_paste_params_buttons()` inside the demo, after all tabs.

Not modelled: every other built-in control (the processing values of a UI job come from the harness), the hires
sampler/prompt visibility containers, the override-settings dropdown, the init images (so "Send to" carries no
image), tabs other than txt2img/img2img.
"""
from __future__ import annotations

import gradio as gr

from modules import gradio_extensons  # noqa: F401  (A1111 patches gradio's component creation at start-up)
from modules import infotext_utils, script_callbacks, scripts, sd_models, sd_samplers, sd_schedulers, shared, ui_common
from modules.infotext_utils import PasteField
from modules.ui_components import ToolButton

demo = None
txt2img_paste_fields = []  # set by infotext_utils.add_paste_fields (old module-level names, kept for extensions)
img2img_paste_fields = []


def _styles_from_infotext(d):
    return d["Styles array"] if isinstance(d.get("Styles array"), list) else gr.update()


def _hr_sampler_and_scheduler(d):
    """A1111's sd_samplers.get_hr_sampler_and_scheduler: the hires names, or "Use same ..." when they equal the
    first pass's."""
    hr_sampler = d.get("Hires sampler", "Use same sampler")
    sampler = d.get("Sampler") if hr_sampler == "Use same sampler" else hr_sampler
    hr_scheduler = d.get("Hires schedule type", "Use same scheduler")
    scheduler = d.get("Schedule type") if hr_scheduler == "Use same scheduler" else hr_scheduler
    sampler, scheduler = sd_samplers.get_sampler_and_scheduler(sampler, scheduler)
    sampler = sampler if sampler != d.get("Sampler") else "Use same sampler"
    scheduler = scheduler if scheduler != d.get("Schedule type") else "Use same scheduler"
    return sampler, scheduler


def _toprow(tab):
    """Prompt, negative prompt, styles and the ↙ paste button (A1111's Toprow, reduced)."""
    prompt = gr.Textbox(label="Prompt", elem_id=f"{tab}_prompt", show_label=False, lines=3, placeholder="Prompt", visible=False)
    negative_prompt = gr.Textbox(label="Negative prompt", elem_id=f"{tab}_neg_prompt", show_label=False, lines=3, visible=False)
    styles = gr.Dropdown(label="Styles", elem_id=f"{tab}_styles", choices=[], value=[], multiselect=True, visible=False)
    paste = ToolButton(value="↙️", elem_id=f"{tab}_paste", visible=False)  # (elem_ids as in A1111)
    return prompt, negative_prompt, styles, paste


def _slider(tab, name, label, minimum, maximum, step, value):
    return gr.Slider(minimum=minimum, maximum=maximum, step=step, label=label, value=value, elem_id=f"{tab}_{name}", visible=False)


def _txt2img_builtin_fields(prompt, negative_prompt, styles):
    tab = "txt2img"
    cfg_scale = _slider(tab, "cfg_scale", 'CFG Scale', 1.0, 30.0, 0.5, 7.0)
    width = _slider(tab, "width", "Width", 64, 2048, 8, 512)
    height = _slider(tab, "height", "Height", 64, 2048, 8, 512)
    batch_size = _slider(tab, "batch_size", 'Batch size', 1, 8, 1, 1)
    denoising_strength = _slider(tab, "denoising_strength", 'Denoising strength', 0.0, 1.0, 0.01, 0.7)
    enable_hr = gr.Checkbox(label="Hires. fix", value=False, elem_id=f"{tab}_hr", visible=False)
    upscalers = [*shared.latent_upscale_modes, *[x.name for x in shared.sd_upscalers]]
    hr_upscaler = gr.Dropdown(label="Upscaler", elem_id=f"{tab}_hr_upscaler", choices=upscalers, value=shared.latent_upscale_default_mode, visible=False)
    hr_second_pass_steps = _slider(tab, "hires_steps", 'Hires steps', 0, 150, 1, 0)
    hr_scale = _slider(tab, "hr_scale", "Upscale by", 1.0, 4.0, 0.05, 2.0)
    hr_resize_x = _slider(tab, "hr_resize_x", "Resize width to", 0, 2048, 8, 0)
    hr_resize_y = _slider(tab, "hr_resize_y", "Resize height to", 0, 2048, 8, 0)
    checkpoints = ["Use same checkpoint", *sd_models.checkpoints_list]
    hr_checkpoint_name = gr.Dropdown(label='Checkpoint', elem_id="hr_checkpoint", choices=checkpoints, value="Use same checkpoint", visible=False)
    hr_sampler_name = gr.Dropdown(label='Hires sampling method', elem_id="hr_sampler", choices=["Use same sampler", *[x.name for x in sd_samplers.visible_samplers()]], value="Use same sampler", visible=False)
    hr_scheduler = gr.Dropdown(label='Hires schedule type', elem_id="hr_scheduler", choices=["Use same scheduler", *[x.label for x in sd_schedulers.schedulers]], value="Use same scheduler", visible=False)
    hr_prompt = gr.Textbox(label="Hires prompt", elem_id="hires_prompt", visible=False)
    hr_negative_prompt = gr.Textbox(label="Hires negative prompt", elem_id="hires_neg_prompt", visible=False)

    def hires_enabled(d):
        return "Denoising strength" in d and ("Hires upscale" in d or "Hires upscaler" in d or "Hires resize-1" in d)

    return [
        PasteField(prompt, "Prompt", api="prompt"),
        PasteField(negative_prompt, "Negative prompt", api="negative_prompt"),
        PasteField(cfg_scale, "CFG scale", api="cfg_scale"),
        PasteField(width, "Size-1", api="width"),
        PasteField(height, "Size-2", api="height"),
        PasteField(batch_size, "Batch size", api="batch_size"),
        PasteField(styles, _styles_from_infotext, api="styles"),
        PasteField(denoising_strength, "Denoising strength", api="denoising_strength"),
        PasteField(enable_hr, hires_enabled, api="enable_hr"),
        PasteField(hr_scale, "Hires upscale", api="hr_scale"),
        PasteField(hr_upscaler, "Hires upscaler", api="hr_upscaler"),
        PasteField(hr_second_pass_steps, "Hires steps", api="hr_second_pass_steps"),
        PasteField(hr_resize_x, "Hires resize-1", api="hr_resize_x"),
        PasteField(hr_resize_y, "Hires resize-2", api="hr_resize_y"),
        PasteField(hr_checkpoint_name, "Hires checkpoint", api="hr_checkpoint_name"),
        PasteField(hr_sampler_name, lambda d: _hr_sampler_and_scheduler(d)[0], api="hr_sampler_name"),
        PasteField(hr_scheduler, lambda d: _hr_sampler_and_scheduler(d)[1], api="hr_scheduler"),
        PasteField(hr_prompt, "Hires prompt", api="hr_prompt"),
        PasteField(hr_negative_prompt, "Hires negative prompt", api="hr_negative_prompt"),
    ]


def _img2img_builtin_fields(prompt, negative_prompt, styles):
    tab = "img2img"
    cfg_scale = _slider(tab, "cfg_scale", 'CFG Scale', 1.0, 30.0, 0.5, 7.0)
    image_cfg_scale = _slider(tab, "image_cfg_scale", 'Image CFG Scale', 0, 3.0, 0.05, 1.5)
    width = _slider(tab, "width", "Width", 64, 2048, 8, 512)
    height = _slider(tab, "height", "Height", 64, 2048, 8, 512)
    batch_size = _slider(tab, "batch_size", 'Batch size', 1, 8, 1, 1)
    denoising_strength = _slider(tab, "denoising_strength", 'Denoising strength', 0.0, 1.0, 0.01, 0.75)
    mask_blur = _slider(tab, "mask_blur", 'Mask blur', 0, 64, 1, 4)
    mask_mode = gr.Radio(label='Mask mode', choices=['Inpaint masked', 'Inpaint not masked'], value='Inpaint masked', type="index", elem_id="img2img_mask_mode", visible=False)
    inpainting_fill = gr.Radio(label='Masked content', choices=['fill', 'original', 'latent noise', 'latent nothing'], value='original', type="index", elem_id="img2img_inpainting_fill", visible=False)
    inpaint_full_res = gr.Radio(label="Inpaint area", choices=["Whole picture", "Only masked"], type="index", value="Whole picture", elem_id="img2img_inpaint_full_res", visible=False)
    inpaint_full_res_padding = _slider(tab, "inpaint_full_res_padding", 'Only masked padding, pixels', 0, 256, 4, 32)
    return [  # plain tuples, as in A1111 (no API names)
        (prompt, "Prompt"),
        (negative_prompt, "Negative prompt"),
        (cfg_scale, "CFG scale"),
        (image_cfg_scale, "Image CFG scale"),
        (width, "Size-1"),
        (height, "Size-2"),
        (batch_size, "Batch size"),
        (styles, _styles_from_infotext),
        (denoising_strength, "Denoising strength"),
        (mask_blur, "Mask blur"),
        (mask_mode, 'Mask mode'),
        (inpainting_fill, 'Masked content'),
        (inpaint_full_res, 'Inpaint area'),
        (inpaint_full_res_padding, 'Masked area padding'),
    ]


def _create_tab(is_img2img):
    tab = "img2img" if is_img2img else "txt2img"
    runner = scripts.scripts_img2img if is_img2img else scripts.scripts_txt2img
    scripts.scripts_current = runner  # the tab's components, its output panel's too, see its callbacks
    runner.initialize_scripts(is_img2img)
    prompt, negative_prompt, styles, paste = _toprow(tab)
    builtin = (_img2img_builtin_fields if is_img2img else _txt2img_builtin_fields)(prompt, negative_prompt, styles)
    runner.prepare_ui()
    for category in scripts.ui_reorder_categories():
        if category == "scripts":
            runner.setup_ui()
        else:
            runner.setup_ui_for_section(category)
    outdir = shared.opts.outdir_img2img_samples if is_img2img else shared.opts.outdir_txt2img_samples
    ui_common.create_output_panel(tab, outdir)

    fields = [*builtin, *runner.infotext_fields]
    infotext_utils.add_paste_fields(tab, None, fields)
    if is_img2img:
        infotext_utils.add_paste_fields("inpaint", None, fields)
    infotext_utils.register_paste_params_button(infotext_utils.ParamBinding(
        paste_button=paste, tabname=tab, source_text_component=prompt, source_image_component=None))


def create_ui():
    """infotext_utils.reset, on_ui_settings callbacks (A1111's UiSettings.register_settings), both tabs, then the
    "Send to" buttons are connected; returns the gr.Blocks (also kept as `ui.demo`)."""
    global demo
    infotext_utils.reset()
    script_callbacks.ui_settings_callback()
    with gr.Blocks(analytics_enabled=False) as demo:
        for is_img2img in (False, True):
            _create_tab(is_img2img)
        infotext_utils.add_paste_fields("extras", None, None)
        infotext_utils.connect_paste_params_buttons()
    scripts.scripts_current = None
    return demo
