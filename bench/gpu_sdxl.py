"""Full-size SDXL on a GPU: plain vs InstantID, 30 Euler steps with CFG, wall time and peak VRAM.

Random full-size weights built directly on the GPU (nothing downloaded, nothing read from disk): Stability's sgm
UNetModel with SDXL base's exact config (model_channels 320, depths 0/2/10, context 2048, y 2816), InstantID's
SDXL IdentityNet (our IdentityNet module with the released architecture) and the face adapter (release resampler:
width 1280, depth 4, 16 queries; one K/V pair per cross-attention layer). fp16 weights, run under CUDA autocast as
the WebUI runs SDXL. A k-diffusion-style Euler sampler (eps prediction, SD's scaled-linear schedule), batch 2 per
step (cond + uncond rows, as A1111 batches them).

Per generation, timed with the GPU synchronised:
  plain       the sampling loop alone
  instantid   the face projection, hook construction (per-layer K/V) and the sampling loop with InstantID attached
              (IdentityNet and adapter weights 0.8, active over all steps; keypoint hint embedded on the first step)
Warm-up generation first, then --repeats generations of each, alternating; medians. Peak VRAM: the allocator's peak
during each generation, above what was allocated before it (models and inputs); model sizes are listed.

On a lent H100 (one short call; the sgm UNet code comes from imaginAIry, which the device image lacks: carry its
pure-Python wheel, see /work/.library/device/README.md):
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/imaginAIry-15.0.0-py3-none-any.whl
    PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 bench/gpu_sdxl.py --json $OUT/gpu_sdxl.json   # ~2 min
On CPU, tiny (proves the script works; seconds):
    python bench/gpu_sdxl.py --smoke
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_instantid.conditioning import COND, UNCOND, HintFeatures, project_face  # noqa: E402
from lib_instantid.models.adapter import FaceAdapter  # noqa: E402
from lib_instantid.models.identitynet import IdentityNet, IdentityNetConfig  # noqa: E402
from lib_instantid.models.resampler import ResamplerConfig  # noqa: E402
from lib_instantid.session import LATENT_SCALE, CallInfo, Schedule  # noqa: E402
from lib_instantid.unet_hooks import InstantIDHooks  # noqa: E402

KEYPOINTS_64 = np.array([[20.3, 24.8], [42.6, 23.1], [31.2, 35.7], [22.9, 46.4], [41.5, 45.2]])  # in a 64 px image
HINT_CHANNELS = (16, 32, 96, 256)  # the ControlNet conditioning embedding of the release


def identitynet_config(model_channels: int) -> IdentityNetConfig:
    channels = tuple(model_channels * m for m in (1, 2, 4))
    return IdentityNetConfig(
        in_channels=4, block_out_channels=channels, layers_per_block=2, transformer_depths=common.SDXL_DEPTHS,
        mid_transformer_depth=common.SDXL_DEPTHS[-1], context_dim=common.SDXL_CONTEXT, linear_projection=True,
        hint_channels=HINT_CHANNELS, addition_dim=common.SDXL_ADM, heads=tuple(c // 64 for c in channels),
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(model_channels: int, device: torch.device, dtype: torch.dtype):
    """UNet, IdentityNet and adapter with random weights, created on `device` in `dtype` (no CPU copy, no file)."""
    torch.manual_seed(0)
    full_random = dtype == torch.float32  # in fp16, sgm's own initialisation keeps 70 layers' activations finite
    with default_dtype(dtype):
        unet = common.build_sgm_unet(model_channels, device=device, dtype=dtype, randomise=full_random)
        with torch.device(device):
            identitynet = IdentityNet(identitynet_config(model_channels)).eval().requires_grad_(False)
            adapter = FaceAdapter(ResamplerConfig(output_dim=common.SDXL_CONTEXT),
                                  common.cross_attention_widths(unet)).eval().requires_grad_(False)
    if not full_random:  # sgm zeroes its final convolution: give it weights, so that the output shows InstantID
        for module in unet.out.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
    return unet, identitynet, adapter


def sigmas_and_timesteps(steps: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """SD/SDXL's discrete schedule (scaled linear betas 0.00085..0.012 over 1000 steps), `steps` evenly spaced."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    all_sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    timesteps = torch.linspace(999, 0, steps, dtype=torch.float64).round().long()
    sigmas = torch.cat([all_sigmas[timesteps], torch.zeros(1, dtype=torch.float64)])
    return sigmas.float().to(device), timesteps.float().to(device)


