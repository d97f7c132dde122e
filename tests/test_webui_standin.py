"""The A1111 stand-in (tests/webui) is faithful where the extension depends on it.

A dummy AlwaysVisible script records every hook it receives; the tiny ldm/sgm UNets from tests/fixtures run the
sampling so the UNet call layouts can be checked per call. Expected values come from A1111 1.10's behaviour as
summarised in the project notes (hook order §1.5/§1.7, CFG rows §3, crop §4.2, infotext §4.5/§6.3, API §11).
"""
from __future__ import annotations

import base64
import functools
import inspect
import io
import json
import sys

import pytest
import torch
from PIL import Image

from tests.webui.harness import webui  # noqa: F401  (pytest fixture; importing it puts tests/webui on sys.path)
from tests.webui import controlnet_like, lora_like

import gradio as gr
from modules import errors, images, infotext_utils, masking, processing, script_callbacks, scripts, shared
from modules.sd_samplers_common import InterruptedException

STEPS = 3
SIZE = dict(width=64, height=64)
EVENTS: list[tuple] = []


@functools.lru_cache(maxsize=None)
def unet(kind):
    from tests.fixtures.tiny_models import tiny_unet
    return tiny_unet(kind)


class Recorder(scripts.Script):
    """Logs (hook, its script args, details) into EVENTS; raises in the hooks named in `raise_in`."""

    raise_in: set = set()

    def title(self):
        return "Dummy Recorder"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        enabled = gr.Checkbox(label="enabled", value=False)
        strength = gr.Slider(label="strength", minimum=0.0, maximum=1.0, value=0.5)
        note = gr.Textbox(label="note", value="x")
        self.infotext_fields = [(enabled, lambda d: "Recorder" in d), (strength, "Recorder strength")]
        return [enabled, strength, note]

    def _log(self, name, args, **details):
        EVENTS.append((name, args, details))
        if name in Recorder.raise_in:
            raise RuntimeError(f"boom in {name}")

    def setup(self, p, *args):
        self._log("setup", args, seed=p.seed)

    def before_process(self, p, *args):
        self._log("before_process", args)

    def process(self, p, *args):
        self._log("process", args, init_latent=getattr(p, "init_latent", None) is not None, paste_to=p.paste_to, all_prompts=p.all_prompts)

    def before_process_batch(self, p, *args, **kwargs):
        self._log("before_process_batch", args, batch_number=kwargs["batch_number"], init_latent=getattr(p, "init_latent", None) is not None)

    def after_extra_networks_activate(self, p, *args, **kwargs):
        self._log("after_extra_networks_activate", args, batch_number=kwargs["batch_number"])

    def process_batch(self, p, *args, **kwargs):
        self._log("process_batch", args, batch_number=kwargs["batch_number"], prompts=kwargs["prompts"])

    def process_before_every_sampling(self, p, *args, **kwargs):
        self._log("process_before_every_sampling", args, is_hr_pass=p.is_hr_pass, x=tuple(kwargs["x"].shape), keys=tuple(sorted(kwargs)))

    def before_hr(self, p, *args):
        self._log("before_hr", args, is_hr_pass=p.is_hr_pass)

    def on_mask_blend(self, p, mba, *args):
        self._log("on_mask_blend", args, final=mba.is_final_blend)

    def post_sample(self, p, ps, *args):
        self._log("post_sample", args)

    def postprocess_batch(self, p, *args, **kwargs):
        self._log("postprocess_batch", args, batch_number=kwargs["batch_number"], images=tuple(kwargs["images"].shape))

    def postprocess_batch_list(self, p, pp, *args, **kwargs):
        self._log("postprocess_batch_list", args)

    def postprocess_image(self, p, pp, *args):
        self._log("postprocess_image", args, size=pp.image.size)

    def postprocess_maskoverlay(self, p, ppmo, *args):
        self._log("postprocess_maskoverlay", args)

    def postprocess_image_after_composite(self, p, pp, *args):
        self._log("postprocess_image_after_composite", args, size=pp.image.size)

    def postprocess(self, p, processed, *args):
        self._log("postprocess", args, n_images=len(processed.images))


@pytest.fixture
def ui(webui):  # noqa: F811
    """SD1.5 tiny model, the Recorder loaded like an extension, UI built, a cfg_denoiser logger registered."""
    EVENTS.clear()
    Recorder.raise_in = set()
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[Recorder])
    script_callbacks.on_cfg_denoiser(lambda params: EVENTS.append(("cfg_denoiser", params.denoiser.step, {"rows": params.x.shape[0]})))
    yield webui
    Recorder.raise_in = set()


