"""The extension end to end through the A1111 stand-in: panel and API arguments, lifecycle, hires, img2img and
inpaint, batches, row layouts, neighbours (LoRA, ControlNet), infotext, XYZ, routes."""
from __future__ import annotations

import base64
import io
from dataclasses import fields

import numpy as np
import pytest
from PIL import Image

from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    EXTENSION_SCRIPT, FACE, FACE_CENTRE, FACE_SIDE, POSE_CENTRE, POSE_SIDE, SIZE, HintSizes, RowKinds, b64, generate,
    models_root, no_hooks_left, photo, pixels, positional, ui, unets, webui,
)
from tests.jobs_common import api_job, decode
from tests.webui import controlnet_like, lora_like

from lib_instantid.args import InstantIDArgs
from lib_instantid.conditioning import COND, UNCOND
from modules import infotext_utils, script_callbacks, shared
from tests.fixtures import tiny_models as tm
from tests.fixtures.face_models import expected_face, paint_marker

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


# --- txt2img ----------------------------------------------------------------------------------------------------

def test_instantid_changes_the_image_and_off_is_untouched(ui, unets):
    never = pixels(generate(ui))
    on = generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    assert np.abs(pixels(on) - never).max() > 10
    assert no_hooks_left(unets["sdxl"])
    assert np.array_equal(pixels(generate(ui)), never)  # disabled after enabled: as if never enabled
    off_with_values = positional(enabled=False, face_image=[FACE], adapter_weight=1.5)
    assert np.array_equal(pixels(generate(ui, instantid=off_with_values)), never)


def test_zero_weights_are_bit_identical_to_disabled(ui):
    never = pixels(generate(ui))
    zero = generate(ui, instantid=positional(enabled=True, face_image=[FACE], identitynet_weight=0.0,
                                             adapter_weight=0.0))
    assert np.array_equal(pixels(zero), never)


def test_each_path_alone_changes_the_image(ui):
    never = pixels(generate(ui))
    for weights in ({"identitynet_weight": 0.0}, {"adapter_weight": 0.0}):
        result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], **weights))
        assert np.abs(pixels(result) - never).max() > 3, weights


def test_keypoints_are_drawn_at_the_generation_size_from_the_face_photo(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    generate(ui, instantid=positional(enabled=True, face_image=[FACE]), width=64, height=96)
    (size, points), = hints.drawn
    assert size == (64, 96)
    # crop and resize of the 256x256 photo to 64x96: scaled to 96x96, 16 px cut on the left and right
    _, face_keypoints = expected_face(FACE_CENTRE, FACE_SIDE)
    expected = (face_keypoints + 0.5) * 0.375 - 0.5 - [16, 0]
    np.testing.assert_allclose(points, expected, atol=0.5)


def test_pose_photo_gives_the_keypoints(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    pose = photo(POSE_CENTRE, POSE_SIDE, colour="magenta")
    generate(ui, instantid=positional(enabled=True, face_image=[FACE], pose_image=pose))
    _, pose_keypoints = expected_face(POSE_CENTRE, POSE_SIDE)
    np.testing.assert_allclose(hints.drawn[0][1], (pose_keypoints + 0.5) * 0.25 - 0.5, atol=0.5)


def test_hires_pass_redraws_keypoints_at_the_hires_size(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE]), enable_hr=True, hr_scale=2.0,
                      denoising_strength=0.5)
    sizes = [size for size, _ in hints.drawn]
    assert sizes == [(64, 64), (128, 128)]
    np.testing.assert_allclose(hints.drawn[1][1], (hints.drawn[0][1] + 0.5) * 2 - 0.5, atol=1e-6)
    assert result.processed.images[0].size == (128, 128)


