"""Shared pieces of the benchmarks: SDXL-proportioned models in the published file formats, paired timing,
machine facts, and recording results into bench/RESULTS.md.

Run the benchmarks from the repository root (`python bench/<name>.py`); this module puts the root on sys.path.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

RESULTS_MD = ROOT / "bench" / "RESULTS.md"
RESULTS_DIR = ROOT / "bench" / "results"

# SDXL's real UNet hyper-parameters (sgm config of sd_xl_base), except the width.
SDXL_CONTEXT = 2048
SDXL_ADM = 2816  # pooled text 1280 + 6 size ids x 256
SDXL_TIME_ID_DIM = 256
SDXL_POOLED = 1280
SDXL_MODEL_CHANNELS = 320
SDXL_DEPTHS = (0, 2, 10)  # transformer depth per level; the middle block takes the last
TEXT_TOKENS = 77


def sdxl_unet_config(model_channels: int = SDXL_MODEL_CHANNELS) -> dict:
    """sgm UNetModel arguments of SDXL base at a given width (320 = the real one)."""
    return dict(
        in_channels=4,
        out_channels=4,
        model_channels=model_channels,
        channel_mult=[1, 2, 4],
        num_res_blocks=2,
        attention_resolutions=[2, 4],
        transformer_depth=list(SDXL_DEPTHS),
        num_head_channels=64,
        use_linear_in_transformer=True,
        context_dim=SDXL_CONTEXT,
        num_classes="sequential",
        adm_in_channels=SDXL_ADM,
        spatial_transformer_attn_type="softmax",
        use_checkpoint=False,
    )


def sdxl_controlnet_config(model_channels: int = SDXL_MODEL_CHANNELS) -> dict:
    """diffusers ControlNetModel config mirroring `sdxl_unet_config` (InstantID's IdentityNet at that width)."""
    channels = tuple(model_channels * m for m in (1, 2, 4))
    return dict(
        in_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        block_out_channels=channels,
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),  # block 0 has no attention; its entry is unused
        attention_head_dim=tuple(c // 64 for c in channels),  # diffusers' name for the head count
        use_linear_projection=True,
        cross_attention_dim=SDXL_CONTEXT,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_ID_DIM,
        projection_class_embeddings_input_dim=SDXL_ADM,
    )


def build_sgm_unet(model_channels: int, seed: int = 0, device=None, dtype=torch.float32,
                   randomise: bool = True) -> nn.Module:
    """The sgm UNet (imaginAIry's vendored copy with the SpatialTransformer rebind), built on `device`.
    randomise: give the zero-initialised layers random weights too (as the tests do), so that every path carries
    signal; without it the weights are sgm's own initialisation (its output convolutions are zero)."""
    from tests.fixtures import tiny_models as tm

    unet_class = tm._sgm_unet_class()
    device = torch.device(device or "cpu")
    with tm._seeded(seed), tm._quiet_logger("imaginairy.modules.sgm.attention"), device:
        unet = unet_class(**sdxl_unet_config(model_channels))
        if randomise and device.type != "meta":
            tm._randomise_(unet)
    return unet.to(dtype).eval().requires_grad_(False)


def write_identitynet(folder: Path, model_channels: int, seed: int = 0) -> Path:
    """An IdentityNet matching `build_sgm_unet(model_channels)` in the official layout (save_pretrained);
    returns folder/ControlNetModel."""
    import safetensors.torch  # noqa: F401  (diffusers 0.31, Forge's, saves with it without importing it)
    from diffusers import ControlNetModel

    from tests.fixtures import tiny_models as tm

    with tm._seeded(seed), tm._quiet_logger("diffusers"):
        net = ControlNetModel(**sdxl_controlnet_config(model_channels))
        tm._randomise_(net)
        tm._liven_hint_path_(net)
    target = Path(folder) / "ControlNetModel"
    net.save_pretrained(target)
    return target


def step_models(model_channels: int) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The step benchmarks' models: the sgm UNet, and an IdentityNet and adapter fitting it, written in the published
    formats and loaded back by the extension's own loaders."""
    from lib_instantid.models.loading import load_adapter, load_identitynet

    torch.manual_seed(0)
    unet = build_sgm_unet(model_channels)
    with tempfile.TemporaryDirectory() as tmp:
        write_identitynet(Path(tmp), model_channels)
        write_adapter(Path(tmp) / "ip-adapter.bin", cross_attention_widths(unet))
        return unet, load_identitynet(Path(tmp)), load_adapter(Path(tmp) / "ip-adapter.bin")


def cross_attention_widths(unet: nn.Module) -> list[int]:
    from lib_instantid.unet_hooks import cross_attention_layers

    return [layer.to_k.out_features for layer in cross_attention_layers(unet)]


def write_adapter(path: Path, widths: list[int], context: int = SDXL_CONTEXT, seed: int = 0) -> Path:
    """Release-style ip-adapter.bin (.bin) or flat safetensors (.safetensors)."""
    from lib_instantid.models.resampler import ResamplerConfig
    from tests.fixtures import tiny_models as tm

    release = ResamplerConfig()  # the release's resampler: width 1280, depth 4, 16 queries
    state = tm.adapter_weights(widths, context, width=release.width, depth=release.depth, seed=seed)
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({f"{g}.{k}": v.contiguous() for g, t in state.items() for k, v in t.items()}, str(path))
    else:
        tm._save_release_style_pickle(state, path)
    return path


def sdxl_inputs(batch: int, latent: int, seed: int = 0, device=None, dtype=torch.float32) -> tuple:
    """x, timesteps (float32), text context and y of one SDXL UNet call."""
    g = torch.Generator().manual_seed(seed)
    device = device or "cpu"
    x = torch.randn(batch, 4, latent, latent, generator=g).to(device, dtype)
    t = torch.full((batch,), 600.0, device=device)
    context = torch.randn(batch, TEXT_TOKENS, SDXL_CONTEXT, generator=g).to(device, dtype)
    y = torch.randn(batch, SDXL_ADM, generator=g).to(device, dtype)
    return x, t, context, y


# --- full-size-shaped files -----------------------------------------------------------------------------------

def sdxl_identitynet_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor shape of InstantID's SDXL IdentityNet (diffusers ControlNetModel with SDXL's config), from
    building it on the meta device: no memory, no weights."""
    from diffusers import ControlNetModel

    with torch.device("meta"):
        net = ControlNetModel(**sdxl_controlnet_config(SDXL_MODEL_CHANNELS))
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def write_zero_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str = "F16") -> int:
    """A safetensors file of zeros with these shapes, written as header + one sparse extent (fast, no big buffer)."""
    import json
    import struct

    header, offset = {}, 0
    for name, shape in sorted(shapes.items()):
        n = int(np.prod(shape)) * 2
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.truncate(8 + len(raw) + offset)
    # Make the data real blocks on disk (a sparse file would read as zeros without any I/O).
    with open(path, "r+b") as f:
        block = bytes(1 << 24)
        f.seek(8 + len(raw))
        left = offset
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    return 8 + len(raw) + offset


def sdxl_adapter_shapes() -> dict[str, tuple[int, ...]]:
    """The release adapter's tensor shapes for SDXL ({"image_proj.*", "ip_adapter.*"}): resampler width 1280, depth 4,
    16 queries, output 2048, and one K/V pair per cross-attention layer of the real SDXL UNet (built on meta)."""
    from lib_instantid.models.adapter import FaceAdapter
    from lib_instantid.models.resampler import ResamplerConfig

    widths = cross_attention_widths(build_sgm_unet(SDXL_MODEL_CHANNELS, device="meta"))
    with torch.device("meta"):
        adapter = FaceAdapter(ResamplerConfig(output_dim=SDXL_CONTEXT), widths)
    return {k: tuple(v.shape) for k, v in adapter.state_dict().items()}


def write_zero_adapter_bin(path: Path, shapes: dict[str, tuple[int, ...]], dtype=torch.float16) -> int:
    """A release-layout ip-adapter.bin (torch zip pickle of {"image_proj": {...}, "ip_adapter": {...}}) of zeros."""
    nested: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    for name, shape in shapes.items():
        group, key = name.split(".", 1)
        nested[group][key] = torch.zeros(shape, dtype=dtype)
    torch.save(nested, path)
    return Path(path).stat().st_size


def drop_from_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def touch(tensors) -> int:
    """Read one byte of every 4 KiB page of each tensor (what a first use would fault in)."""
    total = 0
    for t in tensors:
        b = t.detach().reshape(-1).view(torch.uint8)
        total += int(b[::4096].sum()) + int(b[-1])
    return total


# --- timing ---------------------------------------------------------------------------------------------------

def paired(variants: dict[str, Callable[[], object]], base: str, repeats: int, warmup: int = 1,
           sync: Callable[[], None] = lambda: None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Time each variant right next to a call of the base (base first in even rounds, second in odd ones), the
    variants in rotated order every round. Returns (wall times per variant, the base's included: all its runs;
    per-pair ratios variant/base). Pairs are ~2 calls long, so load from other processes that comes and goes
    mostly hits both members of a pair alike."""
    names = [n for n in variants if n != base]
    for _ in range(warmup):
        for name in [base] + names:
            variants[name]()
    sync()

    def timed(name: str) -> float:
        start = time.perf_counter()
        variants[name]()
        sync()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in [base] + names}
    ratios: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            if r % 2 == 0:
                b, v = timed(base), timed(name)
            else:
                v, b = timed(name), timed(base)
            times[base].append(b)
            times[name].append(v)
            ratios[name].append(v / b)
    ratios[base] = [1.0] * len(times[base])
    return times, ratios


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """25th, 50th and 75th percentiles."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4)
    return q[0], statistics.median(values), q[2]


def median(values: list[float]) -> float:
    return statistics.median(values)


# --- machine and recording ------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def machine_line(m: dict) -> str:
    load = ", ".join(f"{v:.2f}" for v in m["load_avg"]) if m.get("load_avg") else "n/a"
    return (f"{m['date']} · {m['cpu']}, {m['cores']} cores (torch threads {m['torch_threads']}) · "
            f"Python {m['python']} · torch {m['torch']} · load average at start {load}")


def table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in [headers] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def record(name: str, markdown: str, data: dict) -> None:
    """Write bench/results/<name>.json and replace this benchmark's section of bench/RESULTS.md."""
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{markdown.strip()}\n{end}"
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS_MD.write_text(text)
    print(f"\nrecorded in {RESULTS_MD.relative_to(ROOT)} and {(RESULTS_DIR / (name + '.json')).relative_to(ROOT)}")
