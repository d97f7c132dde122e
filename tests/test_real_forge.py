"""Optional tier: the extension inside a real Forge (lllyasviel/stable-diffusion-webui-forge main, the Forge 2 backend),
over its HTTP API, on the CPU.

Skipped unless FORGE_DIR names a Forge checkout installed the normal way (its own `venv/`, filled by its launch.py:
torch 2.3.1, gradio 4.40.0, ...) with insightface and onnxruntime in that environment. See tests/real_forge_setup.md.

Forge recognises a checkpoint by its UNet only, and builds the text encoder and VAE from the configs it ships (always
full size), so the checkpoint is a full-width SD1.5 with random weights (UNet, VAE and CLIP-L, ~2.1 GB in fp16):

- it is assembled by Forge's own Python from Forge's own classes (backend.nn.unet / vae / clip) and checked with
  Forge's own loader code (split_state_dict, huggingface_guess), so its key layout is the one that Forge loads;
- our full-width SD1.5 InstantID weights fit it: an IdentityNet (a diffusers ControlNet over SD1.5's encoder, fp16,
  context 768) and a face adapter (per-layer face K/V for SD1.5's 16 cross-attention layers, a small Resampler),
  made the way tests/fixtures/tiny_models makes the tiny ones;
- with FORGE_TEST_CACHE set, these files are written there once (named by a hash of what makes them and of the Forge
  commit) and linked into the data folder; without it they are written into the temporary data folder every run.

Everything else goes into a temporary data folder passed as --data-dir (the checkout's config.json, models, outputs
and extensions are not touched): the models, the synthetic antelopev2 pack, a config.json without live previews, and
extensions/sd-webui-instantid, a symlink to this repository. The server is started with --api --nowebui --always-cpu
on 127.0.0.1 once per module and always stopped at the end. Forge loads the checkpoint on the first job.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from tests.real_webui import (
    ON, SIZE, Server, _free_port, errors_text, img2img, infotext, install_extension, ok, photo, pixels,
    skip_unless_it_imports, start_in_own_group, txt2img,
)

FORGE_DIR = os.environ.get("FORGE_DIR", "")
FORGE_TEST_CACHE = os.environ.get("FORGE_TEST_CACHE", "")
START_TIMEOUT_S = float(os.environ.get("FORGE_START_TIMEOUT", "600"))

pytestmark = pytest.mark.skipif(
    not FORGE_DIR,
    reason="real-Forge tier: set FORGE_DIR to a Forge (lllyasviel/stable-diffusion-webui-forge main) checkout with "
           "a working venv (see tests/real_forge_setup.md)",
)

CHECKPOINT = "rand_sd15"
SEED = 0
# SD1.5's cross-attention widths in the adapter's order: input blocks 1, 2, 4, 5, 7, 8; output blocks 3-11; middle.
SD15_CROSS_ATTENTION_WIDTHS = (320, 320, 640, 640, 1280, 1280) + (1280,) * 3 + (640,) * 3 + (320,) * 3 + (1280,)
SD15_CONTEXT = 768
HIRES = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
         "denoising_strength": 0.5, "hr_additional_modules": ["Use same choices"]}  # Forge's API needs the last
TIMINGS: dict[str, float] = {}


# --- files Forge loads ------------------------------------------------------------------------------------------

# Runs in Forge's Python, from FORGE_DIR: builds a full-width SD1.5 (UNet, VAE, CLIP-L) with Forge's own classes and
# random weights (seeded), saves it in fp16 with the key prefixes of an SD1.5 checkpoint file, then reads it back
# with Forge's own loader code and checks that Forge recognises SD1.5 and finds every weight of each part.
_BUILDER = r"""
import json, os, sys, time
args = json.loads(sys.argv[1])
sys.argv = sys.argv[:1] + ["--always-cpu"]  # backend.args reads the command line when imported
sys.path.insert(0, os.getcwd())
import modules.paths  # noqa: F401  Forge's repositories (huggingface_guess) and packages_3rdparty on sys.path
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel
from backend.nn.clip import IntegratedCLIP
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.nn.vae import IntegratedAutoencoderKL

start = time.time()
torch.manual_seed(args["seed"])
configs = os.path.join("backend", "huggingface", "runwayml", "stable-diffusion-v1-5")
unet_config = dict(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[2, 2, 2, 2],
                   channel_mult=[1, 2, 4, 4], num_heads=8, num_head_channels=-1, use_spatial_transformer=True,
                   transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_middle=1,
                   transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], context_dim=768,
                   use_linear_in_transformer=False, adm_in_channels=None, num_classes=None)
