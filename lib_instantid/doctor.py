"""`python -m lib_instantid.doctor [--webui DIR] [--face PHOTO] [--out PATH] [--download [--yes]]`: what InstantID
needs, what is there, and how to fix what is not — one line per check, OK / MISSING / PROBLEM. With --download it
then offers the missing model files, shows their licences, fetches them when the user agrees, and checks again.

It must run where things are missing (no WebUI, no insightface, even no torch): package versions are read from
the installed metadata without importing them, and each check imports what it needs itself and reports a failed
import as a finding. Weight files are checked from their headers (safetensors) or memory-mapped (pickles) and
built on the meta device, so no multi-GB tensor is read.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .errors import InstantIDError, ModelError

if TYPE_CHECKING:  # only for annotations: importing these needs the packages the checks look for
    import torch

    from .downloads import Download
    from .face import DetectedFace, FaceAnalyzer
    from .models.catalog import ModelEntry

OK, MISSING, PROBLEM = "OK", "MISSING", "PROBLEM"
# Module hooks that always run and state dicts adopted without a copy need torch 2.1; the oldest supported host
# (A1111 1.8) installs 2.1.2.
MIN_TORCH = (2, 1)
PACKAGE_DIR = Path(__file__).parent  # where the search for the WebUI root starts
INSTALLER_FIX = "start the WebUI once (this extension's install.py adds it without changing the WebUI's packages)"
OPENCV_BUILDS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")
ONNXRUNTIME_BUILDS = ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml", "onnxruntime-silicon",
                      "onnxruntime-openvino")
ADAPTER_FILE_HINT = "ip-adapter.bin (InstantX/InstantID on Hugging Face, ~1.7 GB)"
IDENTITYNET_FILES_HINT = ("ControlNetModel/config.json and ControlNetModel/diffusion_pytorch_model.safetensors "
                          "(InstantX/InstantID on Hugging Face, ~2.5 GB)")


@dataclass(frozen=True)
class Finding:
    status: str  # OK, MISSING or PROBLEM
    subject: str
    detail: str

    @property
    def line(self) -> str:
        return f"{self.status:<8}{self.subject}: {self.detail}"


@dataclass(frozen=True)
class Package:
    label: str
    builds: tuple[str, ...]  # distributions that provide it; any one will do
    fix: str
    minimum: tuple[int, int] | None = None  # the oldest (major, minor) the code runs on


PACKAGES = (
    Package("torch", ("torch",), "the WebUI brings it: install or repair the WebUI", minimum=MIN_TORCH),
    Package("numpy", ("numpy",), f"{INSTALLER_FIX}; without a WebUI: `pip install numpy`"),
    Package("opencv (cv2)", OPENCV_BUILDS, f"{INSTALLER_FIX}; without a WebUI: `pip install opencv-python-headless`"),
    Package("safetensors", ("safetensors",), "the WebUI brings it; without a WebUI: `pip install safetensors`"),
    Package("insightface", ("insightface",), f"{INSTALLER_FIX}; without a WebUI: `pip install --no-deps insightface`"),
    Package("onnx", ("onnx",), f"{INSTALLER_FIX}; without a WebUI: `pip install onnx`"),
    Package("scikit-image", ("scikit-image",), f"{INSTALLER_FIX}; without a WebUI: `pip install \"scikit-image<2.2\"`"),
    Package("onnxruntime", ONNXRUNTIME_BUILDS, f"{INSTALLER_FIX}; without a WebUI: `pip install onnxruntime-gpu` "
            "(`onnxruntime` without an NVIDIA GPU)"),
)


def installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


# --- Python and packages --------------------------------------------------------------------------------------


def check_python() -> Finding:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return Finding(PROBLEM, "Python", f"{version}: insightface 2 needs Python 3.10 or newer")
    return Finding(OK, "Python", f"{version} ({sys.executable})")


def check_package(package: Package) -> Finding:
    found = {name: version for name in package.builds if (version := installed_version(name))}
    # Name the distribution only where several could provide the package.
    listed = ", ".join(version if len(package.builds) == 1 else f"{name} {version}" for name, version in found.items())
    if not found:
        return Finding(MISSING, package.label, package.fix)
    if package.builds == ONNXRUNTIME_BUILDS and len(found) > 1:
        return Finding(PROBLEM, package.label, f"{listed} share one `onnxruntime` module and overwrite each other: "
                       f"`pip uninstall -y {' '.join(found)}`, then {INSTALLER_FIX}")
    if package.minimum is not None and any(_major_minor(v) < package.minimum for v in found.values()):
        oldest = ".".join(map(str, package.minimum))
        return Finding(PROBLEM, package.label, f"{listed}: InstantID needs {package.label} {oldest} or newer (the "
                       f"WebUIs it supports install 2.1.2 or newer); update the WebUI, which brings its own")
    if package.label == "scikit-image" and _major_minor(found["scikit-image"]) >= (2, 2):
        return Finding(PROBLEM, package.label,
                       f"{listed}: insightface's face alignment needs < 2.2: `pip install \"scikit-image<2.2\"`")
    return Finding(OK, package.label, listed)


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:2] if part.isdigit())


def check_gradio() -> list[Finding]:
    """Only reported when present: the WebUI brings it, the doctor and the core never need it."""
    version = installed_version("gradio")
    return [Finding(OK, "gradio", version)] if version else []


def check_providers() -> Finding:
    try:
        from .face import onnx_providers

        providers = onnx_providers()
    except ImportError as error:
        return Finding(PROBLEM, "face analysis runtime", f"cannot be loaded: {error}")
    where = "the GPU (CUDA)" if providers[0] == "CUDAExecutionProvider" else "the CPU"
    return Finding(OK, "onnxruntime providers", f"{', '.join(providers)}: face analysis runs on {where}")


# --- the WebUI folder and its model files --------------------------------------------------------------------


def find_webui_root(start: Path) -> Path | None:
    """The nearest folder at or above `start` that holds `webui.py` and `modules/`."""
    for folder in (start, *start.parents):
        if (folder / "webui.py").is_file() and (folder / "modules").is_dir():
            return folder
    return None


def locate_webui(given: str | None) -> tuple[Finding, Path | None]:
    if given:
        webui = Path(given).expanduser()
        if not webui.is_dir():
            return Finding(PROBLEM, "WebUI folder", f"{webui} is not a folder"), None
        return Finding(OK, "WebUI folder", str(webui)), webui
    webui = find_webui_root(PACKAGE_DIR)
    if webui is None:
        return Finding(MISSING, "WebUI folder",
                       f"none found above {PACKAGE_DIR.parent}; pass --webui DIR to check model files"), None
    return Finding(OK, "WebUI folder", f"{webui} (the WebUI this extension is in)"), webui


def check_models(models_root: Path) -> list[Finding]:
    try:
        from .models import catalog
    except ImportError as error:
        return [Finding(PROBLEM, "model files", f"not checked: {error} (see the package lines above)")]
    entries = catalog.scan(models_root)
    findings = [check_model_file(entry) for entry in entries]
    valid = [entry for entry, finding in zip(entries, findings) if finding.status == OK]
    return findings + check_pairs(valid, models_root)


def check_model_file(entry: ModelEntry) -> Finding:
    """Format, keys and layout of one catalogued file, from its tensor shapes only."""
    from .models import catalog

    label = catalog.LABELS[entry.kind]
    if entry.error is not None:
        return Finding(PROBLEM, entry.name, f"{label}: {entry.error}")
    try:
        weights = _weights_file(entry.path)
        _check_complete(weights)
        _check_layout(entry.kind, _meta_tensors(weights), weights.name, label)
    except ModelError as error:
        return Finding(PROBLEM, entry.name, f"{label}: {error}")
    return Finding(OK, entry.name, f"{label} for {entry.family}")


def _weights_file(path: Path) -> Path:
    from .models.loading import identitynet_weights

    return identitynet_weights(path) or path  # an IdentityNet folder is listed only when it holds its weights


def _check_complete(path: Path) -> None:
    """A safetensors file is as long as its header says: interrupted downloads are the commonest damage."""
    if path.suffix != ".safetensors":
        return  # a cut-off zip pickle loses its central directory and fails to open instead
    size = path.stat().st_size
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        expected = 8 + length + max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                                    default=0)
    except (struct.error, ValueError, KeyError, TypeError, MemoryError, OverflowError) as error:
        raise ModelError(f"{path.name} is not a safetensors file ({size} bytes): download it again") from error
    if size < expected:
        raise ModelError(f"{path.name} is incomplete ({size} of {expected} bytes): download it again")


def _meta_tensors(path: Path) -> dict[str, torch.Tensor]:
    import torch

    from .models import catalog

    shapes = catalog.read_shapes(path)  # header or memory-map only; the catalogue has read them already
    return {name: torch.empty(shape, device="meta") for name, shape in shapes.items()}


def _check_layout(kind: str, tensors: dict[str, torch.Tensor], name: str, label: str) -> None:
    import torch

    from .models import catalog, loading
    from .models.adapter import FaceAdapter
    from .models.identitynet import IdentityNet, config_from_state_dict

    try:
        if kind == catalog.ADAPTER:
            loading.check_adapter_weights(tensors, name)
            FaceAdapter.from_state_dict(tensors)
        else:
            loading.check_identitynet_weights(tensors, name)
            with torch.device("meta"):
                net = IdentityNet(config_from_state_dict(tensors))
            net.load_state_dict(tensors, strict=True, assign=True)
    except (KeyError, StopIteration, IndexError, ValueError, TypeError, RuntimeError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{name} does not have the layout of an InstantID {label} ({first_line})") from error


def check_pairs(valid: list[ModelEntry], models_root: Path) -> list[Finding]:
    """An adapter and an IdentityNet for the same context width are what a generation needs."""
    from .models import catalog

    by_kind = {kind: [e for e in valid if e.kind == kind] for kind in (catalog.ADAPTER, catalog.IDENTITYNET)}
    adapters, nets = by_kind[catalog.ADAPTER], by_kind[catalog.IDENTITYNET]
    ours = models_root / "instantid"
    missing = [Finding(MISSING, subject, f"put {files} in {ours}; see models.md")
               for subject, files, found in (("face adapter", ADAPTER_FILE_HINT, adapters),
                                             ("IdentityNet", IDENTITYNET_FILES_HINT, nets)) if not found]
    if missing:
        return missing
    widths = sorted({e.context_dim for e in adapters} & {e.context_dim for e in nets})
    if not widths:
        return [Finding(MISSING, "matching pair",
                        f"the face adapters are for {_families(adapters)} but the IdentityNets for {_families(nets)}; "
                        "install both for your checkpoint's family (the InstantX release is SDXL); see models.md")]
    return [_pair_finding(width, adapters, nets) for width in widths]


def _pair_finding(width: int, adapters: list[ModelEntry], nets: list[ModelEntry]) -> Finding:
    from .models.architecture import family_name

    fitting_adapters = [e.name for e in adapters if e.context_dim == width]
    fitting_nets = [e.name for e in nets if e.context_dim == width]
    detail = f"face adapter {' / '.join(fitting_adapters)} + IdentityNet {' / '.join(fitting_nets)}"
    if len(fitting_adapters) > 1 or len(fitting_nets) > 1:
        detail += " (Automatic takes the first of each; choose others by name in the InstantID panel)"
    return Finding(OK, f"pair for {family_name(width)}", detail)


def _families(entries: list[ModelEntry]) -> str:
    return ", ".join(sorted({e.family for e in entries}))


# --- face models and a photo -----------------------------------------------------------------------------------


def check_antelopev2(webui: Path) -> tuple[Finding, Path | None]:
    try:
        from . import face
    except ImportError as error:
        return Finding(PROBLEM, "antelopev2 face models", f"not checked: {error} (see the package lines above)"), None
    roots = face.webui_antelopev2_roots(webui / "models", webui / "extensions")
    try:
        pack = face.find_antelopev2(*roots)
    except InstantIDError:
        return Finding(MISSING, "antelopev2 face models", _antelopev2_fix(face, roots)), None
    return Finding(OK, "antelopev2 face models", str(pack)), pack


def _antelopev2_fix(face: ModuleType, roots: list[Path]) -> str:
    wanted = " and ".join(face.ANTELOPEV2_FILES)
    fix = f"put {wanted} in {roots[0] / 'antelopev2'}"
    for root in roots:  # a pack folder that exists but lacks files: a partial or wrong unzip
        for folder in (root / "antelopev2", root / "antelopev2" / "antelopev2"):
            lacking = [name for name in face.ANTELOPEV2_FILES if not (folder / name).is_file()]
            if folder.is_dir() and lacking:
                fix += f" ({folder} exists but lacks {', '.join(lacking)})"
                break
    return fix + "; see models.md"


def load_analyzer(pack: Path) -> tuple[Finding, FaceAnalyzer | None]:
    try:
        from .face import FaceAnalyzer

        analyzer = FaceAnalyzer(pack)
    except InstantIDError as error:
        return Finding(PROBLEM, "face analysis", str(error)), None
    except ImportError as error:
        return Finding(PROBLEM, "face analysis", f"cannot be loaded: {error} (see the package lines above)"), None
    return Finding(OK, "face analysis", "the antelopev2 detector and recognizer load"), analyzer


def check_photo(analyzer: FaceAnalyzer, photo: Path, out: Path) -> list[Finding]:
    """Faces in the photo, and the overlay the Preview button would show written to `out`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from .preview import detect

    try:
        with Image.open(photo) as opened:
            # Rotated as displayed, so that the overlay is drawn on the pixels the faces were found in.
            image = ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        return [Finding(PROBLEM, "photo", f"cannot open {photo} as an image: {error}")]
    with warnings.catch_warnings():
        # insightface's face alignment calls a scikit-image API deprecated in 0.26 (works until 2.2, which the
        # package check above rules out): not the user's to fix, so kept out of the report.
        warnings.filterwarnings("ignore", message="`estimate` is deprecated", category=FutureWarning)
        found = detect(analyzer, image, what=f"photo {photo.name}")
    if not found.faces:
        return [Finding(PROBLEM, "face", f"{found.message} Cropping the photo closer to the face also helps.")]
    try:
        Image.fromarray(found.image).save(out)
    except (OSError, ValueError) as error:
        return [Finding(PROBLEM, "overlay", f"cannot write {out}: {error}")]
    faces = [_face_finding(i, face) for i, face in enumerate(found.faces)]
    return faces + [Finding(OK, "overlay", f"{found.message} Written to {out}")]