def names(events=None):
    """Hook names with runs of cfg_denoiser collapsed to one 'cfg*N' entry."""
    out = []
    for event in EVENTS if events is None else events:
        name = event[0]
        if name == "cfg_denoiser" and out and out[-1].startswith("cfg*"):
            out[-1] = f"cfg*{int(out[-1][4:]) + 1}"
        else:
            out.append("cfg*1" if name == "cfg_denoiser" else name)
    return out


def details(name):
    return [event[2] for event in EVENTS if event[0] == name]


RECORDER_ARGS = (False, 0.5, "x")
TAIL = ["post_sample", "postprocess_batch", "postprocess_batch_list", "postprocess_image", "postprocess_maskoverlay",
        "postprocess_image_after_composite"]


# --- hook order ----------------------------------------------------------------------------------------------

def test_txt2img_hook_order_and_args(ui):
    result = ui.txt2img(prompt="a cat", negative_prompt="ugly", steps=STEPS, seed=7, **SIZE)
    assert names() == ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                       "process_batch", "process_before_every_sampling", f"cfg*{STEPS}", *TAIL, "postprocess"]
    assert all(event[1] == RECORDER_ARGS for event in EVENTS if event[0] != "cfg_denoiser")
    # UI path: the built-in Seed script's setup copies its control into p (it is loaded after the extensions,
    # so an extension's setup still sees the constructor's -1).
    assert details("setup") == [{"seed": -1}] and result.p.seed == 7
    assert details("process_before_every_sampling")[0]["keys"] == ("c", "noise", "uc", "x")
    runner = scripts.scripts_txt2img
    recorder = next(s for s in runner.alwayson_scripts if isinstance(s, Recorder))
    # index 0 is the script dropdown; the built-in sections (sampler, refiner, seed) are built before section None
    assert runner.inputs[0].label == "Script" and recorder.args_from == 13 and recorder.args_to == 16
    assert len(result.processed.images) == 1 and "Seed: 7" in result.processed.infotexts[0]


def test_txt2img_hires_hook_order(ui):
    result = ui.txt2img(prompt="a", negative_prompt="n", steps=2, seed=1, enable_hr=True, hr_scale=1.5, **SIZE)
    assert names() == ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                       "process_batch", "process_before_every_sampling", "cfg*2", "after_extra_networks_activate",
                       "before_hr", "process_before_every_sampling", "cfg*2", *TAIL, "postprocess"]
    first, second = details("process_before_every_sampling")
    assert (first["is_hr_pass"], first["x"]) == (False, (1, 4, 8, 8))
    assert (second["is_hr_pass"], second["x"]) == (True, (1, 4, 12, 12))
    assert details("before_hr") == [{"is_hr_pass": True}]
    p = result.p
    assert p.is_hr_pass is False and (p.width, p.hr_upscale_to_x) == (64, 96)
    assert result.processed.images[0].size == (96, 96)


def test_hires_resize_truncates_latents(ui):
    result = ui.txt2img(prompt="a", steps=1, seed=1, enable_hr=True, hr_resize_x=128, hr_resize_y=128, width=64, height=48)
    p = result.p
    assert (p.hr_upscale_to_x, p.hr_upscale_to_y, p.truncate_x, p.truncate_y) == (170, 128, 5, 0)
    assert result.processed.images[0].size == (128, 128)


def test_img2img_hook_order_process_runs_before_init(ui):
    init = Image.new("RGB", (64, 64), (200, 100, 50))
    result = ui.img2img(prompt="a", steps=4, seed=1, init_images=[init], denoising_strength=0.5, **SIZE)
    # t_enc = int(0.5 * 4) = 2 -> 3 denoiser calls
    assert names() == ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                       "process_batch", "process_before_every_sampling", "cfg*3", *TAIL, "postprocess"]
    assert details("process")[0]["init_latent"] is False
    assert details("before_process_batch")[0]["init_latent"] is True
    assert result.p.extra_generation_params["Denoising strength"] == 0.5


