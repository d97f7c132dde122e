"""backend/misc/image_resize.py stand-in: `adaptive_resize(samples, width, height, method, crop)`, the ControlNet hint resize:
with crop "center" the BCHW input is first cropped to the target's aspect ratio around its centre, then interpolated."""
import torch.nn.functional as F


def adaptive_resize(samples, width, height, upscale_method, crop):
    if crop == "center":
        old_w, old_h = samples.shape[3], samples.shape[2]
        old_aspect, new_aspect = old_w / old_h, width / height
        x = y = 0
        if old_aspect > new_aspect:
            x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
        elif old_aspect < new_aspect:
            y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
        samples = samples[:, :, y:old_h - y, x:old_w - x]
    return F.interpolate(samples, size=(height, width), mode=upscale_method)
