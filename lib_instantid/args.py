"""The InstantID settings: one dataclass serving the panel (positional values), the API (a named dict),
the infotext (out and back in) and validation. Every field is declared once, here."""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from . import pose_presets
from .errors import InstantIDError
from .images import decode_image

INFOTEXT_KEY = "InstantID"
AUTOMATIC = "Automatic"  # a model name that means: the first installed model that fits the checkpoint
CHOICE_SEPARATOR = " — "  # between a model's name and its description in the panel's dropdowns


@dataclass(frozen=True)
class Spec:
    """How a setting is shown, checked and recorded."""

    label: str
    kind: type  # bool, float, int, str; object: one image; list: one or several images
    minimum: float | None = None
    maximum: float | None = None
    infotext: str | None = None  # key inside the InstantID infotext entry; None: not recorded (images)
    help: str = ""
    choices: tuple[str, ...] = ()  # for kind str: the allowed values (empty: a model name)
    length: int = 0  # for kind tuple: how many numbers, each from minimum to maximum


def setting(default: Any, spec: Spec) -> Any:
    return field(default=default, metadata={"spec": spec})


WEIGHT = dict(kind=float, minimum=0.0, maximum=2.0)
FRACTION = dict(kind=float, minimum=0.0, maximum=1.0)
MAX_IDENTITIES = 4
REGIONS = ("left", "right", "box", "mask")
WHOLE_IMAGE = (0.0, 0.0, 1.0, 1.0)