def test_hires_with_another_aspect_crops_like_the_webui(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE]), enable_hr=True,
                      hr_resize_x=128, hr_resize_y=96, denoising_strength=0.5)
    p = result.p
    assert (p.hr_upscale_to_x, p.hr_upscale_to_y, p.truncate_y) == (128, 128, 4)
    (first_size, first), (hires_size, hires) = hints.drawn
    assert hires_size == (128, 96)
    # stretched x2, then 2 latent rows (16 px) cut from the top
    np.testing.assert_allclose(hires, (first + 0.5) * 2 - 0.5 - [0, 16], atol=1e-6)


def test_batch_size_and_count(ui):
    single = generate(ui, instantid=positional(enabled=True, face_image=[FACE]), seed=5)
    both = generate(ui, instantid=positional(enabled=True, face_image=[FACE]), seed=5, batch_size=2, n_iter=2)
    assert len(both.processed.images) - both.processed.index_of_first_image == 4
    assert np.abs(pixels(both, 0) - pixels(single)).max() <= 1  # the first image is the same job
    assert len({pixels(both, i).tobytes() for i in range(4)}) == 4


# --- rows -------------------------------------------------------------------------------------------------------

LONG_NEGATIVE = " ".join(["bad"] * 80)  # 154 tokens: cond and uncond are called separately


@pytest.mark.parametrize("batch_cond_uncond", [True, False])
@pytest.mark.parametrize("job", [
    dict(prompt="a portrait", negative_prompt="blurry"),
    dict(prompt=["a AND b:0.5", "c"], negative_prompt=["u1", "u2"], batch_size=2),
    dict(prompt="a AND b", negative_prompt=LONG_NEGATIVE),
])
def test_every_row_gets_its_kind_in_every_call_layout(ui, monkeypatch, batch_cond_uncond, job):
    kinds = RowKinds(monkeypatch)
    negatives = set(job["negative_prompt"] if isinstance(job["negative_prompt"], list) else [job["negative_prompt"]])
    with ui.record_unet() as recorded:
        generate(ui, instantid=positional(enabled=True, face_image=[FACE]),
                 opts={"batch_cond_uncond": batch_cond_uncond}, **job)
    expected = [[UNCOND if name in negatives else COND for name in call.contexts] for call in recorded.calls]
    assert kinds.calls == expected and len(expected) >= 3


def test_dropped_uncond_rows(ui, monkeypatch):
    kinds = RowKinds(monkeypatch)
    generate(ui, instantid=positional(enabled=True, face_image=[FACE]), steps=4, opts={"skip_early_cond": 0.5})
    assert kinds.calls == [[COND], [COND], [COND], [COND, UNCOND]]


def test_the_image_does_not_depend_on_how_rows_are_batched(ui):
    args = positional(enabled=True, face_image=[FACE])
    batched = generate(ui, instantid=args, batch_size=2, opts={"batch_cond_uncond": True})
    split = generate(ui, instantid=args, batch_size=2, opts={"batch_cond_uncond": False})
    for i in range(2):
        assert np.abs(pixels(batched, i) - pixels(split, i)).max() <= 1


# --- neighbours -------------------------------------------------------------------------------------------------

def test_with_a_lora_patched_linear_forward(ui, unets, monkeypatch):
    unet = unets["sdxl"]
    lora = lora_like.LoraLike()
    lora.assign_names(unet)
    attn2 = [n for n, m in unet.named_modules() if n.endswith("attn2")]
    lora.add_network("style", unet, [f"{n}.{p}" for n in attn2[:4] for p in ("to_q", "to_out.0")], seed=3)
    args = positional(enabled=True, face_image=[FACE])
    without = pixels(generate(ui, instantid=args))
    lora.install()
    try:
        merged = pixels(generate(ui, instantid=args, opts={"lora_functional": False}))
        functional = pixels(generate(ui, instantid=args, opts={"lora_functional": True}))
    finally:
        lora.uninstall()
    assert np.abs(merged - without).max() > 3  # the LoRA acts
    assert np.abs(merged - functional).max() <= 1  # and our hooks see the same network either way
    assert no_hooks_left(unet)