def test_inpaint_only_masked_order_and_paste_to(ui):
    init = Image.new("RGB", (128, 96), (120, 30, 200))
    mask = Image.new("L", (128, 96), 0)
    mask.paste(255, (40, 20, 72, 36))
    result = ui.img2img(prompt="a", steps=2, seed=1, init_images=[init], mask=mask, mask_blur=0,
                        inpaint_full_res_padding=4, denoising_strength=1.0, **SIZE)
    # bbox (40,20,72,36) + pad 4 -> (36,16,76,40); 40x24 widened to the 1:1 processing aspect -> (36,8,76,48)
    assert result.p.paste_to == (36, 8, 40, 40)
    assert names() == ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                       "process_batch", "process_before_every_sampling", "cfg*1", "on_mask_blend", "cfg*1",
                       "on_mask_blend", "on_mask_blend", *TAIL, "postprocess"]
    assert [d["final"] for d in details("on_mask_blend")] == [False, False, True]
    assert details("process")[0]["paste_to"] is None
    assert details("postprocess_image") == [{"size": (64, 64)}]  # the crop, at processing size
    assert details("postprocess_image_after_composite") == [{"size": (128, 96)}]  # pasted back
    assert result.p.extra_generation_params["Inpaint area"] == "Only masked"
    assert result.p.mask_for_overlay.size == (128, 96) and tuple(result.p.mask.shape) == (4, 8, 8)

    # the crop is taken on the blurred mask: blur tails widen it (kernel 2*int(2.5*4+0.5)+1 = 21 -> 10 px tails)
    blurred = processing.StableDiffusionProcessingImg2Img(init_images=[init], mask=mask, mask_blur=4, **SIZE)
    blurred.init([""], [1], [1])
    assert blurred.paste_to == (30, 2, 52, 52)  # bbox (30,10,82,46): 52x36, grown by 8 rows each side

def test_inpaint_whole_picture_and_resize_modes(ui):
    init = Image.new("RGB", (100, 50), (120, 30, 200))
    mask = Image.new("RGBA", (100, 50), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (40, 10, 60, 30))  # RGBA masks use their alpha channel
    result = ui.img2img(prompt="a", steps=2, seed=1, init_images=[init], mask=mask, inpaint_full_res=False,
                        resize_mode=1, mask_blur=0, **SIZE)
    p = result.p
    assert p.paste_to is None and p.mask_for_overlay.size == (64, 64) and result.processed.images[0].size == (64, 64)
    # crop-and-resize scales 100x50 to 128x64 and crops the centre: mask columns 40..60 land on 19..45, rows 10..30
    # on 13..38, i.e. latent columns 2..5 and rows 2..3 (rounded)
    assert tuple(p.nmask.shape) == (4, 8, 8) and p.nmask[0, 3].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert p.nmask[0, :, 3].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert "Inpaint area" not in p.extra_generation_params


def test_crop_region_helpers():
    mask = Image.new("L", (100, 60), 0)
    assert masking.get_crop_region_v2(mask, 8) is None
    mask.paste(255, (80, 10, 100, 20))  # touching the right edge
    crop = masking.get_crop_region_v2(mask, 4)
    assert crop == (76, 6, 100, 24)
    # a wide box grows in height: 24x18 -> 24x24 (3 rows each side); for 1:2 the top clamps at 0 and the box shifts
    assert masking.expand_crop_region(crop, 64, 64, 100, 60) == (76, 3, 100, 27)
    assert masking.expand_crop_region(crop, 32, 64, 100, 60) == (76, 0, 100, 48)
    # a tall box grows in width and, past the right edge, is shifted back inside
    assert masking.expand_crop_region((90, 0, 100, 40), 64, 64, 100, 60) == (60, 0, 100, 40)
    # resize_image mode 2 (resize and fill): 100x50 into 64x64 -> 64x32 centred at y=16, bands stretched
    image = Image.new("RGB", (100, 50), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 100, 10))
    filled = images.resize_image(2, image, 64, 64)
    assert filled.size == (64, 64) and filled.getpixel((10, 2))[2] > 200 and filled.getpixel((10, 40))[0] > 200
    assert images.resize_image(1, Image.new("L", (100, 50)), 64, 64).mode == "RGB"


def test_batch_count_two(ui):
    result = ui.txt2img(prompt="a", steps=1, seed=3, n_iter=2, **SIZE)
    for name in ("setup", "before_process", "process", "postprocess"):
        assert len(details(name)) == 1, name
    for name in ("before_process_batch", "after_extra_networks_activate", "process_batch", "postprocess_batch"):
        assert [d["batch_number"] for d in details(name)] == [0, 1], name
    assert len(details("process_before_every_sampling")) == 2
    # a grid comes first when there are several images
    assert len(result.processed.images) == 3 and result.processed.index_of_first_image == 1
    assert result.p.all_seeds == [3, 4]