@dataclass(frozen=True)
class IdentityArgs:
    """One person of several (the `identities` setting): their photos, where in the image they go, and their own
    weights and pose. Weights, pose and face index left out (None) are the top-level settings'."""

    face_image: tuple = setting((), Spec("Face photo(s)", list, help="Photos of this person, averaged as above."))
    region: str = setting("", Spec(
        "Region", str, infotext="region", choices=REGIONS,
        help="Where this person goes: the left or right half, a box, or where a mask is white."))
    region_box: tuple = setting(WHOLE_IMAGE, Spec(
        "Region box (x, y, width, height)", tuple, minimum=0.0, maximum=1.0, length=4, infotext="region_box",
        help="For region 'box': its top-left corner and size, as fractions of the image."))
    region_mask: Any = setting(None, Spec("Region mask", object, help="For region 'mask': white where this person is."))
    pose: str | None = setting(None, Spec("Pose", str, infotext="pose", choices=pose_presets.POSES))
    pose_box: tuple = setting(pose_presets.DEFAULT_BOX, Spec(
        "Pose box (x, y, size)", tuple, minimum=0.0, maximum=1.0, length=3, infotext="pose_box",
        help="For a chosen head pose: the head's centre and height as fractions of this person's region."))
    pose_image: Any = setting(None, Spec("Pose photo", object))
    identitynet_weight: float | None = setting(None, Spec("IdentityNet weight", infotext="identitynet_weight",
                                                          **WEIGHT))
    adapter_weight: float | None = setting(None, Spec("Adapter weight", infotext="adapter_weight", **WEIGHT))
    face_index: int | None = setting(None, Spec("Face index", int, minimum=0, maximum=99, infotext="face_index"))

    @classmethod
    def from_dict(cls, values: Any, where: str) -> "IdentityArgs":
        if not isinstance(values, dict):
            raise InstantIDError(f"{where} must be an object with face_image, region, ... ; got {values!r}.",
                                 field=where)
        if "region" not in values:
            raise InstantIDError(f"{where}.region is missing: say where this person goes ({', '.join(REGIONS)}).",
                                 field=f"{where}.region")
        person = cls(**_checked(cls, values, f"{where}."))
        x, y, w, h = person.region_box
        if w == 0 or h == 0 or x + w > 1 + 1e-6 or y + h > 1 + 1e-6:
            raise InstantIDError(f"{where}.region_box {list(person.region_box)} is not a box inside the image: x + "
                                 "width and y + height must be at most 1, width and height above 0.",
                                 field=f"{where}.region_box")
        return person

    def inheriting(self, top: "InstantIDArgs") -> "IdentityArgs":
        """With the settings left out taken from the top-level ones."""
        inherited = {name: getattr(top, name) for name in ("pose", "identitynet_weight", "adapter_weight",
                                                           "face_index") if getattr(self, name) is None}
        return replace(self, **inherited)

    def recorded(self) -> dict[str, Any]:
        """The settings the infotext records (no images), by field name."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.metadata["spec"].infotext}


def _mask_problem(mask) -> str | None:
    """Why a region mask cannot be used (an untouched brush canvas is black everywhere); None when it can."""
    if mask is None:
        return "is missing"
    if not (np.asarray(mask.convert("L")) > 127).any():
        return "is black everywhere"
    return None


@dataclass(frozen=True)
class InstantIDArgs:
    """Field order is the panel's component order, i.e. the positional order of the script's arguments."""

    enabled: bool = setting(False, Spec("Enable InstantID", bool, help="Generate with the identity of the face photo."))
    face_image: tuple = setting((), Spec(
        "Face photo(s)", list,
        help="A clear photo of the person. Several photos of the same person are averaged into one identity."))
    pose_image: Any = setting(None, Spec(
        "Pose photo (optional)", object,
        help="Whose face position and angle to use. Empty: the face photo (txt2img) or the init image (img2img)."))
    identitynet_model: str = setting("", Spec(
        "IdentityNet", str, infotext="IdentityNet",
        help=f"Empty or {AUTOMATIC}: the first installed IdentityNet that fits the checkpoint (models/instantid first)."))
    adapter_model: str = setting("", Spec(
        "Face adapter", str, infotext="Adapter",
        help=f"Empty or {AUTOMATIC}: the first installed face adapter that fits the checkpoint (models/instantid first)."))
    identitynet_weight: float = setting(0.8, Spec(
        "IdentityNet weight", infotext="IdentityNet weight",
        help="How strongly the face keypoints steer the composition (0.8 recommended).", **WEIGHT))
    adapter_weight: float = setting(0.8, Spec(
        "Adapter weight", infotext="Adapter weight",
        help="How strongly the identity is imposed (0.8 recommended; lower for more stylisation).", **WEIGHT))
    identitynet_start: float = setting(0.0, Spec(
        "IdentityNet start", infotext="IdentityNet start", help="Fraction of the steps before the IdentityNet acts.",
        **FRACTION))
    identitynet_end: float = setting(1.0, Spec(
        "IdentityNet end", infotext="IdentityNet end", help="Fraction of the steps after which it stops.", **FRACTION))
    adapter_start: float = setting(0.0, Spec(
        "Adapter start", infotext="Adapter start", help="Fraction of the steps before the adapter acts.", **FRACTION))
    adapter_end: float = setting(1.0, Spec(
        "Adapter end", infotext="Adapter end", help="Fraction of the steps after which it stops.", **FRACTION))
    face_index: int = setting(0, Spec(
        "Face index", int, minimum=0, maximum=99, infotext="Face index",
        help="Which face when a photo shows several: 0 is the largest, 1 the next largest, ..."))
    pose: str = setting(pose_presets.PHOTO, Spec(
        "Pose", str, infotext="Pose", choices=pose_presets.POSES,
        help="Where the face's position and angle come from: the pose photo (or the face photo / init image), a "
             "chosen head pose placed in the pose box, or none (identity only: the IdentityNet is off)."))
    pose_box: tuple = setting(pose_presets.DEFAULT_BOX, Spec(
        "Pose box (x, y, size)", tuple, minimum=0.0, maximum=1.0, length=3, infotext="Pose box",
        help="For a chosen head pose: the head's centre (x, y) and its height, as fractions of the image."))
    uncond_noise: float = setting(0.0, Spec(
        "Uncond noise", infotext="Uncond noise",
        help="Anti-burn: the unconditional face is made from noise of this amplitude instead of zeros. Try 0.3-0.5 "
             "when images look burnt or over-contrasted at CFG 5 and above; 0 is the paper's.", **FRACTION))
    similarity: bool = setting(True, Spec(
        "Identity score", bool,
        help="After each image, find its faces and record how closely the best match resembles the face photo(s) "
             "(cosine similarity of the face embeddings) in the infotext."))
    face_region: str = setting("off", Spec(
        "Face region", str, infotext="Face region", choices=("off", "face", "mask"),
        help="Where InstantID acts: everywhere (off), only around the posed face (face: the rest of the image follows "
             "the prompt freely, the official demo's 'enhance non-face region'), or where the region mask is white."))
    face_region_mask: Any = setting(None, Spec(
        "Region mask", object,
        help="For face region 'mask': white where InstantID acts, black where it does not; stretched to the image."))
    identities: tuple = setting((), Spec(
        "Several people", dict, infotext="Identities",
        help=f"Up to {MAX_IDENTITIES} people in one image, each in its own region with their own photos, weights "
             "and pose. Leave the face photo above empty then."))

    @staticmethod
    def requested(args: Sequence[Any]) -> bool:
        """Whether the script's arguments turn InstantID on; when they don't, nothing else in them matters."""
        first = args[0] if args else False
        return (first.get("enabled") if isinstance(first, dict) else first) is True

    @classmethod
    def from_script_args(cls, args: Sequence[Any]) -> "InstantIDArgs":
        """The script's argument slice: the API's single named dict, or the panel's positional values."""
        if args and isinstance(args[0], dict):
            return cls.from_dict(args[0])
        names = [f.name for f in fields(cls)]
        if len(args) > len(names):
            raise InstantIDError(f"InstantID takes {len(names)} arguments ({', '.join(names)}); got {len(args)}.")
        return cls.from_dict(dict(zip(names, args)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "InstantIDArgs":
        args = cls(**_checked(cls, values, ""))
        args._check_consistent()
        return args

    def check_ready(self) -> None:
        """What an enabled job needs beyond valid values."""
        if not self.enabled:
            return
        if not self.face_image and not self.identities:
            raise InstantIDError("face_image is missing: give a photo of the person's face.", field="face_image")
        if self.face_region == "mask" and (problem := _mask_problem(self.face_region_mask)):
            raise InstantIDError(f"face_region is 'mask' but face_region_mask {problem}: paint or give the mask (white "
                                 "where InstantID acts), or choose another face_region.", field="face_region_mask")
        for i, person in enumerate(self.identities):
            if not person.face_image:
                raise InstantIDError(f"identities[{i}].face_image is missing: give a photo of person {i + 1}.",
                                     field="identities")
            if person.region == "mask" and (problem := _mask_problem(person.region_mask)):
                raise InstantIDError(f"identities[{i}].region is 'mask' but its region_mask {problem}: paint or give "
                                     "the mask (white where this person is), or choose another region.",
                                     field="identities")

    def people(self) -> tuple[IdentityArgs, ...]:
        """The identities with the settings they leave out filled in from the top-level ones."""
        return tuple(person.inheriting(self) for person in self.identities)

    def _check_consistent(self) -> None:
        self._check_windows()
        if not self.identities:
            return
        for name, off in (("face_image", ()), ("pose_image", None), ("face_region", "off")):
            if getattr(self, name) != off:
                raise InstantIDError(
                    f"{name} is set together with identities: with several people each identity has its own photos "
                    f"and region; leave {name} empty (or off) and give it inside the identities.", field=name)

    def _check_windows(self) -> None:
        for path in ("identitynet", "adapter"):
            start, end = getattr(self, f"{path}_start"), getattr(self, f"{path}_end")
            if start > end:
                raise InstantIDError(
                    f"{path}_start ({start}) is after {path}_end ({end}); the start must not be later than the end.",
                    field=f"{path}_start",
                )

    def with_overrides(self, **values: Any) -> "InstantIDArgs":
        """A copy with some settings replaced (e.g. by an XYZ plot axis), checked like any input."""
        specs = {f.name: f.metadata["spec"] for f in fields(self)}
        args = replace(self, **{k: _check(k, specs[k], v) for k, v in values.items()})
        args._check_consistent()
        return args

    def infotext(self, extra: dict[str, str] | None = None) -> str:
        """The value of the `InstantID` infotext entry: the recorded settings (never the images), plus `extra`."""
        resolved = replace(self, identities=self.people())
        pairs = {spec.infotext: _format(getattr(resolved, f.name)) for f, spec in _recorded()
                 if spec.kind is not dict or self.identities}  # no Identities entry for one person
        pairs.update(extra or {})
        return ", ".join(f"{key}: {_quote(value)}" for key, value in pairs.items())

    @classmethod
    def values_from_infotext(cls, params: dict[str, str]) -> dict[str, Any]:
        """Setting values (by field name) recorded in parsed infotext `params`; {} when InstantID was off."""
        text = params.get(INFOTEXT_KEY)
        if not text:
            return {}
        recorded = dict(_PAIR.findall(text))
        values: dict[str, Any] = {"enabled": True}
        for f, spec in _recorded():
            if spec.infotext in recorded:
                values[f.name] = _parse(spec, _unquote(recorded[spec.infotext]))
        return values


def specs(of: type = InstantIDArgs) -> list[tuple[str, Spec, Any]]:
    """(name, spec, default) of every setting (or every person's setting, `of=IdentityArgs`), in order: what the
    panel and the API docs are built from."""
    return [(f.name, f.metadata["spec"], f.default) for f in fields(of)]


def name_of_choice(text: str) -> str:
    """The model name in a dropdown entry (or the name itself, as the API sends it)."""
    return text.split(CHOICE_SEPARATOR, 1)[0]


def in_panel_words(message: str) -> str:
    """A message written with the API's field names, told with the panel's labels instead ("Face photo(s)")."""
    labels = {name: spec.label for name, spec, _ in specs()}
    return _FIELD_NAMES.sub(lambda m: f'"{labels[m.group(0)]}"', message)


def _recorded() -> list:
    return [(f, f.metadata["spec"]) for f in fields(InstantIDArgs) if f.metadata["spec"].infotext]


def _checked(cls: type, values: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The values of a settings dataclass's fields, each checked; unknown names refused, listing the allowed ones."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - known.keys(), key=str)
    if unknown:
        name = f"{prefix}{unknown[0]}"
        raise InstantIDError(f"Unknown InstantID field {name!r}. Allowed fields: {', '.join(known)}.", field=name)
    return {name: None if value is None and known[name].default is None  # left out: inherited
            else _check(f"{prefix}{name}", known[name].metadata["spec"], value) for name, value in values.items()}


def _check_identities(name: str, value: Any) -> tuple[IdentityArgs, ...]:
    if isinstance(value, str):  # the panel's state and pasted infotext carry them as JSON
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise InstantIDError(f"{name} must be a list of identities (JSON), got {value!r}.", field=name) from None
    if not isinstance(value, (list, tuple)):
        raise InstantIDError(f"{name} must be a list of identities, got {value!r}.", field=name)
    if len(value) > MAX_IDENTITIES:
        raise InstantIDError(f"{name} has {len(value)} identities; at most {MAX_IDENTITIES} are supported.",
                             field=name)
    return tuple(item if isinstance(item, IdentityArgs) else IdentityArgs.from_dict(item, f"{name}[{i}]")
                 for i, item in enumerate(value))


def _check(name: str, spec: Spec, value: Any) -> Any:
    if spec.kind is dict:
        return () if _is_empty(value) else _check_identities(name, value)
    if spec.kind is object:
        return None if _is_empty(value) else decode_image(value, name)
    if spec.kind is list:
        items = [] if _is_empty(value) else list(value) if isinstance(value, (list, tuple)) else [value]
        return tuple(decode_image(item, f"{name}[{i}]" if len(items) > 1 else name) for i, item in enumerate(items))
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise InstantIDError(f"{name} must be true or false, got {value!r}.", field=name)
        return value
    if spec.kind is str and spec.choices:
        if value not in spec.choices:
            raise InstantIDError(f"{name} must be one of {', '.join(map(repr, spec.choices))}; got {value!r}.",
                                 field=name)
        return value
    if spec.kind is str:
        if value is None or value == AUTOMATIC:
            return ""
        if not isinstance(value, str):
            raise InstantIDError(f"{name} must be a string (a model name), got {value!r}.", field=name)
        return name_of_choice(value)
    if spec.kind is tuple:
        return _check_numbers(name, spec, value)
    return _check_number(name, spec, value)


def _check_numbers(name: str, spec: Spec, value: Any) -> tuple[float, ...]:
    """A fixed number of numbers: a list or tuple, or the panel's text "0.5, 0.5, 0.4"."""
    if isinstance(value, str):
        try:
            value = [float(part) for part in re.split(r"[,\s]+", value.strip()) if part]
        except ValueError:
            pass  # refused below, as given
    each = replace(spec, kind=float)
    if not isinstance(value, (list, tuple)) or len(value) != spec.length:
        raise InstantIDError(f"{name} must be {spec.length} numbers from {_range(each)}, got {value!r}.", field=name)
    return tuple(float(_check_number(f"{name}[{i}]", each, v)) for i, v in enumerate(value))


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple, str, bytes)) and len(value) == 0)


