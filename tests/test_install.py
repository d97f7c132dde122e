"""install.py: its decisions on made-up environments, and its execution against a stand-in `launch` module."""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import pytest

import install
from install import Host, PipCall, command_line, constraint_lines, plan_install

# What A1111 v1.10.1's venv holds of the packages that matter here (and a few others).
WEBUI_DISTRIBUTIONS = {
    "numpy": "1.26.2",
    "protobuf": "3.20.0",
    "torch": "2.1.2+cu121",
    "opencv-python": "4.8.1.78",
    "scikit-image": "0.21.0",
    "scipy": "1.11.4",
    "tqdm": "4.66.1",
    "requests": "2.31.0",
    "pillow": "9.5.0",
    "pydantic": "1.10.13",
}
INSIGHTFACE_READY = {"insightface": "2.1", "onnx": "1.17.0", "onnxruntime-gpu": "1.26.0", "protobuf": "3.20.3"}


def host(distributions=None, *, cv2=True, onnxruntime=False, cuda="12.1") -> Host:
    return Host(dict(WEBUI_DISTRIBUTIONS if distributions is None else distributions), cv2, onnxruntime, cuda)


def installed_packages(plan) -> list[str]:
    """The package names the plan's pip calls install, without options."""
    return [arg for call in plan.calls for arg in call.args[1:] if not arg.startswith("-")]


def test_fresh_webui_with_cuda_gets_onnxruntime_gpu_and_insightface_without_its_dependencies():
    plan = plan_install(host())

    assert plan.calls == (
        PipCall(("install", "onnx", "onnxruntime-gpu"), "InstantID requirements: onnx, onnxruntime-gpu"),
        PipCall(("install", "--no-deps", "insightface"), "insightface for InstantID"),
    )
    assert any("onnxruntime-gpu" in m and "CUDA 12.1" in m for m in plan.messages)


def test_cpu_only_host_gets_the_cpu_onnxruntime():
    plan = plan_install(host(cuda=None))

    assert "onnxruntime" in installed_packages(plan)
    assert "onnxruntime-gpu" not in installed_packages(plan)
    assert any("CPU build" in m for m in plan.messages)


def test_everything_present_installs_nothing():
    plan = plan_install(host({**WEBUI_DISTRIBUTIONS, **INSIGHTFACE_READY}, onnxruntime=True))

    assert plan.calls == ()
    assert plan.messages[-1] == "Nothing to install."
    assert any(m.startswith("insightface 2.1: installed, kept") for m in plan.messages)


def test_any_importable_cv2_is_kept_and_none_gets_the_headless_build():
    headless = {k: v for k, v in WEBUI_DISTRIBUTIONS.items() if k != "opencv-python"}
    headless["opencv-python-headless"] = "4.11.0.86"

    assert not any(p.startswith("opencv") for p in installed_packages(plan_install(host(headless, cv2=True))))
    assert "opencv-python-headless" in installed_packages(plan_install(host(cv2=False)))


def test_constraints_hold_numpy_exactly_and_protobuf_within_its_major_version():
    lines = plan_install(host()).constraints

    assert "numpy==1.26.2" in lines
    assert "torch==2.1.2+cu121" in lines
    assert "protobuf>=3.20.0,<4" in lines
    # Every installed distribution is held; nothing the plan installs is.
    assert {re.split("[=<>]", line)[0] for line in lines} >= set(WEBUI_DISTRIBUTIONS)
    assert not any(line.startswith(p + "=") for p in installed_packages(plan_install(host())) for line in lines)


def test_missing_scikit_image_is_installed_capped_below_2_2():
    without = {k: v for k, v in WEBUI_DISTRIBUTIONS.items() if k != "scikit-image"}
    plan = plan_install(host(without))

    assert "scikit-image" in installed_packages(plan)
    assert "scikit-image<2.2" in plan.constraints
    assert "onnx>=1.13" in plan.constraints  # insightface 2.1's own floor, lost with --no-deps


def test_installed_scikit_image_too_new_is_kept_with_a_note():
    plan = plan_install(host({**WEBUI_DISTRIBUTIONS, "scikit-image": "2.2.0"}))

    assert "scikit-image" not in installed_packages(plan)
    assert "scikit-image==2.2.0" in plan.constraints
    assert any("scikit-image 2.2.0" in m and "scikit-image<2.2" in m for m in plan.messages)


