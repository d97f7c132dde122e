"""A head pose without a pose photo: the synthesised keypoints' geometry, the jobs that use them (the hint the
IdentityNet is given, hires and img2img), "none" (identity only), the settings' checks and infotext."""
from __future__ import annotations

import numpy as np
import pytest

from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    FACE, HintSizes, b64, generate, models_root, photo, pixels, positional, ui, unets, webui,
)
from tests.jobs_common import api_job

from lib_instantid import pose_presets
from lib_instantid.args import InstantIDArgs
from lib_instantid.errors import InstantIDError
from lib_instantid.hosts import webui as webui_host
from lib_instantid.images import decode_image

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")
SIZE = (512, 768)


def eye_middle(points):
    return (points[0] + points[1]) / 2


def test_front_is_symmetric_and_sits_in_its_box():
    points = pose_presets.preset_keypoints("front", (0.3, 0.6, 0.5), SIZE)
    middle = eye_middle(points)
    assert points[2, 0] == pytest.approx(middle[0]) and points[0, 1] == points[1, 1]
    assert (points[3, 0] + points[4, 0]) / 2 == pytest.approx(middle[0])
    assert middle[0] == pytest.approx(0.3 * SIZE[0])
    head = 0.5 * SIZE[1]
    assert np.linalg.norm(points[1] - points[0]) == pytest.approx(pose_presets.EYE_DISTANCE_PER_HEAD * head)
    assert middle[1] < 0.6 * SIZE[1] < points[3, 1]  # eyes above the box centre, the mouth below it


@pytest.mark.parametrize("side, sign", [("left", -1), ("right", 1)])
def test_turned_poses_move_the_nose_to_their_side_and_narrow_the_eyes(side, sign):
    front = pose_presets.preset_keypoints("front", pose_presets.DEFAULT_BOX, SIZE)
    eye_gap = np.linalg.norm(front[1] - front[0])
    previous_offset = 0.0
    for pose in (f"three-quarter {side}", f"profile {side}"):
        points = pose_presets.preset_keypoints(pose, pose_presets.DEFAULT_BOX, SIZE)
        offset = (points[2, 0] - eye_middle(points)[0]) * sign
        assert offset > previous_offset  # the nose turns further towards that side of the image
        assert np.linalg.norm(points[1] - points[0]) < eye_gap
        eye_gap, previous_offset = np.linalg.norm(points[1] - points[0]), offset


def test_the_persons_frontal_proportions_are_kept():
    wide_set = pose_presets.AVERAGE_FACE * [1.0, 1.0]
    wide_set[2:, 1] *= 1.3  # a longer face: nose and mouth further below the eyes
    photo_points = wide_set * 40 + [200, 150]
    points = pose_presets.preset_keypoints("front", pose_presets.DEFAULT_BOX, SIZE, photo_points)
    gap = np.linalg.norm(points[1] - points[0])
    assert (points[3, 1] - points[0, 1]) / gap == pytest.approx(1.05 * 1.3)
    turned = pose_presets.AVERAGE_FACE.copy()
    turned[2, 0] = 0.4  # a photo in three-quarter view: its layout is not taken as the frontal one
    assert np.allclose(pose_presets.frontal_layout(turned * 40), pose_presets.AVERAGE_FACE)


def test_settings_are_checked_and_recorded():
    args = InstantIDArgs.from_dict({"pose": "profile left", "pose_box": "0.4, 0.45 0.3"})
    assert args.pose_box == (0.4, 0.45, 0.3)
    text = args.infotext()
    assert "Pose: profile left" in text and "Pose box: 0.4 0.45 0.3" in text
    parsed = InstantIDArgs.values_from_infotext({"InstantID": text})
    assert parsed["pose"] == "profile left" and parsed["pose_box"] == (0.4, 0.45, 0.3)
    for bad, field in (({"pose": "sideways"}, "pose"), ({"pose_box": [0.5, 0.5]}, "pose_box"),
                       ({"pose_box": [0.5, 1.5, 0.4]}, "pose_box[1]"), ({"pose_box": "a, b, c"}, "pose_box")):
        with pytest.raises(InstantIDError) as caught:
            InstantIDArgs.from_dict(bad)
        assert caught.value.field == field


def test_a_txt2img_job_gives_the_identitynet_the_chosen_pose_at_every_size(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    box = (0.35, 0.4, 0.5)
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], pose="three-quarter right",
                                               pose_box=box), enable_hr=True, hr_scale=2, steps=2)
    first_face = webui_host.face_analyzer().detect(decode_image(FACE, "face_image"))[0].keypoints
    assert {size for size, _ in hints.drawn} == {(64, 64), (128, 128)}
    for size, points in hints.drawn:
        np.testing.assert_allclose(points, pose_presets.preset_keypoints("three-quarter right", box, size, first_face))
    assert "Pose: three-quarter right" in result.processed.infotexts[0]


def test_img2img_takes_the_chosen_pose_instead_of_the_init_images_face(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    faceless = photo(size=(64, 64), side=0)
    generate(ui, img2img=True, instantid=positional(enabled=True, face_image=[FACE], pose="front"),
             init_images=[faceless], denoising_strength=0.5)
    assert hints.drawn and hints.drawn[0][0] == (64, 64)


def test_none_is_identity_only_without_the_identitynet(ui):
    never = pixels(generate(ui))
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], pose="none"))
    adapter_only = generate(ui, instantid=positional(enabled=True, face_image=[FACE], identitynet_weight=0.0))
    assert np.array_equal(pixels(result), pixels(adapter_only)) and not np.array_equal(pixels(result), never)
    assert "Pose: none" in result.processed.infotexts[0]


def test_the_api_takes_the_pose_fields(ui):
    response = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "pose": "profile left",
                                          "pose_box": [0.5, 0.5, 0.3]}])
    assert response.status_code == 200 and "Pose: profile left" in response.json()["info"]
    bad = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "pose": "upside down"}])
    assert bad.status_code == 422 and "pose" in bad.json()["detail"]


def test_preview_shows_the_keypoints_of_the_chosen_pose(ui):
    shown, message = webui_host.preview([FACE], None, 0, "profile right", "0.5, 0.5, 0.4")
    assert len(shown) == 2 and "profile right" in message
    assert shown[1].shape == (1024, 1024, 3) and shown[1].any()
