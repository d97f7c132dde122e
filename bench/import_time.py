"""Extra WebUI start-up time of the extension: loading scripts/instantid.py the A1111 way (through the tests/webui
stand-in: import with the extension folder on sys.path, register the Script, build both tabs' UI, callbacks) vs a
dummy extension with a one-slider accordion (bench/dummy_extension). Each load runs in a fresh subprocess that has
already imported what the WebUI has at that point (torch, numpy, PIL, cv2, gradio, safetensors, the `modules`
stand-in); alternating, median of --repeats each. Target: extra ≤ 0.2 s. Heavy modules (insightface, onnxruntime,
diffusers) must not be imported at start; the table lists what the extension's load imports beyond the dummy's,
from `python -X importtime`.

    python bench/import_time.py            # ~1 min
    python bench/import_time.py --record
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DUMMY_SCRIPT = Path(__file__).resolve().parent / "dummy_extension" / "scripts" / "dummy.py"
HEAVY = ("insightface", "onnxruntime", "onnx", "diffusers", "transformers", "skimage", "scipy", "matplotlib",
         "imaginairy", "sklearn", "albumentations")


def child(which: str, models: str) -> dict:
    import time

    # What the WebUI has imported by the time it loads extension scripts.
    import cv2  # noqa: F401
    import gradio  # noqa: F401
    import numpy  # noqa: F401
    import PIL.Image  # noqa: F401
    import safetensors.torch  # noqa: F401
    import torch  # noqa: F401

    from tests.webui import harness

    w = harness.standin
    w.reset()
    w.set_models_path(models)
    script = harness.EXTENSION_SCRIPT if which == "extension" else str(DUMMY_SCRIPT)
    before = set(sys.modules)
    start = time.perf_counter()
    w.load_extension(script)
    elapsed = time.perf_counter() - start
    before_top = {name.split(".")[0] for name in before}
    new = sorted({name.split(".")[0] for name in set(sys.modules) - before} - before_top)
    errors = [entry[0] for entry in w.reported()]
    return {"which": which, "s": elapsed, "new_packages": new, "errors": errors}


def importtime(models: str) -> list[tuple[float, str]]:
    """(cumulative seconds, top-level package) of what loading the extension imports, from -X importtime."""
    out = subprocess.run([sys.executable, "-X", "importtime", __file__, "--child", "extension", models],
                         capture_output=True, text=True, check=True, cwd=common.ROOT, env=_env())
    marker = out.stderr.find("tests.webui.harness")
    found: dict[str, float] = {}
    for line in out.stderr[marker:].splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m and len(m.group(3)) <= 2:  # imported directly, not as a dependency of another new module
            found[m.group(4)] = found.get(m.group(4), 0.0) + int(m.group(2)) / 1e6
    return sorted(((t, name) for name, t in found.items()), reverse=True)


def _env() -> dict:
    return {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(common.ROOT)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--record", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("WHICH", "MODELS"), help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        print(json.dumps(child(*a.child)))
        return

    m = common.machine()
    print(common.machine_line(m), flush=True)
    from tests.fixtures import tiny_models as tm

    with tempfile.TemporaryDirectory() as models:
        # An installed SDXL pair, so that the panel's model lists are read from real files at start.
        root = Path(models)
        tm.write_identitynet(root / "instantid", "sdxl")
        tm.write_adapter(root / "instantid" / "ip-adapter.bin", "sdxl")
        runs: dict[str, list[dict]] = {"extension": [], "dummy": []}
        for r in range(a.repeats):
            for which in (("extension", "dummy") if r % 2 == 0 else ("dummy", "extension")):
                out = subprocess.run([sys.executable, __file__, "--child", which, models], capture_output=True,
                                     text=True, check=True, cwd=common.ROOT, env=_env())
                runs[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(".", end="", flush=True)
        print()
        imports = importtime(models)

    ext, dummy = (common.median([r["s"] for r in runs[k]]) for k in ("extension", "dummy"))
    extra = ext - dummy
    new = sorted(set(runs["extension"][0]["new_packages"]) - set(runs["dummy"][0]["new_packages"]))
    heavy = [p for p in new if p in HEAVY]
    errors = runs["extension"][0]["errors"]
    rows = [["dummy extension", f"{dummy:.3f}"], ["InstantID", f"{ext:.3f}"], ["extra", f"{extra:.3f}"]]
    tbl = common.table(["load at start (import + UI)", f"median s of {a.repeats}"], rows)
    top = ", ".join(f"{name} {t * 1e3:.0f} ms" for t, name in imports[:8] if t >= 0.0005)
    text = (f"{tbl}\n\nExtra start-up time {extra:.3f} s (target ≤ 0.2 s: {'yes' if extra <= 0.2 else 'NO'}). "
            f"Top-level packages the extension's load imports beyond the dummy's: {', '.join(new) or 'none'}; heavy ones "
            f"(insightface, onnxruntime, diffusers, ...): {', '.join(heavy) or 'none'}. Largest imports in its "
            f"load (-X importtime, cumulative): {top}."
            + (f" Errors reported while loading: {errors}" if errors else ""))
    print()
    print(text)
    if a.record:
        common.record("import_time", "\n".join(["## 3. Import time (`bench/import_time.py`)", "",
                                                common.machine_line(m), "", text]),
                      {"machine": m, "args": vars(a), "runs": runs, "importtime": imports})


if __name__ == "__main__":
    main()
