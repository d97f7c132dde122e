"""Cost of the identity score per generated image: the face analysis of the image (detection, then one recognition
per face found) and the cosine against the identity, as `webui.score_image` runs it after each image.

No antelopev2 can be downloaded here, so the pack is built at the real models' cost:
  recognizer  glintr100's architecture (ArcFace IResNet-100: 3/13/30/3 blocks of widths 64-512, 112x112 in, 512
              out) at random weights, exported to ONNX: the same convolutions as the real file, so the same work
  detector    the tests' marker detector (it finds the painted markers as faces; nearly free) with a ResNet-style
              stack of 3x3 convolutions in front of it doing SCRFD-10G's multiply-accumulates: 10 G at 640x480 (the
              SCRFD paper's count), so 13.3 G at the 640x640 detection size; its result is added at weight 0
The detector's cost is therefore matched in work and kind of operation, not in its exact layers: read the detector
rows as an estimate, the recognizer's as measured. Images are 1024x1024 (SDXL's size), each one new (the analysis
cache never answers). Cases: one face, two faces (two recognitions), no face (the detection is retried at smaller
sizes before giving up, as for photos). With the setting off nothing of this runs (tests/test_similarity.py counts
the analyses: none).

    python bench/similarity_cost.py              # ~2 min on 2 cores (building the pack included)
    python bench/similarity_cost.py --record     # also write bench/RESULTS.md and bench/results/similarity_cost.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts the repository root on sys.path)

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from lib_instantid import similarity  # noqa: E402
from lib_instantid.face import DET_SIZES, FaceAnalyzer  # noqa: E402
from tests.fixtures import face_models  # noqa: E402

SCRFD_10G_MACS = 10e9 * (640 * 640) / (640 * 480)  # the paper's 10 G at VGA, scaled to the 640x640 input
IMAGE_SIDE = 1024
MARKER_SIDE = 100  # a face box of 4x that: a portrait's face in a 1024 image


class IBasicBlock(nn.Module):
    """IResNet's block: BN, conv, BN, PReLU, conv (the stride), BN; a 1x1 conv shortcut where the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.PReLU(cout),
            nn.Conv2d(cout, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout))
        self.shortcut = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def iresnet100() -> nn.Module:
    """glintr100's architecture (ArcFace R100), random weights."""
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64)]
    cin = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 13, 30, 3)):
        for i in range(blocks):
            layers.append(IBasicBlock(cin, width, 2 if i == 0 else 1))
            cin = width
    layers += [nn.BatchNorm2d(512), nn.Flatten(), nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512)]
    return nn.Sequential(*layers).eval()


