"""Fetching the model files: what is missing, and downloads from a local stand-in for the Hugging Face Hub
(tests/fixtures/fake_hub.py) serving the tiny models under the published repositories' names — through the
huggingface_hub of the environment, pointed at the stand-in by its endpoint setting."""
from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lib_instantid import doctor, downloads
from lib_instantid.errors import DownloadError, SetupError
from lib_instantid.face import find_antelopev2, webui_antelopev2_roots
from lib_instantid.models import catalog
from tests.fixtures.face_models import DETECTOR_FILE, RECOGNIZER_FILE, write_antelopev2
from tests.fixtures.fake_hub import COMMIT, TINY, hub, published  # noqa: F401  (fixtures)
from tests.fixtures.tiny_models import CONTEXT_DIM

REPO = Path(__file__).resolve().parents[1]
ADAPTER = "instantid/ip-adapter.bin"
WEIGHTS = "instantid/ControlNetModel/diffusion_pytorch_model.safetensors"
CONFIG = "instantid/ControlNetModel/config.json"
DETECTOR = f"insightface/models/antelopev2/{DETECTOR_FILE}"
RECOGNIZER = f"insightface/models/antelopev2/{RECOGNIZER_FILE}"
EVERYTHING = [CONFIG, WEIGHTS, ADAPTER, DETECTOR, RECOGNIZER]


def wanted(root: Path, context_dim: int = TINY) -> list[downloads.Download]:
    models = root / "models"
    return downloads.missing(models, webui_antelopev2_roots(models, root / "extensions"), context_dim)


def names(items: list[downloads.Download]) -> list[str]:
    return [d.name for d in items]


def one(items: list[downloads.Download], name: str) -> list[downloads.Download]:
    return [d for d in items if d.name == name]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- what is missing ------------------------------------------------------------------------------------------


def test_a_fresh_install_lacks_every_file_of_the_sdxl_release_with_its_size_and_licence(tmp_path):
    missing = wanted(tmp_path, downloads.SDXL_CONTEXT)

    assert names(missing) == EVERYTHING
    assert [d.dest for d in missing] == [tmp_path / "models" / name for name in EVERYTHING]
    assert downloads.total_size(missing) == 2_502_139_136 + 1_691_134_141 + 16_923_827 + 260_665_334
    assert downloads.licences(missing) == [downloads.INSTANTX_LICENCE, downloads.ANTELOPEV2_LICENCE]
    assert "research purposes only" in downloads.INSTANTX_LICENCE
    assert "non-commercial" in downloads.ANTELOPEV2_LICENCE


def test_files_in_place_are_not_offered_and_a_partial_pack_gets_what_it_lacks(tmp_path, published, weight_files):
    models = tmp_path / "models"
    (models / "instantid").mkdir(parents=True)
    shutil.copy(weight_files["sdxl"]["adapter_bin"], models / ADAPTER)
    shutil.copytree(weight_files["sdxl"]["identitynet_folder"], models / "instantid" / "ControlNetModel")
    write_antelopev2(models / "insightface" / "models", missing=(DETECTOR_FILE,))

    assert names(wanted(tmp_path)) == [DETECTOR]
    write_antelopev2(models / "insightface" / "models", nested=True)  # the nested unzip is found
    assert wanted(tmp_path) == []


def test_models_of_another_family_or_damaged_weights_are_replaced_but_a_present_config_is_kept(tmp_path, weight_files):
    models = tmp_path / "models"
    (models / "instantid").mkdir(parents=True)
    shutil.copytree(weight_files["sdxl"]["identitynet_folder"], models / "instantid" / "ControlNetModel")
    (models / ADAPTER).write_bytes(b"PK\x03\x04 cut off")

    # the tiny IdentityNet fits the tiny checkpoints only, not SDXL's 2048-wide ones
    assert names(wanted(tmp_path, downloads.SDXL_CONTEXT)) == [WEIGHTS, ADAPTER, DETECTOR, RECOGNIZER]
    assert names(wanted(tmp_path, CONTEXT_DIM["sd15"])) == [DETECTOR, RECOGNIZER]  # nothing is published for SD1.5


# --- downloading ------------------------------------------------------------------------------------------------


