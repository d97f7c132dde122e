"""Optional tier: the extension inside a real AUTOMATIC1111 WebUI (1.8 or newer), over its HTTP API.

Skipped unless WEBUI_DIR names an A1111 checkout whose own Python environment works and has insightface and
onnxruntime; see tests/real_webui_setup.md. tests/real_webui.py writes the tiny models and runs the server
(--nowebui here).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.real_webui import (
    ON, SKIP_WITHOUT_WEBUI, errors_text, img2img, infotext, ok, photo, pixels, running_webui, txt2img,
    webui_version,
)

pytestmark = SKIP_WITHOUT_WEBUI


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_webui(tmp_path_factory.mktemp("real_webui")) as running:
        yield running


@pytest.fixture(scope="module")
def webui(server):
    """The server with our script loaded, and the plain job's image taken before InstantID ever ran."""
    scripts = server.request("GET", "/sdapi/v1/scripts").json()
    if "instantid" not in scripts.get("txt2img", []):
        pytest.fail(f"the WebUI {webui_version()} did not load the extension:\n"
                    f"{server.script_errors() or server.log_tail()}")
    if server.never is None:
        response = txt2img(server)
        assert response.status_code == 200, f"{response.text}\n{server.log_tail()}"
        assert "InstantID" not in infotext(response)
        server.never = pixels(response)
    return server


# --- checks -----------------------------------------------------------------------------------------------------

def test_the_extension_loads_as_an_alwayson_script(server):
    scripts = server.request("GET", "/sdapi/v1/scripts").json()
    assert "instantid" in scripts["txt2img"] and "instantid" in scripts["img2img"], (
        f"not loaded; the WebUI {webui_version()} reported:\n{server.script_errors() or server.log_tail()}")
    info = {(s["name"], s["is_img2img"]): s for s in server.request("GET", "/sdapi/v1/script-info").json()}
    assert info[("instantid", False)]["is_alwayson"] and info[("instantid", True)]["is_alwayson"]
    assert not server.script_errors(), server.script_errors()


def test_the_models_route_lists_the_tiny_models(webui):
    response = ok(webui, webui.request("GET", "/instantid/models"))
    body = response.json()
    found = {(m["kind"], m["name"], m["context_dim"], m["error"], m["fits_loaded_checkpoint"]) for m in body["models"]}
    assert found == {("identitynet", "instantid/ControlNetModel", 64, None, True),
                     ("adapter", "instantid/ip-adapter.bin", 64, None, True)}  # the .bin read on the WebUI's torch
    assert body["antelopev2"]["error"] is None, body
    assert body["antelopev2"]["folder"] == "<models>/insightface/models/antelopev2"  # no server path
    assert "CPUExecutionProvider" in body["antelopev2"]["providers"]


def test_the_detect_route_finds_the_face(webui):
    response = ok(webui, webui.request("POST", "/instantid/detect", {"image": photo()}))
    (face,) = response.json()["faces"]
    assert len(face["keypoints"]) == 5 and response.json()["preview"]


def test_txt2img_with_instantid_is_recorded_and_off_is_untouched(webui):
    on = ok(webui, txt2img(webui, {**ON, "face_image": photo()}))
    text = infotext(on)
    assert 'InstantID: "IdentityNet: instantid/ControlNetModel, Adapter: instantid/ip-adapter.bin' in text, text
    assert np.abs(pixels(on) - webui.never).max() > 10
    off = ok(webui, txt2img(webui, {"enabled": False, "face_image": photo(), "adapter_weight": 1.5}))
    assert "InstantID" not in infotext(off)
    assert np.array_equal(pixels(off), webui.never)  # off, after on: as if it never ran
    assert np.array_equal(pixels(ok(webui, txt2img(webui))), webui.never)


def test_every_image_of_a_batch_gets_its_own_identity_score(webui):
    """The score entry is called by the real create_infotext (with its locals) once per image: each of the 2 x 2
    images' infotexts has the score the similarity route gives that image, and nothing of the entry stays in the
    job's generation parameters."""
    response = ok(webui, txt2img(webui, {**ON, "face_image": photo()}, batch_size=2, n_iter=2))
    info = json.loads(response.json()["info"])
    images = response.json()["images"]
    assert len(images) == len(info["infotexts"]) == 4  # the API saves no grid
    for image, text in zip(images, info["infotexts"]):
        scored = re.findall(r"InstantID similarity: ([^,]+)", text)
        route = ok(webui, webui.request("POST", "/instantid/similarity", {"reference": photo(), "image": image}))
        assert scored == [route.json()["message"]], text
    assert "InstantID similarity" not in info["extra_generation_params"]


