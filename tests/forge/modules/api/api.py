"""modules/api/api.py stand-in: Forge's Api class and the app the WebUI builds around it.

Modelled: routes /sdapi/v1/txt2img, /sdapi/v1/img2img (alwayson_scripts {"<title>": {"args": [...]}} written over the UI
defaults from args_from; a selectable script via script_name; p.is_api = True, so setup_for_ui_only scripts skip setup;
p.script_args a tuple; images base64 PNG), /sdapi/v1/scripts, /sdapi/v1/script-info, /sdapi/v1/samplers, /sdapi/v1/options;
--api-auth HTTP Basic. If the scripts have no UI yet, Api() builds it (ui.create_ui) -- in API-only mode that happens BEFORE
the on_before_ui callbacks, as in Forge's webui.py. Errors: Forge does NOT install api_middleware (the call is commented out
in Api.__init__, api.py:210); webui.py creates the app with exception_handlers={Exception: _handle_exception}, so an
HTTPException is answered by FastAPI's own handler ({"detail": ...} with its status code), and any other exception by
_handle_exception: {"error": type name, "detail", "body", "message": str(e)} with status = e.status_code or 500 (Starlette
re-raises it after responding: use TestClient(raise_server_exceptions=False) to read the response).
Not modelled: the task queue / progress, extras, png-info, model routes.
"""
import base64
import io
import threading
from secrets import compare_digest

import gradio as gr
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import Image

from modules import scripts, sd_samplers, shared, ui
from modules.api import models
from modules.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img, process_images

queue_lock = threading.Lock()


def _handle_exception(request: Request, e: Exception):
    info = vars(e)
    content = {"error": type(e).__name__, "detail": info.get("detail", ""), "body": info.get("body", ""), "message": str(e)}
    return JSONResponse(status_code=int(info.get("status_code", 500)), content=jsonable_encoder(content))


def decode_base64_to_image(encoding):
    if encoding.startswith("data:image/"):
        encoding = encoding.split(";")[1].split(",")[1]
    try:
        return Image.open(io.BytesIO(base64.b64decode(encoding)))
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image):
    with io.BytesIO() as output:
        image.save(output, format="PNG")
        return base64.b64encode(output.getvalue()).decode()


def script_name_to_index(name, script_list):
    try:
        return [script.title().lower() for script in script_list].index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def validate_sampler_name(name):
    if sd_samplers.find_sampler_config(name) is None:
        raise HTTPException(status_code=400, detail="Sampler not found")
    return name