def test_a_fresh_install_gets_every_file_verified_into_place_and_ready_for_the_next_job(tmp_path, published, capsys):
    missing = wanted(tmp_path)
    progress = []

    placed = downloads.download(missing, lambda *report: progress.append(report), endpoint=published.url)

    assert placed == [d.dest for d in missing]
    for d in missing:
        assert d.dest.read_bytes() == published.files[(d.file.repo, d.file.path)].data, d.name
    assert not list((tmp_path / "models").rglob(f"*{downloads.PART_SUFFIX}"))
    assert wanted(tmp_path) == []
    total = sum(len(f.data) for f in published.files.values())
    assert progress[-1] == (total, total, RECOGNIZER)
    # what the next job looks up: the catalogue and the face models, without a restart
    kinds = {e.kind for e in catalog.scan(tmp_path / "models") if e.error is None}
    assert kinds == {catalog.ADAPTER, catalog.IDENTITYNET}
    assert find_antelopev2(tmp_path / "models" / "insightface" / "models") == missing[-1].dest.parent
    assert doctor.main(["--webui", str(tmp_path)]) == 0, capsys.readouterr().out


def test_each_file_comes_from_the_commit_checked_and_the_token_never_reaches_the_cdn(
        tmp_path, published, monkeypatch):
    published.tokens["InstantX/InstantID"] = "secret"
    monkeypatch.setenv("HF_TOKEN", "secret")

    downloads.download(one(wanted(tmp_path), ADAPTER) + one(wanted(tmp_path), CONFIG), endpoint=published.url)

    hub_gets = [r for r in published.requests if r.method == "GET" and r.host.startswith("127.0.0.1")]
    assert hub_gets and all(f"/resolve/{COMMIT}/" in r.path and r.authorization == "Bearer secret" for r in hub_gets)
    cdn = [r for r in published.requests if r.host.startswith("localhost")]
    assert cdn and all(r.authorization is None for r in cdn)


def test_an_interrupted_transfer_keeps_what_arrived_and_the_next_try_resumes_with_a_range(
        tmp_path, published, monkeypatch):
    import huggingface_hub.constants

    # The library writes whole chunks (10 MB): smaller ones, so that the cut comes after some of them.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    item = one(wanted(tmp_path), ADAPTER)
    size = len(published.files[("InstantX/InstantID", "ip-adapter.bin")].data)
    published.drop_after["ip-adapter.bin"] = half = size // 2 // 4096 * 4096

    with pytest.raises(DownloadError) as refused:  # huggingface_hub >= 1 first retries itself, into the outage
        downloads.download(item, endpoint=published.url)

    part = item[0].dest.with_name("ip-adapter.bin" + downloads.PART_SUFFIX)
    assert f"kept in {part}" in str(refused.value) and "models.md" in str(refused.value)
    assert part.stat().st_size == half and not item[0].dest.exists()
    published.outage = False  # the network is back
    downloads.download(item, endpoint=published.url)
    gets = published.content_gets("ip-adapter.bin")
    assert gets[0].range is None and gets[-1].range == f"bytes={half}-"
    assert item[0].dest.read_bytes() == published.files[("InstantX/InstantID", "ip-adapter.bin")].data
    assert not part.exists()


def test_a_corrupted_download_is_refused_and_deleted(tmp_path, published):
    published.corrupt.add("ip-adapter.bin")
    item = one(wanted(tmp_path), ADAPTER)

    with pytest.raises(DownloadError) as refused:
        downloads.download(item, endpoint=published.url)

    message = str(refused.value)
    assert "instantid/ip-adapter.bin" in message and "is not the published file" in message and "deleted" in message
    assert f"{published.url}/InstantX/InstantID/resolve/{COMMIT}/ip-adapter.bin" in message and "models.md" in message
    assert not list(item[0].dest.parent.iterdir())


def test_a_corrupted_plain_file_is_caught_by_the_hubs_git_checksum(tmp_path, published):
    published.corrupt.add("ControlNetModel/config.json")
    item = one(wanted(tmp_path), CONFIG)

    with pytest.raises(DownloadError, match=r"config.json from .* is not the published file \(git-sha1 "):
        downloads.download(item, endpoint=published.url)
    assert not item[0].dest.exists()


def test_a_file_the_hub_now_serves_differently_is_refused_before_any_transfer(tmp_path, published, monkeypatch):
    item = one(wanted(tmp_path), ADAPTER)
    stale = dataclasses.replace(item[0], file=dataclasses.replace(item[0].file, sha256="0" * 64))

    with pytest.raises(DownloadError, match="now serves another instantid/ip-adapter.bin .* Update the extension"):
        downloads.download([stale], endpoint=published.url)
    assert published.content_gets("ip-adapter.bin") == []


