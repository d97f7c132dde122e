"""Every bad input gets a clear answer, the WebUI keeps serving, and nothing of a job outlives it
(the rows of tests/troubleshooting.py)."""
from __future__ import annotations

import base64
import gc
import io
import os
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    FACE, FACE_CENTRE, FACE_SIDE, POSE_CENTRE, POSE_SIDE, HintSizes, b64, generate, models_root, no_hooks_left,
    photo, pixels, png_bytes, positional, ui, unets, webui,
)

from lib_instantid.hosts import a1111
from modules import script_callbacks, shared
from tests.jobs_common import api_job
from tests.fixtures.face_models import expected_face, paint_marker

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def job_error(webui, **instantid) -> str:
    """The message a panel job with these settings stops with."""
    with pytest.raises(Exception) as caught:
        generate(webui, instantid=positional(enabled=True, **instantid))
    return str(caught.value)


@pytest.fixture
def own_models(ui, models_root, tmp_path):
    """A private copy of the models folder this test may break."""
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    ui.set_models_path(root)
    return root


def test_no_face_stops_the_job_with_a_message_and_the_next_job_works(ui):
    blank = png_bytes(Image.new("RGB", (200, 160), (90, 90, 90)))
    assert "No face found in the face image" in job_error(ui, face_image=[blank])
    assert "No face found in the pose image" in job_error(ui, face_image=[FACE],
                                                          pose_image=Image.open(io.BytesIO(blank)))
    ok = generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    assert "InstantID:" in ok.processed.infotexts[0]
    client = ui.api_client()
    response = api_job(client, [{"enabled": True, "face_image": base64.b64encode(blank).decode()}])
    assert response.status_code == 422 and "crop" in response.json()["detail"]
    assert api_job(client, [{"enabled": True, "face_image": b64(photo())}]).status_code == 200


def two_faces() -> bytes:
    pixels_ = np.asarray(photo((170, 80), 60)).copy()  # the larger face
    return png_bytes(Image.fromarray(paint_marker(pixels_, (60, 190), 30, "magenta")))


