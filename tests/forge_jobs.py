"""Helpers for driving the extension through the Forge stand-in (tests/forge): the loaded extension and jobs. Import
it only from test_forge*.py files (the Forge stand-in runs in its own process)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.forge.pytest_support import forge  # noqa: F401  (fixture)
from tests.jobs_common import (  # noqa: F401  (fixtures and helpers the Forge tests import from here)
    FACE_CENTRE, FACE_SIDE, POSE_CENTRE, POSE_SIDE, SIZE, api_job, b64, decode, models_root, photo, pixels, png_bytes,
    positional, unets,
)

from lib_instantid.images import PhotoFile

EXTENSION_SCRIPT = str(Path(__file__).resolve().parents[1] / "scripts" / "instantid.py")


@pytest.fixture(scope="module")
def face(tmp_path_factory) -> PhotoFile:
    """The panel's upload as the script receives it on gradio 4 (a path, wrapped by images.uploaded_photos)."""
    path = tmp_path_factory.mktemp("uploads") / "face.png"
    path.write_bytes(png_bytes(photo()))
    return PhotoFile(str(path))


@pytest.fixture
def ui(forge, models_root, unets, monkeypatch):
    """A Forge with the extension loaded and the SDXL-like checkpoint."""
    from modules import shared

    monkeypatch.setattr(shared, "models_path", str(models_root))
    forge.set_model(unets["sdxl"], "sdxl")
    forge.load_extension(EXTENSION_SCRIPT)
    yield forge
    from lib_instantid.hosts import forge as forge_host

    forge_host.release_models()


def generate(forge, *, instantid=None, img2img=False, **job):
    job = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "seed": 1, **SIZE, **job}
    script_args = {"InstantID": instantid} if instantid is not None else None
    return (forge.img2img if img2img else forge.txt2img)(script_args=script_args, **job)
