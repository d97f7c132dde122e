"""The installed InstantID models: found in the host's model folders, named relative to them, described by what they
are made for, and chosen for the loaded UNet.

Only files listed here can be opened by name, so a request naming `../x`, an absolute path or anything else
outside the model folders never reaches the file system. A file that cannot be read is listed with the reason, so
that choosing it, the model list and the doctor all say what is wrong with it.
"""
from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from ..args import CHOICE_SEPARATOR
from ..errors import ModelError
from .architecture import Architecture, adapter_architecture, identitynet_architecture
from .loading import FETCH_HINT, SEE_MODELS, IDENTITYNET_WEIGHTS, check_adapter_weights, check_identitynet_weights, read_pickle

IDENTITYNET, ADAPTER = "identitynet", "adapter"
LABELS = {IDENTITYNET: "IdentityNet", ADAPTER: "face adapter"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# Folders under the WebUI's models folder, in the order "Automatic" prefers them: our own, then the ControlNet folder
# where sd-webui-controlnet users keep the same files (only what is named for InstantID is taken from there).
OURS = "instantid"
MODEL_FOLDERS = (OURS, "ControlNet")
SUBFOLDER_DEPTH = 2  # e.g. instantid/sdxl/ControlNetModel/


@dataclass(frozen=True)
class ModelEntry:
    name: str  # relative to the models root, with '/', e.g. "instantid/ip-adapter.bin"
    path: Path
    kind: str  # IDENTITYNET or ADAPTER
    architecture: Architecture | None  # what the weights are made for; None when the file is unusable
    error: str | None = None  # why the file is unusable

    @property
    def context_dim(self) -> int | None:
        return None if self.architecture is None else self.architecture.context_dim

    @property
    def family(self) -> str:
        return "unusable" if self.architecture is None else self.architecture.family

    def fits(self, unet: Architecture) -> bool:
        if self.architecture is None:
            return False
        if self.kind == ADAPTER:
            return self.architecture.adapter_fits(unet)
        return self.architecture.identitynet_fits(unet)

    def describe(self) -> str:
        """What the weights are made for, in words."""
        if self.architecture is None:
            return f"unusable: {self.error}"
        if self.kind == ADAPTER:
            return self.architecture.describe_adapter()
        return self.architecture.describe_identitynet()


def scan(models_root: Path, folders: tuple[str, ...] = MODEL_FOLDERS) -> list[ModelEntry]:
    """Every IdentityNet and face adapter in `models_root/<folder>` and its subfolders, folder by folder, each
    sorted by name."""
    entries: list[ModelEntry] = []
    for folder in folders:
        entries += _scan_folder(models_root, models_root / folder, folder == OURS, SUBFOLDER_DEPTH)
    return entries


def _scan_folder(root: Path, folder: Path, ours: bool, depth: int) -> list[ModelEntry]:
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.iterdir()):
        if path.is_dir() and not (path / IDENTITYNET_WEIGHTS).is_file():
            if depth > 0:
                entries += _scan_folder(root, path, ours, depth - 1)
            continue
        entry = _describe(root, path, ours)
        if entry is not None:
            entries.append(entry)
    return entries


def _describe(root: Path, path: Path, ours: bool) -> ModelEntry | None:
    name = path.relative_to(root).as_posix()
    # Outside our own folder (e.g. the ControlNet folder) only what is named for InstantID is ours.
    if not ours and "instant" not in name.lower().split("/", 1)[-1]:
        return None
    weights = path / IDENTITYNET_WEIGHTS if path.is_dir() else path
    if weights.suffix not in WEIGHT_SUFFIXES:
        return None
    try:
        stat = weights.stat()
    except OSError:
        return None
    return _entry_of(name, path, weights, (stat.st_size, stat.st_mtime_ns, stat.st_ino))


@functools.lru_cache(maxsize=64)
def _entry_of(name: str, path: Path, weights: Path, identity: tuple[int, int, int]) -> ModelEntry | None:
    """The entry of one file version: every job scans the model folders, and checking a file's tensor names and
    shapes takes milliseconds."""
    shapes, error = _read_shapes_of(weights, identity)
    kind = _kind_of(path, shapes)
    if kind is None:
        return None
    if error is None:
        architecture, error = _architecture(kind, shapes, weights.name)
        return ModelEntry(name, path, kind, architecture, error)
    return ModelEntry(name, path, kind, None, error)


def _kind_of(path: Path, shapes: dict[str, list[int]] | None) -> str | None:
    if shapes is None:  # unreadable: listed by its name so that it is reported with its reason
        return ADAPTER if "adapter" in path.name.lower() or path.suffix == ".bin" else IDENTITYNET
    if any(k.startswith("image_proj.") for k in shapes):
        return ADAPTER
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return IDENTITYNET
    return None


