"""modules/masking.py stand-in: get_crop_region_v2 (bounding box of the non-zero mask, padded and clipped; None for an empty
mask), expand_crop_region (grown to the processing size's aspect ratio, kept inside the image) and fill ("fill" masked content
is NOT modelled: the image is returned unchanged)."""


def get_crop_region_v2(mask, pad=0):
    box = mask.getbbox()
    if not box:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, mask.size[0]), min(y2 + pad, mask.size[1])


def expand_crop_region(crop_region, processing_width, processing_height, image_width, image_height):
    x1, y1, x2, y2 = crop_region
    ratio_crop_region = (x2 - x1) / (y2 - y1)
    ratio_processing = processing_width / processing_height
    if ratio_crop_region > ratio_processing:
        desired = (x2 - x1) / ratio_processing
        diff = int(desired - (y2 - y1))
        y1 -= diff // 2
        y2 += diff - diff // 2
        if y2 >= image_height:
            y1 -= y2 - image_height
            y2 = image_height
        if y1 < 0:
            y2 -= y1
            y1 = 0
        y2 = min(y2, image_height)
    else:
        desired = (y2 - y1) * ratio_processing
        diff = int(desired - (x2 - x1))
        x1 -= diff // 2
        x2 += diff - diff // 2
        if x2 >= image_width:
            x1 -= x2 - image_width
            x2 = image_width
        if x1 < 0:
            x2 -= x1
            x1 = 0
        x2 = min(x2, image_width)
    return x1, y1, x2, y2


def fill(image, mask):
    return image
