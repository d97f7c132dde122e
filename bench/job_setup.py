"""InstantID's set-up per job, through the A1111 stand-in: from "job starts" to "first step".

A WebUI with the extension loaded (tests/webui stand-in), the SDXL-proportioned sgm UNet of step_overhead.py as the
checkpoint, the matching IdentityNet (official ControlNetModel/ folder) and adapter (ip-adapter.bin) in
models/instantid, and the synthetic antelopev2 pack of the tests in models/insightface/models. Jobs: txt2img,
1 step, InstantID on with one face photo.

  plain job      InstantID off: the stand-in's own time to the first UNet call (reference)
  first job      the first InstantID job of the process (face models, weights from disk, everything cold)
  repeated job   the same face photo and models again (median of --repeats)

Phases are timed by wrapping the engine's functions (nothing is edited):
  face analysis   webui.face_analyzer + FaceAnalyzer.detect (the face photos and the pose)
  model load      pipeline.MODEL_CACHE.get (reading, building and placing the IdentityNet and the adapter)
  tokens/K-V      conditioning.project_face (Resampler), face_kv (adapter K/V per layer),
                  IdentityNet.project_context (its face-token K/V, computed in the first step), and the lookups
                  of these in pipeline.CONDITIONING (the store that keeps them across jobs)
  hint            HintFeatures.get (keypoint image drawn and embedded; happens in the first step)
  photo decode    InstantIDArgs.from_script_args (argument parsing, decoding the face photo)
  catalogue       webui.installed_models (scan of the model folders, reading file headers)
  other           the rest of InstantID's own set-up: a1111.start_job (infotext, keypoint placement),
                  Job.hooks (InstantIDHooks: compatibility check, layer lookup), InstantIDHooks.attach
Set-up = the sum of the first four (the split the target names) and of all. Target: repeated job ≤ 5 ms.

A second table checks the model loader on full-size-shaped files (see --full-size): the real SDXL IdentityNet's
tensor shapes (~2.5 GB in fp16, zeros) written to --tmp and deleted after; `load_identitynet` (+ touching every
parameter page) vs reading the same bytes (read() into a ready buffer; mmap + touching every page), each cold (the
file's pages dropped from the page cache with posix_fadvise) and warm. Target: cold load within 1.5x of the faster
read. (read_weights maps the file copy-on-write and hands out views of the mapping; load_state_dict(assign=True) on the
meta-device module adopts those tensors: no copy is made, which the RSS check in memory.py confirms.) The
"safetensors load_file" row is the library's own loader, which our loader used before: it maps the file too, but
reads it through once at load and then maps its pages one fault at a time.

    python bench/job_setup.py                # ~1-2 min
    python bench/job_setup.py --record
    python bench/job_setup.py --no-full-size # skip the 2.5 GB file
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import mmap
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

PHASES = ("face analysis", "model load", "tokens/K-V", "hint", "photo decode", "catalogue", "other")
FOUR_PHASES = PHASES[:4]  # the split the target names
_ABSENT = object()


class PhaseTimer:
    """Wall time spent in wrapped functions, by phase; nested calls count once, in the outermost phase, except
    that a nested call of another phase moves its time there (so 'other' keeps only what no phase claims)."""

    def __init__(self) -> None:
        self.spent: dict[str, float] = defaultdict(float)
        self._stack: list[list] = []  # [phase, start, time claimed by nested phases]
        self._patches: list[tuple[object, str, object]] = []

    def wrap(self, owner: object, name: str, phase: str) -> None:
        original = getattr(owner, name)
        is_static = isinstance(owner, type) and isinstance(owner.__dict__.get(name), staticmethod)
        timer = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            frame = [phase, time.perf_counter(), 0.0]
            timer._stack.append(frame)
            try:
                return original(*args, **kwargs)
            finally:
                timer._stack.pop()
                elapsed = time.perf_counter() - frame[1]
                own = elapsed - frame[2]
                timer.spent[phase] += own
                if timer._stack:
                    timer._stack[-1][2] += elapsed

        own = vars(owner).get(name, _ABSENT) if hasattr(owner, "__dict__") else _ABSENT
        self._patches.append((owner, name, own))
        setattr(owner, name, staticmethod(timed) if is_static else timed)

    def reset(self) -> None:
        self.spent.clear()

    def restore(self) -> None:
        for owner, name, original in reversed(self._patches):
            if original is _ABSENT:  # e.g. a bound method found through the class: drop the instance attribute
                delattr(owner, name)
            else:
                setattr(owner, name, original)
        self._patches.clear()


def photo_jpeg(side: int) -> bytes:
    """A face photo as users upload them (JPEG, quality 90) that the tests' synthetic detector finds a face in."""
    from PIL import Image, ImageFilter

    from tests.fixtures.face_models import paint_marker

    rng = np.random.default_rng(0)
    texture = Image.fromarray((90 + rng.integers(-40, 40, (side, side, 3))).astype(np.uint8))
    pixels = np.asarray(texture.filter(ImageFilter.GaussianBlur(2))).copy()
    centre, marker = (side // 2, side // 2 - side // 16), side // 6
    image = Image.fromarray(paint_marker(pixels, centre, marker, "cyan"))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def job_setup(a) -> tuple[str, dict]:
    from tests.fixtures.face_models import write_antelopev2
    from tests.webui import harness

    from lib_instantid import conditioning, pipeline, unet_hooks
    from lib_instantid.args import InstantIDArgs
    from lib_instantid.conditioning import HintFeatures
    from lib_instantid.face import FaceAnalyzer
    from lib_instantid.hosts import a1111
    from lib_instantid.hosts import webui as webui_host
    from lib_instantid.models.identitynet import IdentityNet

    from dataclasses import fields

    tmp = Path(tempfile.mkdtemp(prefix="instantid-bench-"))
    unet = common.build_sgm_unet(a.channels)
    common.write_identitynet(tmp / "instantid", a.channels)
    common.write_adapter(tmp / "instantid" / "ip-adapter.bin", common.cross_attention_widths(unet))
    write_antelopev2(tmp / "insightface" / "models")
    face = photo_jpeg(a.photo)

    w = harness.standin
    w.reset()
    w.set_models_path(tmp)
    w.set_model(unet, "sdxl", sdxl_time_embed_dim=common.SDXL_TIME_ID_DIM)
    w.load_extension(harness.EXTENSION_SCRIPT)

    defaults = {f.name: f.default for f in fields(InstantIDArgs)}
    defaults.update(identitynet_model="Automatic", adapter_model="Automatic", enabled=True, face_image=[face])
    instantid_args = [defaults[f.name] for f in fields(InstantIDArgs)]

    timer = PhaseTimer()
    timer.wrap(webui_host, "face_analyzer", "face analysis")
    timer.wrap(FaceAnalyzer, "detect", "face analysis")
    timer.wrap(pipeline.MODEL_CACHE, "get", "model load")
    # Whichever of these the engine has (older versions called project_face from the pipeline and had no store).
    for owner, name in ((conditioning, "project_face"), (pipeline, "project_face"), (conditioning, "face_kv"),
                        (unet_hooks, "face_kv"), (IdentityNet, "project_context"),
                        *((getattr(conditioning, "ConditioningStore", None), n)
                          for n in ("tokens", "face_kv", "projected_context"))):
        if owner is not None and hasattr(owner, name):
            timer.wrap(owner, name, "tokens/K-V")
    timer.wrap(HintFeatures, "get", "hint")
    timer.wrap(InstantIDArgs, "from_script_args", "photo decode")
    timer.wrap(webui_host, "installed_models", "catalogue")
    timer.wrap(a1111, "start_job", "other")
    timer.wrap(pipeline.Job, "hooks", "other")
    timer.wrap(unet_hooks.InstantIDHooks, "attach", "other")

    first_step: list[float] = []
    recorder = unet.register_forward_pre_hook(lambda module, args, kwargs: first_step.append(time.perf_counter())
                                              if not first_step else None, with_kwargs=True)

    def run(instantid: bool) -> dict:
        first_step.clear()
        timer.reset()
        script_args = {"InstantID": instantid_args} if instantid else None
        start = time.perf_counter()
        w.txt2img(script_args=script_args, prompt="a portrait", negative_prompt="blurry", steps=1, seed=1,
                  width=a.size, height=a.size)
        phases = {p: timer.spent.get(p, 0.0) for p in PHASES}
        # What runs inside the first UNet call (lazy set-up) is not in "time to first step": add it to the total.
        return {"to_first_step": first_step[0] - start, "phases": phases, "setup": sum(phases.values()),
                "four_phases": sum(phases[p] for p in FOUR_PHASES)}

    try:
        run(False)  # warm the stand-in itself (prompt parsing, sampler set-up) before anything is timed
        plain = [run(False)]
        first = run(True)
        repeated = [run(True) for _ in range(a.repeats)]
        if a.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            profiler.enable()
            run(True)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(r"lib_instantid|hosts|instantid\.py", 40)
        plain += [run(False) for _ in range(2)]
    finally:
        recorder.remove()
        timer.restore()
        a1111.release_models()
        w.reset()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(results: list[dict], key) -> float:
        return common.median([key(r) for r in results])

    rows = []
    for name, results in (("plain job", plain), ("first job", [first]), (f"repeated job (median of {a.repeats})",
                                                                         repeated)):
        rows.append([name, f"{med(results, lambda r: r['to_first_step']) * 1e3:.1f}"]
                    + [f"{med(results, lambda r, p=p: r['phases'][p]) * 1e3:.2f}" for p in PHASES]
                    + [f"{med(results, lambda r: r['four_phases']) * 1e3:.2f}",
                       f"{med(results, lambda r: r['setup']) * 1e3:.2f}"])
    four = med(repeated, lambda r: r["four_phases"])
    everything = med(repeated, lambda r: r["setup"])
    headers = (["job", "to first step ms"] + [f"{p} ms" for p in PHASES]
               + ["set-up: first four ms", "set-up: all ms"])
    tbl = common.table(headers, rows)
    text = (f"{tbl}\n\nRepeated job, InstantID set-up: {four * 1e3:.2f} ms in face analysis + model load + "
            f"tokens/K-V + hint (target ≤ 5 ms: {'yes' if four <= 0.005 else 'NO'}); {everything * 1e3:.2f} ms counting "
            f"everything InstantID does per job (≤ 5 ms: {'yes' if everything <= 0.005 else 'NO'}). "
            f"sgm UNet model_channels {a.channels}, {a.size}×{a.size} txt2img, 1 step, face photo "
            f"{a.photo}×{a.photo} JPEG ({len(face) // 1024} KiB). Time to first step: from the txt2img call to the "
            f"UNet's first forward (InstantID's hint and IdentityNet K/V are made inside that call, and counted in "
            f"the set-up columns).")
    return text, {"plain": plain, "first": first, "repeated": repeated, "repeated_four_phases_s": four,
                  "repeated_setup_s": everything}


# --- full-size-shaped loading --------------------------------------------------------------------------------

def full_size_loading(a) -> tuple[str, dict]:
    from safetensors.torch import load_file

    from lib_instantid.models.loading import load_identitynet

    folder = Path(tempfile.mkdtemp(prefix="instantid-full-", dir=a.tmp))
    target = folder / "ControlNetModel"
    target.mkdir()
    shapes = common.sdxl_identitynet_shapes()
    weights = target / "diffusion_pytorch_model.safetensors"
    start = time.perf_counter()
    size = common.write_zero_safetensors(weights, shapes)
    print(f"wrote {weights} ({size / 2**30:.2f} GiB, {len(shapes)} tensors) in {time.perf_counter() - start:.1f} s",
          flush=True)
    buffer = bytearray(size)  # allocated and faulted in once, outside the timings
    view = memoryview(buffer)
    buffer[::4096] = b"\1" * len(range(0, size, 4096))

    def read_all():
        with open(weights, "rb", buffering=0) as f:
            got = 0
            while got < size:
                got += f.readinto(view[got:got + (1 << 26)])
        return got

    def mmap_touch():
        with open(weights, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            t = torch.frombuffer(m, dtype=torch.uint8)
            result = common.touch([t])
            del t
        return result

    def load_file_only():
        return load_file(weights)

    def load_touch():
        net = load_identitynet(folder)
        return common.touch(list(net.parameters()))

    def load_only():
        return load_identitynet(folder)

    reads = ("read() into a buffer", "mmap + touch every page")
    variants = {reads[0]: read_all, reads[1]: mmap_touch, "safetensors load_file": load_file_only,
                "load_identitynet": load_only, "load_identitynet + touch every page": load_touch}
    times: dict[str, dict[str, list[float]]] = {"cold": defaultdict(list), "warm": defaultdict(list)}
    pairs: dict[str, dict[str, list[float]]] = {"cold": defaultdict(list), "warm": defaultdict(list)}

    def timed(name: str, state: str) -> float:
        if state == "cold":
            common.drop_from_page_cache(weights)
        else:
            read_all()  # everything in the page cache
        start = time.perf_counter()
        result = variants[name]()
        elapsed = time.perf_counter() - start
        del result  # unmapping happens here, outside the timing
        times[state][name].append(elapsed)
        return elapsed

    try:
        # Disk speed drifts on a shared machine: each variant is timed right after the mmap baseline, in the same
        # state, and the ratio of each such pair is kept.
        names = [n for n in variants if n != reads[1]]
        for r in range(a.load_repeats):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                for state in ("cold", "warm"):
                    base = timed(reads[1], state)
                    pairs[state][name].append(timed(name, state) / base)
    finally:
        weights.unlink()
        target.rmdir()
        folder.rmdir()

    med = {s: {n: common.median(v) for n, v in times[s].items()} for s in times}
    ratio_of = {s: {n: common.median(v) for n, v in pairs[s].items()} for s in pairs}
    rows = [[name] + [f"{med[s][name]:.3f}" for s in ("cold", "warm")]
            + ["1.00" if name == reads[1] else f"{ratio_of[s][name]:.2f}" for s in ("cold", "warm")]
            for name in variants]
    ours = "load_identitynet + touch every page"
    # Against the faster of the two reads: the mmap baseline it was paired with, or read() (via both pair ratios).
    ratio = {s: ratio_of[s][ours] / min(1.0, ratio_of[s][reads[0]]) for s in ratio_of}
    met = "yes" if ratio["cold"] <= 1.5 else "NO"
    tbl = common.table(["", "cold s", "warm s", "cold ÷ mmap read", "warm ÷ mmap read"], rows)
    text = (f"{tbl}\n\nFull-size-shaped IdentityNet (SDXL ControlNetModel, {len(shapes)} tensors, "
            f"{size / 2**30:.2f} GiB fp16 safetensors). Each variant timed right after the baseline (mmap + touching "
            f"every page) in the same state, {a.load_repeats} pairs each, median times and median pair ratios; cold "
            f"= the file's pages dropped from the page cache first (posix_fadvise DONTNEED), warm = all cached. "
            f"load_identitynet + touch ÷ the faster read: cold {ratio['cold']:.2f} (target ≤ 1.5: {met}), warm "
            f"{ratio['warm']:.2f} (from the page cache the fixed ~0.05 s of building {len(shapes)} tensors' "
            f"modules on the meta device and adopting them, and mapping every page, show).")
    return text, {"bytes": size, "times_s": {s: dict(v) for s, v in times.items()}, "pair_ratios": {s: dict(v) for s, v in pairs.items()}, "ratio": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, default=64, help="UNet model_channels (as step_overhead.py)")
    parser.add_argument("--size", type=int, default=256, help="generation width = height in pixels")
    parser.add_argument("--photo", type=int, default=512, help="face photo side in pixels")
    parser.add_argument("--repeats", type=int, default=5, help="repeated jobs")
    parser.add_argument("--jobs", action=argparse.BooleanOptionalAction, default=True,
                        help="time the jobs through the stand-in (--no-jobs: only the full-size load)")
    parser.add_argument("--full-size", action=argparse.BooleanOptionalAction, default=True,
                        help="also time loading a full-size-shaped IdentityNet file (2.5 GB in --tmp)")
    parser.add_argument("--load-repeats", type=int, default=5)
    parser.add_argument("--tmp", default="/tmp", help="where the full-size file is written (and deleted)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more repeated job")
    parser.add_argument("--record", action="store_true")
    a = parser.parse_args()
    m = common.machine()
    print(common.machine_line(m), flush=True)

    setup_text, setup_data = "", {}
    if a.jobs:
        setup_text, setup_data = job_setup(a)
        print()
        print(setup_text, flush=True)
    load_text, load_data = "", {}
    if a.full_size:
        print()
        load_text, load_data = full_size_loading(a)
        print(load_text)

    if a.record:
        md = ["## 2. Job set-up (`bench/job_setup.py`)", "", common.machine_line(m), "", setup_text or "(jobs not run)"]
        if load_text:
            md += ["", "Model load of a full-size-shaped file:", "", load_text]
        common.record("job_setup", "\n".join(md), {"machine": m, "args": vars(a), "setup": setup_data,
                                                   "full_size_load": load_data})


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