class Api:
    def __init__(self, app: FastAPI, queue_lock: threading.Lock):
        if shared.cmd_opts.api_auth:
            self.credentials = dict(auth.split(":", 1) for auth in shared.cmd_opts.api_auth.split(","))
        self.router = APIRouter()
        self.app = app
        self.queue_lock = queue_lock
        self.add_api_route("/sdapi/v1/txt2img", self.text2imgapi, methods=["POST"], response_model=models.TextToImageResponse)
        self.add_api_route("/sdapi/v1/img2img", self.img2imgapi, methods=["POST"], response_model=models.ImageToImageResponse)
        self.add_api_route("/sdapi/v1/scripts", self.get_scripts_list, methods=["GET"], response_model=models.ScriptsList)
        self.add_api_route("/sdapi/v1/script-info", self.get_script_info, methods=["GET"], response_model=list[models.ScriptInfo])
        self.add_api_route("/sdapi/v1/samplers", self.get_samplers, methods=["GET"])
        self.add_api_route("/sdapi/v1/options", self.get_config, methods=["GET"])
        if not scripts.scripts_txt2img.scripts or not scripts.scripts_img2img.scripts:
            ui.create_ui()
        self.default_script_arg_txt2img = self.init_default_script_args(scripts.scripts_txt2img)
        self.default_script_arg_img2img = self.init_default_script_args(scripts.scripts_img2img)

    def add_api_route(self, path, endpoint, **kwargs):
        if shared.cmd_opts.api_auth:
            return self.app.add_api_route(path, endpoint, dependencies=[Depends(self.auth)], **kwargs)
        return self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        if credentials.username in self.credentials and compare_digest(credentials.password, self.credentials[credentials.username]):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    def get_selectable_script(self, script_name, script_runner):
        if not script_name:
            return None, None
        index = script_name_to_index(script_name, script_runner.selectable_scripts)
        return script_runner.selectable_scripts[index], index

    def get_script(self, script_name, script_runner):
        if not script_name:
            return None
        return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]

    def get_scripts_list(self):
        return models.ScriptsList(txt2img=[s.name for s in scripts.scripts_txt2img.scripts if s.name is not None],
                                  img2img=[s.name for s in scripts.scripts_img2img.scripts if s.name is not None])

    def get_script_info(self):
        return [s.api_info for runner in (scripts.scripts_txt2img, scripts.scripts_img2img) for s in runner.scripts if s.api_info is not None]

    def get_samplers(self):
        return [{"name": s.name, "aliases": s.aliases, "options": s.options} for s in sd_samplers.all_samplers]

    def get_config(self):
        return {k: shared.opts.data.get(k, v.default) for k, v in shared.opts.data_labels.items() if isinstance(v.default, (int, float, str, bool, type(None)))}

    def init_default_script_args(self, script_runner):
        last = max([1] + [s.args_to for s in script_runner.scripts if s.args_to is not None])
        script_args = [None] * last
        script_args[0] = 0
        with gr.Blocks():
            for script in script_runner.scripts:
                if script.ui(script.is_img2img):
                    script_args[script.args_from:script.args_to] = [getattr(c, "value", None) for c in script.controls]
        return script_args

    def init_script_args(self, request, default_script_args, selectable_script, selectable_idx, script_runner):
        script_args = list(default_script_args)
        if selectable_script is not None:
            script_args[selectable_script.args_from:selectable_script.args_to] = request.script_args
            script_args[0] = selectable_idx + 1
        for name, values in (request.alwayson_scripts or {}).items():
            script = self.get_script(name, script_runner)
            if script is None:
                raise HTTPException(status_code=422, detail=f"always on script {name} not found")
            if script.alwayson is False:
                raise HTTPException(status_code=422, detail="Cannot have a selectable script in the always on scripts params")
            if "args" in values:
                for idx in range(0, min(script.args_to - script.args_from, len(values["args"]))):
                    script_args[script.args_from + idx] = values["args"][idx]
        return script_args

    def _run(self, request, cls, runner, defaults, extra):
        selectable, selectable_idx = self.get_selectable_script(request.script_name, runner)
        populate = request.model_copy(update={"sampler_name": validate_sampler_name(request.sampler_name or request.sampler_index),
                                              "do_not_save_samples": not request.save_images, "do_not_save_grid": not request.save_images, **extra})
        args = dict(vars(populate))
        for key in ("script_name", "script_args", "alwayson_scripts", "infotext", "send_images", "save_images", "sampler_index",
                    "include_init_images", "init_images"):
            args.pop(key, None)
        script_args = self.init_script_args(request, defaults, selectable, selectable_idx, runner)
        with self.queue_lock:
            p = cls(sd_model=shared.sd_model, **args)
            try:
                if "init_images" in extra:
                    p.init_images = extra["init_images"]
                p.is_api = True
                p.scripts = runner
                shared.state.begin(job="scripts_api")
                if selectable is not None:
                    p.script_args = script_args
                    processed = runner.run(p, *p.script_args)
                else:
                    p.script_args = tuple(script_args)
                    processed = process_images(p)
            finally:
                shared.state.end()
                p.close()
        images = list(map(encode_pil_to_base64, processed.images + processed.extra_images)) if request.send_images else []
        return images, processed

    def text2imgapi(self, txt2imgreq: models.StableDiffusionTxt2ImgProcessingAPI):
        images, processed = self._run(txt2imgreq, StableDiffusionProcessingTxt2Img, scripts.scripts_txt2img, self.default_script_arg_txt2img, {})
        return models.TextToImageResponse(images=images, parameters=vars(txt2imgreq), info=processed.js())

    def img2imgapi(self, img2imgreq: models.StableDiffusionImg2ImgProcessingAPI):
        if img2imgreq.init_images is None:
            raise HTTPException(status_code=404, detail="Init image not found")
        extra = {"init_images": [decode_base64_to_image(x) for x in img2imgreq.init_images],
                 "mask": decode_base64_to_image(img2imgreq.mask) if img2imgreq.mask else None}
        images, processed = self._run(img2imgreq, StableDiffusionProcessingImg2Img, scripts.scripts_img2img, self.default_script_arg_img2img, extra)
        if not img2imgreq.include_init_images:
            img2imgreq.init_images = None
            img2imgreq.mask = None
        return models.ImageToImageResponse(images=images, parameters=vars(img2imgreq), info=processed.js())


def create_api(app):
    return Api(app, queue_lock)


def create_app(demo=None) -> FastAPI:
    """The app as Forge's webui.py builds it, with exception_handlers={Exception: _handle_exception}. With `demo` (the WebUI
    started with --api: on_before_ui and ui.create_ui already ran): the Api, then on_app_started(demo, app). Without
    (--nowebui): the Api -- which builds the script UI itself --, THEN on_before_ui, then on_app_started(None, app)."""
    from modules import script_callbacks
    app = FastAPI(exception_handlers={Exception: _handle_exception})
    create_api(app)
    if demo is None:
        script_callbacks.before_ui_callback()
    script_callbacks.app_started_callback(demo, app)
    return app
