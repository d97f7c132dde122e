"""The real-WebUI tiers' machinery: a real AUTOMATIC1111 WebUI started on tiny models, and the jobs sent to it.

The tiers are skipped unless WEBUI_DIR names an A1111 checkout (1.8 or newer) whose own Python environment works
(WEBUI_DIR/venv/bin/python, or WEBUI_PYTHON) and has insightface and onnxruntime. See tests/real_webui_setup.md.

Everything the WebUI needs is written into a temporary data folder (passed as --data-dir, so the checkout's
config.json, outputs, models and extensions are not touched):

- a tiny SDXL-layout checkpoint (models/Stable-diffusion/tiny_sdxl.safetensors) with its config next to it
  (tiny_sdxl.yaml, Stability's sgm classes at tiny sizes). Its UNet is tests/fixtures/tiny_models' tiny SDXL UNet;
  the VAE and both text encoders are random and tiny. The checkpoint is assembled by the WebUI's own Python from the
  WebUI's own sgm code, so its key layout is the one that WebUI loads;
- the CLIP-L text encoder's tokenizer (CLIP's BPE, from open_clip's copy) and config as a local folder, and the
  OpenCLIP text encoder's config in a Hugging Face cache folder the server reads offline (HF_HUB_OFFLINE=1);
- our tiny SDXL-family InstantID weights in models/instantid/ and the synthetic antelopev2 pack in
  models/insightface/models/antelopev2/;
- extensions/sd-webui-instantid, a symlink to this repository.

The server is started with --api on 127.0.0.1 (CPU, fp32, --skip-install), with its UI or without it (--nowebui),
once per test module and always stopped at the end.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
REPO_ROOT = Path(__file__).resolve().parent.parent
WEBUI_DIR = os.environ.get("WEBUI_DIR", "")
START_TIMEOUT_S = float(os.environ.get("WEBUI_START_TIMEOUT", "600"))
REQUEST_TIMEOUT_S = 600

SKIP_WITHOUT_WEBUI = pytest.mark.skipif(
    not WEBUI_DIR,
    reason="real-WebUI tier: set WEBUI_DIR to an AUTOMATIC1111 checkout (>= 1.8) with a working venv "
           "(see tests/real_webui_setup.md)",
)

CHECKPOINT = "tiny_sdxl"
# Text encoders of the tiny checkpoint. Their cross-attention outputs are concatenated into the UNet context
# (48 + 16 = tiny_models.CONTEXT_DIM["sdxl"]), and the OpenCLIP pooled output (16) plus three size embeddings
# (3 x 2 x 8) make the UNet's vector input (tiny_models' adm_in_channels = 64).
CLIP_L_WIDTH = 48
CLIP_VOCAB = 49408  # CLIP's BPE: 48894 merges + 2 x 256 byte symbols + 2 specials
OPEN_CLIP_WIDTH = 16
OPEN_CLIP_REPO = "instantid-tests/tiny-open-clip"
HF_REVISION = "0" * 40
SIZE = {"width": 64, "height": 64}
FACE_CENTRE, FACE_SIDE = (128, 120), 40


# --- files the WebUI loads --------------------------------------------------------------------------------------

def write_clip_l_config(folder: Path) -> Path:
    """The tiny CLIP-L text encoder's folder, as transformers' CLIPTokenizer / CLIPTextConfig read it offline: its
    config here; its vocabulary (CLIP's own BPE, the one open_clip ships, so that both text encoders split a prompt
    into the same tokens as in a real SDXL) is added by the WebUI-side builder."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model", "vocab_size": CLIP_VOCAB,
        "hidden_size": CLIP_L_WIDTH, "intermediate_size": 2 * CLIP_L_WIDTH, "projection_dim": CLIP_L_WIDTH,
        "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "bos_token_id": CLIP_VOCAB - 2, "eos_token_id": CLIP_VOCAB - 1, "pad_token_id": 1,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "model_max_length": 77, "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
    }), encoding="utf-8")
    return folder