def _face_finding(index: int, face: DetectedFace) -> Finding:
    x1, y1, x2, y2 = (int(round(float(v))) for v in face.box)
    chosen = " (chosen: the largest)" if index == 0 else ""
    return Finding(OK, f"face #{index + 1}", f"{x2 - x1}x{y2 - y1} px at ({x1}, {y1}), score {face.score:.2f}{chosen}")


# --- fetching what is missing -----------------------------------------------------------------------------------

# Subjects of the findings a download can fix.
DOWNLOADABLE = ("face adapter", "IdentityNet", "matching pair", "antelopev2 face models")


def download_missing(webui: Path, assume_yes: bool) -> list[Finding]:
    """Offer the model files the WebUI lacks for SDXL (the published release), with their licences; fetch them
    once the user agrees (`assume_yes`: without asking). The transfer shows the download library's progress bar."""
    try:
        from . import downloads
        from .face import webui_antelopev2_roots
    except ImportError as error:
        return [Finding(PROBLEM, "download", f"not possible: {error} (see the package lines above)")]
    models = webui / "models"
    wanted = downloads.missing(models, webui_antelopev2_roots(models, webui / "extensions"))
    if not wanted:
        return [Finding(OK, "download", "nothing to download: the SDXL models and the face models are in place")]
    _print_offer(downloads, wanted)
    question = f"Download {len(wanted)} file(s), {downloads.human_size(downloads.total_size(wanted))}? [y/N] "
    if not assume_yes and not _agreed(question):
        return [Finding(MISSING, "download", "declined: nothing was downloaded")]
    try:
        placed = downloads.download(wanted)
    except InstantIDError as error:
        return [Finding(PROBLEM, "download", str(error))]
    return [Finding(OK, d.name, f"downloaded and verified: {path}") for d, path in zip(wanted, placed)]


