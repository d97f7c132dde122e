"""Helpers for driving the extension through the A1111 stand-in: a models folder, the loaded extension, jobs with
the panel's positional arguments, and spies on what the hooks were given."""
from __future__ import annotations

import base64
import io
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.webui.harness import EXTENSION_SCRIPT, webui  # noqa: F401  (fixture; puts the stand-in on sys.path)

from lib_instantid.args import InstantIDArgs
from lib_instantid.conditioning import HintFeatures
from lib_instantid.hosts import a1111
from tests.fixtures import tiny_models as tm
from tests.fixtures.face_models import paint_marker, write_antelopev2

SIZE = dict(width=64, height=64)
FACE_CENTRE, FACE_SIDE = (128, 120), 40
POSE_CENTRE, POSE_SIDE = (70, 150), 30


@pytest.fixture(scope="module")
def models_root(tmp_path_factory, weight_files) -> Path:
    """A WebUI models folder: SDXL-like tiny models in our folder (official layout), SD1.5-like tiny ones in the
    ControlNet folder under sd-webui-controlnet's names, and the antelopev2 pack (synthetic)."""
    root = tmp_path_factory.mktemp("webui_models")
    shutil.copytree(weight_files["sdxl"]["identitynet_folder"], root / "instantid" / "ControlNetModel")
    shutil.copy(weight_files["sdxl"]["adapter_bin"], root / "instantid" / "ip-adapter.bin")
    (root / "ControlNet").mkdir()
    shutil.copy(weight_files["sd15"]["identitynet_single"], root / "ControlNet" / "control_instant_id_sd15.safetensors")
    shutil.copy(weight_files["sd15"]["adapter_bin"], root / "ControlNet" / "ip-adapter_instant_id_sd15.bin")
    write_antelopev2(root / "insightface" / "models")
    return root


@pytest.fixture(scope="module")
def unets():
    return {kind: tm.tiny_unet(kind) for kind in tm.KINDS}


def photo(centre=FACE_CENTRE, side=FACE_SIDE, size=(256, 256), colour="cyan") -> Image.Image:
    """A plain photo with one face the synthetic detector finds (a coloured marker)."""
    pixels = np.full((size[1], size[0], 3), 90, np.uint8)
    return Image.fromarray(paint_marker(pixels, centre, side, colour))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def b64(image: Image.Image) -> str:
    return base64.b64encode(png_bytes(image)).decode()


def upload(data: bytes, name: str = "face.png"):
    """What the panel's file upload hands the script in gradio 3.41: a temporary file object whose `name` is the
    path of the uploaded file's copy."""
    folder = Path(tempfile.mkdtemp(prefix="instantid-upload-"))
    (folder / name).write_bytes(data)
    file = tempfile.NamedTemporaryFile(delete=False, dir=folder)
    file.name = str(folder / name)
    file.orig_name = name
    return file


FACE = upload(png_bytes(photo()))


@pytest.fixture
def ui(webui, models_root, unets):
    """A WebUI with the extension loaded and the SDXL-like checkpoint."""
    webui.set_models_path(models_root)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT)
    yield webui
    a1111.release_models()


def positional(**values) -> list:
    """The panel's positional values for the InstantID script (defaults as the panel has them)."""
    defaults = {f.name: f.default for f in fields(InstantIDArgs)}
    defaults.update(identitynet_model="Automatic", adapter_model="Automatic", face_image=None)
    defaults.update(values)
    return [defaults[f.name] for f in fields(InstantIDArgs)]


def generate(webui, *, instantid=None, img2img=False, opts=None, **job):
    job = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "seed": 1, **SIZE, **job}
    script_args = {"InstantID": instantid} if instantid is not None else None
    run = webui.img2img if img2img else webui.txt2img
    return run(script_args=script_args, opts=opts, **job)


def pixels(result, index=0) -> np.ndarray:
    """The index-th generated image (after the grid, when there is one)."""
    processed = result.processed
    return np.asarray(processed.images[processed.index_of_first_image + index]).astype(np.int16)


def no_hooks_left(unet: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


class HintSizes:
    """Records the size and keypoints of every keypoint image the IdentityNet is given."""

    def __init__(self, monkeypatch):
        self.drawn: list[tuple[tuple[int, int], np.ndarray]] = []
        original = HintFeatures.image

        def image(hint, width, height, image=0):
            self.drawn.append(((width, height), np.array(hint.keypoints_for(width, height, image))))
            return original(hint, width, height, image)

        monkeypatch.setattr(HintFeatures, "image", image)


class RowKinds:
    """What the row tracker told the hooks in each UNet call, next to what the stand-in actually sent."""

    def __init__(self, monkeypatch):
        self.calls: list[list[int]] = []
        original = a1111.RowTracker.__call__

        def call(tracker, x, context):
            info = original(tracker, x, context)
            self.calls.append(list(info.row_kinds))
            return info

        monkeypatch.setattr(a1111.RowTracker, "__call__", call)
