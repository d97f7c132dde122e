"""The settings: named and positional forms, validation messages naming the field, infotext round trip."""
from __future__ import annotations

import base64
import io
from dataclasses import fields

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from lib_instantid.args import AUTOMATIC, INFOTEXT_KEY, InstantIDArgs, specs
from lib_instantid.errors import InstantIDError


def png_base64(size=(32, 24), color=(200, 30, 40), mode="RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_defaults_are_the_documented_contract():
    defaults = {name: default for name, _, default in specs()}
    assert defaults == {
        "enabled": False, "face_image": (), "pose_image": None, "identitynet_model": "", "adapter_model": "",
        "identitynet_weight": 0.8, "adapter_weight": 0.8, "identitynet_start": 0.0, "identitynet_end": 1.0,
        "adapter_start": 0.0, "adapter_end": 1.0, "face_index": 0, "pose": "photo", "pose_box": (0.5, 0.5, 0.4),
        "uncond_noise": 0.0, "similarity": True, "face_region": "off", "face_region_mask": None, "identities": (),
    }


def test_named_and_positional_forms_agree():
    named = {"enabled": True, "face_image": png_base64(), "identitynet_weight": 0.6, "adapter_end": 0.9,
             "face_index": 1, "adapter_model": "instantid/ip-adapter.bin"}
    from_dict = InstantIDArgs.from_script_args([named, "ignored", "defaults", "from", "the", "ui"])
    positional = [named.get(f.name, f.default) for f in fields(InstantIDArgs)]
    from_positional = InstantIDArgs.from_script_args(positional)
    for f in fields(InstantIDArgs):
        a, b = getattr(from_dict, f.name), getattr(from_positional, f.name)
        if f.name == "face_image":
            assert [np.asarray(i).tolist() for i in a] == [np.asarray(i).tolist() for i in b]
        else:
            assert a == b, f.name


def test_face_image_accepts_one_or_several_and_data_urls():
    one = InstantIDArgs.from_dict({"face_image": png_base64()})
    several = InstantIDArgs.from_dict({"face_image": ["data:image/png;base64," + png_base64(), png_base64((8, 8))]})
    assert len(one.face_image) == 1 and one.face_image[0].size == (32, 24)
    assert [i.size for i in several.face_image] == [(32, 24), (8, 8)]


def test_panel_uploads_are_read_from_their_temporary_files(tmp_path):
    path = tmp_path / "face.png"
    Image.new("RGB", (12, 7)).save(path)

    class Upload:  # gradio's NamedTemporaryFile with `name` set to the upload's path
        name = str(path)

    args = InstantIDArgs.from_script_args([True, [Upload()]])
    assert args.face_image[0].size == (12, 7)


def test_panel_values_pass_through(tmp_path):
    pil = Image.new("RGB", (10, 10))
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    args = InstantIDArgs.from_script_args([True, [buffer.getvalue()], pil, AUTOMATIC, AUTOMATIC])
    assert args.enabled and args.face_image[0].size == (10, 10) and args.pose_image.size == pil.size
    assert args.identitynet_model == "" and args.adapter_model == ""


@pytest.mark.parametrize("values, field, words", [
    ({"color": 1}, "color", "Unknown InstantID field 'color'"),
    ({"adapter_weight": "0.5"}, "adapter_weight", "must be a number from 0 to 2"),
    ({"adapter_weight": 2.5}, "adapter_weight", "outside the allowed range 0 to 2"),
    ({"identitynet_weight": float("nan")}, "identitynet_weight", "outside the allowed range"),
    ({"identitynet_end": -0.1}, "identitynet_end", "outside the allowed range 0 to 1"),
    ({"adapter_start": 0.7, "adapter_end": 0.2}, "adapter_start", "after adapter_end"),
    ({"face_index": 1.5}, "face_index", "whole number"),
    ({"face_index": True}, "face_index", "whole number"),
    ({"enabled": "yes"}, "enabled", "true or false"),
    ({"adapter_model": 3}, "adapter_model", "must be a string"),
    ({"face_image": "not base64!"}, "face_image", "not valid base64"),
    ({"face_image": base64.b64encode(b"hello").decode()}, "face_image", "not a readable image"),
    ({"face_image": [png_base64(), "   "]}, "face_image[1]", "is empty"),
    ({"pose_image": png_base64()[:40]}, "pose_image", "base64|readable image"),
    ({"face_image": 7}, "face_image", "expected an image"),
])
def test_bad_values_are_refused_naming_the_field(values, field, words):
    with pytest.raises(InstantIDError, match=words) as caught:
        InstantIDArgs.from_dict(values)
    assert caught.value.field == field
    assert caught.value.status_code == 422 and vars(caught.value)["status_code"] == 422


def test_too_many_positional_values_are_refused():
    count = len(fields(InstantIDArgs))
    with pytest.raises(InstantIDError, match=f"takes {count} arguments"):
        InstantIDArgs.from_script_args([False] * (count + 1))


def test_enabled_without_a_face_is_not_ready():
    with pytest.raises(InstantIDError, match="face_image is missing"):
        InstantIDArgs.from_dict({"enabled": True}).check_ready()
    InstantIDArgs.from_dict({"enabled": False}).check_ready()


@pytest.mark.parametrize("args, expected", [
    ([{"enabled": True}], True), ([{"enabled": False, "bogus": 1}], False), ([{}], False),
    ([True, None], True), ([False], False), ([], False), (["true"], False),
])
def test_only_an_explicit_true_turns_it_on(args, expected):
    assert InstantIDArgs.requested(args) is expected


def test_infotext_round_trip_records_settings_not_images():
    args = InstantIDArgs.from_dict({
        "enabled": True, "face_image": png_base64(), "identitynet_model": "instantid/Control, Net: v2",
        "adapter_model": "ControlNet/ip-adapter_instant_id_sdxl.bin", "identitynet_weight": 0.65,
        "adapter_weight": 1.25, "identitynet_start": 0.1, "identitynet_end": 0.9, "adapter_end": 0.75,
        "face_index": 2, "uncond_noise": 0.35,
    })
    text = args.infotext({"Face": "#3 by size of 4"})
    assert "base64" not in text and "iVBOR" not in text
    parsed = InstantIDArgs.values_from_infotext({INFOTEXT_KEY: text, "Steps": "30"})
    # identities are recorded only when there are any (test_several_people)
    recorded = [f for f in fields(args) if (f.metadata["spec"].infotext and f.name != "identities")
                or f.name == "enabled"]
    expected = {f.name: getattr(args, f.name) for f in recorded}
    assert parsed == expected


def test_no_infotext_entry_means_nothing_to_paste():
    assert InstantIDArgs.values_from_infotext({"Steps": "20"}) == {}


def test_overrides_are_validated():
    args = InstantIDArgs()
    assert args.with_overrides(adapter_weight=1.5).adapter_weight == 1.5
    with pytest.raises(InstantIDError, match="identitynet_end"):
        args.with_overrides(identitynet_end=3.0)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)
field_names = st.sampled_from([f.name for f in fields(InstantIDArgs)]) | st.text(max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=6))
def test_random_api_dicts_give_settings_or_our_clear_error(values):
    try:
        InstantIDArgs.from_dict(values)
    except InstantIDError as e:
        assert e.field is not None and str(e)