builders = {
    "model.diffusion_model.": lambda: IntegratedUNet2DConditionModel(**unet_config),
    "first_stage_model.": lambda: IntegratedAutoencoderKL.from_config(
        IntegratedAutoencoderKL.load_config(os.path.join(configs, "vae"))),
    "cond_stage_model.": lambda: IntegratedCLIP(
        CLIPTextModel, CLIPTextConfig.from_pretrained(os.path.join(configs, "text_encoder")), add_text_projection=True),
}
state, shapes = {}, {}
for prefix, build in builders.items():
    model = build()
    part = {k: v for k, v in model.state_dict().items() if k != "transformer.text_projection.weight"}  # Forge's own
    shapes[prefix] = {k: tuple(v.shape) for k, v in part.items()}
    state.update({prefix + k: v.to(torch.float16).contiguous() for k, v in part.items()})
    del model, part
save_file(state, args["checkpoint"])
count = sum(v.numel() for v in state.values())
del state
built = time.time() - start

from backend.loader import split_state_dict
parts, guess = split_state_dict(args["checkpoint"])
assert type(guess).__name__ == "SD15", f"Forge takes it for {type(guess).__name__}"
with torch.device("meta"):
    forge_unet = IntegratedUNet2DConditionModel.from_config(guess.unet_config)  # what Forge builds for it
expected = {"unet": {k: tuple(v.shape) for k, v in forge_unet.state_dict().items()},
            "vae": shapes["first_stage_model."], "text_encoder": shapes["cond_stage_model."]}
for name, want in expected.items():
    got = {k: tuple(v.shape) for k, v in parts[name].items()}
    assert got == want, (name, sorted(set(want) ^ set(got))[:5], [k for k in want if got.get(k) != want[k]][:5])
print(json.dumps({"values": count, "build_s": round(built, 1), "total_s": round(time.time() - start, 1)}))
"""


def _digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def forge_commit() -> str:
    described = subprocess.run(["git", "-C", FORGE_DIR, "rev-parse", "HEAD"], capture_output=True, text=True,
                               check=False)
    return described.stdout.strip() if described.returncode == 0 else "unknown"


def forge_version() -> str:
    described = subprocess.run(["git", "-C", FORGE_DIR, "describe", "--tags", "--always"], capture_output=True,
                               text=True, check=False)
    return f"{described.stdout.strip() or 'unknown'} ({forge_commit()[:8]})"


def build_checkpoint(path: Path, forge_python: str, env: dict) -> Path:
    """Write the checkpoint to `path` (a .safetensors name: Forge's loader goes by the suffix)."""
    built = subprocess.run([forge_python, "-c", _BUILDER, json.dumps({"seed": SEED, "checkpoint": str(path)})],
                           cwd=FORGE_DIR, env=env, capture_output=True, text=True, timeout=1800, check=False)
    if built.returncode != 0:
        for leftover in (path, path.with_name(path.name + ".corrupted")):  # Forge renames a file it cannot read
            leftover.unlink(missing_ok=True)
        pytest.fail(f"building the SD1.5 checkpoint in Forge's Python failed:\n{built.stdout[-4000:]}\n"
                    f"{built.stderr[-4000:]}")
    TIMINGS["checkpoint_build_s"] = json.loads(built.stdout.strip().splitlines()[-1])["total_s"]
    return path


def write_identitynet(folder: Path) -> Path:
    """A random full-width SD1.5 IdentityNet in the official layout (folder/ControlNetModel: config.json +
    diffusion_pytorch_model.safetensors, fp16 like the release), made as tiny_models.tiny_identitynet makes the tiny
    one: every zero-initialised layer random, norms off 1/0, and a live hint path."""
    import safetensors.torch  # noqa: F401  (save_pretrained writes safetensors through it)
    from diffusers import ControlNetModel

    from tests.fixtures import tiny_models as tm

    with tm._seeded(SEED):
        controlnet = ControlNetModel(
            in_channels=4, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), cross_attention_dim=SD15_CONTEXT,
            attention_head_dim=8, use_linear_projection=False)
        tm._randomise_(controlnet)
        tm._liven_hint_path_(controlnet)
    target = folder / "ControlNetModel"
    controlnet.half().save_pretrained(target)
    return target


def write_adapter(path: Path) -> Path:
    """A random SD1.5 face adapter as a release-style ip-adapter.bin (tiny_models' Resampler width, SD1.5's 16
    cross-attention layers at their real widths, context 768)."""
    from tests.fixtures import tiny_models as tm

    tm._save_release_style_pickle(tm.adapter_weights(SD15_CROSS_ATTENTION_WIDTHS, SD15_CONTEXT, seed=SEED), path)
    return path


