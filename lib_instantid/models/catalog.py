"""The installed InstantID models: found in the host's model folders, named relative to them, described by family.

Only files listed here can be opened by name, so a request naming `../x`, an absolute path or anything else
outside the model folders never reaches the file system.
"""
from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelError
from .loading import SEE_MODELS, identitynet_weights

IDENTITYNET, ADAPTER = "identitynet", "adapter"
FAMILY_BY_CONTEXT = {2048: "SDXL", 768: "SD1.5", 1024: "SD2"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# Folders under the WebUI's models folder: our own, and the ControlNet folder where sd-webui-controlnet users keep
# the same files (only those named for InstantID are taken from there).
MODEL_FOLDERS = ("instantid", "ControlNet")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # relative to the models root, with '/', e.g. "instantid/ip-adapter.bin"
    path: Path
    kind: str  # IDENTITYNET or ADAPTER
    context_dim: int | None  # the UNet context width it is made for; None when the file could not be read

    @property
    def family(self) -> str:
        return FAMILY_BY_CONTEXT.get(self.context_dim, f"context {self.context_dim}")


def family_name(context_dim: int) -> str:
    return FAMILY_BY_CONTEXT.get(context_dim, f"a model with context width {context_dim}")


def scan(models_root: Path, folders: tuple[str, ...] = MODEL_FOLDERS) -> list[ModelEntry]:
    """Every IdentityNet and face adapter in `models_root/<folder>` (one level of subfolders), sorted by name."""
    entries = []
    for folder in folders:
        base = models_root / folder
        if not base.is_dir():
            continue
        for path in sorted(base.iterdir()):
            entry = _describe(models_root, path, ours=folder.lower() == "instantid")
            if entry is not None:
                entries.append(entry)
    return entries


def _describe(root: Path, path: Path, ours: bool) -> ModelEntry | None:
    name = path.relative_to(root).as_posix()
    # Outside our own folder (e.g. the ControlNet folder) only what is named for InstantID is ours.
    if not ours and "instant" not in path.name.lower():
        return None
    if path.is_dir():
        weights = identitynet_weights(path)
        return None if weights is None else ModelEntry(name, path, IDENTITYNET, _context_dim(read_shapes(weights)))
    if path.suffix not in WEIGHT_SUFFIXES:
        return None
    shapes = read_shapes(path)
    kind = _kind_of(path, shapes)
    return None if kind is None else ModelEntry(name, path, kind, _context_dim(shapes))


def _kind_of(path: Path, shapes: dict[str, list[int]] | None) -> str | None:
    if shapes is None:  # unreadable: listed by its name so that choosing it reports why it cannot be loaded
        return ADAPTER if "adapter" in path.name.lower() or path.suffix == ".bin" else IDENTITYNET
    if any(k.startswith("image_proj.") for k in shapes):
        return ADAPTER
    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        return IDENTITYNET
    return None


def _context_dim(shapes: dict[str, list[int]] | None) -> int | None:
    """The UNet context width the weights are made for: the input width of their cross-attention keys."""
    for key, shape in (shapes or {}).items():
        if key.endswith(("attn2.to_k.weight", ".to_k_ip.weight")):
            return shape[1]
    return None


def read_shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor shapes without reading the tensors: the safetensors header, or a memory-mapped weights-only pickle.

    Remembered per file identity (path, size, modification time, inode), as the model cache does: every job scans
    the model folders, and a pickle's shapes take tens of milliseconds to read. Callers must not modify the result."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return _read_shapes_of(Path(path), (stat.st_size, stat.st_mtime_ns, stat.st_ino))


@functools.lru_cache(maxsize=64)
def _read_shapes_of(path: Path, identity: tuple[int, int, int]) -> dict[str, list[int]] | None:
    try:
        if path.suffix == ".safetensors":
            return _safetensors_shapes(path)
        tree = torch.serialization.load(path, map_location="cpu", weights_only=True, mmap=True)
        return _tree_shapes(tree)
    except Exception:  # any unreadable file is reported with its reason when it is actually loaded
        return None


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _tree_shapes(tree: object, prefix: str = "") -> dict[str, list[int]]:
    if isinstance(tree, torch.Tensor):
        return {prefix[:-1]: list(tree.shape)}
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_tree_shapes(value, f"{prefix}{key}."))
        return out
    return {}


def choose(entries: list[ModelEntry], kind: str, name: str, context_dim: int, field: str) -> ModelEntry:
    """The entry named `name`, or when `name` is empty the single installed one that fits `context_dim`."""
    of_kind = [e for e in entries if e.kind == kind]
    label = "IdentityNet" if kind == IDENTITYNET else "face adapter"
    if name:
        for entry in of_kind:
            if entry.name == name or entry.path.name == name and sum(e.path.name == name for e in of_kind) == 1:
                return entry
        listed = ", ".join(e.name for e in of_kind) or "none installed"
        raise ModelError(f"{field}: no installed {label} is named {name!r}. Installed: {listed}. {SEE_MODELS}",
                         field=field)
    fitting = [e for e in of_kind if e.context_dim == context_dim]
    if len(fitting) == 1:
        return fitting[0]
    family = family_name(context_dim)
    if not fitting:
        others = ", ".join(f"{e.name} ({e.family})" for e in of_kind) or "none"
        raise ModelError(
            f"No installed {label} fits the loaded checkpoint ({family}). Installed: {others}. {SEE_MODELS}",
            field=field,
        )
    raise ModelError(
        f"Several installed {label}s fit the loaded checkpoint ({family}): {', '.join(e.name for e in fitting)}. "
        f"Choose one in {field}.",
        field=field,
    )