def _print_offer(downloads: ModuleType, wanted: list[Download]) -> None:
    print("\nMissing model files that can be downloaded:")
    for d in wanted:
        size = downloads.human_size(d.file.size) if d.file.size else "a few kB"
        print(f"  {d.name}  ({size}, from https://huggingface.co/{d.file.repo})")
    print("Licences:")
    for notice in downloads.licences(wanted):
        print(f"  - {notice}")


def _agreed(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:  # no terminal to answer from
        return False


# --- the command -----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m lib_instantid.doctor",
        description="Check what InstantID needs: packages, model files, face models; optionally a photo.",
    )
    parser.add_argument("--webui", metavar="DIR", help="the WebUI folder (its models/ is checked); found "
                        "automatically when this extension is inside one")
    parser.add_argument("--face", metavar="PHOTO", type=Path, help="find the faces in this photo")
    parser.add_argument("--out", metavar="PATH", type=Path,
                        help="where to write the face overlay (default: <photo>-instantid.png beside the photo)")
    parser.add_argument("--download", action="store_true",
                        help="offer to download the missing model files (from Hugging Face), then check again")
    parser.add_argument("--yes", action="store_true", help="with --download: download without asking")
    return parser.parse_args(argv)


def run_checks(args: argparse.Namespace) -> list[Finding]:
    findings = [check_python(), *(check_package(p) for p in PACKAGES), *check_gradio()]
    _print(findings)
    if any(installed_version(name) for name in ONNXRUNTIME_BUILDS):
        findings += _print([check_providers()])
    webui_finding, webui = locate_webui(args.webui)
    findings += _print([webui_finding])
    analyzer = None
    if webui is not None:
        findings += _print(check_models(webui / "models"))
        pack_finding, pack = check_antelopev2(webui)
        findings += _print([pack_finding])
        if pack is not None:
            analyzer_finding, analyzer = load_analyzer(pack)
            findings += _print([analyzer_finding])
    if args.face is not None:
        findings += _print(_photo_findings(args, analyzer))
    return findings


