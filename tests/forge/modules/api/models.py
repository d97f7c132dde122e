"""modules/api/models.py stand-in (pydantic 2, as Forge runs 2.8.2): the txt2img / img2img request models generated from the
processing classes' constructor fields (every field optional with the class default; plus sampler_index "Euler",
script_name, script_args [], send_images True, save_images False, alwayson_scripts {}, infotext; img2img: init_images, mask,
include_init_images), the responses, ScriptArg / ScriptInfo."""
import dataclasses
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, create_model

from modules.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img

SKIP = {"self", "kwargs", "sd_model", "outpath_samples", "outpath_grids", "sampler_index", "extra_generation_params",
        "overlay_images", "do_not_reload_embeddings", "seed_enable_extras", "prompt_for_display", "sampler_noise_scheduler_override",
        "ddim_discretize", "firstpass_image"}


def _generate(name, cls, extra):
    fields = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in SKIP:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        fields[f.name] = (Optional[Any], default)
    fields.update(extra)
    return create_model(name, __config__=ConfigDict(extra="ignore", protected_namespaces=()), **fields)


_COMMON = dict(sampler_index=(str, "Euler"), script_name=(Optional[str], None), script_args=(list, []),
               send_images=(bool, True), save_images=(bool, False), alwayson_scripts=(dict, {}), force_task_id=(Optional[str], None),
               infotext=(Optional[str], None))
StableDiffusionTxt2ImgProcessingAPI = _generate("StableDiffusionProcessingTxt2Img", StableDiffusionProcessingTxt2Img, _COMMON)
StableDiffusionImg2ImgProcessingAPI = _generate("StableDiffusionProcessingImg2Img", StableDiffusionProcessingImg2Img,
                                                {**_COMMON, "init_images": (Optional[list], None), "mask": (Optional[str], None),
                                                 "include_init_images": (bool, Field(default=False, exclude=True))})


class TextToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(default=None, title="Image")
    parameters: dict
    info: str


class ImageToImageResponse(BaseModel):
    images: Optional[list[str]] = Field(default=None, title="Image")
    parameters: dict
    info: str


class ScriptArg(BaseModel):
    label: Optional[str] = None
    value: Optional[Any] = None
    minimum: Optional[Any] = None
    maximum: Optional[Any] = None
    step: Optional[Any] = None
    choices: Optional[list[str]] = None


class ScriptInfo(BaseModel):
    name: Optional[str] = None
    is_alwayson: Optional[bool] = None
    is_img2img: Optional[bool] = None
    args: list[ScriptArg] = []


class ScriptsList(BaseModel):
    txt2img: list = []
    img2img: list = []
