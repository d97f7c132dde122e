"""What a WebUI user meets around the generation itself: the model dropdowns, masks that say which face is being
replaced, job arguments other extensions copy, Send to img2img, pasted infotext, hires sizes, the data folder,
the extension's routes behind the WebUI's authentication, and messages in the panel's words."""
from __future__ import annotations

import base64
import copy
import io
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.jobs_common import descendants
from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    EXTENSION_SCRIPT, FACE, FACE_CENTRE, FACE_SIDE, POSE_CENTRE, POSE_SIDE, SIZE, HintSizes, b64, generate,
    models_root, pixels, photo, png_bytes, positional, ui, unets, webui,
)

from lib_instantid.args import AUTOMATIC
from lib_instantid.hosts import a1111
from lib_instantid.hosts import webui as webui_host
from lib_instantid.images import PhotoFile
from lib_instantid.keypoints import Placement
from modules import shared
from tests.fixtures.face_models import expected_face, paint_marker
from tests.fixtures.fake_hub import hub, panel_hub, published  # noqa: F401  (fixtures)

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

ON = dict(enabled=True, face_image=[FACE])


def script(webui, is_img2img=False):
    return webui.runner(is_img2img).script("InstantID")


def control(webui, name, is_img2img=False):
    from dataclasses import fields

    from lib_instantid.args import InstantIDArgs

    names = [f.name for f in fields(InstantIDArgs)]
    return script(webui, is_img2img).controls[names.index(name)]


# --- model dropdowns ----------------------------------------------------------------------------------------

def test_dropdowns_name_each_models_family_and_mark_what_does_not_fit(ui):
    choices = control(ui, "adapter_model").choices
    assert choices[0] == AUTOMATIC
    assert "instantid/ip-adapter.bin — a model with context width 64" in choices
    assert "ControlNet/ip-adapter_instant_id_sd15.bin — SD1.5, does not fit the loaded checkpoint " \
           "(a model with context width 64)" in choices


def test_a_dropdown_entry_chooses_its_model(ui):
    entry = next(c for c in control(ui, "identitynet_model").choices if c.startswith("instantid/"))
    result = generate(ui, instantid=positional(**ON, identitynet_model=entry))
    assert "IdentityNet: instantid/ControlNetModel," in result.processed.infotexts[0]
    with pytest.raises(webui_host.InstantID, match='The face adapter is made for SD1.5'):
        sd15 = next(c for c in control(ui, "adapter_model").choices if "sd15" in c)
        generate(ui, instantid=positional(**ON, adapter_model=sd15))


# --- masks --------------------------------------------------------------------------------------------------

def two_faces() -> Image.Image:
    """A large face at the top right, a smaller one at the left (POSE_CENTRE)."""
    return Image.fromarray(paint_marker(np.asarray(photo((190, 60), 56)).copy(), POSE_CENTRE, POSE_SIDE, "magenta"))


def mask_over_small_face(mode: str) -> Image.Image:
    region = (40, 110, 104, 190)
    if mode == "L":
        mask = Image.new("L", (256, 256), 0)
        mask.paste(255, region)
        return mask
    mask = Image.new("RGBA", (256, 256), (255, 255, 255, 0))  # drawn with a brush: colour everywhere, alpha marks
    mask.paste((255, 255, 255, 255), region)
    return mask


@pytest.mark.parametrize("mode, invert, replaced", [("L", 0, "small"), ("RGBA", 0, "small"), ("L", 1, "large")])
def test_inpaint_takes_the_pose_of_the_face_being_replaced(ui, monkeypatch, mode, invert, replaced):
    """"Inpaint not masked" repaints everything but the mask; a mask with transparency is read from its alpha."""
    hints = HintSizes(monkeypatch)
    generate(ui, img2img=True, init_images=[two_faces()], mask=mask_over_small_face(mode), inpaint_full_res=False,
             inpainting_mask_invert=invert, denoising_strength=0.75, instantid=positional(**ON))
    centre, side = (POSE_CENTRE, POSE_SIDE) if replaced == "small" else ((190, 60), 56)
    _, keypoints = expected_face(centre, side)
    np.testing.assert_allclose(hints.drawn[0][1], (keypoints + 0.5) * 0.25 - 0.5, atol=0.5)


