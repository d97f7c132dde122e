"""Several identities in one image: the hooked UNet equals the reference formula (each identity's IP term and
IdentityNet pass masked to its region, summed), each region's conditioning depends only on its own identity (swap
tests), and the setting end to end through the A1111 stand-in: API named and positional, infotext out and back in,
bad values refused naming the field, one identity over the whole image equal to the single-identity fields."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import lib_instantid.unet_hooks as unet_hooks
from lib_instantid.args import INFOTEXT_KEY, InstantIDArgs
from lib_instantid.conditioning import HintFeatures, project_face
from lib_instantid.session import CallInfo, IdentityTerms, Schedule, Session
from lib_instantid.unet_hooks import InstantIDHooks, cross_attention_layers
from tests.fixtures import tiny_models as tm
from tests.test_parity import ROWS, SIZE, TOLERANCE, case, keypoint_image, reference_eps, relative_error  # noqa: F401
from tests.webui_jobs import (  # noqa: F401  (fixtures)
    FACE, HintSizes, b64, generate, models_root, no_hooks_left, photo, pixels, png_bytes, positional, ui, unets, upload,
    webui,
)

CPU = torch.device("cpu")
HALF = SIZE // 2


def half(side: str) -> np.ndarray:
    region = np.zeros((SIZE, SIZE), np.float32)
    if side == "left":
        region[:, :HALF] = 1.0
    else:
        region[:, HALF:] = 1.0
    return region


@dataclass
class Someone:
    embedding: np.ndarray
    keypoints: np.ndarray
    region: np.ndarray
    adapter_weight: float = 0.8
    identitynet_weight: float = 0.8


def people_of(case) -> dict[str, Someone]:
    g = np.random.default_rng(3)
    right = case.keypoints * [0.5, 1.0] + [HALF, 0.0]
    return {
        "A": Someone(case.embedding, case.keypoints * [0.5, 1.0], half("left")),
        "B": Someone((g.standard_normal(512) * 1.5).astype(np.float32), right, half("right")),
        "C": Someone((g.standard_normal(512) * 1.5).astype(np.float32), right + [2.0, 3.0], half("right")),
    }


def terms(case, someone: Someone) -> IdentityTerms:
    tokens = project_face(case.adapter, someone.embedding, CPU, torch.float32)
    return IdentityTerms(tokens, Schedule(someone.adapter_weight), Schedule(someone.identitynet_weight),
                         HintFeatures(case.identitynet, lambda w, h, image: someone.keypoints),
                         lambda w, h, image: someone.region)


def session_parts(case, people: list[Someone]) -> dict:
    first, *others = [terms(case, someone) for someone in people]
    return dict(adapter=case.adapter, adapter_schedule=first.adapter_schedule, identitynet=case.identitynet,
                identitynet_schedule=first.identitynet_schedule, hint=first.hint, region=first.region, others=others)


def hooked(case, people: list[Someone]) -> torch.Tensor:
    first = terms(case, people[0])
    hooks = InstantIDHooks(case.unet, first.tokens, lambda x, c: CallInfo(ROWS, 0, 1), **session_parts(case, people))
    with hooks, torch.no_grad():
        return case.unet(case.x, case.t, case.text, case.y)


def reference(case, people: list[Someone]) -> torch.Tensor:
    return tm.reference_eps_several(
        case.reference, case.x, case.t, case.text,
        [tm.ReferencePerson(torch.from_numpy(s.embedding), keypoint_image(s.keypoints), s.adapter_weight,
                            s.identitynet_weight, torch.from_numpy(s.region)) for s in people],
        [r == 1 for r in ROWS], y=case.y_parts)


@pytest.mark.parametrize("weights", [((0.8, 0.8), (0.8, 0.8)), ((0.8, 0.6), (0.5, 1.0)), ((0.8, 0.0), (0.0, 0.8))])
def test_two_people_match_the_reference_formula(case, weights):
    everyone = people_of(case)
    a, b = everyone["A"], everyone["B"]
    (a.adapter_weight, a.identitynet_weight), (b.adapter_weight, b.identitynet_weight) = weights
    ours = hooked(case, [a, b])
    assert relative_error(ours, reference(case, [a, b])) <= TOLERANCE
    # Not the same as either person alone over their region: the test can see a person left out.
    assert relative_error(ours, reference(case, [a])) > 1e-3


def test_the_reference_of_one_person_everywhere_is_the_single_identity_reference(case):
    """The several-people reference reduces to the diffusers reference the single-identity parity tests use."""
    someone = Someone(case.embedding, case.keypoints, np.ones((SIZE, SIZE), np.float32))
    assert relative_error(reference(case, [someone]), reference_eps(case, 0.8, 0.8)) <= TOLERANCE


def residuals(case, people: list[Someone]) -> list[torch.Tensor]:
    heads = [layer.heads for layer in cross_attention_layers(case.unet)]
    first = terms(case, people[0])
    session = Session(first.tokens, heads, **session_parts(case, people))
    state = session.call(CallInfo(ROWS, 0, 1), case.x, case.t, case.y)
    return [r * state.identitynet_weight for r in [*state.residuals, state.mid]]


def columns(residual: torch.Tensor, side: str) -> torch.Tensor:
    """The columns of a residual well inside one half (away from the seam the bilinear resize blurs)."""
    width = residual.shape[-1]
    if width < 4:
        return residual[..., :0]
    return residual[..., : width // 2 - 1] if side == "left" else residual[..., width // 2 + 1:]


def test_each_region_gets_only_its_own_persons_identitynet_residuals(case):
    """Swap test: replacing the right person changes nothing on the left, and the reverse, at every residual."""
    everyone = people_of(case)
    ab, ac = residuals(case, [everyone["A"], everyone["B"]]), residuals(case, [everyone["A"], everyone["C"]])
    alone = residuals(case, [Someone(everyone["A"].embedding, everyone["A"].keypoints, np.ones((SIZE, SIZE),
                                                                                                np.float32))])
    checked = 0
    for r_ab, r_ac, r_alone in zip(ab, ac, alone):
        if columns(r_ab, "left").numel() == 0:
            continue
        checked += 1
        assert torch.allclose(columns(r_ab, "left"), columns(r_ac, "left"), rtol=0, atol=1e-6)
        assert torch.allclose(columns(r_ab, "left"), columns(r_alone, "left"), rtol=0, atol=1e-6)
        assert not torch.allclose(columns(r_ab, "right"), columns(r_ac, "right"), atol=1e-4)
    assert checked >= 3


def test_each_region_gets_only_its_own_persons_face_term(case, monkeypatch):
    """Swap test of the face attention: in the first cross-attention layer (which nothing of InstantID reaches
    before it), the face term on the left half is the left person's alone, whoever is on the right."""
    seen = []
    original = unet_hooks.face_attention

    def spy(state, index, query, heads):
        face = original(state, index, query, heads)
        if index == 0:
            seen.append(face)
        return face

    monkeypatch.setattr(unet_hooks, "face_attention", spy)
    everyone = people_of(case)
    for right in ("B", "C"):
        hooked(case, [everyone["A"], everyone[right]])
    ab, ac = seen
    side = int(ab.shape[1] ** 0.5)  # the layer's tokens are a square grid, row by row
    grid_ab, grid_ac = (f.reshape(f.shape[0], side, side, -1) for f in (ab, ac))
    assert torch.equal(grid_ab[:, :, : side // 2], grid_ac[:, :, : side // 2])
    assert not torch.allclose(grid_ab[:, :, side // 2:], grid_ac[:, :, side // 2:])
    assert grid_ab[:, :, : side // 2].abs().max() > 0  # the left person's term is there


# --- through the A1111 stand-in -----------------------------------------------------------------------------------

LEFT_FACE, RIGHT_FACE = photo(colour="cyan"), photo(centre=(100, 140), colour="magenta")


def two_people(**more) -> list[dict]:
    return [{"face_image": b64(LEFT_FACE), "region": "left", **more},
            {"face_image": b64(RIGHT_FACE), "region": "right", "adapter_weight": 0.6}]


def api(ui, instantid: dict, **body):
    from tests.jobs_common import api_job

    return api_job(ui.api_client(), [{"enabled": True, **instantid}], **body)


class Sessions:
    """The identities of every session a job made: each one's tokens and region at 64 x 64."""

    def __init__(self, monkeypatch):
        self.made: list[list[IdentityTerms]] = []
        original = Session.__init__

        def init(session, *args, **kwargs):
            original(session, *args, **kwargs)
            self.made.append(session.identities)

        monkeypatch.setattr(Session, "__init__", init)


def test_two_people_through_the_api_each_posed_in_their_half(ui, unets, monkeypatch):
    drawn, sessions = HintSizes(monkeypatch), Sessions(monkeypatch)
    response = api(ui, {"identities": two_people()})
    assert response.status_code == 200, response.text
    left, right = [kps for size, kps in drawn.drawn if size == (64, 64)][:2]
    assert (left[:, 0] < 32).all() and (right[:, 0] >= 32).all()
    identities = sessions.made[-1]
    assert len(identities) == 2 and identities[1].adapter_schedule.weight == 0.6
    left_mask, right_mask = (t.region(64, 64, 0) for t in identities)
    assert left_mask[:, :32].min() == 1 and left_mask[:, 32:].max() == 0 and np.array_equal(left_mask, 1 - right_mask)
    recorded = InstantIDArgs.values_from_infotext(
        {INFOTEXT_KEY: json.loads(response.json()["info"])["extra_generation_params"][INFOTEXT_KEY]})
    assert [person["region"] for person in recorded["identities"]] == ["left", "right"]
    assert no_hooks_left(unets["sdxl"])


def test_swapping_the_photos_swaps_the_identities_not_the_poses(ui, monkeypatch):
    sessions = Sessions(monkeypatch)
    first = api(ui, {"identities": two_people(), "pose": "front"})
    swapped_people = two_people()
    swapped_people[0]["face_image"], swapped_people[1]["face_image"] = b64(RIGHT_FACE), b64(LEFT_FACE)
    second = api(ui, {"identities": swapped_people, "pose": "front"})
    assert first.status_code == second.status_code == 200
    (a_left, a_right), (b_left, b_right) = ([t.tokens.both for t in made] for made in sessions.made[-2:])
    assert torch.equal(a_left, b_right) and torch.equal(a_right, b_left) and not torch.equal(a_left, a_right)
    assert first.json()["images"][0] != second.json()["images"][0]
    for made in sessions.made[-2:]:  # the poses stay with the regions
        left, right = (t.hint.keypoints_for(64, 64, 0) for t in made)
        assert (left[:, 0] < 32).all() and (right[:, 0] >= 32).all()


def test_one_person_over_the_whole_image_is_the_single_identity_fields(ui):
    single = pixels(generate(ui, instantid=positional(enabled=True, face_image=[FACE])))
    as_identity = pixels(generate(ui, instantid=positional(
        enabled=True, identities=[{"face_image": [FACE], "region": "box"}])))
    assert np.array_equal(single, as_identity)


def test_without_identities_the_output_and_infotext_are_as_before(ui):
    default = generate(ui, instantid=positional(enabled=True, face_image=[FACE]))
    empty = generate(ui, instantid=positional(enabled=True, face_image=[FACE], identities=[]))
    assert np.array_equal(pixels(default), pixels(empty))
    assert "Identities" not in default.processed.infotexts[0]


def test_infotext_records_each_person_and_is_pasted_back(ui):
    result = generate(ui, instantid=positional(enabled=True, identities=[
        {"face_image": [FACE], "region": "box", "region_box": [0, 0, 0.5, 1], "pose": "three-quarter left"},
        {"face_image": [upload(png_bytes(RIGHT_FACE))], "region": "right", "identitynet_weight": 0.5}]))
    infotext = result.processed.infotexts[0]
    from modules import infotext_utils

    params = infotext_utils.parse_generation_parameters(infotext)
    values = InstantIDArgs.values_from_infotext(params)
    box, right = values["identities"]
    assert box["region_box"] == [0, 0, 0.5, 1] and box["pose"] == "three-quarter left"
    assert right["region"] == "right" and right["identitynet_weight"] == 0.5 and right["adapter_weight"] == 0.8
    pasted = InstantIDArgs.from_dict({"identities": values["identities"]})
    assert [p.region for p in pasted.identities] == ["box", "right"]
    assert len(params["InstantID similarity"].split(", ")) == 2  # one score per person
    assert "Face: largest of 1; largest of 1" in params[INFOTEXT_KEY]


@pytest.mark.parametrize("identities, field", [
    ([{"face_image": "x"}], "identities[0].region"),
    ([{"region": "top"}], "identities[0].region"),
    ([{"region": "box", "region_box": [0.6, 0, 0.6, 1]}], "identities[0].region_box"),
    ([{"region": "left", "adapter_weight": 5}], "identities[0].adapter_weight"),
    ([{"region": "left", "colour": 1}], "identities[0].colour"),
    ([{"region": "left"}] * 5, "identities"),
    ("not json", "identities"),
])
def test_bad_identities_are_refused_naming_the_field(ui, identities, field):
    response = api(ui, {"identities": identities})
    assert response.status_code == 422 and field in response.json()["detail"], response.text


def test_a_person_without_photos_or_with_the_top_level_photo_too_is_refused(ui):
    missing = api(ui, {"identities": [{"region": "left"}]})
    assert missing.status_code == 422 and "identities[0].face_image is missing" in missing.json()["detail"]
    both = api(ui, {"face_image": b64(LEFT_FACE), "identities": two_people()})
    assert both.status_code == 422 and "face_image is set together with identities" in both.json()["detail"]
    no_mask = api(ui, {"identities": [{"face_image": b64(LEFT_FACE), "region": "mask"}]})
    assert no_mask.status_code == 422 and "region_mask" in no_mask.json()["detail"]


# --- the panel ----------------------------------------------------------------------------------------------------

def test_the_panel_gathers_the_person_slots_into_identities_and_pastes_them_back(ui):
    from modules import infotext_utils
    from tests.test_panel_and_routes import panel

    block, module = panel(ui)
    assert block("_people").open is False  # folded until wanted
    for i in range(1, 5):
        assert block(f"_person{i}_region").value == ("left", "right", "box", "box")[i - 1]
        assert block(f"_person{i}_region_box").visible is (i > 2)  # shown for "box" only
    slots = []  # SLOT_FIELDS values, slot after slot
    for i, photos in enumerate(([FACE], [upload(png_bytes(RIGHT_FACE))], None, None)):
        slots += [photos, ("left", "right", "box", "box")[i], "0, 0, 1, 1", None,
                  "as above" if i == 0 else "front", 0.8, 0.5 if i == 1 else 0.8]
    identities = module["people_value"](*slots)
    assert [(p["region"], p["pose"], p["adapter_weight"]) for p in identities] == [("left", None, 0.8),
                                                                                   ("right", "front", 0.5)]
    box, mask = module["region_fields"]("mask")
    assert box["visible"] is False and mask["visible"] is True
    result = generate(ui, instantid=positional(enabled=True, identities=identities))
    script = ui.runner().script("InstantID")
    updates = infotext_utils.paste(result.processed.infotexts[0], script.infotext_fields)
    pasted = {label: update.get("value") for (_, label), update in zip(script.infotext_fields, updates)}
    assert pasted["InstantID person 2 region"] == "right" and pasted["InstantID person 2 adapter_weight"] == 0.5
    assert pasted["InstantID person 1 pose"] == "photo"  # recorded as resolved: the top-level pose
    assert pasted["InstantID person 2 region_box"] == "0.0, 0.0, 1.0, 1.0"
    assert pasted.get("InstantID person 3 region") is None  # no third person: their slot keeps its value