def test_each_path_acts_in_the_real_unet_and_zero_weights_change_nothing(webui):
    zero = ok(webui, txt2img(webui, {**ON, "face_image": photo(), "identitynet_weight": 0, "adapter_weight": 0}))
    assert np.array_equal(pixels(zero), webui.never)
    for alone in ({"identitynet_weight": 0}, {"adapter_weight": 0}):
        result = ok(webui, txt2img(webui, {**ON, "face_image": photo(), **alone}))
        assert np.abs(pixels(result) - webui.never).max() > 3, alone


def test_the_panels_positional_args_work_too(webui):
    args = [True, [photo()], None, "Automatic", "Automatic", 0.8, 0.8, 0, 1, 0, 1, 0]
    response = ok(webui, txt2img(webui, args))
    assert "InstantID:" in infotext(response)
    assert np.abs(pixels(response) - webui.never).max() > 10


@pytest.mark.parametrize("bad, named", [
    ({"adapter_weight": 3}, "adapter_weight"),
    ({"identitynet_start": 0.9, "identitynet_end": 0.1}, "identitynet_start"),
    ({"no_such_field": 1}, "no_such_field"),
    ({"face_image": "not base64 at all!"}, "face_image"),
    ({"identitynet_model": "../../model.safetensors"}, "identitynet"),
])
def test_a_bad_field_is_refused_with_422_naming_it(webui, bad, named):
    response = txt2img(webui, {**ON, "face_image": photo(), **bad})
    assert response.status_code == 422, f"{response.status_code} {response.text}"
    assert named in errors_text(response), response.text


def test_a_photo_without_a_face_is_refused_and_the_server_keeps_serving(webui):
    response = txt2img(webui, {**ON, "face_image": photo(face=False)})
    assert response.status_code == 422, f"{response.status_code} {response.text}"
    assert "No face found" in errors_text(response), response.text
    assert np.array_equal(pixels(ok(webui, txt2img(webui))), webui.never)  # nothing of the refused job is left
    again = ok(webui, txt2img(webui, {**ON, "face_image": photo()}))
    assert "InstantID:" in infotext(again)


def test_a_long_negative_prompt_sends_cond_and_uncond_rows_in_separate_calls(webui):
    response = ok(webui, txt2img(webui, {**ON, "face_image": photo()}, negative_prompt=" ".join(["bad"] * 80)))
    assert "InstantID:" in infotext(response)


def test_dropped_uncond_rows(webui):
    face = {**ON, "face_image": photo()}
    all_rows = ok(webui, txt2img(webui, face, prompt="a AND b"))
    dropped = ok(webui, txt2img(webui, face, prompt="a AND b", s_min_uncond=100))  # from the second step on
    assert "InstantID:" in infotext(dropped)
    assert np.abs(pixels(dropped) - pixels(all_rows)).max() > 0  # the layout really changed


def test_the_image_does_not_depend_on_how_rows_are_batched(webui):
    # batch_cond_uncond off: the UNet gets the 2 cond rows, then the 2 uncond rows, in separate calls
    images = [pixels(ok(webui, txt2img(webui, {**ON, "face_image": photo()}, batch_size=2,
                                       override_settings={"batch_cond_uncond": batched})))
              for batched in (True, False)]
    assert np.abs(images[0] - images[1]).max() <= 1
    assert np.abs(images[0] - webui.never).max() > 10


def test_hires_fix(webui):
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
             "denoising_strength": 0.5}
    plain = ok(webui, txt2img(webui, **hires))
    response = ok(webui, txt2img(webui, {**ON, "face_image": photo()}, **hires))
    assert pixels(response).shape == (128, 128, 3) and "InstantID:" in infotext(response)
    assert np.abs(pixels(response) - pixels(plain)).max() > 3


def test_img2img_takes_the_pose_from_the_init_image(webui):
    init = {"init_images": [photo()], "denoising_strength": 0.75}
    plain = ok(webui, img2img(webui, **init))
    response = ok(webui, img2img(webui, {**ON, "face_image": photo()}, **init))
    assert "InstantID:" in infotext(response)
    assert np.abs(pixels(response) - pixels(plain)).max() > 3
    no_pose = img2img(webui, {**ON, "face_image": photo()}, init_images=[photo(face=False)], denoising_strength=0.75)
    assert no_pose.status_code == 422 and "No face found in the init image" in errors_text(no_pose), no_pose.text


def test_no_errors_were_logged_by_our_script(webui):
    assert not webui.script_errors(), webui.script_errors()
