"""Images as users send them (base64 from the API, PIL or numpy from the UI) turned into PIL images."""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from .errors import InstantIDError

MAX_PIXELS = 100_000_000  # a decoded image beyond this is refused instead of filling memory
SOURCE_DIGEST = "instantid_source_digest"  # image.info key: digest of the file bytes the image was decoded from


class PhotoFile(str):
    """A photo uploaded in the panel, as its file path. A str: copies of the job's arguments (some extensions
    deep-copy them; gradio's temporary-file objects cannot be) and gradio's own File output take it."""


def uploaded_photos(preprocess: Callable[[object], object]) -> Callable[[object], list[PhotoFile] | None]:
    """Wraps a gradio File component's `preprocess` so that the script receives `PhotoFile`s (gradio 3 hands it
    temporary-file objects, gradio 4 path strings)."""

    def as_photo_files(value: object) -> list[PhotoFile] | None:
        files = preprocess(value)
        if files is None:
            return None
        return [PhotoFile(getattr(f, "name", f)) for f in (files if isinstance(files, list) else [files])]

    return as_photo_files


def painted_mask(preprocess: Callable[[object], object]) -> Callable[[object], Image.Image | None]:
    """Wraps a brush canvas's `preprocess` so that the script receives the painted region as a greyscale mask,
    white where painted: gradio 3's canvas (greyscale, inverted) already is one; gradio 4's editor gives a dict
    whose layers hold the strokes on transparency. None when nothing was painted."""

    def as_mask(value: object) -> Image.Image | None:
        painted = preprocess(value)
        if not isinstance(painted, dict):
            return painted
        strokes = [layer.getchannel("A") for layer in painted.get("layers") or [] if layer.mode == "RGBA"]
        if not strokes:
            return None
        mask = strokes[0]
        for layer in strokes[1:]:
            mask = ImageChops.lighter(mask, layer)
        return mask

    return as_mask


def decode_image(value: object, field: str) -> Image.Image:
    """A PIL image, EXIF-rotated, from base64 (a data-URL prefix allowed), file bytes, a panel upload (gradio's
    temporary file), a PIL image, a numpy array, or gradio's {"image": ...} dict. `field` names the setting in error
    messages."""
    if isinstance(value, dict) and "image" in value:  # gradio's image-with-tool value
        value = value["image"]
    if isinstance(value, Image.Image):
        return ImageOps.exif_transpose(value)
    if isinstance(value, np.ndarray):
        return _from_array(value, field)
    if isinstance(value, PhotoFile):
        return _open(_read_upload(value, field), field)
    if isinstance(value, str):
        return _from_base64(value, field)
    if isinstance(value, bytes):
        return _open(value, field)
    if _is_upload(value):
        return _open(_read_upload(value.name, field), field)
    raise InstantIDError(
        f"{field}: expected an image as a base64 string, got {type(value).__name__}.", field=field
    )


def _read_upload(path: str, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InstantIDError(f"{field}: the uploaded photo {Path(path).name} cannot be read any more ({e.strerror}); "
                             "upload it again.", field=field) from e


def _is_upload(value: object) -> bool:
    """A panel upload: gradio hands the script a temporary file object (never reachable from the JSON API)."""
    return isinstance(getattr(value, "name", None), str) and not isinstance(value, str) and Path(value.name).is_file()


def _from_array(value: np.ndarray, field: str) -> Image.Image:
    if value.ndim not in (2, 3) or value.dtype not in (np.uint8, np.uint16):
        raise InstantIDError(f"{field}: unsupported image array {value.shape} {value.dtype}.", field=field)
    return Image.fromarray(value)


def _from_base64(value: str, field: str) -> Image.Image:
    text = value.strip()
    if not text:
        raise InstantIDError(f"{field} is empty: send the image as a base64 string.", field=field)
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InstantIDError(f"{field} is not valid base64 ({e}).", field=field) from e
    return _open(data, field)


def _open(data: bytes, field: str) -> Image.Image:
    try:
        with warnings.catch_warnings():  # our own size limit replaces Pillow's decompression-bomb warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # reads the header only
            if image.width * image.height > MAX_PIXELS:
                raise InstantIDError(
                    f"{field} is {image.width}x{image.height} pixels; up to {MAX_PIXELS // 10**6} megapixels are "
                    "accepted. Send a smaller image (a face photo needs far fewer).",
                    field=field,
                )
            image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InstantIDError(
            f"{field} is not a readable image ({type(e).__name__}: {e}). Send a PNG, JPEG or WebP as base64.",
            field=field,
        ) from e
    image.info[SOURCE_DIGEST] = hashlib.blake2b(data, digest_size=16).hexdigest()
    return ImageOps.exif_transpose(image)