def sample(unet, x0: torch.Tensor, context: torch.Tensor, y: torch.Tensor, steps: int, cfg: float,
           on_step=None) -> torch.Tensor:
    """Euler, eps prediction, CFG with [cond, uncond] rows in one call per step."""
    sigmas, timesteps = sigmas_and_timesteps(steps, x0.device)
    x = x0 * sigmas[0]
    for i in range(steps):
        if on_step is not None:
            on_step(i)
        s = sigmas[i]
        x_in = torch.cat([x, x]) / (s ** 2 + 1) ** 0.5
        eps_cond, eps_uncond = unet(x_in, timesteps[i].expand(2), context, y).float().chunk(2)
        eps = eps_uncond + cfg * (eps_cond - eps_uncond)
        x = x + eps * (sigmas[i + 1] - s)  # Euler: d = (x - denoised) / sigma = eps
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, 3 steps (checks the script)")
    parser.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--channels", type=int, default=None, help="model_channels (default 320; --smoke 64)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 1024; --smoke 128)")
    parser.add_argument("--steps", type=int, default=None, help="Euler steps (default 30; --smoke 3)")
    parser.add_argument("--repeats", type=int, default=None, help="generations per variant (default 3; --smoke 1)")
    parser.add_argument("--cfg", type=float, default=5.0)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    a = parser.parse_args()
    smoke = a.smoke
    device = torch.device(a.device or ("cpu" if smoke else "cuda"))
    channels = a.channels or (64 if smoke else common.SDXL_MODEL_CHANNELS)
    size = a.size or (128 if smoke else 1024)
    steps = a.steps or (3 if smoke else 30)
    repeats = a.repeats or (1 if smoke else 3)
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    m = common.machine()
    if cuda:
        m["gpu"] = torch.cuda.get_device_name(device)
    print(common.machine_line(m) + (f" · {m['gpu']}" if cuda else ""), flush=True)

    start = time.perf_counter()
    unet, identitynet, adapter = build(channels, device, dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    sync()
    built_s = time.perf_counter() - start
    sizes = {name: sum(p.numel() * p.element_size() for p in model.parameters())
             for name, model in (("UNet", unet), ("IdentityNet", identitynet), ("adapter", adapter))}
    print(f"built on {device} in {built_s:.1f} s: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in sizes.items()),
          flush=True)

    latent = size // LATENT_SCALE
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, latent, latent, generator=g).to(device)
    context = torch.randn(2, common.TEXT_TOKENS, common.SDXL_CONTEXT, generator=g).to(device, dtype)
    y = torch.randn(2, common.SDXL_ADM, generator=g).to(device, dtype)
    embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32) * 1.5
    rows = (COND, UNCOND)
    step = [0]
    autocast = (lambda: torch.autocast("cuda", dtype=dtype)) if cuda else contextlib.nullcontext

    @torch.no_grad()
    def plain():
        with autocast():
            return sample(unet, x0, context, y, steps, a.cfg)

    @torch.no_grad()
    def instantid():
        with autocast():
            tokens = project_face(adapter, embedding, device, dtype)
            hooks = InstantIDHooks(
                unet, tokens, lambda x, c: CallInfo(rows, step[0], steps),
                adapter=adapter, adapter_schedule=Schedule(0.8),
                identitynet=identitynet, identitynet_schedule=Schedule(0.8),
                hint=HintFeatures(identitynet, lambda w, h, image: KEYPOINTS_64 * (w / 64)),
            )
            with hooks:
                return sample(unet, x0, context, y, steps, a.cfg, on_step=lambda i: step.__setitem__(0, i))

    variants = {"plain": plain, "instantid": instantid}
    times: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, list[int]] = {k: [] for k in variants}
    outputs = {}
    for r in range(repeats + 1):  # round 0 warms up (kernels, allocator, cuDNN choices)
        for name in (("plain", "instantid") if r % 2 == 0 else ("instantid", "plain")):
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            sync()
            t0 = time.perf_counter()
            outputs[name] = variants[name]()
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
                if cuda:
                    peaks[name].append(torch.cuda.max_memory_allocated(device) - base)
        print(".", end="", flush=True)
    print()
    finite = all(bool(torch.isfinite(o).all()) for o in outputs.values())
    differs = finite and not torch.equal(outputs["plain"], outputs["instantid"])

    med = {k: common.median(v) for k, v in times.items()}
    rows_out = []
    for name in variants:
        peak = f"{common.median(peaks[name]) / 2**30:.2f}" if cuda else "n/a"
        rows_out.append([name, f"{med[name]:.3f}", f"{med[name] / steps * 1e3:.1f}",
                         f"{med[name] / med['plain']:.3f}", peak])
    tbl = common.table(["variant", "s / generation", "ms / step", "ratio", "peak VRAM above models GiB"], rows_out)
    where = m.get("gpu", "CPU")
    text = (f"{tbl}\n\n{where}; sgm UNet model_channels {channels}, {size}×{size} ({latent}×{latent} latent), "
            f"{steps} Euler steps, CFG batch 2, {str(dtype).replace('torch.', '')}"
            f"{' under autocast' if cuda else ''}; median of {repeats} generations each after a warm-up. "
            f"Weights: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in sizes.items())
            + f". Outputs finite: {finite}; InstantID changed the output: {differs}.")
    print()
    print(text)
    data = {"machine": m, "args": vars(a), "device": str(device), "channels": channels, "size": size,
            "steps": steps, "times_s": times, "peak_bytes": peaks, "model_bytes": sizes, "finite": finite,
            "differs": differs, "built_s": built_s}
    if a.json:
        Path(a.json).write_text(json.dumps(data, indent=2, default=str) + "\n")
    if a.record:
        title = "## 5. Full-size SDXL on a GPU (`bench/gpu_sdxl.py`)" + (" — CPU smoke run" if smoke else "")
        common.record("gpu_sdxl", "\n".join([title, "", common.machine_line(m), "", text]), data)
    if finite and not differs:
        raise SystemExit("InstantID did not change the output: the hooks did not act")
    if not finite:
        print("warning: non-finite outputs (random weights overflowed); the timings stand, the output check does not")


if __name__ == "__main__":
    main()
