"""modules/img2img.py stand-in (A1111 1.10): the img2img tab's Generate handler and its Batch tab.

`img2img(id_task, request, mode, ...)` has the real positional signature. What it does with the mode:
  0 img2img / 1 sketch: no mask; 2 inpaint: the sketch layer's mask through processing.create_binary_mask;
  3 inpaint sketch: mask = pixels that differ from the original (L, 0/255, then brightness x (1 - alpha/100)),
  the image = the blurred sketch composited over the original through the blurred mask; 4 inpaint upload: the
  uploaded mask as it is (gradio gives RGBA); 5 batch. Image and mask through images.fix_image; "scale by"
  (selected_scale_tab 1) sets width/height from the image (not for batch); p gets p.scripts / p.script_args
  (setup runs), then the selected script's run() or process_images(p) inside closing(p), or process_batch.
  Returns (images, generation_info_js, info html, comments html).
`process_batch(p, input, output_dir, inpaint_mask_dir, args, ...)`: fix_seed(p) once; input is a folder (files
  with image extensions, natural sort, walked recursively) or a list of uploads (their .name); masks from
  inpaint_mask_dir (a single file serves every image, else the file with the image's stem, an image without one is
  skipped); per image: p.width/height = int(image size x scale_by) when to_scale, p.init_images = [img] *
  p.batch_size, p.image_mask = the mask as read, PNG-info fields (prompt/negative appended, seed, CFG, sampler,
  steps, checkpoint override) when use_png_info, output_dir overrides; then scripts_img2img.run(p, *args) (a
  selected script such as Loopback runs per image) or process_images(p). Results are collected into the first
  Processed (images and infotexts extended), cut at opts.img2img_batch_show_results_limit (default 32).
Not modelled: saving files (output_dir only sets the overrides), request.username beyond being copied to p.user,
settings overrides typed in the UI (override_settings_texts). Stand-in only: `last_processing` / `last_processed`
are the p and Processed of the last img2img() call (for tests).
"""
from __future__ import annotations

import os
import re
from contextlib import closing
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, UnidentifiedImageError

import modules.processing as processing
import modules.scripts
import modules.shared as shared
from modules import images
from modules.infotext_utils import parse_generation_parameters
from modules.processing import Processed, StableDiffusionProcessingImg2Img, process_images
from modules.sd_models import get_closet_checkpoint_match
from modules.shared import opts, state

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")

last_processing = None  # stand-in only: the p of the last img2img() call
last_processed = None


def _natural_key(text, digits=re.compile('([0-9]+)')):
    return [int(part) if part.isdigit() else part.lower() for part in digits.split(text)]


def listfiles(dirname):
    """shared.listfiles: the files (not folders, not dot-files) of a folder, natural sort."""
    names = sorted((name for name in os.listdir(dirname) if not name.startswith(".")), key=_natural_key)
    return [path for path in (os.path.join(dirname, name) for name in names) if os.path.isfile(path)]


def walk_files(path, allowed_extensions=None):
    """shared.walk_files: every file below `path` (folders and files in natural order), filtered by extension;
    files in hidden folders are skipped (opts.list_hidden_files off)."""
    if not os.path.exists(path):
        return
    allowed = None if allowed_extensions is None else set(allowed_extensions)
    for root, _dirs, files in sorted(os.walk(path, followlinks=True), key=lambda item: _natural_key(item[0])):
        for filename in sorted(files, key=_natural_key):
            if allowed is not None and os.path.splitext(filename)[1].lower() not in allowed:
                continue
            if "/." in root or "\\." in root:
                continue
            yield os.path.join(root, filename)


def _option(name, default):
    return getattr(opts, name, default)


def _mask_for(image_path, inpaint_mask_dir, inpaint_masks):
    """The mask file for an image: the only one there is, else the one named like the image (None: none)."""
    if len(inpaint_masks) == 1:
        return inpaint_masks[0]
    found = list(Path(inpaint_mask_dir).glob(f"{image_path.stem}.*"))
    return found[0] if found else None


