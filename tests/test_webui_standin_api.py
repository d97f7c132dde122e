"""The stand-in's API `infotext` field, --api-auth / --gradio-auth, "Send to img2img / inpaint", gradio 3.41's gr.File
values and --data-dir paths behave as A1111 1.10.1 (with gradio 3.41.2) does.

A small extension script (`Ext`) with string-named and callable infotext fields records the args its process()
gets. Expected values follow A1111's api.py (apply_infotext, init_script_args, add_api_route/auth),
infotext_utils.connect_paste_params_buttons, ui_common.create_output_panel, paths_internal and gradio's
routes/File code, read from the sources, not copied.
"""
from __future__ import annotations

import base64
import copy
import functools
import io
import json
import os
import tempfile

import gradio as gr
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from PIL import Image

from tests.webui.harness import webui  # noqa: F401  (pytest fixture; puts tests/webui on sys.path)

from modules import infotext_utils, paths, paths_internal, script_callbacks, scripts, shared

SIZE = dict(width=64, height=64)
SEEN: list[tuple] = []  # (tab, script args, p.script_args[0])


@functools.lru_cache(maxsize=None)
def unet(kind):
    from tests.fixtures.tiny_models import tiny_unet
    return tiny_unet(kind)


class Ext(scripts.Script):
    """enabled (callable field), weight (float slider, "Ext weight"), flag (checkbox, "Ext flag"), count (int slider,
    "Ext count"), note (textbox, "Ext note"), mode (callable returning gr.update), face (gr.File, never in infotext).
    The string-named fields but "Ext note" (and "Ext face" unless carry_face) are in paste_field_names; txt2img has
    an extra "Ext only here" before them."""

    carry_face = False

    def title(self):
        return "Ext"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        enabled = gr.Checkbox(label="Ext enabled", value=False, elem_id=self.elem_id("enabled"))
        extra = [] if is_img2img else [gr.Slider(label="Ext only here", value=0.1, minimum=0, maximum=1, elem_id=self.elem_id("only"))]
        weight = gr.Slider(label="Ext weight", value=0.8, minimum=0.0, maximum=1.0, step=0.05, elem_id=self.elem_id("weight"))
        flag = gr.Checkbox(label="Ext flag", value=False, elem_id=self.elem_id("flag"))
        count = gr.Slider(label="Ext count", value=2, minimum=0, maximum=9, step=1, elem_id=self.elem_id("count"))
        note = gr.Textbox(label="Ext note", value="", elem_id=self.elem_id("note"))
        mode = gr.Dropdown(label="Ext mode", choices=["a", "b"], value="a", elem_id=self.elem_id("mode"))
        face = gr.File(label="Ext face", file_count="multiple", elem_id=self.elem_id("face"))
        self.infotext_fields = [
            (enabled, lambda d: "Ext" in d),
            *[(c, "Ext only here") for c in extra],
            (weight, "Ext weight"),
            (flag, "Ext flag"),
            (count, "Ext count"),
            (note, "Ext note"),
            (mode, lambda d: gr.update(value=d["Ext mode"]) if "Ext mode" in d else gr.update()),
            (face, "Ext face"),
        ]
        self.paste_field_names = ["Ext only here", "Ext weight", "Ext flag", "Ext count", *(["Ext face"] if self.carry_face else [])]
        return [enabled, *extra, weight, flag, count, note, mode, face]

    def process(self, p, *args):
        SEEN.append(("img2img" if self.is_img2img else "txt2img", args, p.script_args[0]))


@pytest.fixture
def ext(webui):  # noqa: F811
    SEEN.clear()
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[Ext])
    yield webui
    SEEN.clear()


def ext_args(tab="txt2img") -> dict:
    """The last recorded Ext args by control label."""
    runner = scripts.scripts_img2img if tab == "img2img" else scripts.scripts_txt2img
    script = runner.script("Ext")
    args = next(entry[1] for entry in reversed(SEEN) if entry[0] == tab)
    return {control.label: value for control, value in zip(script.controls, args)}