def test_a_file_not_on_the_hub_names_the_url_and_the_manual_route(tmp_path, published):
    moved = downloads.Download(downloads.HubFile("InstantX/InstantID", "moved.bin", "instantid", "licence"),
                               tmp_path / "instantid" / "moved.bin")
    elsewhere = dataclasses.replace(moved, file=dataclasses.replace(moved.file, repo="nobody/nothing"))

    for item in (moved, elsewhere):
        with pytest.raises(DownloadError) as refused:
            downloads.download([item], endpoint=published.url)
        message = str(refused.value)
        assert f"{published.url}/{item.file.repo}/resolve/main/moved.bin" in message
        assert "(404)" in message and "instantid/moved.bin" in message and "models.md" in message


def test_a_repository_that_needs_a_login_names_hf_token(tmp_path, published, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    published.tokens["InstantX/InstantID"] = "secret"

    with pytest.raises(DownloadError) as refused:
        downloads.download(one(wanted(tmp_path), ADAPTER), endpoint=published.url)

    message = str(refused.value)
    assert "(401)" in message and "HF_TOKEN" in message and "/InstantX/InstantID/resolve/main/ip-adapter.bin" in message
    assert "models.md" in message


def test_no_network_names_the_url_and_what_to_check(tmp_path, published, monkeypatch):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    # huggingface_hub 0.3x retries an unreachable server for ~23 s before it gives up; the waiting is not tested
    monkeypatch.setattr(time, "sleep", lambda seconds: None)

    with pytest.raises(DownloadError) as refused:
        downloads.download(one(wanted(tmp_path), DETECTOR), endpoint=endpoint)

    message = str(refused.value)
    assert message.startswith(f"Cannot reach {endpoint}/DIAMONIK7777/antelopev2/resolve/main/{DETECTOR_FILE} for "
                              f"{DETECTOR}")
    assert "network" in message and "HF_ENDPOINT" in message and "models.md" in message


def test_a_full_disk_is_refused_before_any_transfer(tmp_path, published, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 100, 100))

    with pytest.raises(DownloadError) as refused:
        downloads.download(wanted(tmp_path), endpoint=published.url)

    message = str(refused.value)
    assert message.startswith(f"Not enough free disk space in {tmp_path} for {CONFIG} (")
    adapter = downloads.human_size(len(published.files[("InstantX/InstantID", "ip-adapter.bin")].data))
    assert f"{ADAPTER} ({adapter}, {published.url}/InstantX/InstantID/resolve/{COMMIT}/ip-adapter.bin)" in message
    assert "100 bytes are free" in message and "models.md" in message
    assert not [r for r in published.requests if r.method == "GET"]


def test_a_second_request_during_a_download_waits_for_it_and_downloads_nothing(tmp_path, published):
    item = one(wanted(tmp_path), ADAPTER)
    published.hold = threading.Event()
    joined = threading.Event()
    results, errors = {}, []

    def request(who: str, on_progress=None) -> None:
        try:
            results[who] = downloads.download(item, on_progress, endpoint=published.url)
        except Exception as error:  # reported below, in the test's own thread
            errors.append(error)

    first = threading.Thread(target=request, args=("first",))
    first.start()
    deadline = time.monotonic() + 5
    while not published.content_gets("ip-adapter.bin") and time.monotonic() < deadline:
        time.sleep(0.01)
    second = threading.Thread(target=request, args=("second", lambda *report: joined.set()))
    second.start()
    assert joined.wait(5), "the second request did not join the first"
    published.hold.set()
    first.join(10)
    second.join(10)

    assert errors == [] and results["first"] == results["second"] == [item[0].dest]
    assert len(published.content_gets("ip-adapter.bin")) == 1
    assert item[0].dest.read_bytes() == published.files[("InstantX/InstantID", "ip-adapter.bin")].data


def test_a_file_already_in_place_is_not_fetched_again(tmp_path, published):
    item = one(wanted(tmp_path), ADAPTER)
    downloads.download(item, endpoint=published.url)

    assert downloads.download(item, endpoint=published.url) == [item[0].dest]
    assert len(published.content_gets("ip-adapter.bin")) == 1