def test_load_script_the_a1111_way(webui, tmp_path):  # noqa: F811
    extension = tmp_path / "sd-webui-demo"
    (extension / "scripts").mkdir(parents=True)
    (extension / "lib_demo.py").write_text("VALUE = 42\n")
    (extension / "scripts" / "demo.py").write_text(
        "import sys\n"
        "from modules import scripts, script_callbacks\n"
        "import lib_demo\n"
        "BASEDIR = scripts.basedir()\n"
        "ON_PATH = BASEDIR in sys.path\n"
        "class Demo(scripts.Script):\n"
        "    def title(self):\n"
        "        return 'Demo'\n"
        "    def show(self, is_img2img):\n"
        "        return scripts.AlwaysVisible\n"
        "script_callbacks.on_model_loaded(lambda m: None, name='demo')\n")
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(str(extension / "scripts" / "demo.py"))
    data = next(x for x in scripts.scripts_data if x.script_class.__name__ == "Demo")
    module = data.module
    assert module.__name__ == "demo.py" and module.BASEDIR == str(extension) and module.ON_PATH
    assert str(extension) not in sys.path and module.lib_demo.VALUE == 42
    assert data.basedir == str(extension) and scripts.scripts_txt2img.script("demo").alwayson
    assert [c.name for c in script_callbacks.callback_map["callbacks_model_loaded"]] == ["sd-webui-demo/demo.py/model_loaded/demo"]


# --- errors and interrupts -----------------------------------------------------------------------------------

def test_hook_exceptions_are_logged_and_the_job_continues(ui):
    Recorder.raise_in = {"setup", "process", "process_batch", "postprocess_image"}
    result = ui.txt2img(prompt="a", steps=1, seed=1, **SIZE)
    assert len(result.processed.images) == 1 and "postprocess" in names()
    logged = [message for message, _ in errors.reports]
    for hook in ("setup", "process", "process_batch", "postprocess_image"):
        assert any(message.startswith(f"Error running {hook}: ") and message.endswith("test_webui_standin.py") for message in logged), hook


def test_script_args_dict_is_sliced_into_an_error(ui):
    # p.script_args defaults to {}: every hook's slicing raises TypeError, which is only logged
    p = processing.StableDiffusionProcessingTxt2Img(prompt="a", steps=1, seed=1, **SIZE)
    p.scripts = scripts.scripts_txt2img
    processed = processing.process_images(p)
    assert len(processed.images) == 1
    assert [e[0] for e in EVENTS if e[0] != "cfg_denoiser"] == []  # setup never ran; every hook failed to slice
    assert any("Error running process: " in message for message, _ in errors.reports)


def test_exception_inside_sampling_propagates_without_postprocess(ui):
    def explode(module, args, kwargs):
        if EVENTS and EVENTS[-1][0] == "cfg_denoiser" and EVENTS[-1][1] == 1:
            raise ValueError("unet hook failed")

    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(explode, with_kwargs=True)
    try:
        p = ui.make_txt2img(prompt="a", steps=3, seed=1, enable_hr=True, hr_second_pass_steps=3, **SIZE)
        closed = []
        original_close = p.close
        p.close = lambda: (closed.append(True), original_close())
        with pytest.raises(ValueError, match="unet hook failed"):
            ui.run(p)
    finally:
        handle.remove()
    assert closed == [True] and p.c is None
    assert "postprocess" not in names() and "postprocess_batch" not in names()
    assert p.is_hr_pass is False  # failed in the first pass
    # the same failure in the hires pass leaves is_hr_pass set on that p
    EVENTS.clear()

    def explode_in_hires(module, args, kwargs):
        if "before_hr" in names():
            raise ValueError("hires unet hook failed")

    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(explode_in_hires, with_kwargs=True)
    try:
        p = ui.make_txt2img(prompt="a", steps=3, seed=1, enable_hr=True, **SIZE)
        with pytest.raises(ValueError):
            ui.run(p)
    finally:
        handle.remove()
    assert p.is_hr_pass is True and "before_hr" in names()


def test_interrupt_returns_last_latent_and_postprocesses(ui):
    def interrupt(params):
        if params.denoiser.step == 1:
            shared.state.interrupt()

    script_callbacks.on_cfg_denoiser(interrupt)
    assert issubclass(InterruptedException, BaseException) and not issubclass(InterruptedException, Exception)
    result = ui.txt2img(prompt="a", steps=4, seed=1, n_iter=2, **SIZE)
    # calls 0 and 1 ran; the flag set in call 1's callback raises at the top of call 2 -> last latent returned
    assert names().count("cfg*2") == 1
    assert [d["batch_number"] for d in details("before_process_batch")] == [0]
    assert "postprocess" in names() and len(result.processed.images) == 1