def _architecture(kind: str, shapes: dict[str, list[int]], name: str) -> tuple[Architecture | None, str | None]:
    """The architecture of weights of this kind, or why they are not what the kind needs."""
    try:
        if kind == ADAPTER:
            check_adapter_weights(shapes, name)
            return adapter_architecture(shapes), None
        check_identitynet_weights(shapes, name)
        return identitynet_architecture(shapes), None
    except ModelError as e:
        return None, str(e)
    except (KeyError, IndexError, ValueError) as e:
        return None, f"{name} does not have the layout of an InstantID {LABELS[kind]} ({e}). {SEE_MODELS}"


def read_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor shapes without reading the tensors: the safetensors header, or a memory-mapped weights-only pickle.
    Raises ModelError with the reason when the file cannot be read. Callers must not modify the result."""
    shapes, error = read_shapes_or_error(path)
    if error is not None:
        raise ModelError(error)
    return shapes


def read_shapes_or_error(path: Path) -> tuple[dict[str, list[int]] | None, str | None]:
    """(shapes, None), or (None, why the file cannot be read). Remembered per file identity (path, size,
    modification time, inode): every job scans the model folders, and a pickle's shapes take tens of milliseconds."""
    try:
        stat = Path(path).stat()
    except OSError as e:
        return None, f"{Path(path).name} cannot be opened ({e.strerror})."
    return _read_shapes_of(Path(path), (stat.st_size, stat.st_mtime_ns, stat.st_ino))


@functools.lru_cache(maxsize=64)
def _read_shapes_of(path: Path, identity: tuple[int, int, int]) -> tuple[dict[str, list[int]] | None, str | None]:
    try:
        if path.suffix == ".safetensors":
            return _safetensors_shapes(path), None
        return _tree_shapes(read_pickle(path)), None
    except ModelError as e:
        return None, str(e)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        return None, (f"{path.name} is not a readable safetensors file ({type(e).__name__}: {e}); it is probably "
                      f"truncated or corrupt ({identity[0]} bytes). Download it again. {SEE_MODELS}")


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _tree_shapes(tree: object, prefix: str = "") -> dict[str, list[int]]:
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return {prefix[:-1]: list(tree.shape)}
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_tree_shapes(value, f"{prefix}{key}."))
        return out
    return {}


def choose(entries: list[ModelEntry], kind: str, name: str, unet: Architecture, field: str) -> ModelEntry:
    """The entry named `name`, or when `name` is empty the first installed one that fits the UNet (our folder
    first, then by name). Raises with what was found when the named one cannot serve or none fits."""
    of_kind = [e for e in entries if e.kind == kind]
    label = LABELS[kind]
    if name:
        entry = _named(of_kind, name, label, field)
        if entry.error is not None:
            raise ModelError(f"{field}: {entry.name} cannot be used: {entry.error}", field=field)
        if not entry.fits(unet):
            raise ModelError(misfit(label, entry.describe(), unet), field=field)
        return entry
    fitting = [e for e in of_kind if e.fits(unet)]
    if fitting:
        return fitting[0]
    others = "; ".join(f"{e.name} ({e.describe()})" for e in of_kind) or "none"
    fetch = f" {FETCH_HINT}" if unet.family == "SDXL" else ""
    raise ModelError(f"No installed {label} fits the loaded checkpoint, {unet.describe_unet()}. Installed: {others}. "
                     f"{SEE_MODELS}{fetch}", field=field)


def _named(of_kind: list[ModelEntry], name: str, label: str, field: str) -> ModelEntry:
    for entry in of_kind:
        if entry.name == name or entry.path.name == name and sum(e.path.name == name for e in of_kind) == 1:
            return entry
    listed = ", ".join(e.name for e in of_kind) or "none installed"
    raise ModelError(f"{field}: no installed {label} is named {name!r}. Installed: {listed}. {SEE_MODELS}", field=field)


def choice_label(entry: ModelEntry, unet: Architecture | None) -> str:
    """A dropdown entry: the name, the family, and whether it fits the loaded checkpoint (when one is loaded)."""
    if entry.architecture is None:
        return f"{entry.name}{CHOICE_SEPARATOR}unusable"
    if unet is None or entry.fits(unet):
        return f"{entry.name}{CHOICE_SEPARATOR}{entry.family}"
    return f"{entry.name}{CHOICE_SEPARATOR}{entry.family}, does not fit the loaded checkpoint ({unet.family})"


def misfit(label: str, made_for: str, unet: Architecture) -> str:
    return (f"The {label} is made for {made_for} but the loaded checkpoint is {unet.describe_unet()}. Choose the "
            f"{label} that matches the checkpoint.")