def _cached(folder: Path, name: str, make) -> Path:
    """folder/name, made by make(path) unless it is there already; written under a temporary name first."""
    target = folder / name
    if not target.exists():
        stem, dot, suffix = name.partition(".")
        partial = folder / f"{stem}.partial{dot}{suffix}"  # keeps the suffix, which loaders go by
        if partial.is_dir():
            shutil.rmtree(partial)
        partial.unlink(missing_ok=True)
        make(partial)
        os.replace(partial, target)
    return target


def write_models(data_dir: Path, forge_python: str, env: dict) -> Path:
    """The models folder of the data folder; returns the checkpoint path."""
    from tests.fixtures.face_models import write_antelopev2

    models = data_dir / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    instantid = models / "instantid"
    instantid.mkdir()
    checkpoint = models / "Stable-diffusion" / f"{CHECKPOINT}.safetensors"
    started = time.monotonic()
    if FORGE_TEST_CACHE:
        cache = Path(FORGE_TEST_CACHE)
        cache.mkdir(parents=True, exist_ok=True)
        cached = _cached(cache, f"{CHECKPOINT}-{_digest(_BUILDER, str(SEED), forge_commit())}.safetensors",
                         lambda p: build_checkpoint(p, forge_python, env))
        checkpoint.symlink_to(cached)
        weights = _digest(inspect.getsource(write_identitynet), inspect.getsource(write_adapter), str(SEED),
                          repr(SD15_CROSS_ATTENTION_WIDTHS))
        identitynet = _cached(cache, f"identitynet_sd15-{weights}", lambda p: write_identitynet(p))
        (instantid / "ControlNetModel").mkdir()
        for file in (identitynet / "ControlNetModel").iterdir():
            (instantid / "ControlNetModel" / file.name).symlink_to(file)
        shutil.copyfile(_cached(cache, f"ip-adapter_sd15-{weights}.bin", write_adapter), instantid / "ip-adapter.bin")
    else:
        build_checkpoint(checkpoint, forge_python, env)
        write_identitynet(instantid)
        write_adapter(instantid / "ip-adapter.bin")
    write_antelopev2(models / "insightface" / "models")
    TIMINGS["models_s"] = time.monotonic() - started
    return checkpoint


# --- the server -------------------------------------------------------------------------------------------------

def _forge_python() -> str:
    python = os.environ.get("FORGE_PYTHON") or str(Path(FORGE_DIR) / "venv" / "bin" / "python")
    if not Path(FORGE_DIR, "launch.py").is_file() or not Path(FORGE_DIR, "backend", "loader.py").is_file():
        pytest.skip(f"FORGE_DIR={FORGE_DIR} is not a Forge 2 checkout (no launch.py and backend/loader.py)")
    if not Path(FORGE_DIR, "repositories", "huggingface_guess").is_dir():
        pytest.skip(f"Forge at {FORGE_DIR} was never installed (no repositories/huggingface_guess): run its "
                    f"launch.py once (see tests/real_forge_setup.md)")
    if not Path(python).exists():
        pytest.skip(f"no Python for Forge at {python} (set FORGE_PYTHON)")
    skip_unless_it_imports(python, "torch, insightface, onnxruntime, safetensors, transformers, diffusers, gradio",
                           "Forge's Python", "tests/real_forge_setup.md")
    return python