def write_open_clip_config(hf_cache: Path) -> Path:
    """The tiny OpenCLIP model's open_clip_config.json as a Hugging Face cache entry (what open_clip reads for an
    `hf-hub:` model name). Returns the snapshot folder; the weights file is added by the WebUI-side builder."""
    repo = hf_cache / ("models--" + OPEN_CLIP_REPO.replace("/", "--"))
    snapshot = repo / "snapshots" / HF_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(HF_REVISION, encoding="utf-8")
    config = {
        "model_cfg": {
            "embed_dim": 16,  # the pooled text output = tiny_models.SDXL_POOLED_DIM
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
            "text_cfg": {"context_length": 77, "vocab_size": CLIP_VOCAB, "width": OPEN_CLIP_WIDTH, "heads": 2,
                         "layers": 2},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (snapshot / "open_clip_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    return snapshot


def checkpoint_config(clip_l_folder: Path) -> dict:
    """sgm's sd_xl_base.yaml at tiny sizes (the UNet is tiny_models.A1111_CONFIGS["sdxl"]). Written as JSON, which
    is YAML too."""
    from tests.fixtures import tiny_models as tm

    def node(target: str, **params) -> dict:
        return {"target": target, "params": params} if params else {"target": target}

    sgm = "sgm.modules.diffusionmodules."
    size_embedders = [
        dict(node("sgm.modules.encoders.modules.ConcatTimestepEmbedderND", outdim=tm.SDXL_TIME_ID_DIM),
             is_trainable=False, input_key=key)
        for key in ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
    ]
    text_encoders = [
        dict(node("sgm.modules.encoders.modules.FrozenCLIPEmbedder", version=str(clip_l_folder), layer="hidden",
                  layer_idx=1),
             is_trainable=False, input_key="txt"),
        dict(node("sgm.modules.encoders.modules.FrozenOpenCLIPEmbedder2", arch=f"hf-hub:{OPEN_CLIP_REPO}",
                  version=None, freeze=True, layer="penultimate", always_return_pooled=True, legacy=False),
             is_trainable=False, input_key="txt"),
    ]
    vae = {"attn_type": "vanilla", "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3,
           "out_ch": 3, "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [],
           "dropout": 0.0}
    return {"model": node(
        "sgm.models.diffusion.DiffusionEngine",
        scale_factor=0.13025,
        disable_first_stage_autocast=True,
        denoiser_config=node(
            sgm + "denoiser.DiscreteDenoiser", num_idx=1000,
            weighting_config=node(sgm + "denoiser_weighting.EpsWeighting"),
            scaling_config=node(sgm + "denoiser_scaling.EpsScaling"),
            discretization_config=node(sgm + "discretizer.LegacyDDPMDiscretization"),
        ),
        network_config=node(sgm + "openaimodel.UNetModel",
                            **dict(tm.A1111_CONFIGS["sdxl"], use_spatial_transformer=True, legacy=False)),
        conditioner_config=node("sgm.modules.GeneralConditioner", emb_models=text_encoders + size_embedders),
        first_stage_config=node("sgm.models.autoencoder.AutoencoderKLInferenceWrapper", embed_dim=4,
                                monitor="val/rec_loss", ddconfig=vae, lossconfig=node("torch.nn.Identity")),
    )}


# Runs in the WebUI's Python, from WEBUI_DIR: writes CLIP-L's vocabulary, instantiates the tiny checkpoint from its yaml with the WebUI's own sgm
# code (random VAE and text encoders, seeded), puts the tiny UNet in, and saves the whole state dict. It also writes
# the tiny OpenCLIP weights open_clip loads for the `hf-hub:` model, as a zip pickle with only the entries A1111's
# safe unpickler accepts.
_BUILDER = r"""
import io, json, os, re, sys, zipfile
import torch
args = json.loads(sys.argv[1])
sys.path.insert(0, os.path.join(os.getcwd(), "repositories", "generative-models"))
torch.manual_seed(0)

from open_clip.model import CLIP
config = json.load(open(os.path.join(args["open_clip_snapshot"], "open_clip_config.json")))["model_cfg"]
buffer = io.BytesIO()
torch.save(CLIP(**config).state_dict(), buffer)
allowed = re.compile(r"^([^/]+)/((data/\d+)|version|(data\.pkl))$")
with zipfile.ZipFile(buffer) as source, zipfile.ZipFile(
        os.path.join(args["open_clip_snapshot"], "open_clip_pytorch_model.bin"), "w", zipfile.ZIP_STORED) as target:
    for entry in source.infolist():
        if allowed.match(entry.filename):
            target.writestr(entry.filename, source.read(entry))

# CLIP-L's tokenizer files, made from the BPE merges open_clip ships exactly as CLIP builds its vocabulary.
import gzip
from open_clip.tokenizer import bytes_to_unicode, default_bpe
merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
symbols = list(bytes_to_unicode().values())
vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
vocab += ["<|startoftext|>", "<|endoftext|>"]
assert len(vocab) == json.load(open(os.path.join(args["clip_l"], "config.json")))["vocab_size"]
json.dump({token: i for i, token in enumerate(vocab)}, open(os.path.join(args["clip_l"], "vocab.json"), "w"))
open(os.path.join(args["clip_l"], "merges.txt"), "w", encoding="utf-8").write(
    "#version: 0.2\n" + "\n".join(merges) + "\n")

import transformers
# The CLIP-L folder has no weights (the checkpoint carries them): build the text model from its config, as the
# WebUI itself does for a checkpoint that includes CLIP.
transformers.CLIPTextModel.from_pretrained = classmethod(
    lambda cls, name, *a, **k: cls(transformers.CLIPTextConfig.from_pretrained(name)))
from omegaconf import OmegaConf
from sgm.util import instantiate_from_config
from safetensors.torch import load_file, save_file
model = instantiate_from_config(OmegaConf.load(args["yaml"]).model)
model.model.diffusion_model.load_state_dict(load_file(args["unet"]), strict=True)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args["checkpoint"])
print("built", args["checkpoint"], sum(v.numel() for v in model.state_dict().values()), "values")
"""


def write_models(data_dir: Path, webui_python: str, env: dict) -> Path:
    """Write the models folder, text-encoder files and checkpoint; returns the checkpoint path."""
    from safetensors.torch import save_file

    from tests.fixtures import tiny_models as tm
    from tests.fixtures.face_models import write_antelopev2

    models = data_dir / "models"
    checkpoints = models / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    clip_l = write_clip_l_config(data_dir / "text_encoders" / "clip_l")
    snapshot = write_open_clip_config(Path(env["HF_HUB_CACHE"]))
    yaml_path = checkpoints / f"{CHECKPOINT}.yaml"
    yaml_path.write_text(json.dumps(checkpoint_config(clip_l), indent=1), encoding="utf-8")
    unet_path = data_dir / "tiny_unet.safetensors"
    save_file({k: v.contiguous() for k, v in tm.tiny_unet("sdxl").state_dict().items()}, str(unet_path))
    checkpoint = checkpoints / f"{CHECKPOINT}.safetensors"
    args = {"yaml": str(yaml_path), "unet": str(unet_path), "checkpoint": str(checkpoint),
            "open_clip_snapshot": str(snapshot), "clip_l": str(clip_l)}
    built = subprocess.run([webui_python, "-c", _BUILDER, json.dumps(args)], cwd=WEBUI_DIR, env=env,
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, f"building the tiny checkpoint failed:\n{built.stdout}\n{built.stderr}"
    unet_path.unlink()

    tm.write_identitynet(models / "instantid", "sdxl")
    tm.write_adapter(models / "instantid" / "ip-adapter.bin", "sdxl")
    write_antelopev2(models / "insightface" / "models")
    return checkpoint


# --- the server -------------------------------------------------------------------------------------------------

def _webui_python() -> str:
    python = os.environ.get("WEBUI_PYTHON") or str(Path(WEBUI_DIR) / "venv" / "bin" / "python")
    if not Path(WEBUI_DIR, "launch.py").is_file():
        pytest.skip(f"WEBUI_DIR={WEBUI_DIR} is not an AUTOMATIC1111 checkout (no launch.py)")
    if not Path(python).exists():
        pytest.skip(f"no Python for the WebUI at {python} (set WEBUI_PYTHON)")
    skip_unless_it_imports(python, "torch, insightface, onnxruntime, open_clip, transformers, safetensors",
                           "the WebUI's Python", "tests/real_webui_setup.md")
    return python


def skip_unless_it_imports(python: str, modules: str, whose: str, setup_doc: str) -> None:
    """Skips the tier, naming the failed import, when the host's Python cannot import `modules`."""
    probe = subprocess.run([python, "-c", f"import {modules}"], capture_output=True, text=True, timeout=300,
                           check=False)
    if probe.returncode != 0:
        missing = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else f"exit {probe.returncode}"
        pytest.skip(f"{whose} ({python}) cannot import what this tier needs: {missing}. insightface and "
                    f"onnxruntime are normally added by the extension's install.py, which this tier skips "
                    f"(--skip-install); see {setup_doc}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, process: subprocess.Popen, url: str, log: Path):
        self.process, self.url, self.log = process, url, log
        self.never: np.ndarray | None = None  # the plain job's image before InstantID ever ran (see `webui`)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def script_errors(self) -> str:
        """The WebUI's reports of errors in our script (loading it, or one of its hooks), with their tracebacks."""
        blocks = re.findall(r"^\*\*\* Error[^\n]*\n(?:(?!---\n).*\n)*?---$", self.log_text(), re.MULTILINE)
        return "\n".join(b for b in blocks if "instantid" in b.splitlines()[0].lower() or "scripts/instantid.py" in b)

    def request(self, method: str, route: str, payload=None):
        import requests

        return requests.request(method, self.url + route, json=payload, timeout=REQUEST_TIMEOUT_S)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the process group this test started for the server
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(30)


def _wait_until_ready(server: Server) -> None:
    import requests

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"the WebUI exited with {server.process.returncode} while starting:\n{server.log_tail()}")
        log = server.log_text()
        if "Stable diffusion model failed to load" in log:
            pytest.fail(f"the WebUI could not load the tiny checkpoint:\n{server.log_tail()}")
        try:
            # The API answers once it is up; the checkpoint is loaded in a thread that prints this when done.
            if "Model loaded in" in log and requests.get(server.url + "/sdapi/v1/sd-models", timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    pytest.fail(f"the WebUI was not ready within {START_TIMEOUT_S:.0f} s:\n{server.log_tail()}")


def webui_version() -> str:
    """The checkout's version as the WebUI itself reports it (git tag, else the CHANGELOG's first heading)."""
    described = subprocess.run(["git", "-C", WEBUI_DIR, "describe", "--tags"], capture_output=True, text=True,
                               check=False)
    if described.returncode == 0:
        return described.stdout.strip()
    changelog = Path(WEBUI_DIR, "CHANGELOG.md")
    heading = re.search(r"^## (\S+)", changelog.read_text(encoding="utf-8"), re.MULTILINE) if changelog.exists() else None
    return heading.group(1) if heading else "unknown"


def install_extension(data_dir: Path) -> Path:
    """The data folder's settings (no live previews: their approximate decoder would be downloaded) and this
    repository linked as its extension; returns the link."""
    (data_dir / "config.json").write_text(json.dumps({"live_previews_enable": False}), encoding="utf-8")
    link = data_dir / "extensions" / "sd-webui-instantid"
    link.parent.mkdir()
    link.symlink_to(REPO_ROOT, target_is_directory=True)
    return link


def start_in_own_group(command: list[str], cwd: str, env: dict, log: Path) -> subprocess.Popen:
    """The server process, in a process group of its own (stopped as a whole), its output in `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


@contextmanager
def running_webui(data_dir: Path, *, with_ui: bool = False,
                  prepare: Callable[[Path], None] | None = None) -> Iterator[Server]:
    """The real WebUI on the tiny models written into `data_dir` (and whatever `prepare` adds to its models folder),
    on a free port of 127.0.0.1; always stopped afterwards."""
    python = _webui_python()
    env = dict(os.environ)
    for key in ("WEBUI_DIR", "WEBUI_PYTHON", "PYTHONPATH", "VIRTUAL_ENV", "COMMANDLINE_ARGS"):
        env.pop(key, None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_CACHE=str(data_dir / "hf_cache"),
               HF_HOME=str(data_dir / "hf_home"), PYTHONUNBUFFERED="1", CUDA_VISIBLE_DEVICES="")
    checkpoint = write_models(data_dir, python, env)
    if prepare is not None:
        prepare(data_dir / "models")
    link = install_extension(data_dir)

    port = _free_port()
    command = [
        python, "launch.py", "--skip-prepare-environment", "--skip-install", "--skip-torch-cuda-test",
        "--skip-version-check", "--use-cpu", "all", "--no-half", "--precision", "full", "--api",
        *([] if with_ui else ["--nowebui"]), "--server-name", "127.0.0.1", "--port", str(port),
        "--data-dir", str(data_dir), "--ckpt", str(checkpoint), "--no-download-sd-model", "--do-not-download-clip",
    ]
    log = data_dir / "webui.log"
    server = Server(start_in_own_group(command, WEBUI_DIR, env, log), f"http://127.0.0.1:{port}", log)
    try:
        _wait_until_ready(server)
        print(f"\nreal WebUI {webui_version()} at {WEBUI_DIR}, data folder {data_dir}")
        yield server
    finally:
        server.stop()
        print(f"\n--- WebUI log (last lines) ---\n{server.log_tail(40)}")
        link.unlink()
        shutil.rmtree(data_dir / "models", ignore_errors=True)
        shutil.rmtree(data_dir / "hf_cache", ignore_errors=True)


# --- jobs -------------------------------------------------------------------------------------------------------

def photo(face: bool = True) -> str:
    """A 256x256 photo as base64 PNG, with one face the synthetic detector finds (a cyan marker) or none."""
    from tests.fixtures.face_models import paint_marker

    pixels = np.full((256, 256, 3), 90, np.uint8)
    if face:
        pixels = paint_marker(pixels, FACE_CENTRE, FACE_SIDE, "cyan")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def job(instantid=None, **values) -> dict:
    """A small txt2img/img2img request; `instantid` is the script's one argument (a dict) or its positional list."""
    payload = {"prompt": "a portrait", "negative_prompt": "blurry", "steps": 3, "seed": 1, "cfg_scale": 4.5,
               "sampler_name": "Euler a", **SIZE, **values}
    if instantid is not None:
        args = instantid if isinstance(instantid, list) else [instantid]
        payload["alwayson_scripts"] = {"InstantID": {"args": args}}
    return payload


def txt2img(server: Server, instantid=None, **values):
    return server.request("POST", "/sdapi/v1/txt2img", job(instantid, **values))


def img2img(server: Server, instantid=None, **values):
    return server.request("POST", "/sdapi/v1/img2img", job(instantid, **values))


def pixels(response) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(response.json()["images"][0])))
    return np.asarray(image.convert("RGB")).astype(np.int16)


def infotext(response) -> str:
    return json.loads(response.json()["info"])["infotexts"][0]


def errors_text(response) -> str:
    body = response.json()
    return f"{body.get('errors', '')} {body.get('detail', '')}"


def ok(server: Server, response):
    assert response.status_code == 200, f"{response.status_code} {response.text}\n{server.log_tail()}"
    return response


ON = {"enabled": True}
