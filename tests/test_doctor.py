"""The doctor command, run in-process on made-up WebUI folders with tiny weights and synthetic face models."""
from __future__ import annotations

import shutil
import subprocess
from importlib import metadata
import sys
from pathlib import Path

import numpy as np
import pytest
import skimage.data
from PIL import Image

from lib_instantid import doctor
from tests.fixtures.face_models import DETECTOR_FILE, RECOGNIZER_FILE, expected_face, paint_marker
from tests.fixtures.tiny_models import CONTEXT_DIM

REPO = Path(__file__).resolve().parents[1]
STATUSES = ("OK", "MISSING", "PROBLEM")  # each check's line starts with one, padded to 8 characters
TINY_SDXL = f"a model with context width {CONTEXT_DIM['sdxl']}"  # the tiny "sdxl" files are 64 wide, not 2048


def run(capsys, *argv: str) -> tuple[int, list[str]]:
    status = doctor.main(list(argv))
    return status, capsys.readouterr().out.splitlines()


def line(lines: list[str], status: str, subject: str) -> str:
    """The one line for `subject`, asserting its status."""
    found = [text for text in lines if text[:8].strip() in STATUSES and text[8:].split(": ", 1)[0] == subject]
    assert len(found) == 1, f"expected one line for {subject!r} in:\n" + "\n".join(lines)
    assert found[0].startswith(status + " "), found[0]
    return found[0]


def statuses(lines: list[str]) -> set[str]:
    return {text[:8].strip() for text in lines if text[:8].strip() in STATUSES}


@pytest.fixture
def webui(tmp_path, weight_files, antelopev2_root) -> Path:
    """A WebUI folder holding the tiny SDXL-layout files in our own layout and the face models in insightface's."""
    root = tmp_path / "webui"
    ours = root / "models" / "instantid"
    ours.mkdir(parents=True)
    shutil.copy(weight_files["sdxl"]["adapter_bin"], ours / "ip-adapter.bin")
    shutil.copytree(weight_files["sdxl"]["identitynet_folder"], ours / "ControlNetModel")
    shutil.copytree(antelopev2_root / "antelopev2", root / "models" / "insightface" / "models" / "antelopev2")
    return root


def face_photo(path: Path, centre=(240, 120), side=24) -> Path:
    Image.fromarray(paint_marker(skimage.data.astronaut(), centre, side, "cyan")).save(path)
    return path


# --- folders and model files ----------------------------------------------------------------------------------


def test_empty_folder_reports_every_missing_file_and_fails(tmp_path, capsys):
    status, lines = run(capsys, "--webui", str(tmp_path))

    assert status == 1
    instantid = tmp_path / "models" / "instantid"
    assert f"ip-adapter.bin (InstantX/InstantID on Hugging Face, ~1.7 GB) in {instantid}" in line(
        lines, "MISSING", "face adapter")
    assert "ControlNetModel/diffusion_pytorch_model.safetensors" in line(lines, "MISSING", "IdentityNet")
    antelopev2 = line(lines, "MISSING", "antelopev2 face models")
    assert f"{DETECTOR_FILE} and {RECOGNIZER_FILE} in {tmp_path / 'models' / 'insightface' / 'models' / 'antelopev2'}" \
        in antelopev2 and "models.md" in antelopev2
    assert not any("Traceback" in text for text in lines)


def test_complete_webui_passes(webui, capsys):
    status, lines = run(capsys, "--webui", str(webui))

    assert status == 0, "\n".join(lines)
    assert statuses(lines) == {"OK"}
    assert line(lines, "OK", "instantid/ip-adapter.bin").endswith(f"face adapter for {TINY_SDXL}")
    assert line(lines, "OK", "instantid/ControlNetModel").endswith(f"IdentityNet for {TINY_SDXL}")
    assert "instantid/ip-adapter.bin + IdentityNet instantid/ControlNetModel" in line(
        lines, "OK", f"pair for {TINY_SDXL}")
    assert line(lines, "OK", "antelopev2 face models").endswith(str(webui / "models/insightface/models/antelopev2"))
    assert lines[-1] == "Everything InstantID needs is in place."


