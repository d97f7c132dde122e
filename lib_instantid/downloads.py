"""The model files InstantID can fetch by itself from the Hugging Face Hub: which of them a models folder lacks, their
licences, and a download that is verified, resumable, placed atomically and never run twice at once.

The transfer is huggingface_hub's own (`get_hf_file_metadata`, `http_get`), so HF_ENDPOINT (mirrors), HF_TOKEN,
HF_HUB_OFFLINE and the proxy variables work as everywhere else; the package comes with the WebUI, and its absence
is reported, not worked around. Nothing here runs unless a caller asks for a download.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import face
from .errors import DownloadError, SetupError
from .models import catalog

INSTANTX_REPO = "InstantX/InstantID"
# A copy of insightface's antelopev2 pack as single files: what sd-webui-controlnet and several ComfyUI nodes
# fetch (insightface's own zip has been unavailable at times and unpacks into a nested folder).
ANTELOPEV2_REPO = "DIAMONIK7777/antelopev2"
REVISION = "main"
SDXL_CONTEXT = 2048
PART_SUFFIX = ".part"  # the download in progress, beside its destination; no model folder scan takes it for a model
MANUAL = "download it by hand as models.md describes"
SHA256, GIT_SHA1 = "sha256", "git-sha1"  # the hub's checksums: sha256 for LFS files, the git blob id for the others

INSTANTX_LICENCE = (
    "InstantX/InstantID (IdentityNet and face adapter): the InstantID authors release these checkpoints for "
    "research purposes only (InstantID README, Disclaimer; https://huggingface.co/InstantX/InstantID).")
ANTELOPEV2_LICENCE = (
    "antelopev2 (insightface's face detection and recognition models, from DIAMONIK7777/antelopev2, a copy of "
    "insightface's pack): for non-commercial research purposes only "
    "(https://github.com/deepinsight/insightface#license).")

ProgressCallback = Callable[[int, int, str], None]  # (bytes done, bytes in all, the file in transfer)


@dataclass(frozen=True)
class HubFile:
    repo: str
    path: str  # in the repository
    folder: str  # under the models root; the file keeps its path in the repository there
    licence: str
    size: int | None = None  # bytes, where published
    sha256: str | None = None  # where published; otherwise the hub's own checksum is used

    @property
    def target(self) -> str:
        """Where the file goes, relative to the models root, e.g. "instantid/ip-adapter.bin"."""
        return f"{self.folder}/{self.path}"


@dataclass(frozen=True)
class Download:
    """One file to fetch and where it goes."""

    file: HubFile
    dest: Path

    @property
    def name(self) -> str:
        return self.file.target


# The published sizes and sha256 are the hub's LFS records of these files (the same values in several independent
# manifests); config.json is a plain git file, checked against the git blob id the hub reports.
IDENTITYNET_FILES = (
    HubFile(INSTANTX_REPO, "ControlNetModel/config.json", catalog.OURS, INSTANTX_LICENCE),
    HubFile(INSTANTX_REPO, "ControlNetModel/diffusion_pytorch_model.safetensors", catalog.OURS, INSTANTX_LICENCE,
            2_502_139_136, "c8127be9f174101ebdafee9964d856b49b634435cf6daa396d3f593cf0bbbb05"),
)
ADAPTER_FILES = (
    HubFile(INSTANTX_REPO, "ip-adapter.bin", catalog.OURS, INSTANTX_LICENCE,
            1_691_134_141, "02b3618e36d803784166660520098089a81388e61a93ef8002aa79a5b1c546e1"),
)
# The released IdentityNet and adapter, by the context width of the checkpoints they are for.
RELEASES: dict[int, dict[str, tuple[HubFile, ...]]] = {
    SDXL_CONTEXT: {catalog.IDENTITYNET: IDENTITYNET_FILES, catalog.ADAPTER: ADAPTER_FILES},
}
ANTELOPEV2_FOLDER = "insightface/models/antelopev2"  # flat, where insightface itself looks first
FACE_FILES = (
    HubFile(ANTELOPEV2_REPO, face.DETECTOR_FILE, ANTELOPEV2_FOLDER, ANTELOPEV2_LICENCE,
            16_923_827, "5838f7fe053675b1c7a08b633df49e7af5495cee0493c7dcf6697200b85b5b91"),
    HubFile(ANTELOPEV2_REPO, face.RECOGNIZER_FILE, ANTELOPEV2_FOLDER, ANTELOPEV2_LICENCE,
            260_665_334, "4ab1d6435d639628a6f3e5008dd4f929edf4c4124b1a7169e1048f9fef534cdf"),
)


# --- what is missing ---------------------------------------------------------------------------------------------


def missing(models_root: Path, antelopev2_roots: Sequence[Path], context_dim: int = SDXL_CONTEXT) -> list[Download]:
    """The files to fetch so that `models_root` holds an IdentityNet, a face adapter (both for checkpoints of
    `context_dim`, where a release exists) and the antelopev2 face models (searched in `antelopev2_roots`, as the
    host searches them). A weights file at a destination is replaced: when the catalogue has no fitting model of
    its kind, the file there is unusable or of another family."""
    usable = {e.kind for e in catalog.scan(models_root) if e.error is None and e.context_dim == context_dim}
    wanted: list[HubFile] = []
    for kind, files in RELEASES.get(context_dim, {}).items():
        if kind not in usable:
            wanted += [f for f in files
                       if f.path.endswith(catalog.WEIGHT_SUFFIXES) or not _dest(models_root, f).exists()]
    try:
        face.find_antelopev2(*antelopev2_roots)
    except SetupError:
        wanted += [f for f in FACE_FILES if not _dest(models_root, f).is_file()]
    return [Download(f, _dest(models_root, f)) for f in wanted]


def _dest(models_root: Path, file: HubFile) -> Path:
    return Path(models_root) / file.target


def licences(downloads: Sequence[Download]) -> list[str]:
    """The licence notices of these files, each once: to be shown before they are fetched."""
    return list(dict.fromkeys(d.file.licence for d in downloads))


def total_size(downloads: Sequence[Download]) -> int:
    """The published sizes added up (a file without one, a few kB of configuration, counts 0)."""
    return sum(d.file.size or 0 for d in downloads)


def human_size(size: float) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size:.0f} bytes"


class ProgressLabel:
    """The text for a progress bar fed by `download`'s reports: bytes, speed and time left, e.g.
    "1.2 GB of 4.5 GB, 35.0 MB/s, 1 min 35 s left". The speed counts from the first report, so that the bytes a
    resumed download had already do not inflate it."""

    def __init__(self) -> None:
        self._first: tuple[float, int] | None = None

    def __call__(self, done: int, total: int) -> str:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        started, at_start = self._first
        text = f"{human_size(done)} of {human_size(total)}"
        if now <= started or done <= at_start:
            return text
        rate = (done - at_start) / (now - started)
        left = round((total - done) / rate)
        return f"{text}, {human_size(rate)}/s, " + (f"{left // 60} min {left % 60} s left" if left >= 60 else
                                                       f"{left} s left")


# --- fetching -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Remote:
    """A file as the hub describes it just before the transfer."""

    download: Download
    url: str  # at the commit the hub reported, so that every byte comes from the version checked
    size: int
    algorithm: str  # SHA256 or GIT_SHA1
    digest: str


def download(downloads: Sequence[Download], on_progress: ProgressCallback | None = None, *,
             endpoint: str | None = None) -> list[Path]:
    """Fetch the files into place and return their paths. Each is checked first (found, allowed, unchanged, room on
    its disk: nothing is transferred while any of them fails), then transferred beside its destination, verified
    against its checksum and moved into place in one step. A transfer that breaks off keeps what arrived, and the
    next call continues from there. `on_progress(done, total, name)` gets the bytes done and to do over all the
    files, and the one in transfer. `endpoint`: the hub to ask; None is huggingface_hub's (HF_ENDPOINT).

    Blocking, and safe to call from several threads: a file another call is already fetching is not fetched again;
    this call waits for that transfer, reporting its progress, and carries on with the next file. Raises
    DownloadError (SetupError when huggingface_hub is missing) with the file, the URL and what to do."""
    _require_hub()
    remotes = [_describe(d, endpoint) for d in downloads]
    pending = [r for r in remotes if not _in_place(r)]
    _check_space(pending)
    total, done = sum(r.size for r in pending), 0
    for remote in pending:
        def report(file_done: int, offset: int = done, name: str = remote.download.name) -> None:
            if on_progress is not None:
                on_progress(offset + file_done, total, name)

        _fetch_once(remote, report)
        done += remote.size
    return [d.dest for d in downloads]


def _require_hub() -> None:
    try:
        import huggingface_hub  # noqa: F401 (the functions below import what they use from it)
    except ImportError as error:
        raise SetupError(
            f"Downloading models needs the huggingface_hub package, which the WebUI normally installs, but it cannot "
            f"be imported ({error}). Install it into the WebUI's Python (`pip install huggingface_hub`), or place "
            f"the files by hand as models.md describes.") from error


def _describe(download: Download, endpoint: str | None) -> _Remote:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    file = download.file
    url = hf_hub_url(file.repo, file.path, revision=REVISION, endpoint=endpoint)
    try:
        meta = get_hf_file_metadata(url)
    except _transport_errors() as error:
        raise _failure(error, download, url) from error
    if meta.size is None:
        raise DownloadError(f"{url} did not say how large {download.name} is, so it cannot be fetched safely. Check "
                            f"HF_ENDPOINT if you use a mirror, or {MANUAL}.")
    algorithm, digest = _expected(download, url, meta.etag, meta.size)
    pinned_url = hf_hub_url(file.repo, file.path, revision=meta.commit_hash or REVISION, endpoint=endpoint)
    return _Remote(download, pinned_url, meta.size, algorithm, digest)


def _expected(download: Download, url: str, etag: str | None, size: int) -> tuple[str, str]:
    """The checksum to verify against: the published one (refusing a hub that now serves another file, before a
    byte is fetched), else the hub's."""
    file, reported = download.file, (etag or "").lower()
    hub_sha256 = reported if _is_hex(reported, 64) else None
    if file.sha256 is not None:
        if (hub_sha256 is not None and hub_sha256 != file.sha256) or (file.size is not None and size != file.size):
            raise DownloadError(
                f"{url} now serves another {download.name} (sha256 {hub_sha256 or 'not given'}, {size} bytes) than the "
                f"one this extension knows (sha256 {file.sha256}, {file.size} bytes); nothing was downloaded. Update "
                f"the extension, or {MANUAL}.")
        return SHA256, file.sha256
    if hub_sha256 is not None:
        return SHA256, hub_sha256
    if _is_hex(reported, 40):
        return GIT_SHA1, reported
    raise DownloadError(f"{url} gave no checksum for {download.name} (ETag {etag!r}), so a download could not be "
                        f"verified. Check HF_ENDPOINT if you use a mirror, or {MANUAL}.")


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in "0123456789abcdef" for c in text)