def test_with_a_controlnet_style_forward_replacement_and_row_marks(webui, models_root, unets, monkeypatch):
    webui.set_models_path(models_root)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT, extra_script_classes=[controlnet_like.ControlNetLikeScript])
    args = positional(enabled=True, face_image=[FACE])
    alone = pixels(generate(webui, instantid=args))
    kinds = RowKinds(monkeypatch)
    with webui.record_unet() as recorded:
        result = webui.txt2img(script_args={"InstantID": args, "ControlNet-like": [True]}, prompt="a portrait",
                               negative_prompt="blurry", steps=3, seed=1, **SIZE)
    assert all(name[0] in "+-" for call in recorded.calls for name in call.contexts)  # rows were marked
    assert kinds.calls == [[COND if n.startswith("+") else UNCOND for n in c.contexts] for c in recorded.calls]
    assert np.abs(pixels(result) - alone).max() <= 1
    assert no_hooks_left(unets["sdxl"])


# --- img2img / inpaint ------------------------------------------------------------------------------------------

def test_img2img_takes_the_pose_from_the_init_image(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    init = photo(POSE_CENTRE, POSE_SIDE, colour="magenta")
    never = pixels(generate(ui, img2img=True, init_images=[init], denoising_strength=0.75))
    result = generate(ui, img2img=True, init_images=[init], denoising_strength=0.75,
                      instantid=positional(enabled=True, face_image=[FACE]))
    assert np.abs(pixels(result) - never).max() > 3
    _, pose_keypoints = expected_face(POSE_CENTRE, POSE_SIDE)
    np.testing.assert_allclose(hints.drawn[0][1], (pose_keypoints + 0.5) * 0.25 - 0.5, atol=0.5)


def test_inpaint_only_masked_maps_the_keypoints_into_the_crop(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    init = photo(POSE_CENTRE, POSE_SIDE, colour="magenta")
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (40, 110, 104, 190))  # over the face
    result = generate(ui, img2img=True, init_images=[init], mask=mask, inpaint_full_res=True,
                      inpaint_full_res_padding=8, mask_blur=0, denoising_strength=0.75,
                      instantid=positional(enabled=True, face_image=[FACE]))
    x1, y1, w, h = result.p.paste_to
    assert (w, h) != init.size
    _, pose_keypoints = expected_face(POSE_CENTRE, POSE_SIDE)
    scale = min(64 / w, 64 / h)
    offset = np.array([64 // 2 - round(w * scale) // 2, 64 // 2 - round(h * scale) // 2])
    expected = (pose_keypoints - [x1, y1] + 0.5) * scale - 0.5 + offset
    np.testing.assert_allclose(hints.drawn[0][1], expected, atol=1.0)


def test_inpaint_chooses_the_face_under_the_mask(ui, monkeypatch):
    hints = HintSizes(monkeypatch)
    init = Image.fromarray(paint_marker(np.asarray(photo((190, 60), 56)).copy(), POSE_CENTRE, POSE_SIDE, "magenta"))
    mask = Image.new("L", init.size, 0)
    mask.paste(255, (40, 110, 104, 190))  # over the smaller face
    generate(ui, img2img=True, init_images=[init], mask=mask, inpaint_full_res=False, denoising_strength=0.75,
             instantid=positional(enabled=True, face_image=[FACE]))
    _, small = expected_face(POSE_CENTRE, POSE_SIDE)
    np.testing.assert_allclose(hints.drawn[0][1], (small + 0.5) * 0.25 - 0.5, atol=0.5)


# --- API --------------------------------------------------------------------------------------------------------

def test_api_named_dict_and_positional_args_give_the_same_image(ui):
    client = ui.api_client()
    named = api_job(client, [{"enabled": True, "face_image": b64(photo()), "adapter_weight": 0.7}])
    assert named.status_code == 200, named.text
    listed = api_job(client, positional(enabled=True, face_image=[b64(photo())], adapter_weight=0.7))
    assert listed.status_code == 200
    assert np.array_equal(decode(named), decode(listed))
    # the API's default sampler is Euler, the panel's DPM++ 2M
    panel = generate(ui, instantid=positional(enabled=True, face_image=[FACE], adapter_weight=0.7),
                     sampler_name="Euler")
    assert np.array_equal(decode(named), pixels(panel))
    info = named.json()["info"]
    assert "Adapter weight: 0.7" in info


@pytest.mark.parametrize("bad, field", [
    ({"enabled": True, "face_image": "not base64!"}, "face_image"),
    ({"enabled": True, "face_image": b64(photo()), "adapter_weight": 7}, "adapter_weight"),
    ({"enabled": True, "face_image": b64(photo()), "colour": "red"}, "colour"),
    ({"enabled": True}, "face_image"),
    ({"enabled": True, "face_image": b64(photo()), "adapter_model": "../../etc/passwd"}, "adapter_model"),
])
def test_api_refuses_bad_arguments_with_the_field_and_keeps_serving(ui, bad, field):
    client = ui.api_client()
    response = api_job(client, [bad])
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "HTTPException" and field in body["detail"]  # no traceback on the server console
    assert api_job(client, [{"enabled": True, "face_image": b64(photo())}]).status_code == 200


def test_api_no_face_is_a_clear_error(ui):
    client = ui.api_client()
    blank = Image.new("RGB", (128, 128), (90, 90, 90))
    response = api_job(client, [{"enabled": True, "face_image": b64(blank)}])
    assert response.status_code == 422
    assert "No face found in the face image" in response.json()["detail"]


def test_api_models_route_lists_installed_models_and_face_models(ui):
    body = ui.api_client().get("/instantid/models").json()
    names = {(m["name"], m["kind"], m["context_dim"]) for m in body["models"]}
    assert ("instantid/ip-adapter.bin", "adapter", tm.CONTEXT_DIM["sdxl"]) in names
    assert ("ControlNet/control_instant_id_sd15.safetensors", "identitynet", 768) in names
    assert body["antelopev2"] == {"found": True, "folder": "<models>/insightface/models/antelopev2",
                                  "providers": ["CPUExecutionProvider"], "error": None}


def test_api_detect_route(ui):
    client = ui.api_client()
    response = client.post("/instantid/detect", json={"image": b64(photo())})
    assert response.status_code == 200
    (face,) = response.json()["faces"]
    box, keypoints = expected_face(FACE_CENTRE, FACE_SIDE)
    np.testing.assert_allclose(face["box"], box, atol=3)
    overlay = Image.open(io.BytesIO(base64.b64decode(response.json()["preview"])))
    assert overlay.size == (256, 256)
    bad = client.post("/instantid/detect", json={"image": "%%%"})
    assert bad.status_code == 422 and "image" in bad.json()["detail"]


def test_checkpoint_family_decides_the_automatic_models(ui, unets):
    ui.set_model(unets["sd15"], "sd15")
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    assert "ControlNet/ip-adapter_instant_id_sd15.bin" in result.processed.infotexts[0]
    with pytest.raises(Exception, match="face adapter is made for .* but the loaded checkpoint"):
        generate(ui, instantid=positional(enabled=True, face_image=[FACE], adapter_model="instantid/ip-adapter.bin"))
    assert no_hooks_left(unets["sd15"])


# --- failures -----------------------------------------------------------------------------------------------------

def test_an_exception_during_sampling_removes_the_hooks(ui, unets):
    unet = unets["sdxl"]
    calls = []

    def out_of_memory_on_the_second_call(module, args):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("CUDA out of memory")

    handle = unet.register_forward_pre_hook(out_of_memory_on_the_second_call)
    with pytest.raises(RuntimeError, match="out of memory"):
        generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    handle.remove()
    assert no_hooks_left(unet)
    assert np.array_equal(pixels(generate(ui)), pixels(generate(ui)))


def test_an_interrupt_ends_the_job_cleanly(ui, unets):
    def interrupt(params):
        if params.denoiser.step == 1:
            shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(interrupt, name="test_interrupt")
    generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    script_callbacks.remove_callbacks_for_function(interrupt)
    assert no_hooks_left(unets["sdxl"])
    shared.state.interrupted = False
    never = pixels(generate(ui))
    assert np.array_equal(never, pixels(generate(ui)))


# --- infotext and XYZ -----------------------------------------------------------------------------------------------

def test_infotext_pastes_back_into_the_panel(ui):
    settings = dict(identitynet_weight=0.55, adapter_weight=1.2, identitynet_end=0.8, adapter_start=0.1,
                    face_index=0)
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], **settings))
    infotext = result.processed.infotexts[0]
    script = ui.runner().script("InstantID")
    updates = infotext_utils.paste(infotext, script.infotext_fields)
    pasted = {id(component): update.get("value") for (component, _), update in zip(script.infotext_fields, updates)}
    by_name = dict(zip([f.name for f in fields(InstantIDArgs)], script.controls))
    values = {name: pasted.get(id(component)) for name, component in by_name.items()}  # identities: by their slots
    assert {name: values[name] for name in settings} == pytest.approx(settings)
    # the dropdowns get their own entries for the recorded models, with the family they show
    assert values["adapter_model"] == "instantid/ip-adapter.bin — a model with context width 64"
    assert values["adapter_model"] in script.controls[by_name_index("adapter_model")].choices
    assert values["identitynet_model"].startswith("instantid/ControlNetModel — ")
    # the switch and the photos are not in the infotext: pasting never turns InstantID on
    assert values["enabled"] is None and values["face_image"] is None and values["pose_image"] is None