def test_controlnet_folder_files_named_for_instantid_are_checked_and_others_ignored(tmp_path, weight_files, capsys):
    controlnet = tmp_path / "models" / "ControlNet"
    controlnet.mkdir(parents=True)
    shutil.copy(weight_files["sd15"]["adapter_safetensors"], controlnet / "ip-adapter_instant_id_sd15.safetensors")
    shutil.copy(weight_files["sd15"]["identitynet_single"], controlnet / "control_instant_id_sd15.safetensors")
    shutil.copy(weight_files["sd15"]["identitynet_single"], controlnet / "control_v11p_sd15_canny.safetensors")

    _, lines = run(capsys, "--webui", str(tmp_path))

    line(lines, "OK", "ControlNet/ip-adapter_instant_id_sd15.safetensors")
    line(lines, "OK", "ControlNet/control_instant_id_sd15.safetensors")
    line(lines, "OK", "pair for SD1.5")
    assert not any("canny" in text for text in lines)


def test_adapter_and_identitynet_of_different_families_are_no_pair(tmp_path, weight_files, capsys):
    ours = tmp_path / "models" / "instantid"
    ours.mkdir(parents=True)
    shutil.copy(weight_files["sdxl"]["adapter_bin"], ours / "ip-adapter.bin")
    shutil.copytree(weight_files["sd15"]["identitynet_folder"], ours / "ControlNetModel")

    status, lines = run(capsys, "--webui", str(tmp_path))

    assert status == 1
    assert f"face adapters are for {TINY_SDXL} but the IdentityNets for SD1.5" in line(
        lines, "MISSING", "matching pair")


def test_cut_off_damaged_and_wrong_files_are_problems_with_the_reason(webui, weight_files, capsys):
    weights = webui / "models/instantid/ControlNetModel/diffusion_pytorch_model.safetensors"
    full = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.truncate(full - 100)
    (webui / "models/instantid/broken-adapter.bin").write_bytes(b"<html>rate limited</html>")
    from safetensors.torch import save_file
    import torch

    save_file({"image_proj.proj.weight": torch.zeros(8, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 8),
               "ip_adapter.1.to_v_ip.weight": torch.zeros(4, 8)}, str(webui / "models/instantid/plain.safetensors"))

    status, lines = run(capsys, "--webui", str(webui))

    assert status == 1
    assert f"is incomplete ({full - 100} of {full} bytes): download it again" in line(
        lines, "PROBLEM", "instantid/ControlNetModel")
    assert "could not be read: it is not a torch weights file at all (it starts with b'<html>rate l') (25 bytes)" \
        in line(lines, "PROBLEM", "instantid/broken-adapter.bin")
    assert "IP-Adapter of another kind" in line(lines, "PROBLEM", "instantid/plain.safetensors")
    assert "MISSING IdentityNet: put" in "\n".join(lines)  # the only IdentityNet is unusable


def test_wrong_layout_is_a_problem_not_a_traceback(webui, capsys):
    from safetensors.torch import load_file, save_file

    weights = webui / "models/instantid/ControlNetModel/diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors.pop(next(k for k in tensors if k.startswith("controlnet_down_blocks.")))
    save_file(tensors, str(weights))

    status, lines = run(capsys, "--webui", str(webui))

    assert status == 1
    assert "does not have the layout of an InstantID IdentityNet" in line(
        lines, "PROBLEM", "instantid/ControlNetModel")


# --- face models ------------------------------------------------------------------------------------------------


def test_nested_unzip_of_antelopev2_is_found(webui, capsys):
    pack = webui / "models/insightface/models/antelopev2"
    shutil.move(pack, webui / "nested")
    pack.mkdir()
    shutil.move(webui / "nested", pack / "antelopev2")

    status, lines = run(capsys, "--webui", str(webui))

    assert status == 0
    assert line(lines, "OK", "antelopev2 face models").endswith(str(pack / "antelopev2"))