def _in_place(remote: _Remote) -> bool:
    """Already there and intact (e.g. fetched by another call meanwhile)."""
    dest = remote.download.dest
    return dest.is_file() and dest.stat().st_size == remote.size and _digest(dest, remote.algorithm) == remote.digest


def _digest(path: Path, algorithm: str) -> str:
    if algorithm == SHA256:
        hashed = hashlib.sha256()
    else:  # git's blob id: sha1 over a header with the size, then the content
        hashed = hashlib.sha1(b"blob %d\0" % path.stat().st_size, usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(8 * 2**20):
            hashed.update(chunk)
    return hashed.hexdigest()


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + PART_SUFFIX)


def _check_space(pending: Sequence[_Remote]) -> None:
    """Room for what is still to come on each disk, before anything is transferred."""
    by_disk: dict[int, tuple[Path, list[tuple[_Remote, int]]]] = {}
    for remote in pending:
        folder = _existing_folder(remote.download.dest.parent)
        part = _part(remote.download.dest)
        need = remote.size - (part.stat().st_size if part.is_file() else 0)
        by_disk.setdefault(folder.stat().st_dev, (folder, []))[1].append((remote, max(need, 0)))
    for folder, needs in by_disk.values():
        wanted, free = sum(n for _, n in needs), shutil.disk_usage(folder).free
        if wanted > free:
            names = ", ".join(f"{r.download.name} ({human_size(n)}, {r.url})" for r, n in needs)
            raise DownloadError(
                f"Not enough free disk space in {folder} for {names}: {human_size(wanted)} are needed, "
                f"{human_size(free)} are free. Free some space and download again, or {MANUAL}.")