def test_several_faces_largest_or_chosen_and_recorded(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    largest = generate(ui, instantid=positional(enabled=True, face_image=[two_faces()]))
    assert "Face: largest of 2" in largest.processed.infotexts[0]
    second = generate(ui, instantid=positional(enabled=True, face_image=[two_faces()], face_index=1))
    assert "Face: #2 by size of 2" in second.processed.infotexts[0]
    _, big = expected_face((170, 80), 60)
    _, small = expected_face((60, 190), 30)
    np.testing.assert_allclose(hints.drawn[0][1], (big + 0.5) * 0.25 - 0.5, atol=0.5)
    np.testing.assert_allclose(hints.drawn[1][1], (small + 0.5) * 0.25 - 0.5, atol=0.5)
    assert np.abs(pixels(largest) - pixels(second)).max() > 3
    assert "2 face(s) found in the face image, so use 0 to 1" in job_error(ui, face_image=[two_faces()],
                                                                           face_index=2)


def test_odd_image_sizes(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    tiny = np.asarray(photo((100, 100), 12)).copy()  # a 12 px face
    generate(ui, instantid=positional(enabled=True, face_image=[png_bytes(Image.fromarray(tiny))]))
    _, points = expected_face((100, 100), 12)
    np.testing.assert_allclose(hints.drawn[-1][1], (points + 0.5) * 0.25 - 0.5, atol=0.5)
    assert "No face found" in job_error(ui, face_image=[png_bytes(Image.new("RGB", (1, 1)))])
    assert "No face found" in job_error(ui, face_image=[png_bytes(Image.new("RGB", (2000, 3), (90, 90, 90)))])
    big = Image.new("RGB", (5000, 5000), (90, 90, 90))
    big.paste(photo((128, 128), 100).resize((1000, 1000)), (3000, 500))  # face at (3500, 1000), side 400
    generate(ui, instantid=positional(enabled=True, face_image=[png_bytes(big)]))
    _, points = expected_face((3500, 1000), 400)
    scale = 64 / 5000
    np.testing.assert_allclose(hints.drawn[-1][1], (points + 0.5) * scale - 0.5, atol=1.0)
    huge = png_bytes(Image.new("L", (12000, 12000)))
    assert "12000x12000 pixels; up to 100 megapixels" in job_error(ui, face_image=[huge])


def encoded(image: Image.Image, **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def test_image_formats_through_the_api(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    client = ui.api_client()
    face = photo()
    rotated = face.transpose(Image.Transpose.ROTATE_90)  # stored sideways; EXIF says rotate back
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rgba = face.convert("RGBA")
    sixteen = Image.fromarray((np.asarray(face.convert("L")).astype(np.uint16) * 257))
    variants = {
        "rgba": encoded(rgba, format="PNG"),
        "grey": encoded(face.convert("L"), format="PNG"),
        "palette": encoded(face.convert("P", palette=Image.Palette.ADAPTIVE), format="PNG"),
        "cmyk": encoded(face.convert("CMYK"), format="JPEG", quality=95),
        "exif": encoded(rotated, format="JPEG", quality=95, exif=exif),
        "data-url": "data:image/png;base64," + encoded(face, format="PNG"),
    }
    _, points = expected_face(FACE_CENTRE, FACE_SIDE)
    for name, value in variants.items():
        if name == "grey":
            continue  # a grey photo loses the marker's colour, which is what the synthetic detector keys on
        response = api_job(client, [{"enabled": True, "face_image": value}])
        assert response.status_code == 200, (name, response.text)
        np.testing.assert_allclose(hints.drawn[-1][1], (points + 0.5) * 0.25 - 0.5, atol=1.0, err_msg=name)
    grey = api_job(client, [{"enabled": True, "face_image": variants["grey"]}])
    assert grey.status_code == 422 and "No face found" in grey.json()["detail"]  # decoded fine, analysed honestly
    sixteen_bit = api_job(client, [{"enabled": True, "face_image": encoded(sixteen, format="PNG")}])
    assert sixteen_bit.status_code == 422 and "No face found" in sixteen_bit.json()["detail"]


@pytest.mark.parametrize("value, words", [
    ("%%%not base64%%%", "face_image is not valid base64"),
    (base64.b64encode(b"GIF89a broken").decode(), "face_image is not a readable image"),
    (encoded(photo(), format="PNG")[:200], "face_image is not a readable image|not valid base64"),
    ("", "face_image is missing"),
    ("   ", "face_image is empty"),
])
def test_unreadable_images_are_refused_naming_the_field(ui, value, words):
    client = ui.api_client()
    before = api_job(client, [{"enabled": False}])
    response = api_job(client, [{"enabled": True, "face_image": value}])
    assert response.status_code == 422
    assert re.search(words, response.json()["detail"]), response.json()
    after = api_job(client, [{"enabled": False}])
    assert after.json()["images"] == before.json()["images"]


def test_wrong_weights_are_refused_before_sampling(ui, own_models, weight_files, monkeypatch):
    sampled = []
    monkeypatch.setattr(a1111, "unet_of", lambda p: sampled.append(1) or p.sd_model.model.diffusion_model)
    ours = own_models / "instantid"
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
               "control_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3),
               "control_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": torch.zeros(8, 64)},
              ours / "control_sdxl_canny.safetensors")
    message = job_error(ui, face_image=[FACE], identitynet_model="instantid/control_sdxl_canny.safetensors")
    assert "no installed IdentityNet is named" in message  # not an IdentityNet: not even listed
    save_file({"image_proj.proj.weight": torch.zeros(256, 1280), "image_proj.norm.weight": torch.zeros(64),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(64, 64), "ip_adapter.1.to_v_ip.weight": torch.zeros(64, 64)},
              ours / "ip-adapter_sdxl.safetensors")
    assert "IP-Adapter of another kind" in job_error(ui, face_image=[FACE],
                                                     adapter_model="instantid/ip-adapter_sdxl.safetensors")
    message = job_error(ui, face_image=[FACE], adapter_model="ControlNet/ip-adapter_instant_id_sd15.bin")
    assert "made for SD1.5" in message and "checkpoint is a model with context width 64" in message
    cut = ours / "ip-adapter.bin"
    cut.write_bytes(cut.read_bytes()[:5000])
    assert "truncated or corrupt" in job_error(ui, face_image=[FACE], adapter_model="instantid/ip-adapter.bin")


class _Payload:
    target = ""

    def __reduce__(self):
        return (os.mkdir, (_Payload.target,))


def test_a_pickle_carrying_code_is_refused_and_never_run(ui, own_models, tmp_path):
    _Payload.target = str(tmp_path / "pwned")
    evil = own_models / "instantid" / "ip-adapter.bin"
    torch.save({"image_proj": {"latents": torch.zeros(1, 16, 128)}, "extra": _Payload()}, evil)
    message = job_error(ui, face_image=[FACE], adapter_model="instantid/ip-adapter.bin")
    assert "not a plain weights file" in message
    assert not os.path.exists(_Payload.target)


def test_face_models_missing_or_partial_name_the_folders(ui, own_models):
    pack = own_models / "insightface" / "models" / "antelopev2"
    (pack / "glintr100.onnx").unlink()
    a1111.release_models()
    message = job_error(ui, face_image=[FACE])
    assert "antelopev2" in message and "lacks glintr100.onnx" in message and "models.md" in message
    shutil.rmtree(pack)
    response = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo())}])
    assert response.status_code == 500 and "scrfd_10g_bnkps.onnx" in response.json()["detail"]


