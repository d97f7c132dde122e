"""modules/masking.py stand-in: crop region of a mask (v2: None for a blank mask), its expansion to the
processing aspect ratio, and the blur-based fill of masked content."""
from PIL import Image, ImageFilter, ImageOps


def get_crop_region_v2(mask, pad=0):
    """(x1, y1, x2, y2) bounding the non-zero pixels, grown by `pad` and clipped to the image; None if blank."""
    mask = mask if isinstance(mask, Image.Image) else Image.fromarray(mask)
    box = mask.getbbox()
    if not box:
        return None
    if not pad:
        return box
    x1, y1, x2, y2 = box
    width, height = mask.size
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, width), min(y2 + pad, height)


def get_crop_region(mask, pad=0):
    """Pre-1.9 behaviour: a blank mask gives an inverted (invalid unless pad is large) box instead of None."""
    mask = mask if isinstance(mask, Image.Image) else Image.fromarray(mask)
    box = get_crop_region_v2(mask, pad)
    if box:
        return box
    x1, y1 = mask.size
    x2 = y2 = 0
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])


def _grow_span(lo, hi, wanted, limit):
    """Grow [lo, hi) symmetrically by `wanted` pixels (the extra odd pixel at the end), shift it back inside
    [0, limit) when it runs past the far edge, then clamp both ends."""
    lo, hi = lo - wanted // 2, hi + (wanted - wanted // 2)
    slide_back = max(hi - limit, 0)  # past the far edge: move the whole span back
    lo, hi = lo - slide_back, hi - slide_back
    if lo < 0:  # now before the near edge: move it forward again
        lo, hi = 0, hi - lo
    return lo, min(hi, limit)


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    """Expand the crop box so its aspect matches processing_width/processing_height (only the short side grows)."""
    x1, y1, x2, y2 = crop_region
    crop_w, crop_h = x2 - x1, y2 - y1
    target_ratio = processing_width / processing_height
    if crop_w / crop_h > target_ratio:  # too wide for the target: grow the height
        y1, y2 = _grow_span(y1, y2, int(crop_w / target_ratio - crop_h), image_height)
    else:  # too narrow (or exact): grow the width
        x1, x2 = _grow_span(x1, x2, int(crop_h * target_ratio - crop_w), image_width)
    return x1, y1, x2, y2


# (blur radius, times composited): from a wide blur that reaches deep into the hole down to the sharp original
_FILL_PASSES = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))


def fill(image, mask):
    """Paints the masked area with colours bled in from the rest of the image: blurred copies of the kept
    pixels (premultiplied alpha, so the hole does not darken them) are composited from widest to sharpest."""
    size = (image.width, image.height)
    kept = Image.new('RGBa', size)
    kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(mask.convert('L')))
    result = Image.new('RGBA', size)
    for radius, times in _FILL_PASSES:
        layer = kept.filter(ImageFilter.GaussianBlur(radius)).convert('RGBA')
        for _ in range(times):
            result.alpha_composite(layer)
    return result.convert("RGB")