def process_batch(p, input, output_dir, inpaint_mask_dir, args, to_scale=False, scale_by=1.0, use_png_info=False, png_info_props=None, png_info_dir=None):
    output_dir = output_dir.strip()
    processing.fix_seed(p)

    if isinstance(input, str):
        batch_images = list(walk_files(input, allowed_extensions=IMAGE_EXTENSIONS))
    else:
        batch_images = [os.path.abspath(upload.name) for upload in input]

    inpaint_masks = listfiles(inpaint_mask_dir) if inpaint_mask_dir else []
    is_inpaint_batch = bool(inpaint_masks)
    state.job_count = len(batch_images) * p.n_iter

    # the job's own values, used where an image's PNG info has none
    prompt, negative_prompt, seed = p.prompt, p.negative_prompt, p.seed
    cfg_scale, sampler_name, steps = p.cfg_scale, p.sampler_name, p.steps
    override_settings = p.override_settings
    checkpoint_override = get_closet_checkpoint_match(override_settings.get("sd_model_checkpoint", None))

    batch_results = None
    discard_further_results = False
    for i, image in enumerate(batch_images):
        state.job = f"{i + 1} out of {len(batch_images)}"
        if state.skipped:
            state.skipped = False
        if state.interrupted or state.stopping_generation:
            break
        try:
            img = images.read(image)
        except UnidentifiedImageError as e:
            print(e)
            continue
        img = ImageOps.exif_transpose(img)

        if to_scale:
            p.width, p.height = int(img.width * scale_by), int(img.height * scale_by)
        p.init_images = [img] * p.batch_size

        image_path = Path(image)
        if is_inpaint_batch:
            mask_image_path = _mask_for(image_path, inpaint_mask_dir, inpaint_masks)
            if mask_image_path is None:
                print(f"Warning: mask is not found for {image_path} in {inpaint_mask_dir}. Skipping it.")
                continue
            p.image_mask = images.read(mask_image_path)

        if use_png_info:
            try:
                info_img = images.read(os.path.join(png_info_dir, os.path.basename(image))) if png_info_dir else img
                geninfo, _ = images.read_info_from_image(info_img)
                parsed = parse_generation_parameters(geninfo)
                parsed = {k: v for k, v in parsed.items() if k in (png_info_props or {})}
            except Exception:
                parsed = {}
            p.prompt = prompt + (" " + parsed["Prompt"] if "Prompt" in parsed else "")
            p.negative_prompt = negative_prompt + (" " + parsed["Negative prompt"] if "Negative prompt" in parsed else "")
            p.seed = int(parsed.get("Seed", seed))
            p.cfg_scale = float(parsed.get("CFG scale", cfg_scale))
            p.sampler_name = parsed.get("Sampler", sampler_name)
            p.steps = int(parsed.get("Steps", steps))
            model_info = get_closet_checkpoint_match(parsed.get("Model hash", None))
            if model_info is not None:
                p.override_settings['sd_model_checkpoint'] = model_info.name
            elif checkpoint_override:
                p.override_settings['sd_model_checkpoint'] = checkpoint_override
            else:
                p.override_settings.pop("sd_model_checkpoint", None)

        if output_dir:
            p.outpath_samples = output_dir
            p.override_settings['save_to_dirs'] = False
            p.override_settings['save_images_replace_action'] = "Add number suffix"
            pattern = f'{image_path.stem}-[generation_number]' if p.n_iter > 1 or p.batch_size > 1 else f'{image_path.stem}'
            p.override_settings['samples_filename_pattern'] = pattern

        proc = modules.scripts.scripts_img2img.run(p, *args)
        if proc is None:
            p.override_settings.pop('save_images_replace_action', None)
            proc = process_images(p)

        if not discard_further_results and proc:
            if batch_results:
                batch_results.images.extend(proc.images)
                batch_results.infotexts.extend(proc.infotexts)
            else:
                batch_results = proc
            limit = _option("img2img_batch_show_results_limit", 32)
            if 0 <= limit < len(batch_results.images):
                discard_further_results = True
                batch_results.images = batch_results.images[:int(limit)]
                batch_results.infotexts = batch_results.infotexts[:int(limit)]

    return batch_results


def _inpaint_sketch(image, orig, mask_blur, mask_alpha):
    """Mode 3: the mask is where the sketch differs from the original; the image is the blurred sketch over it."""
    orig = orig or image
    changed = np.any(np.array(image) != np.array(orig), axis=-1)
    mask = Image.fromarray(changed.astype(np.uint8) * 255, "L")
    mask = ImageEnhance.Brightness(mask).enhance(1 - mask_alpha / 100)
    blur = ImageFilter.GaussianBlur(mask_blur)
    return Image.composite(image.filter(blur), orig, mask.filter(blur)), mask


