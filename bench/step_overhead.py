"""Per-step cost of InstantID on an SDXL-proportioned UNet: plain UNet call vs the same call with InstantID attached.

The UNet is Stability's sgm UNetModel (the code A1111 runs for SDXL) with SDXL's real block structure — channel
mult 1/2/4, 2 res blocks per level, transformer depths 0/2/10 (middle 10), 64-wide heads, context 2048, y of 2816 —
at a reduced width so that it runs on 2 CPU cores. The IdentityNet is a diffusers ControlNetModel mirroring it
(save_pretrained, then our load_identitynet); the adapter has the release's resampler (width 1280, depth 4,
16 queries) and one K/V pair per cross-attention layer (our load_adapter). Batch 2: one cond and one uncond row.

Variants, timed interleaved in one run: every round times each variant right next to a plain call (order rotated
every round, plain first in even rounds, second in odd ones). Reported: median wall time per variant and the median
(and quartiles) of the ratios variant / adjacent plain call, which load from other processes mostly cancels in:
  plain                          the UNet alone (hooks detached)
  instantid                      IdentityNet + adapter active (the usual step)
  outside window                 adapter active, IdentityNet attached but outside its start/end window
  adapter only                   no IdentityNet
  IdentityNet alone              diagnostic: one standard ControlNet call, batch 2 (face tokens as context)
  IdentityNet alone, as hooked   diagnostic: the same with the face tokens' K/V projected once, as the hooks run it

FLOPs (torch.utils.flop_counter.FlopCounterMode, plus a formula for the CPU attention kernel it does not know) of
the UNet alone, the IdentityNet alone (one standard call, batch 2) and each hooked call.
Floor = 1 + F(IdentityNet)/F(UNet): what InstantID costs if the IdentityNet ran at the UNet's FLOP rate.
Targets: instantid ≤ floor + 0.05, outside window ≤ 1.03.

    python bench/step_overhead.py                 # ~1-2 min on 2 cores
    python bench/step_overhead.py --record        # also write bench/RESULTS.md and bench/results/step_overhead.json
    python bench/step_overhead.py --profile       # add a torch.profiler table of the hooked call
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count  # noqa: E402

from lib_instantid.conditioning import COND, UNCOND, HintFeatures, project_face  # noqa: E402
from lib_instantid.session import LATENT_SCALE, CallInfo, Schedule  # noqa: E402
from lib_instantid.unet_hooks import InstantIDHooks  # noqa: E402

TOTAL_STEPS = 10
KEYPOINTS_64 = np.array([[20.3, 24.8], [42.6, 23.1], [31.2, 35.7], [22.9, 46.4], [41.5, 45.2]])  # in a 64 px image


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch's flop counter knows the CUDA attention kernels but not the CPU one, which is what SDPA dispatches to here:
# without this entry every attention (the UNet's, the IdentityNet's and the face term) would count 0.
CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def flops(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="model_channels (SDXL: 320; multiple of 64)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = a 256 px image)")
    parser.add_argument("--repeats", type=int, default=16, help="timed rounds (each times every variant next to a plain call)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    parser.add_argument("--profile", action="store_true", help="print a torch.profiler table of the hooked call")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    m = common.machine()
    print(common.machine_line(m))

    unet, identitynet, adapter = common.step_models(a.channels)

    x, t, context, y = common.sdxl_inputs(2, a.latent)
    rows = (COND, UNCOND)
    embedding = np.random.default_rng(0).standard_normal(512).astype(np.float32) * 1.5
    tokens = project_face(adapter, embedding, torch.device("cpu"), torch.float32)
    size = a.latent * LATENT_SCALE
    hint = HintFeatures(identitynet, lambda w, h, image: KEYPOINTS_64 * (w / 64))
    step = 1  # of TOTAL_STEPS; the "outside window" variant starts the IdentityNet at 0.5

    def hooks(identitynet_on: bool = True, window: tuple[float, float] = (0.0, 1.0)) -> InstantIDHooks:
        return InstantIDHooks(
            unet, tokens, lambda x_, c_: CallInfo(rows, step, TOTAL_STEPS),
            adapter=adapter, adapter_schedule=Schedule(0.8),
            identitynet=identitynet if identitynet_on else None,
            identitynet_schedule=Schedule(0.8, *window), hint=hint if identitynet_on else None,
        )

    sessions = {
        "instantid": hooks(),
        "outside window": hooks(window=(0.5, 1.0)),
        "adapter only": hooks(identitynet_on=False),
    }

    @torch.no_grad()
    def plain():
        return unet(x, t, context, y)

    def hooked(session: InstantIDHooks):
        @torch.no_grad()
        def run():
            with session:
                return unet(x, t, context, y)
        return run

    face_rows = tokens.for_rows(torch.tensor(rows))

    @torch.no_grad()
    def identitynet_alone():
        """A standard ControlNet call: the face tokens of each row as the cross-attention context."""
        return identitynet(x, t, face_rows, hint.get(size, size), y)

    projected = identitynet.project_context(face_rows)

    @torch.no_grad()
    def identitynet_as_hooked():
        """As the hooks call it: the face tokens' K/V projected once per generation (exact, fewer FLOPs)."""
        return identitynet(x, t, projected, hint.get(size, size), y)

    variants = {"plain": plain, **{name: hooked(s) for name, s in sessions.items()},
                "IdentityNet alone": identitynet_alone, "IdentityNet alone, as hooked": identitynet_as_hooked}

    # Equality check: the hooked call really does InstantID's work.
    with torch.no_grad():
        base = plain()
        assert not torch.equal(variants["instantid"](), base)

    hint.get(size, size)  # the hint embedding is computed once per size per job, not per step
    with torch.no_grad():
        standard, as_hooked = identitynet_alone(), identitynet_as_hooked()
        assert all(torch.allclose(a_, b_, rtol=1e-4, atol=1e-5) for a_, b_ in zip(standard[0] + [standard[1]],
                                                                                  as_hooked[0] + [as_hooked[1]]))
    f_unet = flops(plain)
    f_other = {name: flops(fn) for name, fn in variants.items() if name != "plain"}
    f_net = f_other["IdentityNet alone"]
    floor = 1 + f_net / f_unet
    floor_as_hooked = 1 + f_other["IdentityNet alone, as hooked"] / f_unet

    print(f"\nUNet: sgm, model_channels {a.channels} (SDXL 320), depths {common.SDXL_DEPTHS}, context "
          f"{common.SDXL_CONTEXT}, y {common.SDXL_ADM}, latent {a.latent}x{a.latent}, batch 2 (cond + uncond); "
          f"params UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M, IdentityNet "
          f"{sum(p.numel() for p in identitynet.parameters()) / 1e6:.1f} M, adapter "
          f"{sum(p.numel() for p in adapter.parameters()) / 1e6:.1f} M")
    print(f"timing {a.repeats} rounds of {len(variants) - 1} variants, each next to a plain call ...", flush=True)
    times, pair_ratios = common.paired(variants, "plain", a.repeats)
    spread = {name: common.quartiles(r) for name, r in pair_ratios.items()}
    ratios = {name: q[1] for name, q in spread.items()}

    targets = {"instantid": floor + 0.05, "outside window": 1.03}
    rows_out = []
    for name in variants:
        f = f_unet if name == "plain" else f_other[name]
        target = targets.get(name)
        met = "" if target is None else ("yes" if ratios[name] <= target else "NO")
        q1, _, q3 = spread[name]
        rows_out.append([name, f"{common.median(times[name]) * 1e3:.1f}", f"{ratios[name]:.3f}",
                         f"{q1:.3f}–{q3:.3f}", f"{f / 1e9:.2f}", f"{f / f_unet:.3f}",
                         "" if target is None else f"≤ {target:.3f}", met])
    headers = ["variant", "median ms", "ratio to plain", "ratio p25–p75", "GFLOP", "FLOP ratio", "target", "met"]
    tbl = common.table(headers, rows_out)
    summary = (f"UNet alone {f_unet / 1e9:.2f} GFLOP; IdentityNet alone (standard call, batch 2) {f_net / 1e9:.2f} "
               f"GFLOP: floor 1 + F(IdentityNet)/F(UNet) = {floor:.3f}. With its face-token K/V projected once per "
               f"generation, as the hooks run it, the IdentityNet does "
               f"{f_other['IdentityNet alone, as hooked'] / 1e9:.2f} GFLOP (floor computed that way: "
               f"{floor_as_hooked:.3f})")
    print()
    print(tbl)
    print(summary)

    if a.profile:
        from torch.profiler import ProfilerActivity, profile

        session = sessions["instantid"]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                variants["instantid"]()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
        del session

    if a.record:
        suffix = f", --threads {a.threads}" if a.threads else ""
        md = "\n".join([
            f"## 1. Step overhead (`bench/step_overhead.py`{suffix})",
            "",
            common.machine_line(m),
            "",
            f"sgm UNet at model_channels {a.channels} (SDXL: 320) with SDXL's depths 0/2/10, context 2048, y 2816; "
            f"latent {a.latent}×{a.latent}, batch 2 (cond + uncond); {a.repeats} rounds, each variant timed next to "
            f"a plain call; ratio = median of those pairs' ratios (p25–p75 shows how much load moved them).",
            "",
            tbl,
            "",
            summary + ".",
        ])
        common.record("step_overhead" + (f"_threads{a.threads}" if a.threads else ""), md, {
            "machine": m, "args": vars(a), "flops": {"unet": f_unet, **f_other},
            "floor": floor, "floor_as_hooked": floor_as_hooked, "ratio_quartiles": spread, "median_s": {k: common.median(v) for k, v in times.items()}, "ratios": ratios,
            "times_s": times, "pair_ratios": pair_ratios,
        })


if __name__ == "__main__":
    main()