def test_progress_is_reported_in_bytes_over_all_files_as_they_arrive(tmp_path, published, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    items = one(wanted(tmp_path), DETECTOR) + one(wanted(tmp_path), RECOGNIZER)
    sizes = [len(published.files[(d.file.repo, d.file.path)].data) for d in items]
    reports = []

    downloads.download(items, lambda *report: reports.append(report), endpoint=published.url)

    total = sum(sizes)
    assert {t for _, t, _ in reports} == {total}
    assert [d for d, _, _ in reports] == sorted(d for d, _, _ in reports)
    assert len(reports) > sum(sizes) // 4096  # every chunk
    assert [n for _, _, n in reports] == sorted((n for _, _, n in reports), key=[DETECTOR, RECOGNIZER].index)
    assert (sizes[0], total, DETECTOR) in reports and reports[-1] == (total, total, RECOGNIZER)


def test_the_progress_label_gives_bytes_speed_and_time_left(monkeypatch):
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(downloads.time, "monotonic", lambda: next(clock))
    label = downloads.ProgressLabel()

    assert label(1_000_000_000, 4_500_000_000) == "1.0 GB of 4.5 GB"  # resumed: what was there is not speed
    assert label(1_100_000_000, 4_500_000_000) == "1.1 GB of 4.5 GB, 50.0 MB/s, 1 min 8 s left"
    assert label(4_400_000_000, 4_500_000_000) == "4.4 GB of 4.5 GB, 850.0 MB/s, 0 s left"


def test_offline_mode_is_named(tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub.utils import OfflineModeIsEnabled

    def offline(url, *args, **kwargs):
        raise OfflineModeIsEnabled(f"Cannot reach {url}: offline mode is enabled.")

    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", offline)
    with pytest.raises(DownloadError, match=f"{DETECTOR} was not fetched from .*: HF_HUB_OFFLINE is set.*models.md"):
        downloads.download(one(wanted(tmp_path, downloads.SDXL_CONTEXT), DETECTOR))


def test_without_huggingface_hub_the_error_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)

    with pytest.raises(SetupError, match="needs the huggingface_hub package.*models.md"):
        downloads.download(wanted(tmp_path, downloads.SDXL_CONTEXT))


# --- the doctor -------------------------------------------------------------------------------------------------


def test_doctor_download_shows_files_and_licences_and_a_no_fetches_nothing(tmp_path, published, capsys, monkeypatch):
    asked = []
    monkeypatch.setattr("builtins.input", lambda question: asked.append(question) or "n")
    monkeypatch.setattr(downloads, "RELEASES", {downloads.SDXL_CONTEXT: downloads.RELEASES[TINY]})

    assert doctor.main(["--webui", str(tmp_path), "--download"]) == 1

    out = capsys.readouterr().out
    assert f"  {ADAPTER}  (" in out and downloads.INSTANTX_LICENCE in out and downloads.ANTELOPEV2_LICENCE in out
    assert asked and asked[0].startswith("Download 5 file(s), ")
    assert "MISSING download: declined: nothing was downloaded" in out
    assert published.requests == []


def test_without_download_the_doctor_fetches_nothing_and_says_how(tmp_path, published, capsys):
    assert doctor.main(["--webui", str(tmp_path)]) == 1

    assert "`python -m lib_instantid.doctor --download`" in capsys.readouterr().out
    assert published.requests == []


def test_doctor_download_yes_fetches_from_hf_endpoint_and_checks_again(tmp_path, published):
    """In a fresh interpreter with HF_ENDPOINT set, as a user runs it (the table unpinned: the tiny files stand in)."""
    code = ("import dataclasses, sys\n"
            "from lib_instantid import downloads as d\n"
            "unpinned = lambda files: tuple(dataclasses.replace(f, size=None, sha256=None) for f in files)\n"
            "d.RELEASES = {k: {kind: unpinned(v) for kind, v in r.items()} for k, r in d.RELEASES.items()}\n"
            "d.FACE_FILES = unpinned(d.FACE_FILES)\n"
            "from lib_instantid.doctor import main\n"
            f"sys.exit(main(['--webui', {str(tmp_path)!r}, '--download', '--yes']))\n")
    env = {**os.environ, "HF_ENDPOINT": published.url}

    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert downloads.ANTELOPEV2_LICENCE in out and "Checking again:" in out
    for name in EVERYTHING:
        assert f"OK      {name}: downloaded and verified: {tmp_path / 'models' / name}" in out
    assert out.rstrip().endswith("Everything InstantID needs is in place.")
