"""Per-step cost of InstantID on the Forge path: a Forge UNet call (the Forge stand-in's forward with its patch points,
tests/forge) plain vs with InstantID's attn2 replace patches and its IdentityNet in the ControlNet chain.

The same SDXL-proportioned sgm UNet, IdentityNet and adapter as bench/step_overhead.py (the A1111 path), batch 2
(one uncond, one cond row: Forge's `cond_or_uncond` [1, 0]), and the same FLOP floor:
1 + F(IdentityNet)/F(UNet). Variants timed interleaved, each next to a plain Forge call:
  plain            the UNet patcher without patches
  instantid        face attention in every cross-attention layer + the IdentityNet in the chain
  outside window   patches present, IdentityNet outside its start/end window
  adapter only     no IdentityNet
Targets: instantid ≤ floor + 0.05, outside window ≤ 1.03 (as on A1111).

Run in the Forge environment (torch 2.3.1, the stand-in needs its own process):

    .venv-forge/bin/python bench/forge_step_overhead.py            # ~1-2 min on 2 cores
    .venv-forge/bin/python bench/forge_step_overhead.py --record   # also write bench/RESULTS.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path)
from step_overhead import KEYPOINTS_64, flops  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.forge import install  # noqa: E402

install()

from backend.modules.k_prediction import Prediction  # noqa: E402
from backend.nn.unet import IntegratedUNet2DConditionModel  # noqa: E402
from backend.patcher.unet import UnetPatcher  # noqa: E402

from lib_instantid.conditioning import HintFeatures, project_face  # noqa: E402
from lib_instantid.hosts import forge as host  # noqa: E402
from lib_instantid.session import Schedule, Session  # noqa: E402
from lib_instantid.unet_hooks import cross_attention_layers  # noqa: E402

TOTAL_STEPS = 10
CHUNKS = [1, 0]  # uncond, cond


class Step:
    """What the CFG denoiser callback would report."""

    def __init__(self, step: int, total_steps: int) -> None:
        self.denoiser = self
        self.step, self.total_steps = step, total_steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="model_channels (SDXL: 320; multiple of 64)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = a 256 px image)")
    parser.add_argument("--repeats", type=int, default=16, help="timed rounds")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    a = parser.parse_args()
    m = common.machine()
    print(common.machine_line(m))

    unet, identitynet, adapter = common.step_models(a.channels)
    wrapped = IntegratedUNet2DConditionModel(unet)
    plain_patcher = UnetPatcher.from_model(wrapped, config=wrapped.config, k_predictor=Prediction())
    predictor = plain_patcher.model.predictor

    x, t, context, y = common.sdxl_inputs(2, a.latent)
    t = torch.full_like(t, 600.0)
    sigmas = predictor.sigma(t)
    x_noisy = x * (sigmas[:, None, None, None] ** 2 + 1) ** 0.5
    embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32) * 1.5
    tokens = project_face(adapter, embedding, torch.device("cpu"), torch.float32)
    hint = HintFeatures(identitynet, lambda w, h, image: KEYPOINTS_64 * (w / 64))
    heads = [layer.heads for layer in cross_attention_layers(wrapped)]

    def patched(identitynet_on: bool = True, window: tuple[float, float] = (0.0, 1.0)):
        session = Session(tokens, heads, adapter=adapter, adapter_schedule=Schedule(0.8),
                          identitynet=identitynet if identitynet_on else None,
                          identitynet_schedule=Schedule(0.8, *window), hint=hint if identitynet_on else None)
        rows = host.RowSource(served=(True,), per_image=False)
        rows.on_cfg_denoiser(Step(1, TOTAL_STEPS))
        unet_patcher = host.patched(plain_patcher, host.Injection(session, rows),
                                    identitynet if identitynet_on else None)
        for cnet in unet_patcher.list_controlnets():
            cnet.pre_run(unet_patcher.model, predictor.percent_to_sigma)
        return unet_patcher

    def forge_call(unet_patcher):
        @torch.no_grad()
        def run():
            # a new list per call, as Forge's sampling function makes it
            options = dict(unet_patcher.model_options["transformer_options"], cond_or_uncond=list(CHUNKS),
                           sigmas=sigmas[:1])
            control = None
            chain = unet_patcher.controlnet_linked_list
            if chain is not None:
                for cnet in unet_patcher.list_controlnets():
                    cnet.transformer_options = options
                control = chain.get_control(x_noisy, sigmas, {"c_crossattn": context, "y": y}, len(CHUNKS))
            return wrapped(x, t, context=context, y=y, control=control, transformer_options=options)
        return run

    variants = {"plain": forge_call(plain_patcher), "instantid": forge_call(patched()),
                "outside window": forge_call(patched(window=(0.5, 1.0))),
                "adapter only": forge_call(patched(identitynet_on=False))}
    assert not torch.equal(variants["instantid"](), variants["plain"]())
    size = a.latent * 8
    hint.get(size, size)  # once per size per job, not per step

    @torch.no_grad()
    def identitynet_alone():
        face_rows = tokens.for_rows(torch.tensor([0, 1]))
        return identitynet(x, t, face_rows, hint.get(size, size), y)

    f_unet = flops(variants["plain"])
    f_net = flops(identitynet_alone)
    floor = 1 + f_net / f_unet
    f_other = {name: flops(fn) for name, fn in variants.items() if name != "plain"}
    print(f"timing {a.repeats} rounds of {len(variants) - 1} variants, each next to a plain Forge call ...", flush=True)
    times, pair_ratios = common.paired(variants, "plain", a.repeats)
    spread = {name: common.quartiles(r) for name, r in pair_ratios.items()}
    targets = {"instantid": floor + 0.05, "outside window": 1.03}
    rows_out = []
    for name in variants:
        f = f_unet if name == "plain" else f_other[name]
        q1, ratio, q3 = spread[name]
        target = targets.get(name)
        rows_out.append([name, f"{common.median(times[name]) * 1e3:.1f}", f"{ratio:.3f}", f"{q1:.3f}–{q3:.3f}",
                         f"{f / 1e9:.2f}", f"{f / f_unet:.3f}", "" if target is None else f"≤ {target:.3f}",
                         "" if target is None else ("yes" if ratio <= target else "NO")])
    tbl = common.table(["variant", "median ms", "ratio to plain", "ratio p25–p75", "GFLOP", "FLOP ratio", "target",
                        "met"], rows_out)
    summary = (f"Forge UNet call alone {f_unet / 1e9:.2f} GFLOP; IdentityNet alone (standard call, batch 2) "
               f"{f_net / 1e9:.2f} GFLOP: floor 1 + F(IdentityNet)/F(UNet) = {floor:.3f}")
    print()
    print(tbl)
    print(summary)
    if a.record:
        md = "\n".join([
            "## 1b. Step overhead on the Forge path (`bench/forge_step_overhead.py`)",
            "",
            common.machine_line(m) + f"; torch {torch.__version__}",
            "",
            f"The Forge stand-in's UNet forward around the same sgm UNet (model_channels {a.channels}), latent "
            f"{a.latent}×{a.latent}, batch 2 (`cond_or_uncond` [1, 0]); InstantID as attn2 replace patches + its "
            f"ControlNet in the chain; {a.repeats} rounds, each variant timed next to a plain Forge call.",
            "",
            tbl,
            "",
            summary + ".",
        ])
        common.record("forge_step_overhead", md, {
            "machine": m, "args": vars(a), "torch": torch.__version__, "flops": {"unet": f_unet, "identitynet": f_net,
                                                                                  **f_other},
            "floor": floor, "ratio_quartiles": spread, "times_s": times, "pair_ratios": pair_ratios})


if __name__ == "__main__":
    main()
