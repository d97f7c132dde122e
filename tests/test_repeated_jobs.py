"""One `p` processed several times (the img2img Batch tab, Loopback, SD upscale's tiles): every image gets InstantID
with its own init image's pose, nothing nests or leaks, and tiles without a face are left as they were."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    FACE, HintSizes, generate, models_root, no_hooks_left, photo, pixels, positional, ui, unets, webui,
)

from lib_instantid.hosts import a1111
from lib_instantid.hosts import webui as webui_host
from tests.fixtures.face_models import expected_face

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

ON = dict(enabled=True, face_image=[FACE])


def test_loopback_gives_every_loop_instantid_from_its_own_init_image(ui, unets, monkeypatch):
    hints = HintSizes(monkeypatch)
    init = photo((70, 150), 30, colour="magenta")
    loops = {"Loopback": {"Loops": 3, "Final denoising strength": 0.6}}
    plain = ui.img2img(script_args=loops, select="Loopback", init_images=[init], prompt="a", steps=3, seed=1,
                       width=64, height=64, denoising_strength=0.6)
    result = ui.img2img(script_args={**loops, "InstantID": positional(**ON)}, select="Loopback",
                        init_images=[init], prompt="a", steps=3, seed=1, width=64, height=64,
                        denoising_strength=0.6)
    assert np.abs(pixels(result) - pixels(plain)).max() > 3
    assert len(hints.drawn) == 3  # one keypoint image per loop: each loop found the face in its own init image
    assert isinstance(result.p.__dict__["sample"], webui_host.SampleScope)
    assert not isinstance(result.p.__dict__["sample"].original, webui_host.SampleScope)  # installed once, not nested
    assert no_hooks_left(unets["sdxl"])


def test_batch_tab_follows_each_image_pose(ui, unets, tmp_path, monkeypatch):
    hints = HintSizes(monkeypatch)
    centres = [(70, 150), (180, 90)]
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i, centre in enumerate(centres):
        photo(centre, 30, colour="magenta").save(folder / f"{i}.png")
    result = ui.img2img_batch(str(folder), script_args={"InstantID": positional(**ON)}, prompt="a", steps=3, seed=1,
                              width=64, height=64, denoising_strength=0.75)
    assert len(result.processed.images) == 2
    for (size, points), centre in zip(hints.drawn, centres):
        _, keypoints = expected_face(centre, 30)
        np.testing.assert_allclose(points, (keypoints + 0.5) * 0.25 - 0.5, atol=0.5)
    assert no_hooks_left(unets["sdxl"])


def test_batch_tab_with_an_image_without_a_face_says_which(ui, tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    photo((70, 150), 30, colour="magenta").save(folder / "0.png")
    Image.new("RGB", (256, 256), (90, 90, 90)).save(folder / "1.png")
    with pytest.raises(webui_host.InstantID, match="No face found in the init image"):
        ui.img2img_batch(str(folder), script_args={"InstantID": positional(**ON)}, prompt="a", steps=3, seed=1,
                         width=64, height=64, denoising_strength=0.75)


def sd_upscale(ui, instantid, batch_size):
    """SD upscale of a 128x128 image with the face in its top-left quarter: tiles of 64x64, no overlap."""
    init = Image.new("RGB", (128, 128), (90, 90, 90))
    init.paste(photo((128, 128), 60, colour="magenta").resize((64, 64)), (0, 0))
    args = {"SD upscale": {"Tile overlap": 0, "Scale Factor": 1.0, "Upscaler": 0}}
    if instantid is not None:
        args["InstantID"] = instantid
    return ui.img2img(script_args=args, select="SD upscale", init_images=[init], prompt="a", steps=3, seed=1,
                      width=64, height=64, denoising_strength=0.5, batch_size=batch_size)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_sd_upscale_serves_the_tile_with_the_face_and_leaves_the_others(ui, unets, batch_size, monkeypatch):
    hints = HintSizes(monkeypatch)
    plain = np.asarray(sd_upscale(ui, None, batch_size).processed.images[0]).astype(np.int16)
    result = sd_upscale(ui, positional(**ON), batch_size)
    out = np.asarray(result.processed.images[0]).astype(np.int16)
    assert out.shape == plain.shape == (128, 128, 3)
    face_tile = (slice(0, 64), slice(0, 64))
    assert np.abs(out[face_tile] - plain[face_tile]).max() > 3
    without = np.ones(plain.shape[:2], bool)
    without[face_tile] = False
    assert np.array_equal(out[without], plain[without])  # tiles without a face: bit-identical to plain
    assert len(hints.drawn) == 1  # keypoints drawn for the face's tile only
    assert no_hooks_left(unets["sdxl"])
    if batch_size == 2:  # the infotext is the first batch's: the face's tile and one without
        assert "Images without a face: 1 of 2 (left unchanged)" in result.processed.infotexts[0]