def _wait_until_serving(server: Server) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"Forge exited with {server.process.returncode} while starting:\n{server.log_tail()}")
        try:
            if requests.get(server.url + "/sdapi/v1/sd-models", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"Forge was not serving within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The real Forge, started for this module on a free port of 127.0.0.1 and always stopped afterwards."""
    python = _forge_python()
    data_dir = tmp_path_factory.mktemp("real_forge")
    env = dict(os.environ)
    for key in ("FORGE_DIR", "FORGE_PYTHON", "FORGE_TEST_CACHE", "PYTHONPATH", "VIRTUAL_ENV", "COMMANDLINE_ARGS"):
        env.pop(key, None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(data_dir / "hf_home"),
               PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    checkpoint = write_models(data_dir, python, env)
    link = install_extension(data_dir)

    port = _free_port()
    command = [
        python, "launch.py", "--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test",
        "--skip-version-check", "--always-cpu", "--api", "--nowebui", "--server-name", "127.0.0.1",
        "--port", str(port), "--data-dir", str(data_dir), "--ckpt", str(checkpoint), "--no-download-sd-model",
    ]
    log = data_dir / "forge.log"
    started = time.monotonic()
    process = start_in_own_group(command, FORGE_DIR, env, log)
    running = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_until_serving(running)
        TIMINGS["start_s"] = time.monotonic() - started
        print(f"\nreal Forge {forge_version()} at {FORGE_DIR} (Python {python}), data folder {data_dir}")
        yield running
    finally:
        status = Path(f"/proc/{process.pid}/status")
        if process.poll() is None and status.exists():  # Linux: the server's peak memory, for the record
            peak = [line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
            TIMINGS.update({"server_peak_rss_gib": int(peak[0]) / 2 ** 20} if peak else {})
        running.stop()
        print(f"\n--- Forge log (last lines) ---\n{running.log_tail(40)}")
        print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))
        link.unlink()
        shutil.rmtree(data_dir / "models", ignore_errors=True)


@pytest.fixture(scope="module")
def forge(server):
    """The server with our script loaded, and the plain job's image taken before InstantID ever ran (the first job
    also loads the checkpoint)."""
    scripts = server.request("GET", "/sdapi/v1/scripts").json()
    if "instantid" not in scripts.get("txt2img", []):
        pytest.fail(f"Forge {forge_version()} did not load the extension:\n"
                    f"{server.script_errors() or server.log_tail()}")
    if server.never is None:
        started = time.monotonic()
        response = txt2img(server)
        assert response.status_code == 200, f"{response.text}\n{server.log_tail()}"
        TIMINGS["first_job_s"] = time.monotonic() - started
        assert "Model loaded in" in server.log_text() and "InstantID" not in infotext(response)
        server.never = pixels(response)
    return server


def changed(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


# --- checks -----------------------------------------------------------------------------------------------------

def test_the_extension_loads_as_an_alwayson_script(server):
    scripts = server.request("GET", "/sdapi/v1/scripts").json()
    assert "instantid" in scripts["txt2img"] and "instantid" in scripts["img2img"], (
        f"not loaded; Forge {forge_version()} reported:\n{server.script_errors() or server.log_tail()}")
    info = {(s["name"], s["is_img2img"]): s for s in server.request("GET", "/sdapi/v1/script-info").json()}
    assert info[("instantid", False)]["is_alwayson"] and info[("instantid", True)]["is_alwayson"]
    assert not server.script_errors(), server.script_errors()


def test_the_models_route_lists_the_sd15_models(forge):
    body = ok(forge, forge.request("GET", "/instantid/models")).json()
    found = {(m["kind"], m["name"], m["family"], m["context_dim"], m["error"], m["fits_loaded_checkpoint"])
             for m in body["models"]}
    assert found == {("identitynet", "instantid/ControlNetModel", "SD1.5", SD15_CONTEXT, None, True),
                     ("adapter", "instantid/ip-adapter.bin", "SD1.5", SD15_CONTEXT, None, True)}, body
    assert body["antelopev2"]["error"] is None, body
    assert body["antelopev2"]["folder"] == "<models>/insightface/models/antelopev2"  # no server path
    assert "CPUExecutionProvider" in body["antelopev2"]["providers"]


def test_the_detect_route_finds_the_face(forge):
    response = ok(forge, forge.request("POST", "/instantid/detect", {"image": photo()}))
    (face,) = response.json()["faces"]
    assert len(face["keypoints"]) == 5 and response.json()["preview"]


def test_txt2img_with_instantid_is_recorded_and_off_is_untouched(forge):
    on = ok(forge, txt2img(forge, {**ON, "face_image": photo()}))
    text = infotext(on)
    assert 'InstantID: "IdentityNet: instantid/ControlNetModel, Adapter: instantid/ip-adapter.bin' in text, text
    assert changed(pixels(on), forge.never) > 10
    off = ok(forge, txt2img(forge, {"enabled": False, "face_image": photo(), "adapter_weight": 1.5}))
    assert "InstantID" not in infotext(off)
    assert np.array_equal(pixels(off), forge.never)  # off, after on: as if it never ran
    assert np.array_equal(pixels(ok(forge, txt2img(forge))), forge.never)


def test_zero_weights_are_disabled_and_each_path_acts_alone(forge):
    zero = ok(forge, txt2img(forge, {**ON, "face_image": photo(), "identitynet_weight": 0, "adapter_weight": 0}))
    assert np.array_equal(pixels(zero), forge.never)
    for alone in ({"identitynet_weight": 0}, {"adapter_weight": 0}):
        result = ok(forge, txt2img(forge, {**ON, "face_image": photo(), **alone}))
        assert "InstantID:" in infotext(result)
        assert changed(pixels(result), forge.never) > 3, alone


def test_the_panels_positional_args_equal_the_named_dict(forge):
    face = photo()
    positional = [True, [face], None, "Automatic", "", 0.6, 0.9, 0, 1, 0, 0.5, 0]
    named = {**ON, "face_image": face, "identitynet_weight": 0.6, "adapter_weight": 0.9, "adapter_end": 0.5}
    by_position = ok(forge, txt2img(forge, positional))
    by_name = ok(forge, txt2img(forge, named))
    assert "IdentityNet weight: 0.6, Adapter weight: 0.9" in infotext(by_position), infotext(by_position)
    assert infotext(by_position) == infotext(by_name)
    assert np.array_equal(pixels(by_position), pixels(by_name))
    assert changed(pixels(by_position), forge.never) > 10


@pytest.mark.parametrize("bad, named", [
    ({"adapter_weight": 3}, "adapter_weight"),
    ({"identitynet_start": 0.9, "identitynet_end": 0.1}, "identitynet_start"),
    ({"no_such_field": 1}, "no_such_field"),
    ({"face_image": "not base64 at all!"}, "face_image"),
    ({"identitynet_model": "../../model.safetensors"}, "identitynet"),
])
def test_a_bad_field_is_refused_with_422_naming_it(forge, bad, named):
    response = txt2img(forge, {**ON, "face_image": photo(), **bad})
    assert response.status_code == 422, f"{response.status_code} {response.text}"
    assert named in errors_text(response), response.text


def test_a_photo_without_a_face_is_refused_and_the_server_keeps_serving(forge):
    response = txt2img(forge, {**ON, "face_image": photo(face=False)})
    assert response.status_code == 422, f"{response.status_code} {response.text}"
    assert "No face found" in errors_text(response), response.text
    assert np.array_equal(pixels(ok(forge, txt2img(forge))), forge.never)  # nothing of the refused job is left
    again = ok(forge, txt2img(forge, {**ON, "face_image": photo()}))
    assert "InstantID:" in infotext(again)


def test_cfg_1_sends_cond_rows_only(forge):
    plain = ok(forge, txt2img(forge, cfg_scale=1))
    response = ok(forge, txt2img(forge, {**ON, "face_image": photo()}, cfg_scale=1))
    assert "InstantID:" in infotext(response)
    assert changed(pixels(response), pixels(plain)) > 10


def test_other_row_layouts(forge):
    face = {**ON, "face_image": photo()}
    # different token lengths (Forge repeats the shorter conditioning), AND-composition (an extra cond chunk),
    # skip-early-CFG (no uncond rows from the second step on), a batch of two images
    for values in ({"negative_prompt": " ".join(["bad"] * 80)}, {"prompt": "a AND b"},
                   {"prompt": "a AND b", "s_min_uncond": 100}, {"batch_size": 2}):
        plain = ok(forge, txt2img(forge, **values))
        response = ok(forge, txt2img(forge, face, **values))
        assert "InstantID:" in infotext(response), values
        assert changed(pixels(response), pixels(plain)) > 3, values


@pytest.mark.parametrize("hr_cfg", [5, 1])  # 1, the API default: no uncond rows in the hires pass
def test_hires_fix(forge, hr_cfg):
    plain = ok(forge, txt2img(forge, **HIRES, hr_cfg=hr_cfg))
    response = ok(forge, txt2img(forge, {**ON, "face_image": photo()}, **HIRES, hr_cfg=hr_cfg))
    assert pixels(response).shape == (2 * SIZE["height"], 2 * SIZE["width"], 3)
    assert "InstantID:" in infotext(response) and "Hires upscale: 2" in infotext(response)
    assert changed(pixels(response), pixels(plain)) > 3


def test_img2img_takes_the_pose_from_the_init_image(forge):
    init = {"init_images": [photo()], "denoising_strength": 0.75}
    plain = ok(forge, img2img(forge, **init))
    response = ok(forge, img2img(forge, {**ON, "face_image": photo()}, **init))
    assert "InstantID:" in infotext(response)
    assert changed(pixels(response), pixels(plain)) > 3
    no_pose = img2img(forge, {**ON, "face_image": photo()}, init_images=[photo(face=False)], denoising_strength=0.75)
    assert no_pose.status_code == 422 and "No face found in the init image" in errors_text(no_pose), no_pose.text


def test_no_errors_were_logged_by_our_script(forge):
    assert not forge.script_errors(), forge.script_errors()
    log = forge.log_text()
    ours = [block for block in log.split("\n---\n") if "Error running" in block and "instantid" in block.lower()]
    assert not ours, "\n---\n".join(ours)