# --- arguments other extensions copy, Send to, infotext -----------------------------------------------------

def test_panel_uploads_survive_deepcopy_of_the_job_arguments(ui, tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(photo()))
    face = control(ui, "face_image")
    values = face.preprocess(ui.uploaded_files(path))  # what gradio hands the script for an upload
    assert values == [PhotoFile(values[0])] and isinstance(values[0], PhotoFile)
    p = ui.make_txt2img(script_args={"InstantID": positional(enabled=True, face_image=values)}, prompt="a portrait",
                        negative_prompt="blurry", steps=3, seed=1, **SIZE)
    p.script_args = copy.deepcopy(p.script_args)  # what some extensions do
    with_copy = ui.run(p)
    direct = generate(ui, instantid=positional(**ON))
    assert np.array_equal(np.asarray(with_copy.images[0]), pixels(direct).astype(np.uint8))


def test_send_to_img2img_carries_the_settings_and_photos(ui, tmp_path):
    path = tmp_path / "face.png"
    path.write_bytes(png_bytes(photo()))
    sent = ui.send_to("img2img", {control(ui, "enabled"): True, "Face photo(s)": [str(path)], "Adapter weight": 0.55,
                                  "IdentityNet end": 0.7})
    assert sent.script_value("Adapter weight") == 0.55 and sent.script_value("IdentityNet end") == 0.7
    assert sent.script_value(control(ui, "enabled", is_img2img=True)) is True
    photos = sent.script_value("Face photo(s)")
    assert len(photos) == 1 and open(photos[0], "rb").read() == path.read_bytes()
    result = ui.img2img(script_args=sent.script_overrides(), init_images=[photo(POSE_CENTRE, POSE_SIDE)],
                        prompt="a", steps=3, seed=1, denoising_strength=0.75, **SIZE)
    assert "Adapter weight: 0.55" in result.processed.infotexts[0]


def test_api_infotext_from_an_instantid_image_does_not_turn_it_on(ui):
    made = generate(ui, instantid=positional(**ON))
    client = ui.api_client()
    body = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "seed": 1, **SIZE}
    plain = client.post("/sdapi/v1/txt2img", json=body)
    pasted = client.post("/sdapi/v1/txt2img", json={**body, "infotext": made.processed.infotexts[0]})
    assert pasted.status_code == 200, pasted.text
    assert "InstantID" not in pasted.json()["info"]
    assert pasted.json()["images"][0] == plain.json()["images"][0]


# --- hires sizes, data folder -------------------------------------------------------------------------------

@pytest.mark.parametrize("upscaler, upscaled", [("Latent", 96), ("ESRGAN_4x", 102)])
def test_hires_keypoints_are_exact_for_sizes_that_are_not_multiples_of_8(ui, monkeypatch, upscaler, upscaled):
    """68x68 x 1.5 = 102: the first pass's canvas is 64 px, the hires canvas 96 px (12 latent cells); a latent
    upscaler stretches 8 to 12 cells, a pixel upscaler the 64-px image to 102 px before encoding."""
    hints = HintSizes(monkeypatch)
    generate(ui, instantid=positional(**ON), width=68, height=68, enable_hr=True, hr_scale=1.5,
             denoising_strength=0.5, hr_upscaler=upscaler)
    (first_size, first), (hires_size, hires) = hints.drawn
    assert first_size == (64, 64) and hires_size == (96, 96)
    np.testing.assert_allclose(hires, Placement.resize((64, 64), (upscaled, upscaled)).apply(first), atol=1e-6)


