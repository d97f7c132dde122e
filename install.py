"""A1111's install hook: adds the packages InstantID needs that are missing, and never changes the WebUI's own.

A1111 runs this file as `python install.py` with the WebUI's root importable (`import launch`). Deciding what to do
(`plan_install`) is separate from doing it (`run_plan`), so the decisions can be tested on made-up environments.

Why it is careful: in A1111 v1.10.1's venv a plain `pip install insightface onnxruntime` upgrades numpy 1.26 -> 2.x
and protobuf 3.20 -> 7.x and breaks the WebUI. So every installed distribution is held at its version through a
constraints file, and insightface goes in with --no-deps: its metadata asks for opencv-python, which would put a
second cv2 beside the WebUI's build.
"""
from __future__ import annotations

import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

OPENCV = "opencv-python-headless"  # no GUI libraries needed, so it also installs on servers
# insightface's own requirements, less opencv-python (any cv2 serves).
INSIGHTFACE_NEEDS = ("numpy", "onnx", "scipy", "scikit-image", "tqdm", "requests")
# What insightface 2.1 needs of them: its metadata asks for onnx>=1.13; its face alignment (norm_crop) calls a
# scikit-image API deprecated in 0.26 and removed in 2.2.
NEED_LIMITS = {"onnx": ">=1.13", "scikit-image": "<2.2"}
# Held within their installed major version instead of exactly: onnx>=1.13 needs protobuf>=3.20.2, A1111 v1.10.1
# ships 3.20.0, and 3.20.3 was measured to work with it (protobuf 4 does not).
HELD_WITHIN_MAJOR = ("protobuf",)
CHECK_HINT = (
    "InstantID: to check the setup (packages, model files, face models), run `python -m lib_instantid.doctor` "
    "in this extension's folder with the WebUI's Python (its venv)."
)


@dataclass(frozen=True)
class Host:
    distributions: dict[str, str]  # canonical distribution name -> installed version
    cv2_importable: bool
    onnxruntime_importable: bool  # any build: onnxruntime, -gpu, -directml, ... all provide the same module
    torch_cuda: str | None  # CUDA version of the WebUI's torch when it can use a GPU, else None (also when unasked)


@dataclass(frozen=True)
class PipCall:
    args: tuple[str, ...]  # pip arguments; the executor adds the constraints file
    desc: str


@dataclass(frozen=True)
class Plan:
    calls: tuple[PipCall, ...]
    constraints: tuple[str, ...]  # lines of the pip constraints file every call runs with
    messages: tuple[str, ...]  # one line per decision


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def plan_install(host: Host) -> Plan:
    """What to install and why, from the installed distributions and the torch CUDA facts."""
    messages: list[str] = []
    insightface = _insightface(host, messages)
    packages = [p for name in INSIGHTFACE_NEEDS for p in _need(host, name, messages)]
    packages += _onnxruntime(host, messages)
    packages += _opencv(host, messages)
    calls = [PipCall(("install", *packages), f"InstantID requirements: {', '.join(packages)}")] if packages else []
    calls += insightface  # after its needs, so that a failure there leaves no insightface without them
    if calls:
        messages.append("Holding every installed package at its version (protobuf within its major version) "
                        "so that pip only adds packages.")
    else:
        messages.append("Nothing to install.")
    return Plan(tuple(calls), tuple(constraint_lines(host.distributions)), tuple(messages))


def _insightface(host: Host, messages: list[str]) -> list[PipCall]:
    if "insightface" in host.distributions:
        messages.append(f"insightface {host.distributions['insightface']}: installed, kept.")
        return []
    messages.append("insightface: missing; installing it with --no-deps (its metadata asks for opencv-python, "
                    "which would put a second cv2 beside the WebUI's).")
    return [PipCall(("install", "--no-deps", "insightface"), "insightface for InstantID")]


def _need(host: Host, name: str, messages: list[str]) -> list[str]:
    version = host.distributions.get(name)
    limit = NEED_LIMITS.get(name, "")
    if version is None:
        messages.append(f"{name}: missing (insightface needs it); installing {name}{limit}.")
        return [name]
    if limit and not _satisfies(version, limit):
        messages.append(f"{name} {version}: installed, kept, but insightface needs {name}{limit}; if face analysis "
                        f"fails, install {name}{limit} in the WebUI's venv.")
    else:
        messages.append(f"{name} {version}: installed, kept.")
    return []


