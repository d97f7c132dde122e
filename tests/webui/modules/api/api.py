"""modules/api/api.py stand-in: /sdapi/v1/txt2img and /img2img with A1111 1.10's script-args mapping, `infotext`
request field and error handling, --api-auth, plus a few small endpoints (interrupt, skip, scripts, script-info,
png-info).

--api-auth ("u:p[,u2:p2]", read when the Api is built): only routes added through `Api.add_api_route` get the
HTTP Basic dependency. Missing credentials give HTTPBasic's 401 "Not authenticated", wrong ones 401 "Incorrect
username or password"; both pass through the API's exception handler, whose JSON response drops the
WWW-Authenticate header the HTTPException carried (as in A1111). Routes an extension adds with
`app.add_api_route` in on_app_started are not protected. The Api object is not kept anywhere reachable by
extensions (here: app.state.api, for tests only).

`create_api()` is the stand-in's webui.py start-up (see its docstring for the two orders and apps). Use it with
fastapi.testclient.TestClient(app), or through the harness (api_client / ui_client).
"""
from __future__ import annotations

import base64
import io
from contextlib import closing
from io import BytesIO
from secrets import compare_digest
from threading import Lock

import gradio as gr
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import HTTPException
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from PIL import PngImagePlugin

import modules.shared as shared
from modules import errors, images, infotext_utils, script_callbacks, scripts, sd_samplers, ui
from modules.api import models
from modules.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img, process_images
from modules.shared import opts

# request fields that are not StableDiffusionProcessing constructor arguments
_NOT_PROCESSING_ARGS = ('include_init_images', 'script_name', 'script_args', 'alwayson_scripts', 'infotext',
                        'send_images', 'save_images')


def script_name_to_index(name, scripts_list):
    try:
        titles = [script.title().lower() for script in scripts_list]
        return titles.index(name.lower())
    except Exception as e:
        raise HTTPException(status_code=422, detail=f"Script '{name}' not found") from e


def validate_sampler_name(name):
    if sd_samplers.all_samplers_map.get(name) is None:
        raise HTTPException(status_code=400, detail="Sampler not found")
    return name


def decode_base64_to_image(encoding):
    if encoding.startswith(("http://", "https://")):
        raise HTTPException(status_code=500, detail="Requests not allowed")  # no network in the stand-in
    if encoding.startswith("data:image/"):  # a data URL: the payload follows the comma
        encoding = encoding.partition(",")[2]
    try:
        raw = base64.b64decode(encoding)
        return images.read(BytesIO(raw))
    except Exception as e:
        raise HTTPException(status_code=500, detail="Invalid encoded image") from e


def encode_pil_to_base64(image):
    if isinstance(image, str):  # already encoded
        return image
    if opts.samples_format.lower() != 'png':
        raise HTTPException(status_code=500, detail="Invalid image format")
    text_chunks = {key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)}
    pnginfo = None
    if text_chunks:
        pnginfo = PngImagePlugin.PngInfo()
        for key, value in text_chunks.items():
            pnginfo.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo)
    return base64.b64encode(buffer.getvalue())


