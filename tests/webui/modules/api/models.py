"""modules/api/models.py stand-in: request models generated from the processing classes' __init__ signatures
(so defaults are the dataclass defaults), plus the API-only fields, like A1111's PydanticModelGenerator."""
from __future__ import annotations

import inspect
from typing import Any, Optional

from pydantic import BaseModel, Field, create_model
from PIL import Image

from modules.processing import StableDiffusionProcessingTxt2Img, StableDiffusionProcessingImg2Img

API_NOT_ALLOWED = [
    "self", "kwargs", "sd_model", "outpath_samples", "outpath_grids", "sampler_index",
    "extra_generation_params", "overlay_images", "do_not_reload_embeddings", "seed_enable_extras",
    "prompt_for_display", "sampler_noise_scheduler_override", "ddim_discretize",
]


def _init_parameters(cls):
    parameters = {}
    for klass in reversed([c for c in inspect.getmro(cls) if c is not object]):
        parameters.update(inspect.signature(klass.__init__).parameters)
    return parameters


def _field_type(cls, name):
    """The dataclass field's annotation evaluated in its module (Any if it cannot be); PIL images -> str."""
    import sys

    hint = Any
    dataclass_field = getattr(cls, "__dataclass_fields__", {}).get(name)
    if dataclass_field is not None:
        annotation = dataclass_field.type
        if isinstance(annotation, str):
            try:
                annotation = eval(annotation, vars(sys.modules[cls.__module__]))  # noqa: S307 - our own annotations
            except Exception:
                annotation = Any
        hint = annotation
    if hint is Image.Image:
        hint = str
    try:
        return Optional[hint]
    except TypeError:
        return Optional[Any]


def generate_model(model_name, cls, additional_fields):
    """A pydantic model with one optional field per constructor parameter of `cls` (its default as the field's
    default), plus `additional_fields`: (name, type, default[, exclude from dumps]) tuples."""
    fields = {}
    for name, parameter in _init_parameters(cls).items():
        if name in API_NOT_ALLOWED or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
            continue
        default = parameter.default
        if isinstance(default, property) or default is inspect.Parameter.empty:
            default = None
        fields[name] = (_field_type(cls, name), Field(default=default, alias=name))
    for name, kind, default, *options in additional_fields:
        exclude = bool(options and options[0])
        fields[name] = (kind, Field(default=default, alias=name, exclude=exclude))
    model = create_model(model_name, **fields)
    model.__config__.allow_population_by_field_name = True
    model.__config__.allow_mutation = True
    return model


# request fields that only the API has, appended after the constructor parameters
_SCRIPT_REQUEST_FIELDS = [
    ("script_name", str, None),
    ("script_args", list, []),
    ("send_images", bool, True),
    ("save_images", bool, False),
    ("alwayson_scripts", dict, {}),
    ("force_task_id", str, None),
    ("infotext", str, None),
]

StableDiffusionTxt2ImgProcessingAPI = generate_model("StableDiffusionProcessingTxt2Img", StableDiffusionProcessingTxt2Img, [
    ("sampler_index", str, "Euler"),
    *_SCRIPT_REQUEST_FIELDS,
])

StableDiffusionImg2ImgProcessingAPI = generate_model("StableDiffusionProcessingImg2Img", StableDiffusionProcessingImg2Img, [
    ("sampler_index", str, "Euler"),
    ("init_images", list, None),
    ("denoising_strength", float, 0.75),
    ("mask", str, None),
    ("include_init_images", bool, False, True),
    *_SCRIPT_REQUEST_FIELDS,
])

_IMAGES_DOC = "Base64-encoded output images."


class TextToImageResponse(BaseModel):
    images: list[str] = Field(default=None, title="Image", description=_IMAGES_DOC)
    parameters: dict
    info: str


class ImageToImageResponse(BaseModel):
    images: list[str] = Field(default=None, title="Image", description=_IMAGES_DOC)
    parameters: dict
    info: str


class PNGInfoRequest(BaseModel):
    image: str = Field(title="Image", description="A PNG file, base64-encoded.")


class PNGInfoResponse(BaseModel):
    info: str
    items: dict = Field(default={})
    parameters: dict = Field(default={})


class ScriptsList(BaseModel):
    txt2img: list = Field(default=None, title="Txt2img", description="Names of the txt2img tab's scripts.")
    img2img: list = Field(default=None, title="Img2img", description="Names of the img2img tab's scripts.")


class ScriptArg(BaseModel):
    label: str = Field(default=None, title="Label")
    value: Optional[Any] = Field(default=None, title="Value")
    minimum: Optional[Any] = Field(default=None, title="Minimum")
    maximum: Optional[Any] = Field(default=None, title="Maximum")
    step: Optional[Any] = Field(default=None, title="Step")
    choices: Optional[list[str]] = Field(default=None, title="Choices")


class ScriptInfo(BaseModel):
    name: str = Field(default=None, title="Name")
    is_alwayson: bool = Field(default=None, title="IsAlwayson")
    is_img2img: bool = Field(default=None, title="IsImg2img")
    args: list[ScriptArg] = Field(title="Arguments")