# --- CFG row layouts -----------------------------------------------------------------------------------------

LONG = " ".join(["bad"] * 80)  # 80 words -> 154 tokens


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
@pytest.mark.parametrize("batch_cond_uncond", [True, False])
def test_row_layouts(webui, kind, batch_cond_uncond):  # noqa: F811
    webui.set_model(unet(kind), kind)
    webui.load_extension()
    opts = {"batch_cond_uncond": batch_cond_uncond}

    def layouts(**kwargs):
        with webui.record_unet() as rec:
            webui.txt2img(steps=1, seed=1, opts=opts, **SIZE, **kwargs)
        return rec

    rec = layouts(prompt="c", negative_prompt="u")
    assert rec.layouts == ([("c", "u")] if batch_cond_uncond else [("c",), ("u",)])
    call = rec.calls[0]
    assert call.positional_t is (kind == "sd15") and call.has_y is (kind == "sdxl")

    rec = layouts(prompt=["c1", "c2"], negative_prompt=["u1", "u2"], batch_size=2)
    assert rec.layouts == ([("c1", "c2", "u1", "u2")] if batch_cond_uncond else [("c1", "c2"), ("u1", "u2")])

    # AND: sub-prompts of an image are consecutive cond rows (weights in conds_list); the B=2 chunks straddle
    rec = layouts(prompt=["a AND b:0.5", "c"], negative_prompt=["u1", "u2"], batch_size=2)
    assert rec.layouts == ([("a", " b", "c", "u1", "u2")] if batch_cond_uncond else [("a", " b"), ("c", "u1"), ("u2",)])

    # different token lengths: cond rows in chunks of 2B (B without batch_cond_uncond), then one uncond call
    rec = layouts(prompt="a AND b", negative_prompt=LONG)
    assert [c.contexts for c in rec.calls][:-1] == ([("a", " b")] if batch_cond_uncond else [("a",), (" b",)])
    assert rec.calls[-1].contexts == (LONG,) and rec.calls[-1].rows == 1

    if kind == "sdxl":  # an empty negative prompt is zeroed for SDXL
        assert layouts(prompt="c", negative_prompt="").layouts[-1][-1] == "<zero>"


def test_skip_uncond_after_the_callback(webui):  # noqa: F811
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension()
    seen = []
    script_callbacks.on_cfg_denoiser(lambda params: seen.append((params.denoiser.step, params.denoiser.total_steps, params.x.shape[0], params.image_cond.shape[0], params.text_uncond.shape[0])))

    with webui.record_unet() as rec:
        result = webui.txt2img(prompt="c", negative_prompt="u", steps=4, seed=1, opts={"skip_early_cond": 0.5}, **SIZE)
    assert [c.rows for c in rec.calls] == [1, 1, 1, 2]  # step/total <= 0.5 for steps 0, 1, 2
    assert all(rows == 2 and image_rows == 2 for _, _, rows, image_rows, _ in seen)  # the callback saw uncond rows
    assert [s[:2] for s in seen] == [(0, 4), (1, 4), (2, 4), (3, 4)]
    assert "Skip Early CFG: 0.5" in result.processed.infotexts[0]

    with webui.record_unet() as rec:
        result = webui.txt2img(prompt="c", negative_prompt="u", steps=4, seed=1, opts={"s_min_uncond": 100.0}, **SIZE)
    assert rec.layouts == [("c", "u"), ("c",), ("c", "u"), ("c",)]  # odd steps only
    assert "NGMS: 100.0" in result.processed.infotexts[0]


def test_denoiser_counters_and_params(webui):  # noqa: F811
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension()
    seen = []

    def record(params):
        seen.append((params.denoiser.step, params.denoiser.total_steps, params.sampling_step, params.total_sampling_steps, params.denoiser.p))

    assert list(inspect.signature(script_callbacks.CFGDenoiserParams).parameters) == [
        "x", "image_cond", "sigma", "sampling_step", "total_sampling_steps", "text_cond", "text_uncond", "denoiser"]
    script_callbacks.on_cfg_denoiser(record)
    result = webui.txt2img(prompt="c", steps=3, seed=1, sampler_name="Heun", **SIZE)
    assert result.p.sampler_name == "Heun"
    # Heun: two calls per step but the last, total_steps doubled; sampling_step lags the call counter
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4] and {s[1] for s in seen} == {6}
    assert [s[2] for s in seen] == [0, 0, 0, 1, 1] and {s[3] for s in seen} == {3}
    assert all(s[4] is result.p for s in seen)