def _photo_findings(args: argparse.Namespace, analyzer: FaceAnalyzer | None) -> list[Finding]:
    if analyzer is None:
        return [Finding(PROBLEM, "photo", f"{args.face} not checked: face analysis is not ready (see above)")]
    out = args.out or args.face.with_name(f"{args.face.stem}-instantid.png")
    return check_photo(analyzer, args.face, out)


def _print(findings: list[Finding]) -> list[Finding]:
    for finding in findings:
        print(finding.line, flush=True)
    return findings


def main(argv: Sequence[str] | None = None) -> int:
    """Print the checks (with --download: fetch what is missing, then check again); 0 when everything needed is
    present, 1 otherwise."""
    args = parse_args(argv)
    findings = run_checks(args)
    webui = locate_webui(args.webui)[1]
    if args.download and webui is not None:
        _print(download_missing(webui, args.yes))
        print("\nChecking again:")
        findings = run_checks(args)
    failed = [f for f in findings if f.status != OK]
    if failed:
        print(f"\n{len(failed)} check(s) need attention: fix the MISSING / PROBLEM lines above, then run this again.")
        if not args.download and webui is not None and any(f.subject in DOWNLOADABLE for f in failed):
            print("Missing model files can be downloaded with `python -m lib_instantid.doctor --download`.")
        return 1
    print("\nEverything InstantID needs is in place.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
