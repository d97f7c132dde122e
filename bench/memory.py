"""Resident memory of the IdentityNet + adapter beyond their own parameter bytes, loaded through our loaders.

Full-size-shaped files (zeros, written to --tmp and deleted after): the SDXL IdentityNet as the official
ControlNetModel/diffusion_pytorch_model.safetensors (fp16, ~2.5 GB) and the face adapter as the release's
ip-adapter.bin (torch zip pickle, fp32, ~1.7 GB). Each measurement runs in a fresh subprocess: RSS (psutil) after
the imports, then after loading both models and touching every parameter page (what the first step does), and the
peak (RSS sampled every 2 ms during loading). Extra = RSS growth - parameter bytes, as a share of parameter bytes.

  load            load_identitynet + load_adapter (the files' own dtypes: IdentityNet fp16 memory-mapped,
                  adapter fp32 read from the pickle)
  cache fp16      pipeline.MODEL_CACHE.get(..., cpu, float16) for both: what a job on a half-precision host does
  cache fp32      the same with float32 (a CPU host running in full precision): the fp16 IdentityNet is converted

Target: extra ≤ 10 %, after loading and at the peak. Converting a file's dtype (cache fp16 of the fp32 adapter, cache
fp32 of the fp16 IdentityNet) holds the source tensors and the converted ones together for a moment: that transient
is in the peak column.

    python bench/memory.py            # ~1-2 min, needs ~5 GB free in --tmp and ~8 GB of RAM
    python bench/memory.py --record
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import torch  # noqa: E402

SCENARIOS = ("load", "cache fp16", "cache fp32")


def child(scenario: str, identitynet_dir: str, adapter_path: str) -> dict:
    import gc

    import psutil
    import torch

    from lib_instantid.models.loading import ModelCache, load_adapter, load_identitynet

    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    # In the order pipeline.prepare_job loads them: the adapter, then the IdentityNet.
    if scenario == "load":
        models = [load_adapter(Path(adapter_path)), load_identitynet(Path(identitynet_dir))]
    else:
        dtype = torch.float16 if scenario == "cache fp16" else torch.float32
        cache = ModelCache()
        models = [cache.get(Path(adapter_path), load_adapter, torch.device("cpu"), dtype),
                  cache.get(Path(identitynet_dir), load_identitynet, torch.device("cpu"), dtype)]
    loaded = time.perf_counter() - start
    common.touch([t for m in models for t in (*m.parameters(), *m.buffers())])
    gc.collect()
    done.set()
    sampler.join()
    after = process.memory_info().rss
    info = process.memory_full_info()
    tensor_bytes = sum(t.numel() * t.element_size() for m in models for t in (*m.parameters(), *m.buffers()))
    return {"scenario": scenario, "rss_before": before, "rss_after": after, "peak": max(peak[0], after),
            "tensor_bytes": tensor_bytes, "load_s": loaded, "uss_after": info.uss,
            "dtypes": sorted({str(t.dtype) for m in models for t in m.parameters()})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh subprocesses per scenario")
    parser.add_argument("--tmp", default="/tmp", help="where the full-size files are written (and deleted)")
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("SCENARIO", "IDENTITYNET_DIR", "ADAPTER"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return

    m = common.machine()
    print(common.machine_line(m), flush=True)
    folder = Path(tempfile.mkdtemp(prefix="instantid-memory-", dir=a.tmp))
    identitynet_dir, adapter = folder / "ControlNetModel", folder / "ip-adapter.bin"
    identitynet_dir.mkdir()
    weights = identitynet_dir / "diffusion_pytorch_model.safetensors"
    results: dict[str, list[dict]] = {s: [] for s in SCENARIOS}
    try:
        start = time.perf_counter()
        net_bytes = common.write_zero_safetensors(weights, common.sdxl_identitynet_shapes())
        adapter_bytes = common.write_zero_adapter_bin(adapter, common.sdxl_adapter_shapes(), torch.float32)
        print(f"wrote IdentityNet {net_bytes / 2**30:.2f} GiB, adapter {adapter_bytes / 2**30:.2f} GiB in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        for r in range(a.repeats):
            for scenario in SCENARIOS[r % 3:] + SCENARIOS[:r % 3]:
                out = subprocess.run([sys.executable, __file__, "--child", scenario, str(folder), str(adapter)],
                                     capture_output=True, text=True, check=True, env=env, cwd=common.ROOT)
                results[scenario].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(".", end="", flush=True)
        print()
    finally:
        for path in (weights, adapter):
            path.unlink(missing_ok=True)
        identitynet_dir.rmdir()
        folder.rmdir()

    gib = 2 ** 30
    rows, worst, peak_worst = [], 0.0, 0.0
    for scenario in SCENARIOS:
        rs = results[scenario]
        tensor = rs[0]["tensor_bytes"]
        growth = common.median([r["rss_after"] - r["rss_before"] for r in rs])
        peak = common.median([r["peak"] - r["rss_before"] for r in rs])
        extra = (growth - tensor) / tensor
        worst = max(worst, extra)
        peak_worst = max(peak_worst, (peak - tensor) / tensor)
        rows.append([scenario, ", ".join(rs[0]["dtypes"]), f"{tensor / gib:.3f}", f"{growth / gib:.3f}",
                     f"{extra * 100:+.1f} %", f"{peak / gib:.3f}", f"{(peak - tensor) / tensor * 100:+.1f} %",
                     f"{common.median([r['load_s'] for r in rs]):.2f}",
                     "yes" if extra <= 0.10 and (peak - tensor) / tensor <= 0.10 else "NO"])
    tbl = common.table(["scenario", "dtypes", "param GiB", "RSS growth GiB", "extra", "peak growth GiB",
                        "peak extra", "load s", "≤ 10 %"], rows)
    text = (f"{tbl}\n\nSDXL-shaped IdentityNet ({net_bytes / gib:.2f} GiB fp16 safetensors) + adapter "
            f"({adapter_bytes / gib:.2f} GiB fp32 ip-adapter.bin), zeros; median of {a.repeats} fresh processes "
            f"each, loaded in prepare_job's order (adapter, then IdentityNet). RSS growth after loading and touching "
            f"every parameter page: worst extra {worst * 100:+.1f} % (≤ 10 %: {'yes' if worst <= 0.10 else 'NO'}); "
            f"worst peak extra {peak_worst * 100:+.1f} % (≤ 10 %: {'yes' if peak_worst <= 0.10 else 'NO'}).")
    print()
    print(text)
    if a.record:
        common.record("memory", "\n".join(["## 4. Peak memory (`bench/memory.py`)", "", common.machine_line(m), "",
                                           text]), {"machine": m, "args": vars(a), "results": results})


if __name__ == "__main__":
    main()