# --- API -----------------------------------------------------------------------------------------------------

def _b64(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class StatusError(Exception):
    status_code = 418  # class level: ignored by the middleware

    def __init__(self, message, status=None):
        super().__init__(message)
        if status is not None:
            self.status_code = status


def test_api_alwayson_mapping_and_errors(ui):
    # start as with --nowebui: scripts loaded, no UI yet; the Api builds it, then before_ui, then app_started
    ui.load_extension(extra_script_classes=[Recorder], build_ui=False)
    pinged = []
    script_callbacks.on_before_ui(lambda: pinged.append("before_ui"))
    script_callbacks.on_app_started(lambda demo, app: (pinged.append(demo), app.add_api_route("/standin/ping", lambda: {"ok": True}, methods=["GET"])))
    client = ui.api_client()
    assert pinged == ["before_ui", None] and client.get("/standin/ping").json() == {"ok": True}

    def txt2img(**body):
        return client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "seed": 123, **SIZE, **body})

    EVENTS.clear()
    response = txt2img(alwayson_scripts={"DUMMY recorder": {"args": [True]}})
    assert response.status_code == 200
    assert set(response.json()) == {"images", "parameters", "info"}
    assert details("setup")[0]["seed"] == 123 and [e[1] for e in EVENTS if e[0] == "process"] == [(True, 0.5, "x")]
    info = json.loads(response.json()["info"])
    assert info["all_seeds"] == [123]  # the UI-only Seed script's setup is skipped for API requests

    EVENTS.clear()
    assert txt2img(alwayson_scripts={"Dummy Recorder": {"args": [True, 0.9, "y", "ignored"]}}).status_code == 200
    assert [e[1] for e in EVENTS if e[0] == "process"] == [(True, 0.9, "y")]

    response = txt2img(alwayson_scripts={"nope": {"args": []}})
    assert response.status_code == 422
    assert response.json() == {"error": "HTTPException", "detail": "Script 'nope' not found", "body": "", "errors": ""}
    assert txt2img(alwayson_scripts={"x/y/z plot": {"args": []}}).status_code == 422
    response = txt2img(alwayson_scripts={"dummy recorder": {"args": {"0": True}}})  # args must be a list
    assert response.status_code == 500 and response.json()["error"] == "KeyError"

    for exc, status in ((StatusError("teapot"), 500), (StatusError("conflict", 409), 409), (RuntimeError("plain"), 500)):
        def fail(module, args, kwargs, exc=exc):
            raise exc
        handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(fail, with_kwargs=True)
        try:
            response = txt2img()
        finally:
            handle.remove()
        assert response.status_code == status
        assert response.json() == {"error": type(exc).__name__, "detail": "", "body": "", "errors": str(exc)}

    init = Image.new("RGB", (64, 64), (10, 200, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    response = client.post("/sdapi/v1/img2img", json={"prompt": "a", "steps": 2, "seed": 1, **SIZE, "init_images": [_b64(init)],
                                                       "mask": _b64(mask), "alwayson_scripts": {"Dummy Recorder": {"args": [True]}}})
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    assert "Inpaint area: Only masked" in json.loads(response.json()["info"])["infotexts"][0]


# --- infotext ------------------------------------------------------------------------------------------------

def test_infotext_quote_and_parse_round_trip(ui):
    result = ui.txt2img(prompt="a cat", negative_prompt="ugly", steps=1, seed=5, batch_size=2, **SIZE)
    p = result.p
    p.extra_generation_params.update({
        "My ext": 'weights "v2", scale: 0.8',
        "Multi": "line\nbreak",
        "Flag": True,
        "Box": "512x768",
        "Per image": ["first", "second"],
        "Computed": lambda p, index, **kwargs: f"idx{index}",
        "Broken": lambda **kwargs: 1 / 0,
        "Raw list": [[1, 2], [3, 4]],
        "Dropped": None,
    })
    text = processing.create_infotext(p, p.all_prompts, p.all_seeds, p.all_subseeds, index=1)
    assert any(message == 'Error creating infotext for key "Broken"' for message, _ in errors.reports)
    parsed = infotext_utils.parse_generation_parameters(text)
    assert parsed["Prompt"] == "a cat" and parsed["Negative prompt"] == "ugly"
    assert parsed["My ext"] == 'weights "v2", scale: 0.8' and parsed["Multi"] == "line\nbreak"
    assert parsed["Flag"] == "True" and (parsed["Box-1"], parsed["Box-2"]) == ("512", "768")
    assert (parsed["Per image"], parsed["Computed"], parsed["Seed"]) == ("second", "idx1", "6")
    assert parsed["Raw list"] == "[3" and "Dropped" not in parsed and "Broken" not in parsed
    assert (parsed["Size-1"], parsed["Size-2"]) == ("64", "64")
    assert infotext_utils.quote("plain") == "plain" and infotext_utils.quote("a,b") == '"a,b"' and infotext_utils.quote(1.5) == 1.5

    # the last line counts as parameters only with >= 3 pairs
    assert infotext_utils.parse_generation_parameters("x\nSteps: 2, Sampler: Euler")["Prompt"] == "x\nSteps: 2, Sampler: Euler"

    # paste casts by the component's current value type
    checkbox, slider, textbox = gr.Checkbox(value=True), gr.Slider(value=3), gr.Textbox(value="")
    seen = []
    script_callbacks.on_infotext_pasted(lambda infotext, params: seen.append(params.setdefault("Extra", "added")))
    updates = infotext_utils.paste("p\nSteps: 2, Flag: False, Other: True, Sampler: Euler",
                                   [(checkbox, "Flag"), (checkbox, "Other"), (slider, "Steps"), (textbox, "Extra"), (textbox, "Missing")])
    assert [u.get("value") for u in updates] == [False, True, 2.0, "added", None] and seen == ["added"]


# --- UI helpers, callbacks, xyz, model swap ------------------------------------------------------------------

def test_input_accordion_and_elem_ids(webui):  # noqa: F811
    from modules.ui_components import FormRow, InputAccordion, ToolButton

    class Accordion(scripts.Script):
        def title(self):
            return "My Ext"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            with InputAccordion(False, label="My Ext", elem_id=self.elem_id("enabled")) as enabled:
                with enabled.extra():
                    ToolButton("x")
                with FormRow():
                    strength = gr.Slider(label="s", value=0.8)
            return [enabled, strength]

    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[Accordion])
    script = scripts.scripts_img2img.script("my ext")
    enabled = script.controls[0]
    assert isinstance(enabled, gr.Checkbox) and enabled.value is False and enabled.accordion.open is False
    assert enabled.elem_id == "script_img2img_my_ext_enabled-checkbox"
    assert script.name == "my ext" and script.api_info.args[1].value == 0.8


def test_scripts_see_the_output_panel_made_after_their_ui(webui):  # noqa: F811
    """A1111 patches gradio's component creation (gradio_extensons): a script's on_after_component callback gets the
    output panel's components, made after every script's UI, while that tab's runner is current."""
    seen = []

    class Watcher(scripts.Script):
        def title(self):
            return "watcher"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            self.on_after_component(lambda made: seen.append((made.component.elem_id, scripts.scripts_current)),
                                    elem_id=f"generation_info_{'img2img' if is_img2img else 'txt2img'}")
            return []

    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[Watcher])
    assert seen == [("generation_info_txt2img", scripts.scripts_txt2img),
                    ("generation_info_img2img", scripts.scripts_img2img)]
    assert scripts.scripts_current is None  # after the UI is built