def b64(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- API `infotext` --------------------------------------------------------------------------------------------

INFOTEXT = ("a cat\nNegative prompt: ugly\n"
            "Steps: 7, Sampler: Euler, Seed: 5, Size: 64x48, Ext: on, Ext weight: 0.25, Ext flag: False, Ext note: hi, Ext mode: b")


def test_api_infotext_fills_unset_request_fields_and_script_args(ext):
    client = ext.api_client()
    response = client.post("/sdapi/v1/txt2img", json={"infotext": INFOTEXT, "negative_prompt": "explicit", "steps": 1, "height": 64})
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    # request fields with an API name are filled only where the request left them unset
    assert (parameters["prompt"], parameters["negative_prompt"], parameters["width"], parameters["height"]) == ("a cat", "explicit", 64, 64)
    # the script fields are cast to the type of the control's value: bool("False") is True; gr.update() unwrapped
    args = ext_args()
    assert args["Ext enabled"] is True and args["Ext weight"] == 0.25 and args["Ext flag"] is True
    assert (args["Ext note"], args["Ext mode"], args["Ext count"], args["Ext face"]) == ("hi", "b", 2, None)
    # the script dropdown's own paste field writes its infotext value into args[0] ("None": no script selected)
    assert SEEN[-1][2] == "None"

    # alwayson_scripts args then override positionally, as far as they go
    response = client.post("/sdapi/v1/txt2img", json={"infotext": INFOTEXT, "steps": 1, **SIZE,
                                                      "alwayson_scripts": {"ext": {"args": [False, 0.5]}}})
    assert response.status_code == 200
    args = ext_args()
    assert (args["Ext enabled"], args["Ext only here"], args["Ext weight"], args["Ext flag"]) == (False, 0.5, 0.25, True)

    # without infotext nothing is pasted: the UI defaults
    assert client.post("/sdapi/v1/txt2img", json={"steps": 1, **SIZE}).status_code == 200
    assert ext_args()["Ext enabled"] is False and SEEN[-1][2] == 0


def test_api_infotext_failed_cast_is_a_500(ext):
    client = ext.api_client()
    response = client.post("/sdapi/v1/txt2img", json={"infotext": "a\nSteps: 1, Seed: 1, Ext count: 0.5", "steps": 1, **SIZE})
    assert response.status_code == 500 and response.json()["error"] == "ValueError"  # int("0.5") on the int slider


def test_api_infotext_img2img_fills_no_request_field(ext):
    # img2img's built-in paste fields have no API names: only script args come from the infotext
    client = ext.api_client()
    response = client.post("/sdapi/v1/img2img", json={"infotext": INFOTEXT, "steps": 1, **SIZE,
                                                      "init_images": [b64(Image.new("RGB", (64, 64), (9, 99, 199)))]})
    assert response.status_code == 200, response.text
    assert response.json()["parameters"]["prompt"] == "" and response.json()["parameters"]["negative_prompt"] == ""
    assert ext_args("img2img")["Ext enabled"] is True and ext_args("img2img")["Ext weight"] == 0.25


def test_api_infotext_hires_sampler_quirk(ext):
    # "Hires sampler" becomes "Use same sampler" when it equals the first pass's: a txt2img hires request then fails
    # to create that sampler (A1111 1.10.1 does the same), unless the request names the hires sampler itself
    client = ext.api_client()
    infotext = "a\nSteps: 1, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 1.5"
    response = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "steps": 1})
    assert response.status_code == 500 and "bad sampler name: Use same sampler" in response.json()["errors"]
    response = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "steps": 1, "hr_sampler_name": "Euler"})
    assert response.status_code == 200, response.text
    parameters = response.json()["parameters"]
    assert parameters["enable_hr"] is True and parameters["hr_scale"] == 1.5 and parameters["denoising_strength"] == 0.5


# --- --api-auth and --gradio-auth ------------------------------------------------------------------------------

def add_extension_routes(demo, app):
    app.add_api_route("/ext/open", lambda: {"ok": True}, methods=["GET"])

    def cookie_user(request: Request):
        # a panel route protected like gradio's own: the session cookie, when --gradio-auth is on
        token = request.cookies.get("access-token") or request.cookies.get("access-token-unsecure")
        if getattr(app, "auth", None) and app.tokens.get(token) is None:
            raise HTTPException(status_code=401, detail="Not logged in")
        return app.tokens.get(token) if hasattr(app, "tokens") else None

    app.add_api_route("/ext/panel", lambda user=Depends(cookie_user): {"user": user}, methods=["GET"])


