"""The identity score: each image's infotext (and the API's info) records how closely its best-matching face
resembles the identity; the route scores any image; nothing of it runs when the setting is off."""
from __future__ import annotations

import re
from dataclasses import fields

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from tests.jobs_common import api_job, block_by_id, decode, event_handlers
from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    FACE, SIZE, b64, generate, models_root, photo, positional, ui, unets, webui,
)

from lib_instantid import similarity
from lib_instantid.args import InstantIDArgs
from lib_instantid.face import FaceAnalyzer, average_embedding
from lib_instantid.hosts import webui as webui_host

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")


def scores(infotext: str) -> list[str]:
    return [part.split(": ", 1)[1] for part in infotext.split(", ") if part.startswith("InstantID similarity: ")]


def cosine(a, b) -> float:  # written out here, independently of similarity.cosine
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


def expected_score(image, reference) -> str:
    faces = webui_host.face_analyzer().detect(image)
    return similarity.NO_FACE if not faces else f"{max(cosine(f.embedding, reference) for f in faces):.2f}"


def test_every_image_gets_its_own_score_in_its_infotext(ui):
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE]), batch_size=2, n_iter=2)
    processed = result.processed
    first = processed.index_of_first_image
    reference = average_embedding([webui_host.face_analyzer().detect(Image.open(FACE.name))[0]])
    images, infotexts = processed.images[first:], processed.infotexts[first:]
    assert len(images) == len(infotexts) == 4
    for image, infotext in zip(images, infotexts):
        assert scores(infotext) == [expected_score(image, reference)]
    assert first == 1 and scores(processed.infotexts[0]) == []  # the batch's grid: no image's score describes it
    assert "InstantID similarity" not in result.p.extra_generation_params  # nothing of the job stays on p


def test_each_xyz_cell_records_its_own_score_and_the_grid_none(ui):
    from modules import scripts as webui_scripts

    ui.build_ui()  # axis options are snapshotted when the UI is built
    xyz = webui_scripts.scripts_txt2img.script("X/Y/Z plot")
    axis = [o.label for o in xyz.current_axis_options].index("[InstantID] Adapter weight")
    job = dict(prompt="a portrait", negative_prompt="blurry", steps=3, seed=1, **SIZE)
    cells = [generate(ui, instantid=positional(enabled=True, face_image=[FACE], adapter_weight=w), **job).processed
             for w in (0.2, 1.5)]
    grid = ui.txt2img(select="X/Y/Z plot", **job, script_args={
        "InstantID": positional(enabled=True, face_image=[FACE]), "X/Y/Z plot": [axis, "0.2, 1.5"]}).processed
    cell_texts = grid.infotexts[-2:]
    assert [scores(t) for t in cell_texts] == [scores(c.infotexts[0]) for c in cells]  # each cell's, as if run alone
    assert all(len(scores(t)) == 1 for t in cell_texts) and scores(grid.info) == []


def test_a_face_in_the_image_is_scored_against_the_identity_used(ui, monkeypatch):
    """img2img at a low denoise keeps the init image's face: its score is the cosine of the two raw embeddings."""
    init = photo(centre=(128, 120), side=40, colour="magenta")
    result = generate(ui, img2img=True, instantid=positional(enabled=True, face_image=[FACE], pose_image=None),
                      init_images=[init], denoising_strength=0.02, width=256, height=256)
    (score,) = scores(result.processed.infotexts[0])
    analyzer = webui_host.face_analyzer()
    reference = average_embedding([analyzer.detect(Image.open(FACE.name))[0]])
    assert analyzer.detect(result.processed.images[0]) and score == expected_score(result.processed.images[0], reference)


def test_off_runs_no_face_analysis_and_records_nothing(ui, monkeypatch):
    generate(ui, instantid=positional(enabled=True, face_image=[FACE]))  # the face photo analysed once, cached
    calls = []
    detect = FaceAnalyzer.detect

    def counting(self, image):
        calls.append(image)
        return detect(self, image)

    monkeypatch.setattr(FaceAnalyzer, "detect", counting)
    result = generate(ui, instantid=positional(enabled=True, face_image=[FACE], similarity=False))
    assert not scores(result.processed.infotexts[0])
    assert len(calls) == 1  # the face photo only (from the cache): no output image was analysed
    assert not scores(generate(ui).processed.infotexts[0])  # InstantID off: nothing either


