"""modules/images.py stand-in: resize_image with A1111's integer arithmetic and upscaler dispatch, flatten,
image_grid, split_grid/combine_grid (SD upscale and poor man's outpainting tiles), read/fix_image, and a save_image
that writes nothing.

resize_image: the upscaler is `upscaler_name or opts.upscaler_for_img2img`; with none ("None"), or for an L-mode
image, every resize is LANCZOS; otherwise an enlargement runs the named entry of shared.sd_upscalers (its
`scaler.upscale(img, scale, data_path)`; an unknown name falls back to the first entry) and the result is
LANCZOS-resized to the exact size. The stand-in has no upscaler models of its own: the harness fills
shared.sd_upscalers (its upscalers record each call as an "upscale" event on modules.lowvram's timeline).
"""
from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from PIL import Image, ImageColor, ImageOps

from modules import shared

LANCZOS = Image.Resampling.LANCZOS if hasattr(Image, 'Resampling') else Image.LANCZOS


def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
    """0: stretch to width x height; 1: crop and resize (scale to cover, centre, crop);
    2 and anything else (incl. 3): resize and fill (scale to fit, centre, stretch the edge rows/columns into the
    empty bands). Modes 1/2 return an RGB (or RGBA with force_RGBA) canvas whatever the input mode."""

    upscaler_name = upscaler_name or shared.opts.upscaler_for_img2img

    def resize(image, w, h):
        if upscaler_name is None or upscaler_name == "None" or image.mode == 'L':
            return image.resize((w, h), resample=LANCZOS)
        scale = max(w / image.width, h / image.height)
        if scale > 1.0:
            image = _run_upscaler(upscaler_name, image, scale)
        if (image.width, image.height) != (w, h):
            image = image.resize((w, h), resample=LANCZOS)
        return image

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


def _run_upscaler(name, image, scale):
    found = [upscaler for upscaler in shared.sd_upscalers if upscaler.name == name]
    if found:
        upscaler = found[0]
    else:
        upscaler = shared.sd_upscalers[0]
        print(f"could not find upscaler named {name or '<empty string>'}, using {upscaler.name} as a fallback")
    return upscaler.scaler.upscale(image, scale, upscaler.data_path)


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


class Grid(namedtuple("_Grid", ["tiles", "tile_w", "tile_h", "image_w", "image_h", "overlap"])):
    """tiles: [[y, tile_h, [[x, tile_w, tile image], ...]], ...] (rows, then the tiles of each row)."""

    @property
    def tile_count(self) -> int:
        return sum(len(row[2]) for row in self.tiles)


def _tile_origins(size, tile, overlap):
    """Tile positions along one side: as many tiles as needed with at least `overlap` shared pixels, spread
    evenly (positions truncated to int), the last one moved back inside so that it ends at the edge."""
    count = math.ceil((size - overlap) / (tile - overlap))
    spacing = (size - tile) / (count - 1) if count > 1 else 0
    origins = []
    for index in range(count):
        origin = int(index * spacing)
        if origin + tile >= size:
            origin = size - tile
        origins.append(origin)
    return origins


def split_grid(image, tile_w=512, tile_h=512, overlap=64) -> Grid:
    """The image cut into tile_w x tile_h tiles (each exactly that size) overlapping by at least `overlap`."""
    grid = Grid([], tile_w, tile_h, image.width, image.height, overlap)
    for y in _tile_origins(image.height, tile_h, overlap):
        row = [[x, tile_w, image.crop((x, y, x + tile_w, y + tile_h))] for x in _tile_origins(image.width, tile_w, overlap)]
        grid.tiles.append([y, tile_h, row])
    return grid


def _ramp(length, across, horizontal):
    """An L mask rising from 0 over `length` pixels (255 * i / length, truncated) along x or y."""
    values = (np.arange(length, dtype=np.float32) * 255 / max(length, 1)).astype(np.uint8)
    block = np.tile(values[None, :], (across, 1)) if horizontal else np.tile(values[:, None], (1, across))
    return Image.fromarray(block, 'L')


def combine_grid(grid):
    """Pastes the tiles back: within a row each tile after the first fades in over the first `overlap` columns
    of it (linear ramp), then the rest of it is pasted plainly; rows are joined the same way over `overlap` rows."""
    overlap = grid.overlap
    fade_x = _ramp(overlap, grid.tile_h, horizontal=True)
    fade_y = _ramp(overlap, grid.image_w, horizontal=False)
    combined = Image.new("RGB", (grid.image_w, grid.image_h))
    for y, h, row in grid.tiles:
        strip = Image.new("RGB", (grid.image_w, h))
        for x, w, tile in row:
            if x == 0:
                strip.paste(tile, (0, 0))
                continue
            strip.paste(tile.crop((0, 0, overlap, h)), (x, 0), mask=fade_x)
            strip.paste(tile.crop((overlap, 0, w, h)), (x + overlap, 0))
        if y == 0:
            combined.paste(strip, (0, 0))
            continue
        combined.paste(strip.crop((0, 0, strip.width, overlap)), (0, y), mask=fade_y)
        combined.paste(strip.crop((0, overlap, strip.width, h)), (0, y + overlap))
    return combined


def save_image(image, path, basename, seed=None, prompt=None, extension='png', info=None, short_filename=False, no_prompt=False, grid=False, pnginfo_section_name='parameters', p=None, existing_info=None, forced_filename=None, suffix="", save_to_dirs=None):
    """Nothing is written by the stand-in."""
    return None, None


def fix_png_transparency(image):
    """A palette/RGB PNG with a transparency chunk is converted to RGBA."""
    if image.mode not in ("RGB", "P") or not isinstance(image.info.get("transparency"), bytes):
        return image
    return image.convert("RGBA")


def fix_image(image):
    """EXIF orientation applied and PNG transparency made an alpha channel (errors are ignored)."""
    if image is None:
        return None
    try:
        image = ImageOps.exif_transpose(image)
        image = fix_png_transparency(image)
    except Exception:
        pass
    return image


def read(fp, **kwargs):
    image = Image.open(fp, **kwargs)
    return fix_image(image)


def read_info_from_image(image):
    items = (image.info or {}).copy()
    geninfo = items.pop('parameters', None)
    return geninfo, items