def by_name_index(name: str) -> int:
    return [f.name for f in fields(InstantIDArgs)].index(name)


def test_xyz_axes_override_the_weights(ui):
    xyz = ui.xyz_module()
    labels = {axis.label: axis for axis in xyz.axis_options}
    for label in ("IdentityNet weight", "Adapter weight", "IdentityNet end", "Adapter end"):
        assert f"[InstantID] {label}" in labels
    p = ui.make_txt2img(script_args={"InstantID": positional(enabled=True, face_image=[FACE])}, prompt="a",
                        steps=3, seed=1, **SIZE)
    labels["[InstantID] Adapter weight"].apply(p, 0.3, [0.3])
    processed = ui.run(p)
    assert "Adapter weight: 0.3" in processed.infotexts[0]


def test_preview_button_shows_the_detected_face_or_says_what_to_try(ui):
    from lib_instantid.hosts import webui as webui_host

    overlays, message = webui_host.preview([FACE], photo(POSE_CENTRE, POSE_SIDE, colour="magenta"), 0)
    assert len(overlays) == 2 and "1 face(s) found in the face photo 1" in message
    box, _ = expected_face(FACE_CENTRE, FACE_SIDE)
    x1, y1 = int(box[0]), int(box[1])
    assert tuple(overlays[0][y1 + 1, (x1 + int(box[2])) // 2]) == (0, 255, 0)  # the chosen face's box, in green
    blank = Image.new("RGB", (64, 64), (90, 90, 90))
    overlays, message = webui_host.preview([], blank, 0)
    assert "No face found in the pose photo" in message
    assert webui_host.preview(None, None, 0) == ([], "Upload a face photo first.")


def test_uncond_noise_changes_only_the_uncond_face_and_is_recorded(ui):
    client = ui.api_client()
    plain = api_job(client, [{"enabled": True, "face_image": b64(photo())}], cfg_scale=6)
    noisy = api_job(client, [{"enabled": True, "face_image": b64(photo()), "uncond_noise": 0.4}], cfg_scale=6)
    assert noisy.status_code == 200 and "Uncond noise: 0.4" in noisy.json()["info"]
    assert np.abs(decode(noisy) - decode(plain)).max() > 0
    # CFG 1 has no uncond rows: the noise has nothing to act on
    assert np.array_equal(
        decode(api_job(client, [{"enabled": True, "face_image": b64(photo()), "uncond_noise": 0.4}], cfg_scale=1)),
        decode(api_job(client, [{"enabled": True, "face_image": b64(photo())}], cfg_scale=1)))