def test_callback_registry(webui):  # noqa: F811
    def callback(params):
        pass

    with pytest.raises(TypeError):
        script_callbacks.on_cfg_denoiser(callback, "positional name")
    script_callbacks.on_cfg_denoiser(callback, name="mine")
    script_callbacks.on_cfg_denoiser(callback, name="mine")
    registered = script_callbacks.callback_map["callbacks_cfg_denoiser"]
    assert [c.name for c in registered] == ["base/test_webui_standin.py/cfg_denoiser/mine", "base/test_webui_standin.py/cfg_denoiser/mine-1"]

    holder = controlnet_like.ControlNetLikeHook()
    script_callbacks.on_cfg_denoiser(holder.guidance_schedule_handler)
    script_callbacks.remove_callbacks_for_function(holder.guidance_schedule_handler)  # a new bound method object
    assert [c.callback for c in registered] == [callback, callback]

    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension()  # load_scripts clears every callback
    assert script_callbacks.callback_map["callbacks_cfg_denoiser"] == []

    loaded = []
    script_callbacks.on_model_loaded(loaded.append)
    model = webui.set_model(unet("sdxl"), "sdxl", name="other.safetensors")
    assert loaded == [model] and shared.sd_model is model and model.is_sdxl


def test_xyz_grid_lookup_and_cells(ui):
    xyz = ui.xyz_module()
    assert xyz.__name__ == "xyz_grid.py" and xyz.AxisOption.__init__.__code__.co_varnames[:9] == (
        "self", "label", "type", "apply", "format_value", "confirm", "cost", "choices", "prepare")

    def apply_unet_failure(p, x, xs):
        p.fail_in_unet = x

    xyz.axis_options.append(xyz.AxisOption("Fail", int, apply_unet_failure))
    try:
        ui.build_ui()  # axis options are snapshotted when the UI is built
        runner = scripts.scripts_txt2img
        script = runner.script("X/Y/Z plot")
        index = [o.label for o in script.current_axis_options].index("Fail")
        current = []
        script_callbacks.on_cfg_denoiser(lambda params: current.insert(0, params.denoiser.p))

        def fail(module, args, kwargs):
            if getattr(current[0], "fail_in_unet", 0) == 1:
                raise RuntimeError("cell failure")

        handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(fail, with_kwargs=True)
        try:
            result = ui.txt2img(prompt="a", steps=1, seed=1, **SIZE, select="X/Y/Z plot", script_args={"X/Y/Z plot": [index, "0, 1, 2"]})
        finally:
            handle.remove()
        assert len(result.processed.images) == 2  # cell 1 failed and was replaced by an empty result
        assert any("generating image for xyz plot" in message for message, _ in errors.reports)
        assert len(details("setup")) == 1 and len(details("process")) == 3  # the copies share setup; each runs process
    finally:
        xyz.axis_options.pop()