def img2img(id_task: str, request, mode: int, prompt: str, negative_prompt: str, prompt_styles, init_img, sketch, init_img_with_mask, inpaint_color_sketch, inpaint_color_sketch_orig, init_img_inpaint, init_mask_inpaint, mask_blur: int, mask_alpha: float, inpainting_fill: int, n_iter: int, batch_size: int, cfg_scale: float, image_cfg_scale: float, denoising_strength: float, selected_scale_tab: int, height: int, width: int, scale_by: float, resize_mode: int, inpaint_full_res: bool, inpaint_full_res_padding: int, inpainting_mask_invert: int, img2img_batch_input_dir: str, img2img_batch_output_dir: str, img2img_batch_inpaint_mask_dir: str, override_settings_texts, img2img_batch_use_png_info: bool, img2img_batch_png_info_props: list, img2img_batch_png_info_dir: str, img2img_batch_source_type: str, img2img_batch_upload: list, *args):
    override_settings = {}  # create_override_settings_dict: settings overrides from the UI are not modelled
    is_batch = mode == 5

    image = mask = None
    if mode == 0:
        image = init_img
    elif mode == 1:
        image = sketch
    elif mode == 2:
        image, mask = init_img_with_mask["image"], init_img_with_mask["mask"]
        mask = processing.create_binary_mask(mask)
    elif mode == 3:
        image, mask = _inpaint_sketch(inpaint_color_sketch, inpaint_color_sketch_orig, mask_blur, mask_alpha)
    elif mode == 4:
        image, mask = init_img_inpaint, init_mask_inpaint

    image = images.fix_image(image)
    mask = images.fix_image(mask)

    if selected_scale_tab == 1 and not is_batch:
        assert image, "Can't scale by because no image is selected"
        width, height = int(image.width * scale_by), int(image.height * scale_by)

    assert 0. <= denoising_strength <= 1., 'can only work with strength in [0.0, 1.0]'

    p = StableDiffusionProcessingImg2Img(
        sd_model=shared.sd_model,
        outpath_samples=_option("outdir_samples", "") or opts.outdir_img2img_samples,
        outpath_grids=_option("outdir_grids", "") or opts.outdir_img2img_grids,
        prompt=prompt,
        negative_prompt=negative_prompt,
        styles=prompt_styles,
        batch_size=batch_size,
        n_iter=n_iter,
        cfg_scale=cfg_scale,
        width=width,
        height=height,
        init_images=[image],
        mask=mask,
        mask_blur=mask_blur,
        inpainting_fill=inpainting_fill,
        resize_mode=resize_mode,
        denoising_strength=denoising_strength,
        image_cfg_scale=image_cfg_scale,
        inpaint_full_res=inpaint_full_res,
        inpaint_full_res_padding=inpaint_full_res_padding,
        inpainting_mask_invert=inpainting_mask_invert,
        override_settings=override_settings,
    )
    p.scripts = modules.scripts.scripts_img2img
    p.script_args = args
    p.user = getattr(request, "username", None)
    global last_processing, last_processed
    last_processing, last_processed = p, None

    with closing(p):
        if is_batch:
            if img2img_batch_source_type == "upload":
                assert isinstance(img2img_batch_upload, list) and img2img_batch_upload
                png_info_dir = img2img_batch_png_info_dir if not shared.cmd_opts.hide_ui_dir_config else ""
                processed = process_batch(p, img2img_batch_upload, "", "", args, to_scale=selected_scale_tab == 1, scale_by=scale_by, use_png_info=img2img_batch_use_png_info, png_info_props=img2img_batch_png_info_props, png_info_dir=png_info_dir)
            else:  # "from dir"
                assert not shared.cmd_opts.hide_ui_dir_config, "Launched with --hide-ui-dir-config, batch img2img disabled"
                processed = process_batch(p, img2img_batch_input_dir, img2img_batch_output_dir, img2img_batch_inpaint_mask_dir, args, to_scale=selected_scale_tab == 1, scale_by=scale_by, use_png_info=img2img_batch_use_png_info, png_info_props=img2img_batch_png_info_props, png_info_dir=img2img_batch_png_info_dir)
            if processed is None:
                processed = Processed(p, [], p.seed, "")
        else:
            processed = modules.scripts.scripts_img2img.run(p, *args)
            if processed is None:
                processed = process_images(p)

    last_processed = processed
    shared.total_tqdm.clear()
    return processed.images, processed.js(), f"<p>{processed.info}</p>", f"<p class='comments'>{processed.comments}</p>"