def test_skip_ends_cleanly(ui, unets):
    def skip(params):
        if params.denoiser.step == 1:
            shared.state.skip()

    script_callbacks.on_cfg_denoiser(skip, name="test_skip")
    generate(ui, instantid=positional(enabled=True, face_image=[FACE]), n_iter=2)
    script_callbacks.remove_callbacks_for_function(skip)
    assert no_hooks_left(unets["sdxl"])


def test_back_to_back_jobs_share_nothing(ui, unets):
    other_face = png_bytes(photo(POSE_CENTRE, POSE_SIDE, colour="magenta"))
    first_alone = pixels(generate(ui, instantid=positional(enabled=True, face_image=[other_face])))
    second_alone = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE], adapter_weight=1.1)))
    a1111.release_models()
    generate(ui, instantid=positional(enabled=True, face_image=[other_face]))
    second = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE], adapter_weight=1.1)))
    assert np.array_equal(second, second_alone) and not np.array_equal(first_alone, second_alone)
    ui.set_model(unets["sd15"], "sd15")
    sd15 = generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    assert "ControlNet/control_instant_id_sd15.safetensors" in sd15.processed.infotexts[0]
    assert no_hooks_left(unets["sdxl"]) and no_hooks_left(unets["sd15"])


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.filterwarnings("ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning")  # seen by gc scan
def test_soak_of_mixed_jobs_leaves_nothing_behind(ui, unets):
    unet = unets["sdxl"]
    start_state = {k: v.clone() for k, v in unet.state_dict().items()}
    never = pixels(generate(ui))
    plan = {"calls": 0, "fail": False, "interrupt": False}

    def trouble_on_the_second_call(module, args):  # inside sampling, where errors end the job
        plan["calls"] += 1
        if plan["calls"] == 2 and plan["fail"]:
            raise RuntimeError("CUDA out of memory")
        if plan["calls"] == 2 and plan["interrupt"]:
            shared.state.interrupt()

    handle = unet.register_forward_pre_hook(trouble_on_the_second_call)
    counts = []
    try:
        for i in range(50):
            kind = ("on", "off", "failing", "interrupted", "on-bad")[i % 5]
            plan.update(calls=0, fail=kind == "failing", interrupt=kind == "interrupted")
            face = png_bytes(Image.new("RGB", (8, 8))) if kind == "on-bad" else FACE
            try:
                generate(ui, instantid=positional(enabled=kind != "off", face_image=[face]), steps=2)
                assert kind not in ("failing", "on-bad"), kind
            except Exception as e:
                assert kind in ("failing", "on-bad"), (kind, e)
            shared.state.interrupted = False
            assert [h for m in unet.modules() for h in m._forward_pre_hooks.values()] == [trouble_on_the_second_call]
            assert not any(m._forward_hooks for m in unet.modules()), (i, kind)
            if i % 10 == 9:
                counts.append(live_tensors())
    finally:
        handle.remove()
    assert max(counts) - min(counts) <= 10, counts  # flat: no growth with the number of jobs
    assert all(torch.equal(start_state[k], v) for k, v in unet.state_dict().items())
    assert np.array_equal(pixels(generate(ui)), never)
