"""modules/images.py stand-in: resize_image (0 resize, 1 crop and resize, 2 resize and fill; upscalers by name are plain
LANCZOS / NEAREST resizes), flatten (RGBA over the background colour), image_grid, save_image (no-op: nothing is written)."""
import math

from PIL import Image

LANCZOS = Image.Resampling.LANCZOS
NEAREST = Image.Resampling.NEAREST


def resize_image(resize_mode, im, width, height, upscaler_name=None, force_RGBA=False):
    resample = NEAREST if upscaler_name == "Nearest" else LANCZOS
    if resize_mode == 0 or upscaler_name == "None" and resize_mode == 0:
        return im.resize((width, height), resample=resample)
    ratio, src_ratio = width / height, im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
        resized = im.resize((src_w, src_h), resample=resample)
        res = Image.new("RGB" if not force_RGBA else "RGBA", (width, height))
        res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
        return res
    src_w = width if ratio < src_ratio else im.width * height // im.height
    src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = im.resize((src_w, src_h), resample=resample)
    res = Image.new("RGB" if not force_RGBA else "RGBA", (width, height))
    res.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if ratio < src_ratio and height - src_h > 0:
        fill = height // 2 - src_h // 2
        res.paste(resized.resize((width, fill), box=(0, 0, width, 0)), box=(0, 0))
        res.paste(resized.resize((width, height - src_h - fill), box=(0, resized.height, width, resized.height)), box=(0, fill + src_h))
    elif ratio > src_ratio and width - src_w > 0:
        fill = width // 2 - src_w // 2
        res.paste(resized.resize((fill, height), box=(0, 0, 0, height)), box=(0, 0))
        res.paste(resized.resize((width - src_w - fill, height), box=(resized.width, 0, resized.width, height)), box=(fill + src_w, 0))
    return res


def flatten(img, bgcolor):
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, bgcolor)
        background.paste(img, mask=img)
        img = background
    return img.convert("RGB")


def image_grid(imgs, batch_size=1, rows=None):
    rows = rows or max(1, round(math.sqrt(len(imgs))))
    cols = math.ceil(len(imgs) / rows)
    w, h = imgs[0].size
    grid = Image.new("RGB", size=(cols * w, rows * h), color="black")
    for i, img in enumerate(imgs):
        grid.paste(img, box=(i % cols * w, i // cols * h))
    return grid


def save_image(image, path, basename, seed=None, prompt=None, extension="png", info=None, *args, **kwargs):
    return None, None