# --- neighbours: ControlNet-like and LoRA-like ---------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_controlnet_like_marks_and_reimplements_the_unet(webui, kind):  # noqa: F811
    webui.set_model(unet(kind), kind)
    webui.load_extension(extra_script_classes=[controlnet_like.ControlNetLikeScript])
    diffusion_model = shared.sd_model.model.diffusion_model
    job = dict(prompt="c", negative_prompt="u", steps=2, seed=1, **SIZE)

    plain = webui.txt2img(**job).processed.images[0]
    contexts = []
    script_callbacks.on_cfg_denoiser(lambda params: contexts.append(params.text_cond.shape[1]))
    with webui.record_unet() as rec:
        result = webui.txt2img(script_args={"ControlNet-like": [True]}, **job)
    assert rec.layouts == [("+c", "-u")] * 2 and contexts == [78, 78]
    # restore() puts the original bound forward back as an instance attribute, as ControlNet does
    assert hasattr(result.p, "sample_before_CN_hack") and not hasattr(diffusion_model, "_original_forward")
    assert diffusion_model.forward.__func__ is type(diffusion_model).forward
    assert list(result.processed.images[0].getdata()) == list(plain.getdata())  # no residuals: same as the original

    controlnet_like.ControlNetLikeScript.control_fn = controlnet_like.constant_control(0.5)
    try:
        changed = webui.txt2img(script_args={"ControlNet-like": [True]}, **job).processed.images[0]
    finally:
        controlnet_like.ControlNetLikeScript.control_fn = None
    assert list(changed.getdata()) != list(plain.getdata())


def test_lora_like_merged_and_functional(webui):  # noqa: F811
    model = unet("sd15")
    webui.set_model(model, "sd15")
    webui.load_extension()
    job = dict(prompt="c", negative_prompt="u", steps=2, seed=1, **SIZE)
    baseline = torch.tensor(list(webui.txt2img(**job).processed.images[0].getdata()), dtype=torch.float32)

    targets = [name for name, module in model.named_modules() if name.endswith("attn2.to_out.0")]
    lora = lora_like.LoraLike()
    lora.assign_names(model)
    lora.add_network("test", model, targets, multiplier=2.0)
    before = {name: dict(model.named_modules())[name].weight.detach().clone() for name in targets}
    fired = []
    handles = [dict(model.named_modules())[name].register_forward_hook(lambda m, i, o: fired.append(1)) for name in targets]
    lora.install()
    try:
        merged = torch.tensor(list(webui.txt2img(**job).processed.images[0].getdata()), dtype=torch.float32)
        assert fired and not torch.equal(dict(model.named_modules())[targets[0]].weight, before[targets[0]])
        fired.clear()
        functional = torch.tensor(list(webui.txt2img(opts={"lora_functional": True}, **job).processed.images[0].getdata()), dtype=torch.float32)
        assert fired and torch.equal(dict(model.named_modules())[targets[0]].weight, before[targets[0]])
    finally:
        lora.uninstall()
        for handle in handles:
            handle.remove()
    assert all(torch.equal(dict(model.named_modules())[name].weight, weight) for name, weight in before.items())
    assert (merged - functional).abs().max() <= 2 and (merged - baseline).abs().max() > 2