@pytest.mark.parametrize("nowebui", [False, True])
def test_api_auth_protects_only_the_api_routes(ext, nowebui):
    if nowebui:
        ext.load_extension(extra_script_classes=[Ext], build_ui=False)
    script_callbacks.on_app_started(add_extension_routes)
    client = ext.api_client(api_auth="alice:secret,bob:hunter2")
    assert type(client.app).__name__ == ("FastAPI" if nowebui else "App")
    assert (shared.cmd_opts.nowebui, shared.cmd_opts.api) == (nowebui, not nowebui)

    response = client.get("/sdapi/v1/scripts")
    assert response.status_code == 401
    assert response.json() == {"error": "HTTPException", "detail": "Not authenticated", "body": "", "errors": ""}
    # the API's exception handler answers with a JSONResponse of its own: the WWW-Authenticate header is lost
    assert "www-authenticate" not in response.headers
    response = client.get("/sdapi/v1/scripts", auth=("alice", "wrong"))
    assert response.status_code == 401 and response.json()["detail"] == "Incorrect username or password"
    assert client.get("/sdapi/v1/scripts", auth=("bob", "hunter2")).status_code == 200
    assert client.post("/sdapi/v1/txt2img", json={"steps": 1, **SIZE}, auth=("alice", "secret")).status_code == 200
    # routes an extension adds to the app itself are open
    assert client.get("/ext/open").json() == {"ok": True}
    assert client.get("/ext/panel").json() == {"user": None}


def test_api_client_auth_argument_and_no_auth_by_default(ext):
    assert ext.api_client().get("/sdapi/v1/scripts").status_code == 200
    client = ext.api_client(api_auth="u:p", auth=("u", "p"))
    assert client.get("/sdapi/v1/scripts").status_code == 200


def test_gradio_auth_app_tokens_and_cookie_login(ext):
    script_callbacks.on_app_started(add_extension_routes)
    client = ext.ui_client(gradio_auth="alice:secret")
    app = client.app
    assert type(app).__name__ == "App" and app.auth == {"alice": "secret"} and app.tokens == {}
    assert client.get("/config").status_code == 401  # gradio's own routes check the login
    assert client.get("/ext/panel").status_code == 401 and client.get("/ext/open").status_code == 200
    assert client.get("/sdapi/v1/scripts").status_code == 200  # --gradio-auth does not protect the API

    assert ext.login(client, "alice", "nope").status_code == 400
    assert ext.login(client, "alice", "secret").status_code == 200
    (token,) = app.tokens
    assert app.tokens[token] == "alice"
    assert client.get("/config").status_code == 200 and client.get("/ext/panel").json() == {"user": "alice"}

    # like a browser over http, only the non-Secure cookie is sent; over https both are
    def cookies(request: Request):
        return sorted(request.cookies)

    script_callbacks.on_app_started(lambda demo, app: app.add_api_route("/ext/cookies", cookies, methods=["GET"]))
    plain = ext.ui_client(gradio_auth="alice:secret", logged_in=True)  # a fresh app, tokens of its own
    secure = ext.ui_client(gradio_auth="alice:secret", logged_in=True, https=True)
    assert plain.get("/ext/cookies").json() == ["access-token-unsecure"]
    assert secure.get("/ext/cookies").json() == ["access-token", "access-token-unsecure"]
    assert len(secure.app.tokens) == 1 and secure.get("/ext/panel").json() == {"user": "alice"}
    assert plain.get("/ext/panel").json() == {"user": "alice"} and client.app.tokens != secure.app.tokens


def test_ui_mode_without_gradio_auth_and_nowebui_have_no_login(ext):
    script_callbacks.on_app_started(add_extension_routes)
    client = ext.ui_client()
    assert client.app.auth is None and client.get("/ext/panel").status_code == 200 and client.get("/config").status_code == 200
    with pytest.raises(ValueError):
        ext.ui_client(logged_in=True)  # nobody to log in as
    no_api = ext.ui_client(api=False)
    assert no_api.get("/sdapi/v1/scripts").status_code == 404 and no_api.get("/ext/open").status_code == 200

    ext.load_extension(extra_script_classes=[Ext], build_ui=False)
    script_callbacks.on_app_started(add_extension_routes)
    app = ext.api_app(gradio_auth="alice:secret")  # --nowebui: --gradio-auth means nothing
    assert not hasattr(app, "auth") and not hasattr(app, "tokens")