def test_with_data_dir_the_face_models_sd_webui_controlnet_downloaded_are_found(webui, models_root, unets,
                                                                                tmp_path):
    data = tmp_path / "data"
    models = tmp_path / "models"
    shutil.copytree(models_root, models, ignore=shutil.ignore_patterns("insightface"))
    downloads = data / "extensions" / "sd-webui-controlnet-main" / "annotator" / "downloads" / "insightface" / "models"
    shutil.copytree(models_root / "insightface" / "models" / "antelopev2", downloads / "antelopev2")
    webui.set_data_dir(data, models_dir=models)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT)
    assert webui_host.face_analyzer_pack() == downloads / "antelopev2"
    result = generate(webui, instantid=positional(**ON))
    assert "InstantID:" in result.processed.infotexts[0]
    a1111.release_models()


# --- routes -------------------------------------------------------------------------------------------------

def test_routes_need_the_api_credentials_when_the_webui_has_them(ui):
    client = ui.api_client(api_auth="alice:secret")
    assert client.get("/instantid/models").status_code == 401
    assert client.post("/instantid/detect", json={"image": b64(photo())}).status_code == 401
    wrong = ui.api_client(api_auth="alice:secret", auth=("alice", "guess"))
    assert wrong.get("/instantid/models").status_code == 401
    right = ui.api_client(api_auth="alice:secret", auth=("alice", "secret"))
    assert right.get("/instantid/models").status_code == 200
    assert right.post("/instantid/detect", json={"image": b64(photo())}).status_code == 200


def test_routes_accept_a_logged_in_panel_when_the_ui_has_a_login(ui):
    assert ui.ui_client(gradio_auth="alice:secret").get("/instantid/models").status_code == 401
    assert ui.ui_client(gradio_auth="alice:secret", logged_in=True).get("/instantid/models").status_code == 200


def test_routes_name_no_server_path(ui, models_root):
    text = ui.api_client().get("/instantid/models").text
    assert str(models_root) not in text and str(shared.script_path) not in text
    missing = ui.api_client().post("/instantid/detect", json={"image": "not base64!"})
    assert missing.status_code == 422 and "/" not in missing.json()["detail"].split("(")[0]


def test_detect_bounds_the_work_of_one_request(ui):
    client = ui.api_client()
    assert client.post("/instantid/detect", json={"image": b64(photo()), "face_index": 100}).status_code == 422
    big = Image.new("RGB", (8000, 6000), (90, 90, 90))
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    refused = client.post("/instantid/detect", json={"image": base64.b64encode(buffer.getvalue()).decode()})
    assert refused.status_code == 422 and "40 megapixels" in refused.json()["detail"]
    large_photo = photo(size=(2048, 2048), centre=(1024, 1024), side=300)
    found = client.post("/instantid/detect", json={"image": b64(large_photo)}).json()
    overlay = Image.open(io.BytesIO(base64.b64decode(found["preview"])))
    assert max(overlay.size) <= 1024 and found["faces"]


# --- messages -----------------------------------------------------------------------------------------------

def test_panel_messages_use_the_panels_labels_and_the_api_its_field_names(ui):
    with pytest.raises(webui_host.InstantID, match=r'^"Face photo\(s\)" is missing'):
        generate(ui, instantid=positional(enabled=True))
    response = ui.api_client().post("/sdapi/v1/txt2img", json={
        "prompt": "a", "steps": 3, **SIZE, "alwayson_scripts": {"InstantID": {"args": [{"enabled": True}]}}})
    assert response.status_code == 422 and "face_image is missing" in response.json()["detail"]


# --- downloading what is missing ----------------------------------------------------------------------------

def ui_component(demo, suffix):
    return next(b for b in demo.blocks.values() if (getattr(b, "elem_id", None) or "").endswith(suffix))