def macs(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 2


def write_recognizer(path: Path) -> float:
    """Export the IResNet-100 as the pack's recognizer; returns its multiply-accumulates per face."""
    torch.manual_seed(0)
    model = iresnet100()
    face = torch.zeros(1, 3, 112, 112)
    with torch.no_grad():
        count = macs(lambda: model(face))
        torch.onnx.export(model, (face,), str(path), input_names=["input.1"], output_names=["embedding"],
                          dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return count


def detector_load(graph: onnx.GraphProto, target_macs: float) -> tuple[str, float]:
    """3x3 convolutions with ReLU from the detector's input, ResNet-style (two at strides 2 and 4, then equal
    parts at 8, 16 and 32), until they do `target_macs` at 640x640; returns (a zero-valued scalar of their result,
    their multiply-accumulates at 640x640)."""
    rng = np.random.default_rng(0)
    nodes, inits = graph.node, graph.initializer
    count, side, total = [0], 640, 0.0

    def conv(x: str, cin: int, cout: int, stride: int) -> str:
        nonlocal side, total
        count[0] += 1
        w = f"load_w{count[0]}"
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, 3, 3)) / np.sqrt(9 * cin)).astype(np.float32), w))
        out = f"load_{count[0]}"
        nodes.append(onnx.helper.make_node("Conv", [x, w], [out + "_c"], pads=[1, 1, 1, 1], strides=[stride] * 2))
        nodes.append(onnx.helper.make_node("Relu", [out + "_c"], [out]))
        side //= stride
        total += side * side * cout * cin * 9
        return out

    x = conv(conv("input.1", 3, 32, 2), 32, 64, 2)
    stages = [(64, 128), (128, 256), (256, 512)]
    per_stage = 1
    while True:  # the number of convolutions per stage that reaches the target
        stage_macs = sum((640 // 8 // 2 ** i) ** 2 * cout * cout * 9 for i, (_, cout) in enumerate(stages))
        if total + per_stage * stage_macs >= target_macs:
            break
        per_stage += 1
    for cin, cout in stages:
        x = conv(x, cin, cout, 2)
        for _ in range(per_stage - 1):
            x = conv(x, cout, cout, 1)
    zero = "load_zero"
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
    nodes.append(onnx.helper.make_node("ReduceMean", [x], ["load_mean"], keepdims=0))
    nodes.append(onnx.helper.make_node("Mul", ["load_mean", zero], ["load_nothing"]))
    return "load_nothing", total


def write_detector(path: Path) -> float:
    """The marker detector with the load added at weight 0 to its first score output; returns the load's MACs."""
    model = face_models.detector_model()
    graph = model.graph
    nothing, total = detector_load(graph, SCRFD_10G_MACS)
    first = graph.output[0].name
    producer = next(n for n in graph.node if first in n.output)
    producer.output[0] = first + "_unloaded"
    graph.node.append(onnx.helper.make_node("Add", [first + "_unloaded", nothing], [first]))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return total


def image_with(faces: int, seed: int) -> Image.Image:
    """A new 1024x1024 image (noise, so no two are alike) with `faces` marker faces."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 200, size=(IMAGE_SIDE, IMAGE_SIDE, 3), dtype=np.uint8)
    for colour, centre in list(zip(("cyan", "magenta"), ((300, 400), (720, 420))))[:faces]:
        pixels = face_models.paint_marker(pixels, centre, MARKER_SIDE, colour)
    return Image.fromarray(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="images timed per case")
    parser.add_argument("--record", action="store_true", help="write the results into bench/RESULTS.md")
    a = parser.parse_args()
    warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))  # torch's legacy exporter, skimage's estimate
    m = common.machine()
    print(common.machine_line(m))

    with tempfile.TemporaryDirectory() as tmp:
        pack = Path(tmp) / "antelopev2"
        pack.mkdir()
        print("building the pack (IResNet-100 export, detector load) ...", flush=True)
        recognizer_macs = write_recognizer(pack / face_models.RECOGNIZER_FILE)
        detector_macs = write_detector(pack / face_models.DETECTOR_FILE)
        analyzer = FaceAnalyzer(pack, providers=["CPUExecutionProvider"])
        reference = np.random.default_rng(1).standard_normal(512).astype(np.float32)

        results, seed = {}, 0
        for name, faces in (("one face", 1), ("two faces", 2), ("no face", 0)):
            analyzer.detect(image_with(faces, seed := seed + 1))  # warm-up
            times, found = [], 0
            for _ in range(a.repeats):
                image = image_with(faces, seed := seed + 1)
                start = time.perf_counter()
                detected = analyzer.detect(image)  # what score_image does for each finished image
                similarity.described(similarity.best_match(detected, reference))
                times.append(time.perf_counter() - start)
                found = len(detected)
            assert found == faces, f"{name}: found {found} faces"
            results[name] = times

    cores = f"CPU ({m['cpu']}, {m['cores']} cores), onnxruntime's CPU provider"
    rows_out = [[name, f"{common.median(t) * 1e3:.0f}", f"{min(t) * 1e3:.0f}–{max(t) * 1e3:.0f}"]
                for name, t in results.items()]
    tbl = common.table(["image (1024×1024)", "median ms per image", "min–max ms"], rows_out)
    summary = (f"{cores}. Recognizer: IResNet-100 (glintr100's architecture), {recognizer_macs / 1e9:.1f} G "
               f"multiply-accumulates per face (= ArcFace's published 24.2 GFLOPs for R100), measured. "
               f"Detector: SCRFD-10G's {SCRFD_10G_MACS / 1e9:.1f} G at "
               f"640×640 as a stand-in stack ({detector_macs / 1e9:.1f} G), an estimate. An image with no face "
               f"costs more than one with a face: the detector tries every size in DET_SIZES ({len(DET_SIZES)}, "
               f"{DET_SIZES[0]} down to {DET_SIZES[-1]}) before it gives up. Off: nothing runs "
               f"(no analysis, no infotext entry). Not run on a GPU (none lent to this task)")
    print()
    print(tbl)
    print(summary)
    if a.record:
        md = "\n".join([
            "## 6. Identity score per image (`bench/similarity_cost.py`)",
            "",
            common.machine_line(m),
            "",
            f"What the score adds after each image: the face analysis of the finished image (detection, a "
            f"recognition per face) and the cosine; {a.repeats} new images per case, each timed alone.",
            "",
            tbl,
            "",
            summary + ".",
        ])
        common.record("similarity_cost", md, {
            "machine": m, "args": vars(a), "recognizer_macs": recognizer_macs, "detector_macs": detector_macs,
            "times_s": results, "median_s": {k: common.median(v) for k, v in results.items()},
        })


if __name__ == "__main__":
    main()
