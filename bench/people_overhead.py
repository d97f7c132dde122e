"""Per-step cost of several people in one image (`identities`): n identities, each in its own region, vs one.

Same SDXL-proportioned sgm UNet, IdentityNet and adapter as step_overhead.py (reduced width, SDXL's structure),
batch 2 (cond + uncond). Each identity has its own face tokens, keypoints placed in its region, and a rectangular
region (vertical strips of the canvas): one IdentityNet pass per identity with its residuals masked to its region,
and one masked face term per identity in every cross-attention layer. Variants, timed interleaved (each next to a
plain call, as step_overhead.py does):
  plain                 the UNet alone
  1 person              the single-identity case (whole image, no region)
  1 person, region      one identity confined to the left half: what the masking itself costs
  2 / 3 / 4 people      that many identities, the canvas split into strips

FLOPs as in step_overhead.py, and its floor and margin once per person (each adds one IdentityNet pass and one
face term per layer): floor = 1 + n·F(IdentityNet)/F(UNet), target ≤ floor + 0.05·n.

    python bench/people_overhead.py              # ~3 min on 2 cores
    python bench/people_overhead.py --record     # also write bench/RESULTS.md and bench/results/people_overhead.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path)
from step_overhead import KEYPOINTS_64, TOTAL_STEPS, flops  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lib_instantid.conditioning import COND, UNCOND, HintFeatures, project_face  # noqa: E402
from lib_instantid.hosts.people import rectangle  # noqa: E402
from lib_instantid.session import LATENT_SCALE, CallInfo, IdentityTerms, Schedule  # noqa: E402
from lib_instantid.unet_hooks import InstantIDHooks  # noqa: E402

MAX_PEOPLE = 4


def strip_keypoints(index: int, count: int):
    """The canonical keypoints shrunk into the index-th of `count` vertical strips of each canvas."""
    def keypoints_for(width: int, height: int, image: int = 0) -> np.ndarray:
        unit = KEYPOINTS_64 / 64
        x = (index + unit[:, 0]) / count * width
        return np.stack([x, unit[:, 1] * height], axis=1)
    return keypoints_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="model_channels (SDXL: 320; multiple of 64)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (32 = a 256 px image)")
    parser.add_argument("--repeats", type=int, default=12, help="timed rounds (each times every variant next to a plain call)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, = cores)")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    a = parser.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    m = common.machine()
    print(common.machine_line(m))

    unet, identitynet, adapter = common.step_models(a.channels)
    x, t, context, y = common.sdxl_inputs(2, a.latent)
    rows = (COND, UNCOND)
    rng = np.random.default_rng(0)
    tokens = [project_face(adapter, rng.standard_normal(512).astype(np.float32) * 1.5, torch.device("cpu"),
                           torch.float32) for _ in range(MAX_PEOPLE)]
    step = 1

    def terms(person: int, count: int, region: bool) -> IdentityTerms:
        return IdentityTerms(
            tokens[person], Schedule(0.8), Schedule(0.8),
            hint=HintFeatures(identitynet, strip_keypoints(person, count) if region else
                              lambda w, h, image: KEYPOINTS_64 * (w / 64)),
            region=rectangle((person / count, 0.0, 1 / count, 1.0)) if region else None)

    def hooks(people: list[IdentityTerms]) -> InstantIDHooks:
        first, *others = people
        return InstantIDHooks(
            unet, first.tokens, lambda x_, c_: CallInfo(rows, step, TOTAL_STEPS),
            adapter=adapter, adapter_schedule=first.adapter_schedule, identitynet=identitynet,
            identitynet_schedule=first.identitynet_schedule, hint=first.hint, region=first.region, others=others)

    sessions = {
        "1 person": hooks([terms(0, 1, region=False)]),
        "1 person, region": hooks([terms(0, 2, region=True)]),  # the left half: what the masking itself costs
        **{f"{n} people": hooks([terms(i, n, region=True) for i in range(n)]) for n in range(2, MAX_PEOPLE + 1)},
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

    variants = {"plain": plain, **{name: hooked(s) for name, s in sessions.items()}}
    with torch.no_grad():
        base = plain()
        outputs = {name: fn() for name, fn in variants.items() if name != "plain"}
    assert all(not torch.equal(out, base) for out in outputs.values()), "a variant did not change the output"
    assert not torch.equal(outputs["2 people"], outputs["1 person"]), "the second person changed nothing"

    f_unet = flops(plain)
    f_hooked = {name: flops(fn) for name, fn in variants.items() if name != "plain"}
    # One standard IdentityNet call (the face tokens as its context), as step_overhead.py's floor counts it.
    size = a.latent * LATENT_SCALE
    hint = HintFeatures(identitynet, lambda w, h, image: KEYPOINTS_64 * (w / 64))
    hint.get(size, size)
    face_rows = tokens[0].for_rows(torch.tensor(rows))
    f_net = flops(torch.no_grad()(lambda: identitynet(x, t, face_rows, hint.get(size, size), y)))

    print(f"timing {a.repeats} rounds of {len(variants) - 1} variants, each next to a plain call ...", flush=True)
    times, pair_ratios = common.paired(variants, "plain", a.repeats)
    spread = {name: common.quartiles(r) for name, r in pair_ratios.items()}
    ratios = {name: q[1] for name, q in spread.items()}

    def people(name: str) -> int:
        return 0 if name == "plain" else int(name.split()[0])

    # step_overhead.py's floor and margin for one person, once per person's IdentityNet pass.
    floors = {name: 1 + people(name) * f_net / f_unet for name in variants}
    targets = {name: floors[name] + 0.05 * people(name) for name in f_hooked}
    one = ratios["1 person"]
    rows_out = []
    for name in variants:
        f = f_unet if name == "plain" else f_hooked[name]
        target = targets.get(name)
        q1, _, q3 = spread[name]
        rows_out.append([
            name, f"{common.median(times[name]) * 1e3:.1f}", f"{ratios[name]:.3f}", f"{q1:.3f}–{q3:.3f}",
            "" if name == "plain" else f"{(ratios[name] - 1) / (one - 1):.2f}",
            f"{f / 1e9:.2f}", f"{f / f_unet:.3f}", f"{floors[name]:.3f}",
            "" if target is None else f"≤ {target:.3f}",
            "" if target is None else ("yes" if ratios[name] <= target else "NO")])
    headers = ["variant", "median ms", "ratio to plain", "ratio p25–p75", "overhead ÷ 1 person's", "GFLOP",
               "FLOP ratio", "floor", "target", "met"]
    tbl = common.table(headers, rows_out)
    per_person = (f_hooked["2 people"] - f_hooked["1 person"]) / f_unet
    summary = (f"UNet alone {f_unet / 1e9:.2f} GFLOP; each further person adds {per_person:.3f} of a plain step's "
               f"FLOPs (their IdentityNet pass and face terms). Floor for n people 1 + n·F(IdentityNet)/F(UNet) with "
               f"F(IdentityNet) = {f_net / 1e9:.2f} GFLOP (one standard call, batch 2), target floor + 0.05·n: "
               f"step_overhead.py's for one person, once per IdentityNet pass. \"overhead ÷ 1 person's\": the "
               f"variant's (ratio − 1) over the single person's")
    print()
    print(tbl)
    print(summary)

    if a.record:
        suffix = f", --threads {a.threads}" if a.threads else ""
        md = "\n".join([
            f"## 1c. Several people (`bench/people_overhead.py`{suffix})",
            "",
            common.machine_line(m),
            "",
            f"sgm UNet at model_channels {a.channels} (SDXL: 320), SDXL's depths, latent {a.latent}×{a.latent}, batch "
            f"2 (cond + uncond); n identities, each with its own face tokens and keypoints, in vertical strips of "
            f"the canvas (their IdentityNet residuals and face terms masked to their strip); \"1 person, region\" "
            f"is one identity in the left half. {a.repeats} rounds, each variant timed next to a plain call.",
            "",
            tbl,
            "",
            summary + ".",
        ])
        common.record("people_overhead" + (f"_threads{a.threads}" if a.threads else ""), md, {
            "machine": m, "args": vars(a), "flops": {"unet": f_unet, "identitynet": f_net, **f_hooked}, "floors": floors, "ratio_quartiles": spread, "ratios": ratios,
            "median_s": {k: common.median(v) for k, v in times.items()}, "pair_ratios": pair_ratios,
        })


if __name__ == "__main__":
    main()