def _unwrap(e):
    """A1111 1.10 pins httpcore 0.15, hence anyio 3, where an endpoint's exception reaches these handlers as is.
    Under anyio 4 (this test environment) starlette 0.26's BaseHTTPMiddleware wraps it in an ExceptionGroup;
    unwrap single-exception groups so the JSON matches what A1111 returns."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e


def _error_response(request: Request, e: Exception):
    """The JSON error body A1111 returns: error (class name), detail, body, errors (str of the exception). The status
    comes from an instance attribute status_code (a class attribute does not count), else 500. Exceptions
    other than HTTPException are also logged with their traceback."""
    e = _unwrap(e)
    own = vars(e)
    payload = {"error": type(e).__name__, "detail": own.get('detail', ''), "body": own.get('body', ''), "errors": str(e)}
    if not isinstance(e, HTTPException):
        errors.report(f"API error: {request.method}: {request.url} {payload}", exc_info=True)
    return JSONResponse(status_code=own.get('status_code', 500), content=jsonable_encoder(payload))


def api_middleware(app: FastAPI):
    async def log_and_time(req: Request, call_next):
        return await call_next(req)  # A1111 adds an X-Process-Time header and optional logging here

    async def exception_handling(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception as e:
            response = _error_response(request, e)
        return response

    async def as_json(request: Request, e: Exception):
        return _error_response(request, e)

    # registered in A1111's order (the later middleware wraps the earlier one)
    app.middleware("http")(log_and_time)
    app.middleware("http")(exception_handling)
    app.exception_handler(Exception)(as_json)
    app.exception_handler(HTTPException)(as_json)


class Api:
    def __init__(self, app: FastAPI, queue_lock: Lock):
        if shared.cmd_opts.api_auth:
            self.credentials = {}
            for auth in shared.cmd_opts.api_auth.split(","):
                user, password = auth.split(":")  # (sic) a password containing ":" is a ValueError at start-up
                self.credentials[user] = password

        self.app, self.queue_lock, self.router = app, queue_lock, APIRouter()
        api_middleware(app)

        routes = [  # (path, endpoint, method, response model)
            ("/sdapi/v1/txt2img", self.text2imgapi, "POST", models.TextToImageResponse),
            ("/sdapi/v1/img2img", self.img2imgapi, "POST", models.ImageToImageResponse),
            ("/sdapi/v1/png-info", self.pnginfoapi, "POST", models.PNGInfoResponse),
            ("/sdapi/v1/interrupt", self.interruptapi, "POST", None),
            ("/sdapi/v1/skip", self.skip, "POST", None),
            ("/sdapi/v1/scripts", self.get_scripts_list, "GET", models.ScriptsList),
            ("/sdapi/v1/script-info", self.get_script_info, "GET", list[models.ScriptInfo]),
        ]
        for path, endpoint, method, response_model in routes:
            extra = {} if response_model is None else {"response_model": response_model}
            self.add_api_route(path, endpoint, methods=[method], **extra)

        # the default script args: built from the UI, which is created here when it does not exist yet
        txt2img_runner, img2img_runner = scripts.scripts_txt2img, scripts.scripts_img2img
        if not (txt2img_runner.scripts and img2img_runner.scripts):
            ui.create_ui()
        defaults = []
        for runner, is_img2img in ((txt2img_runner, False), (img2img_runner, True)):
            if not runner.scripts:
                runner.initialize_scripts(is_img2img)
            defaults.append(self.init_default_script_args(runner))
        self.default_script_arg_txt2img, self.default_script_arg_img2img = defaults

    def add_api_route(self, path: str, endpoint, **kwargs):
        if shared.cmd_opts.api_auth:
            return self.app.add_api_route(path, endpoint, dependencies=[Depends(self.auth)], **kwargs)
        return self.app.add_api_route(path, endpoint, **kwargs)

    def auth(self, credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
        if credentials.username in self.credentials:
            if compare_digest(credentials.password, self.credentials[credentials.username]):
                return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    def get_selectable_script(self, script_name, script_runner):
        if not script_name:  # None or ""
            return None, None
        index = script_name_to_index(script_name, script_runner.selectable_scripts)
        return script_runner.selectable_scripts[index], index

    def get_scripts_list(self):
        def named(runner):
            return [script.name for script in runner.scripts if script.name is not None]

        return models.ScriptsList(txt2img=named(scripts.scripts_txt2img), img2img=named(scripts.scripts_img2img))

    def get_script_info(self):
        runners = (scripts.scripts_txt2img, scripts.scripts_img2img)
        return [script.api_info for runner in runners for script in runner.scripts if script.api_info is not None]

    def get_script(self, script_name, script_runner):
        if not script_name:
            return None, None  # (sic: A1111 returns a pair here)
        return script_runner.scripts[script_name_to_index(script_name, script_runner.scripts)]

    def init_default_script_args(self, script_runner):
        """[0] = 0, then each script's slice filled with the .value of freshly built ui() controls (ui() runs
        twice per script here, as in A1111)."""
        size = max([1, *(script.args_to for script in script_runner.scripts)])
        defaults = [None] * size
        defaults[0] = 0  # no selectable script
        with gr.Blocks():  # ui() creates components, which needs a Blocks context
            for script in script_runner.scripts:
                if script.ui(script.is_img2img):
                    fresh = script.ui(script.is_img2img)
                    defaults[script.args_from:script.args_to] = [control.value for control in fresh]
        return defaults

    def init_script_args(self, request, default_script_args, selectable_scripts, selectable_idx, script_runner, *, input_script_args=None):
        script_args = list(default_script_args)
        for index, value in (input_script_args or {}).items():
            script_args[index] = value

        if selectable_scripts:  # [0] is the 1-based index of the selectable script to run
            script_args[selectable_scripts.args_from:selectable_scripts.args_to] = request.script_args
            script_args[0] = selectable_idx + 1

        for name, entry in (request.alwayson_scripts or {}).items():
            script = self.get_script(name, script_runner)
            if script is None:
                raise HTTPException(status_code=422, detail=f"always on script {name} not found")
            if script.alwayson is False:
                raise HTTPException(status_code=422, detail="Cannot have a selectable script in the always on scripts params")
            if "args" not in entry:
                continue  # it still runs, with its default args
            given = entry["args"]
            # extra args are ignored; missing ones keep their defaults
            for offset in range(min(script.args_to - script.args_from, len(given))):
                script_args[script.args_from + offset] = given[offset]
        return script_args

    def apply_infotext(self, request, tabname, *, script_runner=None, mentioned_script_args=None):
        """Fills unset request fields from request.infotext through the tab's paste fields, and collects
        {index: value} for script controls named by those paste fields (cast by type(component.value))."""
        if not request.infotext:
            return {}

        fields = infotext_utils.paste_fields[tabname]["fields"]  # includes every script's infotext_fields
        explicitly_set = request.dict(exclude_unset=True)
        params = infotext_utils.parse_generation_parameters(request.infotext)

        def expected_type(field):
            # the request model's type where the request has this field, else the type of the component's value
            model_field = request.__fields__.get(field.api)
            return model_field.type_ if model_field is not None else type(field.component.value)

        def field_value(field):
            raw = field.function(params) if field.function else params.get(field.label)
            if raw is None:
                return None
            wanted = expected_type(field)
            if wanted is type(None):
                return None
            if isinstance(raw, dict) and raw.get('__type__') == 'generic_update':  # a gr.update(), not a value
                raw = raw.get('value')
            return raw if raw is None or isinstance(raw, wanted) else wanted(raw)

        for field in fields:
            if field.api and field.api not in explicitly_set:
                value = field_value(field)
                if value is not None:
                    setattr(request, field.api, value)

        overrides = {} if request.override_settings is None else request.override_settings
        for _, setting_name, value in infotext_utils.get_override_settings(params):
            overrides.setdefault(setting_name, value)  # an explicit override wins over the infotext
        request.override_settings = overrides

        if script_runner is not None and mentioned_script_args is not None:
            position = {component: i for i, component in enumerate(script_runner.inputs)}
            for field in fields:
                if field.component in position:
                    value = field_value(field)
                    if value is not None:
                        mentioned_script_args[position[field.component]] = value
        return params

    def _run(self, request, processing_class, script_runner, tabname, extra_args=None, init_images=None):
        from_infotext = {}
        self.apply_infotext(request, tabname, script_runner=script_runner, mentioned_script_args=from_infotext)

        selected, selected_index = self.get_selectable_script(request.script_name, script_runner)
        sampler, scheduler = sd_samplers.get_sampler_and_scheduler(request.sampler_name or request.sampler_index, request.scheduler)

        no_saving = not request.save_images
        updates = {"sampler_name": validate_sampler_name(sampler), "do_not_save_samples": no_saving, "do_not_save_grid": no_saving}
        updates.update(extra_args or {})
        populate = request.copy(update=updates)
        if populate.sampler_name:
            populate.sampler_index = None  # the sampler is named; an index would only produce a warning
        if not populate.scheduler and scheduler != "Automatic":
            populate.scheduler = scheduler

        fields = vars(populate)
        send_images = fields.get('send_images', True)
        kwargs = {key: value for key, value in fields.items() if key not in _NOT_PROCESSING_ARGS}

        defaults = self.default_script_arg_img2img if tabname == "img2img" else self.default_script_arg_txt2img
        script_args = self.init_script_args(request, defaults, selected, selected_index, script_runner, input_script_args=from_infotext)

        with self.queue_lock, closing(processing_class(sd_model=shared.sd_model, **kwargs)) as p:
            if init_images is not None:
                p.init_images = [decode_base64_to_image(encoded) for encoded in init_images]
            p.is_api = True
            p.scripts = script_runner
            try:
                shared.state.begin(job=f"scripts_{tabname}")
                # assigning script_args runs the scripts' setup(); a selectable script gets a list, else a tuple
                if selected is None:
                    p.script_args = tuple(script_args)
                    processed = process_images(p)
                else:
                    p.script_args = script_args
                    processed = script_runner.run(p, *p.script_args)
            finally:
                shared.state.end()

        encoded_images = [encode_pil_to_base64(image) for image in processed.images] if send_images else []
        return encoded_images, processed

    def text2imgapi(self, txt2imgreq: models.StableDiffusionTxt2ImgProcessingAPI):
        encoded, processed = self._run(txt2imgreq, StableDiffusionProcessingTxt2Img, scripts.scripts_txt2img, "txt2img")
        return models.TextToImageResponse(images=encoded, parameters=vars(txt2imgreq), info=processed.js())

    def img2imgapi(self, img2imgreq: models.StableDiffusionImg2ImgProcessingAPI):
        if img2imgreq.init_images is None:
            raise HTTPException(status_code=404, detail="Init image not found")
        mask = decode_base64_to_image(img2imgreq.mask) if img2imgreq.mask else img2imgreq.mask
        encoded, processed = self._run(img2imgreq, StableDiffusionProcessingImg2Img, scripts.scripts_img2img, "img2img",
                                       extra_args={"mask": mask}, init_images=img2imgreq.init_images)
        if not img2imgreq.include_init_images:  # the echoed request leaves the (large) images out
            img2imgreq.init_images = img2imgreq.mask = None
        return models.ImageToImageResponse(images=encoded, parameters=vars(img2imgreq), info=processed.js())

    def pnginfoapi(self, req: models.PNGInfoRequest):
        encoded = req.image.strip()
        image = decode_base64_to_image(encoded)
        if image is None:
            return models.PNGInfoResponse(info="")
        geninfo, items = images.read_info_from_image(image)
        text = geninfo or ""
        parsed = infotext_utils.parse_generation_parameters(text)
        script_callbacks.infotext_pasted_callback(text, parsed)
        return models.PNGInfoResponse(info=text, items=items, parameters=parsed)

    def interruptapi(self):
        shared.state.interrupt()
        return {}

    def skip(self):
        shared.state.skip()


def gradio_auth_creds():
    """initialize_util.get_gradio_auth_creds: (user, password) pairs from --gradio-auth ("u:p,u2:p2"; split at the
    first ":") and the lines of the --gradio-auth-path file."""
    def credential(text):
        text = text.strip()
        return tuple(text.split(':', 1)) if text else None

    texts = shared.cmd_opts.gradio_auth.split(',') if shared.cmd_opts.gradio_auth else []
    if shared.cmd_opts.gradio_auth_path:
        with open(shared.cmd_opts.gradio_auth_path, encoding="utf8") as file:
            texts += [part for line in file.readlines() for part in line.strip().split(',')]
    return [found for found in map(credential, texts) if found]


def create_gradio_app(demo):
    """What `demo.launch(auth=..., app_kwargs=...)` hands webui.py: gradio 3.41's routes.App for the demo, with
    `app.auth` ({user: password} from --gradio-auth, or None) and an empty `app.tokens` (gradio's /login fills it
    and sets the cookies `access-token` (Secure) and `access-token-unsecure`). The server itself is not started.
    Then, as webui.py: gradio's CORS middleware is removed (A1111's setup_middleware would add GZip, and CORS only
    for --cors-allow-origins: not modelled)."""
    from gradio import routes

    demo.auth = gradio_auth_creds() or None
    app = routes.App.create_app(demo, app_kwargs={"docs_url": "/docs", "redoc_url": "/redoc"})
    app.user_middleware = [x for x in app.user_middleware if x.cls.__name__ != 'CORSMiddleware']
    return app


def create_api(app: FastAPI | None = None, *, demo=None, api=True) -> FastAPI:
    """Stand-in for webui.py's start-up.

    demo None (--nowebui, webui.api_only): a plain FastAPI (no `auth`/`tokens` attributes); Api(app) builds the UI
    itself if the runners are empty; then on_before_ui callbacks, then on_app_started(None, app).
    demo given (the UI was built first, webui.webui): gradio's App for the demo (create_gradio_app, honouring
    --gradio-auth); with `api` (--api) the Api is added; then on_app_started(demo, app).
    `app` replaces the app that would be created."""
    if demo is None:
        app = app or FastAPI()
        app.state.api = Api(app, Lock())
        script_callbacks.before_ui_callback()
    else:
        app = app or create_gradio_app(demo)
        if api:
            app.state.api = Api(app, Lock())
    script_callbacks.app_started_callback(demo, app)
    return app