def _check_number(name: str, spec: Spec, value: Any) -> float | int:
    # bool is an int in Python; a true/false weight is a mistake, not a number.
    integral = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (spec.kind is int and not integral):
        kind = "a whole number" if spec.kind is int else "a number"
        raise InstantIDError(f"{name} must be {kind} from {_range(spec)}, got {value!r}.", field=name)
    if not spec.minimum <= value <= spec.maximum:  # NaN fails this too
        raise InstantIDError(f"{name} is {value}, outside the allowed range {_range(spec)}.", field=name)
    return spec.kind(value)


def _range(spec: Spec) -> str:
    return f"{_format(spec.kind(spec.minimum))} to {_format(spec.kind(spec.maximum))}"


def _plain(value: Any) -> Any:
    """A setting's value as JSON holds it."""
    return list(value) if isinstance(value, tuple) else value


def _format(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], IdentityArgs):
        return json.dumps([person.recorded() for person in value], separators=(",", ":"))
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(_format(float(v)) for v in value)
    return str(value)


def _parse(spec: Spec, text: str) -> Any:
    if spec.kind is str:
        return text
    if spec.kind is dict:
        try:
            return [dict(person) for person in json.loads(text)]
        except (ValueError, TypeError):
            return None
    if spec.kind is tuple:
        try:
            return _check_numbers("", spec, text)
        except InstantIDError:
            return None
    try:
        return spec.kind(float(text)) if spec.kind is int else spec.kind(text)
    except ValueError:
        return None


# Only the compound names: one-word ones ("pose", "enabled") are also plain words of the messages.
_FIELD_NAMES = re.compile(r"\b(" + "|".join(f.name for f in fields(InstantIDArgs) if "_" in f.name) + r")\b")
# Inner pairs of the InstantID entry, written and read the way the WebUI writes its own infotext.
_PAIR = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ',:"\n') else text


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text