def test_an_installed_cpu_onnxruntime_is_kept():
    plan = plan_install(host({**WEBUI_DISTRIBUTIONS, "onnxruntime": "1.16.3"}, onnxruntime=True))

    assert not any(p.startswith("onnxruntime") for p in installed_packages(plan))
    assert "onnxruntime==1.16.3" in plan.constraints
    assert "onnxruntime 1.16.3: installed, kept." in plan.messages


def test_other_onnxruntime_builds_are_kept_without_a_note():
    plan = plan_install(host({**WEBUI_DISTRIBUTIONS, "onnxruntime-directml": "1.17.0"}, onnxruntime=True))

    assert not any(p.startswith("onnxruntime") for p in installed_packages(plan))
    assert "onnxruntime-directml 1.17.0: installed, kept." in plan.messages


def test_cuda_11_gets_a_note_that_face_analysis_may_use_the_cpu():
    message = next(m for m in plan_install(host(cuda="11.8")).messages if m.startswith("onnxruntime:"))

    assert "CUDA 12" in message and "CPU" in message


def test_versions_pip_cannot_read_are_not_pinned():
    assert constraint_lines({"numpy": "1.26.2", "odd": "not a version"}) == [
        "numpy==1.26.2", "onnx>=1.13", "scikit-image<2.2"]


def test_command_line_quotes_paths_for_both_shells():
    line = command_line(["install", "--no-deps", "insightface", "-c", r"C:\Program Files\t\constraints.txt"])

    assert line == r'install --no-deps insightface -c "C:\Program Files\t\constraints.txt"'


def test_distribution_names_are_compared_the_way_pip_does():
    assert install.canonical("Scikit_Image") == install.canonical("scikit-image") == "scikit-image"
    assert install.canonical("opencv.python") == "opencv-python"


# --- execution, with a stand-in for the WebUI's launch module -------------------------------------------------


@pytest.fixture
def launch_stub(monkeypatch):
    """A `launch` module recording run_pip calls, with the constraints file's text as it was during each call."""
    calls = []

    def run_pip(command, desc=None, live=False):
        path = command.split(" -c ")[1].strip('"')
        calls.append((command, desc, Path(path).read_text(encoding="utf-8"), path))
        return ""

    stub = types.SimpleNamespace(run_pip=run_pip, is_installed=lambda name: name == "cv2")
    monkeypatch.setitem(sys.modules, "launch", stub)
    monkeypatch.setattr(install, "installed_distributions", lambda: dict(WEBUI_DISTRIBUTIONS))
    monkeypatch.setattr(install, "torch_cuda", lambda: "12.1")
    return calls


def test_main_runs_each_pip_call_with_the_constraints_file_and_removes_it(launch_stub, capsys):
    install.main()

    commands = [command for command, *_ in launch_stub]
    assert commands[0].startswith("install onnx onnxruntime-gpu -c ")
    assert commands[1].startswith("install --no-deps insightface -c ")
    for _, desc, constraints, path in launch_stub:
        assert "numpy==1.26.2\n" in constraints and "protobuf>=3.20.0,<4\n" in constraints
        assert not Path(path).exists()  # a temporary file, gone after the run
    output = capsys.readouterr().out.splitlines()
    assert "InstantID: onnxruntime: missing; installing onnxruntime-gpu (torch uses CUDA 12.1)." in output
    assert output[-1] == install.CHECK_HINT


def test_main_runs_no_pip_when_nothing_is_missing(launch_stub, monkeypatch, capsys):
    monkeypatch.setattr(install, "installed_distributions", lambda: {**WEBUI_DISTRIBUTIONS, **INSIGHTFACE_READY})
    monkeypatch.setattr(sys.modules["launch"], "is_installed", lambda name: True)
    monkeypatch.setattr(install, "torch_cuda", lambda: pytest.fail("torch is imported only to choose an onnxruntime"))

    install.main()

    assert launch_stub == []
    assert "InstantID: Nothing to install." in capsys.readouterr().out


def test_a_pip_failure_says_what_could_not_be_added(launch_stub, monkeypatch):
    def failing_run_pip(command, desc=None, live=False):
        raise RuntimeError("Couldn't install onnx. ResolutionImpossible")

    monkeypatch.setattr(sys.modules["launch"], "run_pip", failing_run_pip)

    with pytest.raises(RuntimeError, match="could not add InstantID requirements: onnx, onnxruntime-gpu") as error:
        install.main()
    assert "ResolutionImpossible" in str(error.value)


def test_installed_distributions_reads_this_environment():
    found = install.installed_distributions()

    assert found["numpy"] == __import__("numpy").__version__
    assert "pytest" in found