def test_partial_antelopev2_names_the_missing_file(webui, capsys):
    pack = webui / "models/insightface/models/antelopev2"
    (pack / RECOGNIZER_FILE).unlink()

    status, lines = run(capsys, "--webui", str(webui))

    assert status == 1
    assert f"({pack} exists but lacks {RECOGNIZER_FILE})" in line(lines, "MISSING", "antelopev2 face models")


def test_a_damaged_face_model_is_a_problem(webui, capsys):
    (webui / "models/insightface/models/antelopev2" / DETECTOR_FILE).write_bytes(b"not onnx")

    status, lines = run(capsys, "--webui", str(webui))

    assert status == 1
    assert "download the antelopev2 pack again" in line(lines, "PROBLEM", "face analysis")


# --- a photo -----------------------------------------------------------------------------------------------------


def test_face_photo_reports_the_face_and_writes_the_overlay_beside_it(webui, tmp_path, capsys, recwarn):
    photo = face_photo(tmp_path / "me.png")

    status, lines = run(capsys, "--webui", str(webui), "--face", str(photo))

    assert status == 0, "\n".join(lines)
    box, _ = expected_face((240, 120), 24)
    width = int(round(box[2] - box[0]))
    face = line(lines, "OK", "face #1")
    assert f"{width}x{width} px at ({int(box[0])}, {int(box[1])})" in face and "(chosen: the largest)" in face
    overlay_path = tmp_path / "me-instantid.png"
    assert "1 face(s) found in the photo me.png" in line(lines, "OK", "overlay")
    assert line(lines, "OK", "overlay").endswith(f"Written to {overlay_path}")
    overlay = np.asarray(Image.open(overlay_path))
    assert overlay.shape == (512, 512, 3)
    assert not np.array_equal(overlay, np.asarray(Image.open(photo)))
    assert not [w for w in recwarn if "estimate" in str(w.message)]  # insightface's scikit-image warning


def test_out_names_the_overlay_file(webui, tmp_path, capsys):
    out = tmp_path / "sub" / "overlay.png"
    out.parent.mkdir()

    status, lines = run(capsys, "--webui", str(webui), "--face", str(face_photo(tmp_path / "me.png")),
                        "--out", str(out))

    assert status == 0
    assert out.is_file() and not (tmp_path / "me-instantid.png").exists()


def test_photo_without_a_face_says_what_to_try_and_writes_nothing(webui, tmp_path, capsys):
    photo = tmp_path / "empty.png"
    Image.fromarray(skimage.data.astronaut()).save(photo)  # the synthetic detector sees only painted markers

    status, lines = run(capsys, "--webui", str(webui), "--face", str(photo))

    assert status == 1
    message = line(lines, "PROBLEM", "face")
    assert "No face found in the photo empty.png" in message and "frontal" in message
    assert not (tmp_path / "empty-instantid.png").exists()


def test_exif_rotated_photo_is_analysed_and_drawn_as_displayed(webui, tmp_path, capsys):
    displayed = paint_marker(skimage.data.astronaut()[:, :400], (300, 120), 24, "cyan")  # 400 wide, 512 high
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)
    exif = stored.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    stored.save(tmp_path / "phone.png", exif=exif)  # lossless, so the marker keeps its exact size

    status, lines = run(capsys, "--webui", str(webui), "--face", str(tmp_path / "phone.png"))

    assert status == 0, "\n".join(lines)
    box, _ = expected_face((300, 120), 24)
    assert f"at ({int(box[0])}, {int(box[1])})" in line(lines, "OK", "face #1")
    assert Image.open(tmp_path / "phone-instantid.png").size == (400, 512)


def test_unreadable_photo_is_a_problem(webui, tmp_path, capsys):
    photo = tmp_path / "notes.png"
    photo.write_text("not an image")

    status, lines = run(capsys, "--webui", str(webui), "--face", str(photo))

    assert status == 1
    assert f"cannot open {photo} as an image" in line(lines, "PROBLEM", "photo")


