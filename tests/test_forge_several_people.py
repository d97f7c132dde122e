"""Several identities end to end through the Forge stand-in: named and positional API forms, each person's patches
and IdentityNet pass in the ControlNet chain, the infotext out and back in, bad values refused naming the field, one
person over the whole image equal to the single-identity fields (the formula itself: test_forge_parity)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from lib_instantid.args import INFOTEXT_KEY, InstantIDArgs
from tests.forge_jobs import (  # noqa: F401  (fixtures)
    api_job, b64, decode, face, forge, generate, models_root, photo, pixels, positional, ui, unets,
)
from tests.jobs_common import HintSizes

pytestmark = [pytest.mark.filterwarnings(r"ignore:\s*on_event is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Please use `import python_multipart`:PendingDeprecationWarning")]

LEFT_FACE, RIGHT_FACE = photo(colour="cyan"), photo(centre=(100, 140), colour="magenta")


def two_people() -> list[dict]:
    return [{"face_image": b64(LEFT_FACE), "region": "left"},
            {"face_image": b64(RIGHT_FACE), "region": "right", "adapter_weight": 0.6, "pose": "front"}]


def test_two_people_through_the_api_named_and_positional(ui, monkeypatch):
    drawn = HintSizes(monkeypatch)
    client = ui.api_client()
    named = api_job(client, [{"enabled": True, "identities": two_people()}])
    assert named.status_code == 200, named.text
    left, right = [points for size, points in drawn.drawn if size == (64, 64)][:2]
    assert (left[:, 0] < 32).all() and (right[:, 0] >= 32).all()
    listed = api_job(client, positional(enabled=True, face_image=None, identities=two_people()))
    assert np.array_equal(decode(named), decode(listed))
    alone = api_job(client, [{"enabled": True, "identities": two_people()[:1]}])
    assert not np.array_equal(decode(named), decode(alone))  # the second person acts
    params = json.loads(named.json()["info"])["extra_generation_params"]
    recorded = InstantIDArgs.values_from_infotext(params)["identities"]
    assert [(p["region"], p["adapter_weight"]) for p in recorded] == [("left", 0.8), ("right", 0.6)]
    from modules import infotext_utils

    image_params = infotext_utils.parse_generation_parameters(json.loads(named.json()["info"])["infotexts"][0])
    assert len(image_params["InstantID similarity"].split(", ")) == 2  # one score per person, in the image's infotext


def test_one_person_over_the_whole_image_is_the_single_identity_fields_on_forge(ui, face):
    single = pixels(generate(ui, instantid=positional(enabled=True, face_image=[face])))
    as_identity = pixels(generate(ui, instantid=positional(
        enabled=True, face_image=None, identities=[{"face_image": [face], "region": "box"}])))
    assert np.array_equal(single, as_identity)
    assert INFOTEXT_KEY in generate(ui, instantid=positional(enabled=True, face_image=[face])).processed.infotexts[0]


def test_bad_identities_are_refused_on_forge_naming_the_field(ui):
    client = ui.api_client()
    bad = api_job(client, [{"enabled": True, "identities": [{"face_image": b64(LEFT_FACE), "region": "middle"}]}])
    assert bad.status_code == 422 and "identities[0].region" in bad.json()["detail"]
    both = api_job(client, [{"enabled": True, "face_image": b64(LEFT_FACE), "identities": two_people()}])
    assert both.status_code == 422 and "face_image is set together with identities" in both.json()["detail"]
    assert api_job(client, [{"enabled": True, "identities": two_people()}]).status_code == 200
