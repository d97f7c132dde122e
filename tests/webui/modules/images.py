"""modules/images.py stand-in: resize_image with A1111's integer arithmetic (upscalers are not modelled: every
resize is LANCZOS), flatten, image_grid, and a save_image that writes nothing."""
from __future__ import annotations

import math

from PIL import Image, ImageColor

from modules import shared

LANCZOS = Image.Resampling.LANCZOS if hasattr(Image, 'Resampling') else Image.LANCZOS


def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
    """0: stretch to width x height; 1: crop and resize (scale to cover, centre, crop);
    2 and anything else (incl. 3): resize and fill (scale to fit, centre, stretch the edge rows/columns into the
    empty bands). Modes 1/2 return an RGB (or RGBA with force_RGBA) canvas whatever the input mode."""

    def resize(image, w, h):
        return image.resize((w, h), resample=LANCZOS)

    if resize_mode == 0:
        return resize(im, width, height)

    target_ratio, source_ratio = width / height, im.width / im.height

    def scaled(match_width):
        """The source size scaled (integer arithmetic) so that its width, or else its height, is the target's."""
        if match_width:
            return width, im.height * width // im.width
        return im.width * height // im.height, height

    canvas = Image.new("RGBA" if force_RGBA else "RGB", (width, height))
    if resize_mode == 1:  # cover the canvas; the overflow is cut off
        new_w, new_h = scaled(target_ratio > source_ratio)
        canvas.paste(resize(im, new_w, new_h), box=(width // 2 - new_w // 2, height // 2 - new_h // 2))
        return canvas

    # fit inside the canvas, then stretch the outermost rows/columns over the empty bands
    new_w, new_h = scaled(target_ratio < source_ratio)
    fitted = resize(im, new_w, new_h)
    left, top = width // 2 - new_w // 2, height // 2 - new_h // 2
    canvas.paste(fitted, box=(left, top))
    if target_ratio < source_ratio:
        _stretch_edges(canvas, fitted, band=top, vertical=True)
    elif target_ratio > source_ratio:
        _stretch_edges(canvas, fitted, band=left, vertical=False)
    return canvas


def _stretch_edges(canvas, fitted, band, vertical):
    """Fills the empty bands on both sides of `fitted` (centred on the canvas): above/below it with its first/last
    pixel row stretched (vertical), or left/right of it with its first/last column."""
    if band <= 0:
        return
    canvas_w, canvas_h = canvas.size
    if vertical:
        size = (canvas_w, band)
        edges = [((0, 0, canvas_w, 0), (0, 0)),
                 ((0, fitted.height, canvas_w, fitted.height), (0, band + fitted.height))]
    else:
        size = (band, canvas_h)
        edges = [((0, 0, 0, canvas_h), (0, 0)),
                 ((fitted.width, 0, fitted.width, canvas_h), (band + fitted.width, 0))]
    for source_box, position in edges:
        canvas.paste(fitted.resize(size, box=source_box), box=position)


def flatten(img, bgcolor):
    """Replaces transparency with bgcolor."""
    if img.mode != "RGBA":
        return img.convert('RGB')
    flattened = Image.new('RGBA', img.size, bgcolor)
    flattened.paste(img, mask=img)
    return flattened.convert('RGB')


def image_grid(imgs, batch_size=1, rows=None):
    if rows is None:
        if shared.opts.n_rows > 0:
            rows = shared.opts.n_rows
        elif shared.opts.n_rows == 0:
            rows = batch_size
        else:
            rows = round(math.sqrt(len(imgs)))
    rows = max(1, min(rows, len(imgs)))
    cols = math.ceil(len(imgs) / rows)
    w, h = map(max, zip(*(img.size for img in imgs)))
    grid = Image.new('RGB', size=(cols * w, rows * h), color=ImageColor.getcolor("#ffffff", 'RGB'))
    for i, img in enumerate(imgs):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False, no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None, forced_filename=None, suffix="", save_to_dirs=None):
    """Nothing is written by the stand-in."""
    return None, None


def read(fp, **kwargs):
    image = Image.open(fp, **kwargs)
    return image


def read_info_from_image(image):
    items = (image.info or {}).copy()
    geninfo = items.pop('parameters', None)
    return geninfo, items