@pytest.mark.parametrize("is_img2img", [False, True])
def test_the_scores_show_under_the_panel_after_each_generation(ui, is_img2img):
    from modules import ui as built

    tab = "img2img" if is_img2img else "txt2img"
    demo = built.demo  # the UI the fixture built when it loaded the extension
    shown_in = block_by_id(demo, f"script_{tab}_instantid_scores")
    assert shown_in.visible is False  # nothing to show before a generation
    (handler, outputs), = event_handlers(demo, block_by_id(demo, f"generation_info_{tab}"))
    assert outputs == [shown_in._id]

    job = dict(instantid=positional(enabled=True, face_image=[FACE]), batch_size=2)
    if is_img2img:
        job.update(img2img=True, init_images=[photo()], denoising_strength=0.5)
    processed = generate(ui, **job).processed
    shown = handler(processed.js())
    expected = [scores(text)[0] for text in processed.infotexts[processed.index_of_first_image:]]
    assert shown["visible"] is True and len(expected) == 2
    assert re.findall(r"image \d: \*\*([^*]+)\*\*", shown["value"]) == expected  # each image's, in gallery order

    one = handler(generate(ui, instantid=positional(enabled=True, face_image=[FACE])).processed.js())
    assert re.search(r"Identity score: \*\*(no face found|-?\d\.\d\d)\*\*", one["value"])
    for unscored in (generate(ui, instantid=positional(enabled=True, face_image=[FACE], similarity=False)),
                     generate(ui)):
        assert handler(unscored.processed.js())["visible"] is False
    assert handler("")["visible"] is False  # a failed generation leaves no info


def test_the_api_returns_the_scores_in_its_info(ui):
    response = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo())}])
    assert response.status_code == 200
    assert re.search(r"InstantID similarity: (no face found|-?\d\.\d\d)", response.json()["info"])


def test_the_similarity_route(ui):
    client = ui.api_client()
    same = client.post("/instantid/similarity", json={"reference": b64(photo()), "image": b64(photo())}).json()
    assert same["faces"] == 1 and same["similarity"] == pytest.approx(1.0, abs=1e-6)
    other = photo(centre=(100, 140), side=60, colour="magenta")
    body = client.post("/instantid/similarity", json={"reference": [b64(photo()), b64(photo())],
                                                       "image": b64(other)}).json()
    analyzer = webui_host.face_analyzer()
    expected = cosine(analyzer.detect(other)[0].embedding, analyzer.detect(photo())[0].embedding)
    assert body["similarity"] == pytest.approx(expected, abs=1e-5) and body["similarity"] < 0.99
    blank = client.post("/instantid/similarity", json={"reference": b64(photo()),
                                                        "image": b64(Image.new("RGB", (64, 64)))}).json()
    assert blank == {"similarity": None, "faces": 0, "message": similarity.NO_FACE}
    bad = client.post("/instantid/similarity", json={"reference": b64(Image.new("RGB", (64, 64))), "image": b64(other)})
    assert bad.status_code == 422 and "No face found in the reference photo" in bad.json()["detail"]
    assert client.post("/instantid/similarity", json={"reference": [], "image": b64(other)}).status_code == 422


def test_similarity_is_a_setting_of_the_api_and_the_panel(ui):
    response = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "similarity": False}])
    assert response.status_code == 200 and "InstantID similarity" not in response.json()["info"]
    assert decode(response).shape[-1] == 3
    bad = api_job(ui.api_client(), [{"enabled": True, "face_image": b64(photo()), "similarity": "yes"}])
    assert bad.status_code == 422 and "similarity" in bad.json()["detail"]
    names = [f.name for f in fields(InstantIDArgs)]
    checkbox = ui.runner().script("InstantID").controls[names.index("similarity")]
    assert isinstance(checkbox, gr.Checkbox) and checkbox.value is True and checkbox.label == "Identity score"