def _onnxruntime(host: Host, messages: list[str]) -> list[str]:
    cuda = host.torch_cuda
    if host.onnxruntime_importable:
        builds = [f"{n} {v}" for n, v in sorted(host.distributions.items()) if n.startswith("onnxruntime")]
        messages.append(f"{', '.join(builds) or 'onnxruntime'}: installed, kept.")
        return []
    if cuda is None:
        messages.append("onnxruntime: missing; installing onnxruntime (CPU build: torch sees no CUDA GPU).")
        return ["onnxruntime"]
    message = f"onnxruntime: missing; installing onnxruntime-gpu (torch uses CUDA {cuda})."
    if Version(cuda).major < 12:
        message += (" PyPI's onnxruntime-gpu is built for CUDA 12, so face analysis may fall back to the CPU; "
                    "the doctor shows which it uses.")
    messages.append(message)
    return ["onnxruntime-gpu"]


def _opencv(host: Host, messages: list[str]) -> list[str]:
    if host.cv2_importable:
        messages.append("cv2 (OpenCV): importable, kept.")
        return []
    messages.append(f"cv2 (OpenCV): not importable; installing {OPENCV}.")
    return [OPENCV]


def constraint_lines(distributions: dict[str, str]) -> list[str]:
    """Every installed distribution held at its version, then the limits for needs that are not installed."""
    held = [_hold(name, version) for name, version in sorted(distributions.items())]
    limits = [f"{name}{limit}" for name, limit in NEED_LIMITS.items() if name not in distributions]
    return [line for line in held if line] + limits


def _hold(name: str, version: str) -> str | None:
    try:
        parsed = Version(version)
    except InvalidVersion:  # pip cannot read such a pin; the distribution is simply left out
        return None
    if name in HELD_WITHIN_MAJOR:
        return f"{name}>={version},<{parsed.major + 1}"
    return f"{name}=={version}"


def _satisfies(version: str, limit: str) -> bool:
    try:
        return Version(version) in SpecifierSet(limit)
    except InvalidVersion:
        return True  # unreadable versions are not second-guessed


def run_plan(plan: Plan, run_pip: Callable[[str, str], object]) -> None:
    """Print the decisions and run the pip calls through the WebUI's `run_pip(command, desc)`."""
    for message in plan.messages:
        print(f"InstantID: {message}")
    if plan.calls:
        with tempfile.TemporaryDirectory(prefix="instantid-") as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text("\n".join(plan.constraints) + "\n", encoding="utf-8")
            for call in plan.calls:
                _run(run_pip, call, constraints)
    print(CHECK_HINT)


def _run(run_pip: Callable[[str, str], object], call: PipCall, constraints: Path) -> None:
    try:
        run_pip(command_line([*call.args, "-c", str(constraints)]), call.desc)
    except RuntimeError as error:  # launch.run raises RuntimeError with pip's output
        raise RuntimeError(
            f"InstantID could not add {call.desc} while holding the WebUI's packages at their versions. "
            "pip's message below names the conflict; install the package by hand in the WebUI's venv, then run "
            f"`python -m lib_instantid.doctor`.\n{error}"
        ) from error


def command_line(args: list[str]) -> str:
    """Arguments joined for `run_pip`, which hands the line to a shell (sh or cmd.exe): anything beyond plain
    name characters goes in double quotes, which both shells read the same way for these arguments."""
    return " ".join(arg if re.fullmatch(r"[\w.+-]+", arg) else f'"{arg}"' for arg in args)


def installed_distributions() -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:  # the first one found on sys.path is the one that imports
            found.setdefault(canonical(name), dist.version)
    return found


def torch_cuda() -> str | None:
    import torch

    return torch.version.cuda if torch.cuda.is_available() else None


def main() -> None:
    import launch  # the WebUI's launcher; A1111 runs this file with its root on PYTHONPATH

    has_onnxruntime = launch.is_installed("onnxruntime")
    # Importing torch costs seconds at every WebUI start; only the choice of an onnxruntime build needs it.
    cuda = None if has_onnxruntime else torch_cuda()
    host = Host(installed_distributions(), launch.is_installed("cv2"), has_onnxruntime, cuda)
    run_plan(plan_install(host), launch.run_pip)


if __name__ == "__main__":
    main()
