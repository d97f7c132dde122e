"""Helpers for driving the extension through the A1111 stand-in: a models folder, the loaded extension, jobs with
the panel's positional arguments, and spies on what the hooks were given."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from tests.webui.harness import EXTENSION_SCRIPT, webui  # noqa: F401  (fixture; puts the stand-in on sys.path)
from tests.jobs_common import (  # noqa: F401  (fixtures and helpers the A1111 tests import from here)
    FACE_CENTRE, FACE_SIDE, POSE_CENTRE, POSE_SIDE, SIZE, HintSizes, b64, models_root, photo, pixels, png_bytes,
    positional, unets,
)

from lib_instantid.hosts import a1111


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


def generate(webui, *, instantid=None, img2img=False, opts=None, **job):
    job = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "seed": 1, **SIZE, **job}
    script_args = {"InstantID": instantid} if instantid is not None else None
    run = webui.img2img if img2img else webui.txt2img
    return run(script_args=script_args, opts=opts, **job)


def no_hooks_left(unet: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in unet.modules())


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