# --- Send to img2img / inpaint ---------------------------------------------------------------------------------

def test_send_to_img2img_carries_string_named_fields_paired_by_position(ext):
    sent = ext.send_to("img2img", {"Prompt": "a dog", "Negative prompt": "bad", "txt2img_steps": 9, "Seed": 42,
                                   "Ext enabled": True, "Ext only here": 0.3, "Ext weight": 0.6, "Ext flag": True,
                                   "Ext count": 4, "Ext note": "not carried", "CFG Scale": 3})
    assert sent["img2img_prompt"] == "a dog" and sent["Negative prompt"] == "bad"
    assert sent["img2img_steps"] == 9 and sent["img2img_seed"] == 42
    # callable-named fields (enabled, mode) and names outside the list (note, CFG scale) are not carried
    for label in ("Ext enabled", "Ext mode", "Ext note", "CFG Scale"):
        assert not sent.arrived(label)
    # "Ext only here" exists in txt2img only: every later script value lands one control off
    # (gradio ignores the extra input value) and the components take whatever comes
    pairs = [(source.label, destination.label) for source, destination in sent.pairs if source.label.startswith("Ext")]
    assert pairs == [("Ext only here", "Ext weight"), ("Ext weight", "Ext flag"), ("Ext flag", "Ext count")]
    assert sent["Ext weight"] == 0.3 and sent["Ext flag"] == 0.6 and sent["Ext count"] is True
    assert sent.script_value("Ext flag") == 0.6


class Same(Ext):
    """The same fields in both tabs: each value lands on its own control."""

    def ui(self, is_img2img):
        return super().ui(True)


def test_send_to_with_matching_fields_and_options(ext):
    ext.load_extension(extra_script_classes=[Same])
    sent = ext.send_to("inpaint", {"Ext weight": 0.6, "Ext flag": True, "Ext count": 4, "Seed": 42})
    assert (sent["Ext weight"], sent["Ext flag"], sent["Ext count"]) == (0.6, True, 4) and not sent.arrived("Ext face")
    overrides = sent.script_overrides()
    assert overrides["Ext"] == {1: 0.6, 2: True, 3: 4} and overrides["Seed"] == {0: 42}
    result = ext.img2img(script_args=overrides, prompt="a", steps=1, init_images=[Image.new("RGB", (64, 64))], **SIZE)
    assert ext_args("img2img")["Ext weight"] == 0.6 and result.p.seed == 42

    # opts.send_seed is read when the buttons are connected (UI build)
    with ext.options(send_seed=False):
        ext.load_extension(extra_script_classes=[Same])
    assert not ext.send_to("img2img", {"Seed": 42}).arrived("Seed")
    # the img2img panel's own buttons carry the image only (source_tabname None)
    assert ext.send_to("inpaint", source="img2img").received == {}
    with pytest.raises(KeyError):
        ext.send_to("img2img", {"No such control": 1})


def test_send_to_with_an_uploaded_file_fails_the_whole_event(ext, tmp_path):
    class SameWithFace(Same):
        carry_face = True

    ext.load_extension(extra_script_classes=[SameWithFace])
    face = tmp_path / "face.png"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(face)
    # gradio preprocesses the source File into tempfile wrappers, then the destination's postprocess wants paths
    with pytest.raises(TypeError):
        ext.send_to("img2img", {"Ext weight": 0.6, "Ext face": [str(face)]})
    sent = ext.send_to("img2img", {"Ext weight": 0.6})  # no upload: None goes through
    assert sent["Ext weight"] == 0.6 and sent["Ext face"] is None


# --- gradio 3.41 gr.File values --------------------------------------------------------------------------------