def test_the_panel_offers_what_is_missing_and_downloads_it_with_progress(webui, unets, tmp_path, panel_hub):
    models = tmp_path / "models"
    models.mkdir()
    webui.set_models_path(models)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT, build_ui=False)
    demo = webui.build_ui()
    notice, button = ui_component(demo, "_instantid_missing"), ui_component(demo, "_instantid_download")
    assert notice.visible and button.visible
    for text in ("instantid/ip-adapter.bin", "insightface/models/antelopev2/glintr100.onnx",
                 "research purposes only", "non-commercial"):
        assert text in notice.value, text  # the licences are shown before anything is fetched

    reports = []

    def progress(fraction, desc=None):
        reports.append((fraction, desc))

    download_missing = type(script(webui)).ui.__globals__["download_missing"]
    identitynet, adapter, notice_update, button_update = download_missing(progress)
    assert reports and reports[-1][0] == 1.0 and " of " in reports[-1][1]
    assert any(c.startswith("instantid/ip-adapter.bin") for c in adapter["choices"])
    assert any(c.startswith("instantid/ControlNetModel") for c in identitynet["choices"])
    assert notice_update["visible"] is False and button_update["visible"] is False
    # the next job uses the files without a restart, and a second click fetches nothing
    assert "InstantID:" in generate(webui, instantid=positional(**ON)).processed.infotexts[0]
    gets = len(panel_hub.requests)
    download_missing(progress)
    assert len(panel_hub.requests) == gets
    a1111.release_models()


def test_a_failed_download_tells_the_panel_why(webui, unets, tmp_path, panel_hub):
    import gradio as gr

    webui.set_models_path(tmp_path)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT)
    panel_hub.files.clear()  # the hub has none of the files
    download_missing = type(script(webui)).ui.__globals__["download_missing"]
    with pytest.raises(gr.Error, match="was not found at .*404.*models.md"):
        download_missing(lambda *a, **k: None)


def test_building_the_panel_without_a_checkpoint_does_not_start_loading_one(webui, models_root, monkeypatch):
    """A1111's `shared.sd_model` is a property that loads a checkpoint when none is loaded (and logs "No
    checkpoints found" each time there is none): the panel reads the loaded model without it."""
    import types

    from modules import sd_models

    reads = []

    class LoadingShared(types.ModuleType):
        @property
        def sd_model(self):
            reads.append(1)
            return None

    monkeypatch.setattr(sd_models.model_data, "sd_model", None)
    webui.set_models_path(models_root)
    original = shared.__class__
    monkeypatch.delattr(shared, "sd_model", raising=False)
    shared.__class__ = LoadingShared
    try:
        webui.load_extension(EXTENSION_SCRIPT)
        choices = control(webui, "adapter_model").choices
    finally:
        shared.__class__ = original
    assert not reads and choices[0] == AUTOMATIC and len(choices) > 1


def test_turning_instantid_on_brings_the_offer_up_to_date_with_the_checkpoint_loaded_since(webui, models_root,
                                                                                             unets, monkeypatch):
    """The WebUI builds the panel while its checkpoint still loads: the panel then assumes SDXL, for which the tiny
    models installed here are of another family, and offers the published files."""
    from modules import sd_models

    from tests.jobs_common import block_by_id, event_handlers

    webui.set_models_path(models_root)
    monkeypatch.setattr(sd_models.model_data, "sd_model", None)
    webui.load_extension(EXTENSION_SCRIPT, build_ui=False)
    demo = webui.build_ui()
    notice = ui_component(demo, "_instantid_missing")
    assert notice.visible and "instantid/ip-adapter.bin" in notice.value
    monkeypatch.undo()
    webui.set_model(unets["sdxl"], "sdxl")  # loaded once the panel is there
    handlers = event_handlers(demo, block_by_id(demo, "script_txt2img_instantid_enabled-checkbox"))
    models = [ui_component(demo, f"_instantid_{name}")._id
              for name in ("identitynet_model", "adapter_model", "missing", "download")]
    (refresh,) = [fn for fn, outputs in handlers if outputs == models]
    identitynet, adapter, notice_update, button_update = refresh()
    assert notice_update["visible"] is False and button_update["visible"] is False
    assert any(c.startswith("instantid/ip-adapter.bin") for c in adapter["choices"])


