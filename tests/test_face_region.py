"""face_region: where InstantID acts, per image and canvas size (the math is checked against the reference pipeline
in test_parity / test_forge_parity): around the posed face, or where a mask says; off changes nothing."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.jobs_common import api_job
from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    FACE, b64, generate, models_root, photo, pixels, positional, ui, unets, webui,
)

from lib_instantid.hosts import poses as posing
from lib_instantid.hosts import webui as webui_host
from lib_instantid.images import decode_image
from lib_instantid.session import Session

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


class Regions:
    """The face region of every canvas size a job's session was asked for."""

    def __init__(self, monkeypatch):
        self.masks: dict[tuple[int, int], np.ndarray] = {}
        region_of = Session.region_of

        def spy(session, rows, identity, latent_shape):
            result = region_of(session, rows, identity, latent_shape)
            if result is not None:
                self.masks[(latent_shape[-1] * 8, latent_shape[-2] * 8)] = result.pixels[0, 0].numpy()
            return result

        monkeypatch.setattr(Session, "region_of", spy)


def test_region_mask_is_the_enlarged_box_fading_out():
    mask = posing.region_mask(np.array([20.0, 30.0, 40.0, 50.0]), (80, 80))
    assert mask[40, 30] == 1.0 and mask[30 - 4, 20 - 4 + 1] == 1.0  # inside, and inside the 20 % margin
    assert mask[0, 0] == 0.0 and 0.0 < mask[40, 40 + 4 + 1] < 1.0  # far away; in the feathered band
    assert mask.dtype == np.float32 and mask.shape == (80, 80)


def test_face_follows_the_posed_face_at_every_size(ui, monkeypatch):
    regions = Regions(monkeypatch)
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="face"),
                      enable_hr=True, hr_scale=2, steps=2)
    face = webui_host.face_analyzer().detect(decode_image(FACE, "face_image"))[0]
    assert set(regions.masks) == {(64, 64), (128, 128)}
    to_first = posing.webui_resize(1, face.image_size, (64, 64))
    to_hires = to_first.then(posing.Placement.resize((64, 64), (128, 128)))  # the latent upscale
    for size, placement in (((64, 64), to_first), ((128, 128), to_hires)):
        box = placement.apply(face.box.reshape(2, 2)).reshape(4)
        np.testing.assert_allclose(regions.masks[size], posing.region_mask(box, size), atol=1e-6)
    assert "Face region: face" in result.processed.infotexts[0]


def test_a_chosen_head_pose_gives_its_head_box(ui, monkeypatch):
    regions = Regions(monkeypatch)
    generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="face", pose="front",
                                      pose_box=(0.3, 0.5, 0.4)))
    mask = regions.masks[(64, 64)]
    assert mask[32, int(0.3 * 64)] == 1.0 and mask[32, 63] == 0.0


def test_mask_is_stretched_to_each_canvas(ui, monkeypatch):
    regions = Regions(monkeypatch)
    drawn = np.zeros((32, 16), np.uint8)
    drawn[:, :8] = 255  # the left half
    never = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE])))
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="mask",
                                               face_region_mask=Image.fromarray(drawn)))
    mask = regions.masks[(64, 64)]
    assert mask[:, :28].min() == 1.0 and mask[:, 36:].max() == 0.0
    assert not np.array_equal(pixels(result), never)


def test_mask_without_a_mask_is_refused_naming_the_field(ui):
    response = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "face_region": "mask"}])
    assert response.status_code == 422 and "face_region_mask" in response.json()["detail"]
    bad = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "face_region": "body"}])
    assert bad.status_code == 422 and "face_region" in bad.json()["detail"]


def canvas_painting(box: tuple[int, int, int, int]) -> str:
    """What gradio 3's canvas sends after painting the box (x0, y0, x1, y1): black strokes on white, a data URL."""
    canvas = np.full((512, 512, 3), 255, np.uint8)
    x0, y0, x1, y1 = box
    canvas[y0:y1, x0:x1] = 0
    return "data:image/png;base64," + b64(Image.fromarray(canvas))


def panel_control(webui, name: str):
    from dataclasses import fields

    from lib_instantid.args import InstantIDArgs

    return webui.runner().script("InstantID").controls[[f.name for f in fields(InstantIDArgs)].index(name)]


def test_the_panel_paints_the_mask_with_a_brush(ui, monkeypatch):
    painter = panel_control(ui, "face_region_mask")
    assert (painter.source, painter.tool) == ("canvas", "sketch")  # a blank canvas and a brush, no upload needed
    mask = painter.preprocess(canvas_painting((0, 0, 256, 512)))  # the left half painted
    painted = np.asarray(mask)
    assert mask.mode == "L" and painted[:, :250].min() == 255 and painted[:, 262:].max() == 0
    regions = Regions(monkeypatch)
    generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="mask", face_region_mask=mask))
    assert regions.masks[(64, 64)][:, :28].min() == 1.0 and regions.masks[(64, 64)][:, 36:].max() == 0.0


def test_an_unpainted_mask_is_refused_not_run_as_nowhere(ui):
    untouched = panel_control(ui, "face_region_mask").preprocess(canvas_painting((0, 0, 0, 0)))
    with pytest.raises(Exception, match="\"Region mask\" is black everywhere: paint"):
        generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="mask",
                                          face_region_mask=untouched))
    black = b64(Image.new("L", (64, 64)))
    response = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "face_region": "mask",
                                          "face_region_mask": black}])
    assert response.status_code == 422 and "face_region_mask is black everywhere" in response.json()["detail"]
    person = {"face_image": b64(photo()), "region": "mask", "region_mask": black}
    response = api_job(ui.api_client(), [{"enabled": True, "identities": [person]}])
    assert response.status_code == 422 and "identities[0].region is 'mask' but its region_mask is black " \
        "everywhere" in response.json()["detail"]


def test_off_is_bit_identical_and_asks_for_no_region(ui, monkeypatch):
    regions = Regions(monkeypatch)
    default = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE])))
    off = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="off")))
    assert np.array_equal(default, off) and not regions.masks


def test_face_acts_but_not_as_everywhere(ui):
    never = pixels(generate(ui))
    everywhere = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE])))
    around = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE], face_region="face")))
    assert not np.array_equal(around, everywhere) and not np.array_equal(around, never)
