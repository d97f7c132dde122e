"""What the end-to-end tests of both hosts share: the models folder, faces, the panel's positional arguments, pixels.
Imports no WebUI `modules` (each host's stand-in owns that name in its own process)."""
from __future__ import annotations

import base64
import io
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lib_instantid.args import InstantIDArgs
from lib_instantid.conditioning import HintFeatures
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


def positional(**values) -> list:
    """The panel's positional values for the InstantID script (defaults as the panel has them)."""
    defaults = {f.name: f.default for f in fields(InstantIDArgs)}
    defaults.update(identitynet_model="Automatic", adapter_model="Automatic", face_image=None)
    defaults.update(values)
    return [defaults[f.name] for f in fields(InstantIDArgs)]


def pixels(result, index=0) -> np.ndarray:
    """The index-th generated image (after the grid, when there is one)."""
    processed = result.processed
    return np.asarray(processed.images[processed.index_of_first_image + index]).astype(np.int16)


def api_job(client, instantid_args, **body):
    """A txt2img API request with InstantID's arguments (a list: positional values, or one dict of named ones)."""
    return client.post("/sdapi/v1/txt2img", json={
        "prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "seed": 1, **SIZE,
        "alwayson_scripts": {"InstantID": {"args": instantid_args}}, **body})


def decode(response, index=0) -> np.ndarray:
    """The index-th image of an API response."""
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(response.json()["images"][index])))).astype(np.int16)


class HintSizes:
    """Records the size and keypoints of every keypoint image the IdentityNet is given."""

    def __init__(self, monkeypatch):
        self.drawn: list[tuple[tuple[int, int], np.ndarray]] = []
        original = HintFeatures.image

        def image(hint, width, height, image=0):
            self.drawn.append(((width, height), np.array(hint.keypoints_for(width, height, image))))
            return original(hint, width, height, image)

        monkeypatch.setattr(HintFeatures, "image", image)


def event_handlers(demo, component, event: str = "change") -> list[tuple]:
    """(function, ids of its output components) of each handler of a component's event in a built UI, read from
    the Blocks the way gradio 3 (A1111) or gradio 4 (Forge) keeps them."""
    if isinstance(demo.fns, dict):  # gradio 4: BlockFunctions by id, each with its (block id, event) targets
        return [(f.fn, [o._id for o in f.outputs]) for f in demo.fns.values() if (component._id, event) in f.targets]
    return [(fn.fn, dependency["outputs"]) for dependency, fn in zip(demo.dependencies, demo.fns)
            if component._id in dependency["targets"] and dependency["trigger"] == event]


def block_by_id(demo, elem_id: str):
    return next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == elem_id)


UI_DEFAULT_TYPES = {"Slider", "Radio", "Checkbox", "Textbox", "Number", "Dropdown"}


def check_ui_default_keys_unique(demo, tab: str = "txt2img") -> None:
    """Every panel field whose UI default the WebUI keeps (ui-config.json) has a key of its own. The WebUI keys a
    field by tab and label (under the script's file name for the fields `ui()` returns) and gives each later
    field with that key the first one's value: two slots labelled alike would all show the first slot's default."""
    keys = []
    for block in descendants(block_by_id(demo, f"script_{tab}_instantid_enabled")):
        if type(block).__name__ in UI_DEFAULT_TYPES and getattr(block, "label", None) is not None:
            source = getattr(block, "custom_script_source", None)
            keys.append((f"customscript/{source}/" if source else "") + f"{tab}/{block.label}")
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    assert len(keys) > 30 and not duplicated, duplicated


def descendants(block):
    for child in getattr(block, "children", []):
        yield child
        yield from descendants(child)


def check_photo_removal(demo, photos: list[str]) -> None:
    """In the built panel, clicking the second face photo's thumbnail offers its removal, and the Remove button
    leaves the face photos without it (the last one removed leaves none)."""
    import gradio as gr

    from lib_instantid.images import PhotoFile

    face, thumbnails, remove = (block_by_id(demo, f"script_txt2img_instantid_{name}")
                                for name in ("face_image", "thumbnails", "remove_photo"))
    (chosen_by, chosen_outputs), = event_handlers(demo, thumbnails, "select")
    (removed_by, removed_outputs), = event_handlers(demo, remove, "click")
    assert chosen_outputs[1] == remove._id and removed_outputs == [face._id]
    uploaded = [PhotoFile(p) for p in photos]
    index, offer = chosen_by(gr.SelectData(thumbnails, {"index": 1, "value": None}))
    assert index == 1 and (offer["value"], offer["visible"]) == ("Remove photo 2", True)
    assert removed_by(uploaded, index)["value"] == [photos[0]]
    assert removed_by(uploaded[:1], 0)["value"] is None


def check_ranges_kept(demo) -> None:
    """Each path's start and end sliders act as one range in the built panel: moving one past the other takes the
    other along (through the sliders' release events)."""
    for path in ("identitynet", "adapter"):
        start, end = (block_by_id(demo, f"script_txt2img_instantid_{path}_{edge}") for edge in ("start", "end"))
        (start_moved, pushes), = event_handlers(demo, start, "release")
        (end_moved, pulls), = event_handlers(demo, end, "release")
        assert (pushes, pulls) == ([end._id], [start._id])
        assert start_moved(0.7, 0.4)["value"] == 0.7 and start_moved(0.2, 0.4)["value"] == 0.4  # the end follows
        assert end_moved(0.7, 0.4)["value"] == 0.4 and end_moved(0.2, 0.4)["value"] == 0.2  # the start follows