# --- the panel's layout and helpers -------------------------------------------------------------------------

def panel(webui):
    """The built txt2img UI's blocks by their id's ending, and the script module's functions."""
    demo = webui.build_ui()
    blocks = {b.elem_id: b for b in demo.blocks.values() if getattr(b, "elem_id", None)}

    def block(suffix):
        return next(b for elem_id, b in blocks.items() if elem_id.startswith("script_txt2img_instantid_")
                    and elem_id.endswith(suffix))

    return block, type(script(webui)).ui.__globals__


def test_the_panel_leads_with_photos_and_the_two_weights_and_folds_the_rest(webui, models_root, unets):
    webui.set_models_path(models_root)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT, build_ui=False)
    block, module = panel(webui)
    assert "Drop a clear photo" in block("_lead").value
    advanced = block("_advanced")
    assert advanced.open is False
    folded = {c.elem_id.rsplit("_instantid_", 1)[1] for c in descendants(advanced) if getattr(c, "elem_id", None)}
    assert {"identitynet_start", "adapter_end", "face_index", "uncond_noise", "similarity", "face_region",
            "identitynet_model"} <= folded
    assert not {"identitynet_weight", "adapter_weight", "face_image"} & folded
    for hidden in ("_preview_gallery", "_thumbnails", "_pose_box", "_face_region_mask"):
        assert block(hidden).visible is False, hidden  # shown once there is something to show or set
    # style presets set the two weights
    for name, (identitynet, adapter) in module["STYLES"].items():
        first, second = module["style_weights"](name)()
        assert (first["value"], second["value"]) == (identitynet, adapter)
    assert module["STYLES"]["Balanced"] == (0.8, 0.8)  # the defaults


def test_each_paths_start_and_end_act_as_one_range(ui):
    from modules import ui as built

    from tests.jobs_common import check_ranges_kept

    check_ranges_kept(built.demo)


def test_each_panel_field_keeps_its_own_ui_default(ui):
    from modules import ui as built

    from tests.jobs_common import check_ui_default_keys_unique

    check_ui_default_keys_unique(built.demo)
    check_ui_default_keys_unique(built.demo, "img2img")


def test_a_face_photo_is_removed_by_choosing_its_thumbnail(ui, tmp_path):
    from modules import ui as built

    from tests.jobs_common import check_photo_removal

    second = tmp_path / "second.png"
    photo(centre=(100, 140), side=60, colour="magenta").save(second)
    check_photo_removal(built.demo, [FACE.name, str(second)])


def test_the_pose_photo_and_box_show_for_their_pose_and_thumbnails_for_photos(ui):
    module = type(script(ui)).ui.__globals__
    photo_field, box = module["pose_fields"]("photo")
    assert photo_field["visible"] is True and box["visible"] is False
    photo_field, box = module["pose_fields"]("profile left")
    assert photo_field["visible"] is False and box["visible"] is True
    assert module["pose_fields"]("none")[1]["visible"] is False
    shown, chosen, remove = module["face_thumbnails"]([PhotoFile(FACE.name)])
    assert shown["visible"] is True and len(shown["value"]) == 1 and chosen is None and remove["visible"] is False
    assert module["face_thumbnails"](None)[0]["visible"] is False
    gallery, message = module["preview_faces"](None, None, 0, "photo", "0.5, 0.5, 0.4")
    assert gallery["visible"] is False and message == "Upload a face photo first."
    gallery, _ = module["preview_faces"]([PhotoFile(FACE.name)], None, 0, "photo", "0.5, 0.5, 0.4")
    assert gallery["visible"] is True and len(gallery["value"]) == 1