def test_photo_without_face_models_is_not_analysed(tmp_path, capsys):
    status, lines = run(capsys, "--webui", str(tmp_path), "--face", str(face_photo(tmp_path / "me.png")))

    assert status == 1
    assert "face analysis is not ready" in line(lines, "PROBLEM", "photo")


# --- finding the WebUI, and missing packages ---------------------------------------------------------------------


def test_webui_root_is_found_above_the_extension(tmp_path, monkeypatch, capsys):
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "modules").mkdir(parents=True)
    (webui / "webui.py").write_text("")
    package = webui / "extensions" / "sd-webui-instantid" / "lib_instantid"
    package.mkdir(parents=True)
    monkeypatch.setattr(doctor, "PACKAGE_DIR", package)

    assert doctor.find_webui_root(package) == webui
    _, lines = run(capsys)
    assert line(lines, "OK", "WebUI folder").endswith(f"{webui} (the WebUI this extension is in)")
    line(lines, "MISSING", "face adapter")


def test_without_a_webui_the_model_checks_ask_for_one(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "PACKAGE_DIR", tmp_path / "ext" / "lib_instantid")

    status, lines = run(capsys)

    assert status == 1
    assert "pass --webui DIR" in line(lines, "MISSING", "WebUI folder")
    assert not any("face adapter" in text for text in lines)


def test_missing_packages_are_named_with_their_fix(webui, monkeypatch, capsys):
    hidden = {"insightface", "onnxruntime", "onnxruntime-gpu"}
    real = doctor.installed_version
    monkeypatch.setattr(doctor, "installed_version", lambda name: None if name in hidden else real(name))

    status, lines = run(capsys, "--webui", str(webui))

    assert status == 1
    assert "install.py adds it" in line(lines, "MISSING", "insightface")
    assert "onnxruntime-gpu" in line(lines, "MISSING", "onnxruntime")
    assert not any(text.startswith("OK      onnxruntime providers") for text in lines)


@pytest.mark.parametrize("version, status", [("2.0.1+cu118", doctor.PROBLEM), ("2.1.2+cu121", doctor.OK),
                                             ("2.13.0+cpu", doctor.OK)])
def test_torch_older_than_supported_is_a_problem_with_its_version(monkeypatch, version, status):
    monkeypatch.setattr(doctor, "installed_version", {"torch": version}.get)

    finding = doctor.check_package(next(p for p in doctor.PACKAGES if p.label == "torch"))

    assert finding.status == status
    assert finding.detail.startswith(version)
    if status == doctor.PROBLEM:
        assert "needs torch 2.1 or newer" in finding.detail


def test_the_report_names_the_torch_in_use(webui, capsys):
    import torch

    _, lines = run(capsys, "--webui", str(webui))

    assert line(lines, "OK", "torch") == f"OK      torch: {metadata.version('torch')}"
    assert torch.__version__.startswith(metadata.version("torch"))  # the one imported (the build suffix aside)


def test_two_onnxruntime_builds_are_a_problem(monkeypatch):
    versions = {"onnxruntime": "1.16.3", "onnxruntime-gpu": "1.17.1"}
    monkeypatch.setattr(doctor, "installed_version", versions.get)

    finding = doctor.check_package(next(p for p in doctor.PACKAGES if p.label == "onnxruntime"))

    assert finding.status == doctor.PROBLEM
    assert "pip uninstall -y onnxruntime-gpu onnxruntime" in finding.detail


def test_runs_without_torch_opencv_and_the_face_packages(tmp_path):
    """Imports blocked in a fresh interpreter: every check still reports, none raises."""
    blocked = ("torch", "cv2", "insightface", "onnxruntime", "safetensors")
    code = ("import sys\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "from lib_instantid.doctor import main\n"
            f"sys.exit(main(['--webui', {str(tmp_path)!r}]))\n")

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert "not checked" in line(lines, "PROBLEM", "model files")
    assert "not checked" in line(lines, "PROBLEM", "antelopev2 face models")
    assert "cannot be loaded" in line(lines, "PROBLEM", "face analysis runtime")