def test_gradio_files_are_temp_file_wrappers(webui, tmp_path):  # noqa: F811
    face = tmp_path / "face.png"
    Image.new("RGB", (8, 8), (10, 200, 10)).save(face)
    browser = webui.uploaded_files(face)
    assert browser[0]["orig_name"] == "face.png" and browser[0]["is_file"] is True and browser[0]["name"] != str(face)
    files = webui.gradio_files(face)
    assert isinstance(files, list) and len(files) == 1 and isinstance(files[0], tempfile._TemporaryFileWrapper)
    wrapper = files[0]
    assert os.path.basename(wrapper.name) == "face.png" and open(wrapper.name, "rb").read() == face.read_bytes()
    assert wrapper.orig_name.endswith("face.png") and os.path.isabs(wrapper.orig_name)  # the upload's path
    assert wrapper.read() == b""  # the open handle is another, empty, temp file
    with pytest.raises(TypeError, match="pickle"):
        copy.deepcopy(files)
    assert copy.copy(files)[0] is wrapper
    assert webui.gradio_files() is None
    assert isinstance(webui.gradio_files(face, component=gr.File()), tempfile._TemporaryFileWrapper)
    assert webui.gradio_files(face, component=gr.File(type="binary", file_count="multiple")) == [face.read_bytes()]


# --- --data-dir ------------------------------------------------------------------------------------------------

def test_data_dir_moves_user_data_not_the_install(webui, tmp_path):  # noqa: F811
    install = paths_internal.script_path
    values = webui.set_data_dir(tmp_path)
    for module in (paths_internal, paths, shared):
        assert module.data_path == str(tmp_path)
        assert module.models_path == str(tmp_path / "models") and module.extensions_dir == str(tmp_path / "extensions")
        assert module.script_path == install and module.extensions_builtin_dir == os.path.join(install, "extensions-builtin")
    assert values["default_output_dir"] == str(tmp_path / "outputs") and shared.cmd_opts.data_dir == str(tmp_path)

    webui.set_data_dir(tmp_path, models_dir=tmp_path / "elsewhere")
    assert shared.models_path == paths.models_path == str(tmp_path / "elsewhere") and shared.extensions_dir == str(tmp_path / "extensions")

    webui.reset()
    assert shared.data_path == paths_internal.DEFAULT_DATA_DIR and shared.models_path == os.path.join(paths_internal.DEFAULT_DATA_DIR, "models")


def test_installed_extension_lives_in_extensions_dir(webui, tmp_path):  # noqa: F811
    source = tmp_path / "src"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "where.py").write_text(
        "from modules import scripts\nBASEDIR = scripts.basedir()\n"
        "class Where(scripts.Script):\n    def title(self):\n        return 'Where'\n"
        "    def show(self, is_img2img):\n        return scripts.AlwaysVisible\n")
    webui.set_data_dir(tmp_path / "data")
    folder = webui.install_extension("sd-webui-where", source=source)
    assert folder == tmp_path / "data" / "extensions" / "sd-webui-where"
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(str(folder / "scripts" / "where.py"))
    module = next(x.module for x in scripts.scripts_data if x.script_class.__name__ == "Where")
    assert module.BASEDIR == str(folder)


# --- paste fields as A1111 registers them ----------------------------------------------------------------------

def test_paste_fields_and_bindings(ext):
    txt2img = infotext_utils.paste_fields["txt2img"]["fields"]
    img2img = infotext_utils.paste_fields["img2img"]["fields"]
    assert all(isinstance(field, infotext_utils.PasteField) for field in txt2img + img2img)
    assert {f.api for f in txt2img if f.label in ("Prompt", "Size-1", "Hires upscale")} == {"prompt", "width", "hr_scale"}
    assert all(field.api is None for field in img2img if field.component not in scripts.scripts_img2img.inputs)
    assert infotext_utils.paste_fields["inpaint"]["fields"] is img2img and infotext_utils.paste_fields["extras"]["fields"] is None
    import modules.ui
    assert modules.ui.txt2img_paste_fields is txt2img and modules.ui.img2img_paste_fields is img2img

    bindings = {b.paste_button.elem_id: b for b in infotext_utils.registered_param_bindings}
    assert {"txt2img_send_to_img2img", "txt2img_send_to_inpaint", "txt2img_send_to_extras", "img2img_send_to_img2img", "txt2img_paste"} <= set(bindings)
    assert bindings["txt2img_send_to_img2img"].source_tabname == "txt2img" and bindings["img2img_send_to_inpaint"].source_tabname is None
    assert bindings["txt2img_send_to_img2img"].paste_field_names is scripts.scripts_txt2img.paste_field_names
    count = len(infotext_utils.registered_param_bindings)
    ext.build_ui()  # a new build starts from reset()
    assert len(infotext_utils.registered_param_bindings) == count