def _existing_folder(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


# --- one transfer at a time per file ------------------------------------------------------------------------------


@dataclass
class _Flight:
    """A transfer in progress, for the calls that wait on it."""

    changed: threading.Condition
    done: int = 0
    finished: bool = False
    error: BaseException | None = None


_flights: dict[Path, _Flight] = {}
_flights_lock = threading.Lock()


def _fetch_once(remote: _Remote, report: Callable[[int], None]) -> None:
    dest = _key(remote)
    with _flights_lock:
        flight = _flights.get(dest)
        leading = flight is None
        if leading:
            flight = _flights[dest] = _Flight(threading.Condition())
    if leading:
        _lead(flight, remote, report)
    else:
        _follow(flight, report)


def _key(remote: _Remote) -> Path:
    return Path(os.path.abspath(remote.download.dest))  # one flight whichever way a caller names the file


def _lead(flight: _Flight, remote: _Remote, report: Callable[[int], None]) -> None:
    def progress(done: int) -> None:
        with flight.changed:
            flight.done = done
            flight.changed.notify_all()
        report(done)

    try:
        if not _in_place(remote):  # another call may have finished it between this call's checks and now
            _transfer(remote, progress)
        progress(remote.size)
    except BaseException as error:
        flight.error = error
        raise
    finally:
        with _flights_lock:
            del _flights[_key(remote)]
        with flight.changed:
            flight.finished = True
            flight.changed.notify_all()


def _follow(flight: _Flight, report: Callable[[int], None]) -> None:
    """Report the other call's progress in this thread until it ends, then end as it did."""
    seen = None
    while True:
        with flight.changed:
            while flight.done == seen and not flight.finished:
                flight.changed.wait()
            seen, finished = flight.done, flight.finished
        report(seen)
        if finished:
            break
    if flight.error is not None:
        raise flight.error


def _transfer(remote: _Remote, progress: Callable[[int], None]) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    download = remote.download
    part = _part(download.dest)
    try:
        download.dest.parent.mkdir(parents=True, exist_ok=True)
        if part.is_file() and part.stat().st_size > remote.size:
            part.unlink()  # left by another version of the file: nothing to resume
        target = open(part, "ab")
    except OSError as error:
        raise _write_failure(error, download, remote.url) from error
    with target:
        resumed = target.tell()
        progress(resumed)
        try:
            # The library's own bar shows the transfer in the console; `on_progress` follows what reaches the disk.
            http_get(
                remote.url, _ReportingFile(target, download, remote.url, progress), resume_size=resumed,
                headers=build_hf_headers(), expected_size=remote.size,
                displayed_filename=download.dest.name)
        except _transport_errors() as error:
            raise _failure(error, download, remote.url, kept=(part, target.tell(), remote.size)) from error
    _verify(remote, part)
    try:
        os.replace(part, download.dest)
    except OSError as error:
        raise _write_failure(error, download, remote.url) from error


class _ReportingFile:
    """The part file as http_get writes it: each write reports the bytes on disk (which also stays right when the
    library restarts a transfer its server would not resume), and a failed write names the disk."""

    def __init__(self, target: BinaryIO, download: Download, url: str, progress: Callable[[int], None]) -> None:
        self._target, self._download, self._url, self._progress = target, download, url, progress

    def write(self, data: bytes) -> int:
        try:
            written = self._target.write(data)
        except OSError as error:
            raise _write_failure(error, self._download, self._url) from error
        self._progress(self._target.tell())
        return written

    def __getattr__(self, name: str) -> object:  # tell, seek, truncate, name: the file's own
        return getattr(self._target, name)


def _verify(remote: _Remote, part: Path) -> None:
    actual = _digest(part, remote.algorithm)
    if actual != remote.digest:
        part.unlink()
        raise DownloadError(
            f"{remote.download.name} from {remote.url} is not the published file ({remote.algorithm} {actual}, "
            f"expected {remote.digest}), so it was deleted. Download it again; if it fails the same way, something "
            f"between you and the hub (a proxy, or a mirror set with HF_ENDPOINT) alters it: get the file another way, "
            f"{MANUAL}.")


# --- failures, in words ---------------------------------------------------------------------------------------------


def _transport_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when a server cannot be reached, refuses or breaks off: requests' errors and the
    library's own (below 1.0) are OSErrors; from 1.0 its HTTP client is httpx, whose transport errors are not."""
    try:
        import httpx
    except ImportError:
        return (OSError,)
    return (OSError, httpx.TransportError)


def _failure(error: BaseException, download: Download, url: str,
             kept: tuple[Path, int, int] | None = None) -> DownloadError:
    from huggingface_hub.utils import HfHubHTTPError, OfflineModeIsEnabled

    name = download.name
    again = "Download again" if kept is None else (
        f"What arrived ({human_size(kept[1])} of {human_size(kept[2])}) is kept in {kept[0]}; download again to "
        "continue from there")
    if isinstance(error, OfflineModeIsEnabled):
        return DownloadError(f"{name} was not fetched from {url}: HF_HUB_OFFLINE is set, which forbids downloads. "
                             f"Unset it and start the WebUI again, or {MANUAL}.")
    response = getattr(error, "response", None) if isinstance(error, HfHubHTTPError) else None
    status = getattr(response, "status_code", None)
    if status == 401:
        return DownloadError(f"{url} asks for a login to give {name} (401). Set HF_TOKEN to a Hugging Face access "
                             f"token (https://huggingface.co/settings/tokens) where the WebUI (or this command) "
                             f"starts, and try again, or {MANUAL}.")
    if status == 403:
        return DownloadError(f"{url} refuses {name} to this account (403): accept the repository's conditions on its "
                             f"page with the account whose token HF_TOKEN holds, or {MANUAL}.")
    if status == 404:
        return DownloadError(f"{name} was not found at {url} (404): the repository or the file may have moved, or a "
                             f"mirror set with HF_ENDPOINT lacks it. Update the extension, or {MANUAL}.")
    if status is not None:
        return DownloadError(f"{url} answered {status} for {name}. {again} later, or {MANUAL}.")
    if kept is not None:
        return DownloadError(f"The transfer of {name} from {url} broke off ({error}). {again}, or {MANUAL}.")
    return DownloadError(f"Cannot reach {url} for {name} ({error}). Check the network connection, or HF_ENDPOINT and "
                         f"HTTPS_PROXY if you use a mirror or a proxy, or {MANUAL}.")


def _write_failure(error: OSError, download: Download, url: str) -> DownloadError:
    folder = download.dest.parent
    if error.errno == errno.ENOSPC:
        return DownloadError(f"The disk holding {folder} filled up while {download.name} was fetched from {url}. Free "
                             f"some space and download again (it continues where it stopped), or {MANUAL}.")
    return DownloadError(f"{download.name} from {url} cannot be written to {folder} ({error}). Check that the folder "
                         f"is writable, or {MANUAL}.")
