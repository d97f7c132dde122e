"""Reading InstantID weight files: format detection, checks with clear refusals, and a cache of loaded models."""
from __future__ import annotations

import json
import logging
import math
import mmap
import pickle
import struct
import sys
import threading
import warnings
import weakref
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from ..errors import ModelError
from .adapter import FaceAdapter
from .identitynet import IdentityNet, config_from_state_dict

log = logging.getLogger(__name__)

FACE_EMBEDDING_DIM = 512
IDENTITYNET_FOLDER = "ControlNetModel"
IDENTITYNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
SEE_MODELS = "See models.md for the files InstantID needs and where to put them."
# For what is missing altogether: the published SDXL files can be fetched.
FETCH_HINT = ("The InstantID panel's *Download missing models* button, or `python -m lib_instantid.doctor "
              "--download`, fetches the published SDXL files.")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A flat name→tensor dict from a safetensors file (memory-mapped) or a torch pickle (weights only)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Model file not found: {path}. {SEE_MODELS}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _flatten(read_pickle(path))


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
SAFETENSORS_MAX_HEADER = 100 * 2**20  # bytes; safetensors' own limit


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return _map_safetensors(path)
    except (OSError, ValueError, TypeError, KeyError, struct.error) as e:
        raise ModelError(
            f"{path.name} is not a readable safetensors file ({e}); it is probably truncated or corrupt "
            f"({path.stat().st_size} bytes). Download it again. {SEE_MODELS}"
        ) from e


def _map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file as views of a copy-on-write memory map of it: nothing is copied or read
    before use, and a write to a tensor would stay in this process. (safetensors' load_file maps the file too, but
    reads it through once first and then maps its pages one fault at a time on first use: ~2x slower from disk and
    ~20x slower from the page cache for an SDXL IdentityNet, see bench/job_setup.py.) Validated like safetensors
    does: header size, known dtypes, and every tensor's bytes inside the file and matching its shape."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > min(SAFETENSORS_MAX_HEADER, size - 8):
            raise ValueError(f"its header claims {length} bytes")
        header = json.loads(f.read(length))
        start = 8 + length
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size > start else None
    _forget_unmapped()
    if mapped is not None:
        _prefetch(mapped)
    if not isinstance(header, dict):
        raise ValueError("its header is not a table of tensors")
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(entry.get("dtype")) if isinstance(entry, dict) else None
        if dtype is None:
            raise ValueError(f"{name} has an unknown dtype")
        shape, (begin, end) = entry["shape"], entry["data_offsets"]
        if not all(isinstance(n, int) and n >= 0 for n in (*shape, begin, end)):
            raise ValueError(f"{name} has a malformed shape or offsets")
        count = math.prod(shape)
        if end - begin != count * dtype.itemsize or not 0 <= begin <= end <= size - start:
            raise ValueError(f"{name} lies outside the file or does not match its shape")
        if count == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        else:
            tensor = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin).view(shape)
            _MAPPED[tensor.data_ptr()] = (weakref.ref(mapped), start + begin, end - begin)
            tensors[name] = tensor
    return tensors


# Tensors that are views of a mapped file: data pointer -> (the map, offset, length), so that `place` can give a
# tensor's pages back once a converted copy replaces it, instead of holding the file and the copy at once.
_MAPPED: dict[int, tuple[weakref.ref, int, int]] = {}


def _forget_unmapped() -> None:
    for pointer in [p for p, (ref, _, _) in _MAPPED.items() if ref() is None]:
        del _MAPPED[pointer]


def _release_mapped(tensor: torch.Tensor) -> None:
    entry = _MAPPED.pop(tensor.data_ptr(), None)
    mapped = entry[0]() if entry else None
    if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    _, offset, length = entry
    first = -(-offset // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
    last = (offset + length) // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first:
        mapped.madvise(mmap.MADV_DONTNEED, first, last - first)


def place(model: nn.Module, device: torch.device | None, dtype: torch.dtype | None = None) -> None:
    """`model.to(device, dtype)` (dtype None: kept), tensor by tensor, giving back each memory-mapped source as soon as
    its converted copy replaces it: the peak stays near the converted size instead of source + copy."""

    def convert(tensor: torch.Tensor) -> torch.Tensor:
        moved = tensor.to(device=device, dtype=dtype if dtype is not None and tensor.is_floating_point() else None)
        if moved.data_ptr() != tensor.data_ptr():
            _release_mapped(tensor)
        return moved

    model._apply(convert)


MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform.startswith("linux") else None)


def _prefetch(mapped: mmap.mmap) -> None:
    """Read and map every page of the file now, in file order (Linux ≥ 5.14): the first use touches every page
    anyway, and one sequential pass is faster than faulting them in the order the model uses them. Elsewhere, or on
    an older kernel, at least start reading ahead."""
    if not hasattr(mapped, "madvise"):
        return
    try:
        if MADV_POPULATE_READ is None:
            raise OSError
        mapped.madvise(MADV_POPULATE_READ)
    except OSError:
        if hasattr(mmap, "MADV_WILLNEED"):
            mapped.madvise(mmap.MADV_WILLNEED)


def read_pickle(path: Path) -> object:
    """A torch pickle's tree of tensors, weights only. Memory-mapped where torch and the file allow it (nothing is
    read before use), else read whole: mapping fails on some file systems, on zip records other tools wrote
    unaligned, and before torch 2.1; torch 2.1 also maps only when given a `str` file name, never a Path."""
    # torch.serialization.load is the real loader even where a WebUI has replaced torch.load with its own checker;
    # weights_only=True is the security boundary: no code in the file is ever run.
    _check_torch_file(path)
    try:
        with warnings.catch_warnings():  # torch 2.1 maps through TypedStorage and warns that it is deprecated
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            return torch.serialization.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(path) from e
    except Exception as mapped_error:  # any failure to map is retried without mapping, below
        log.debug("Reading %s without memory-mapping it: %s", path, mapped_error)
    try:
        return torch.serialization.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(path) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelError(
            f"{path.name} could not be read as a torch weights file ({e}); it is probably truncated or corrupt "
            f"({path.stat().st_size} bytes). Download it again. {SEE_MODELS}"
        ) from e


# The first bytes of a pickle torch wrote before its zip format (protocol 2, then torch's magic number).
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a"


def _check_torch_file(path: Path) -> None:
    """A torch pickle is a zip archive (or, from torch before 1.6, a bare pickle with torch's magic number); anything
    else — often an HTML error page saved by a failed download — is refused for what it is."""
    with open(path, "rb") as f:
        start = f.read(16)
    if zipfile.is_zipfile(path) or start.startswith(LEGACY_TORCH_MAGIC):
        return
    if start.startswith(b"PK"):
        reason = "truncated or corrupt: a zip archive without its directory, as a cut-off download leaves it"
    else:
        reason = f"not a torch weights file at all (it starts with {start[:12]!r})"
    raise ModelError(f"{path.name} could not be read: it is {reason} ({path.stat().st_size} bytes). Download it "
                     f"again. {SEE_MODELS}")


def _refused_pickle(path: Path) -> ModelError:
    return ModelError(
        f"{path.name} is not a plain weights file: it asks to run code or build objects other than tensors, "
        f"which is never done. Use the official file, or a .safetensors version of it. {SEE_MODELS}"
    )


def _flatten(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return {prefix[:-1]: tree}
    if not isinstance(tree, dict):
        raise ModelError(f"Expected a dict of tensors but found {type(tree).__name__} at '{prefix[:-1]}'.")
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def load_adapter(path: Path) -> FaceAdapter:
    sd = read_weights(path)
    check_adapter_weights(sd, Path(path).name)
    return FaceAdapter.from_state_dict(sd)


def check_adapter_weights(sd: Mapping[str, torch.Tensor | Sequence[int]], name: str) -> None:
    """Refuse anything but an InstantID face adapter, saying what the file is instead. `sd` maps names to tensors
    or to their shapes (the checks read keys and shapes only)."""
    expected = (
        "expected InstantID's face adapter (ip-adapter.bin: 'image_proj' with a 'latents' resampler taking "
        f"{FACE_EMBEDDING_DIM}-d face embeddings, and 'ip_adapter' K/V weights)"
    )
    if not any(k.startswith("image_proj.") for k in sd) or not any(k.startswith("ip_adapter.") for k in sd):
        raise ModelError(f"{name} is not a face adapter: {_describe(sd)}; {expected}. {SEE_MODELS}")
    if "image_proj.latents" not in sd:
        raise ModelError(
            f"{name} is an IP-Adapter of another kind (its image projection has no resampler 'latents'); {expected}."
        )
    in_dim = _shape(sd["image_proj.proj_in.weight"])[1]
    if in_dim != FACE_EMBEDDING_DIM:
        raise ModelError(
            f"{name} is an IP-Adapter Plus for {in_dim}-wide image features (a CLIP image encoder), not InstantID's; "
            f"{expected}."
        )
    _check_layer_ids(sd, name)


def _shape(value: torch.Tensor | Sequence[int]) -> tuple[int, ...]:
    return tuple(value.shape if isinstance(value, torch.Tensor) else value)


def _check_layer_ids(sd: Mapping[str, object], name: str) -> None:
    ids = sorted({int(k.split(".")[1]) for k in sd if k.startswith("ip_adapter.")})
    if ids != list(range(1, 2 * len(ids), 2)):
        raise ModelError(f"{name}: its ip_adapter layers are numbered {ids[:6]}…, expected 1, 3, 5, …; the file is damaged.")
    for i in ids:
        for kind in ("to_k_ip", "to_v_ip"):
            if f"ip_adapter.{i}.{kind}.weight" not in sd:
                raise ModelError(f"{name}: layer {i} has no {kind} weight; the file is incomplete.")


def load_identitynet(path: Path) -> IdentityNet:
    """From a diffusers folder (config.json + safetensors), the official `ControlNetModel` folder, or one file."""
    weights, config_file = _identitynet_files(Path(path))
    sd = read_weights(weights)
    check_identitynet_weights(sd, weights.name)
    heads = _heads_from_config(config_file) if config_file else None
    with torch.device("meta"):
        net = IdentityNet(config_from_state_dict(sd, heads))
    _adopt(net, sd, weights.name)
    return net.eval().requires_grad_(False)


def identitynet_weights(path: Path) -> Path | None:
    """The IdentityNet weights a path stands for: the file itself, or the diffusers file in the folder or in its
    ControlNetModel/ (the official layout); None when there is none."""
    if path.is_file():
        return path
    return next((f / IDENTITYNET_WEIGHTS for f in (path / IDENTITYNET_FOLDER, path) if (f / IDENTITYNET_WEIGHTS).is_file()),
                None)


def _identitynet_files(path: Path) -> tuple[Path, Path | None]:
    weights = identitynet_weights(path)
    if weights is None:
        raise ModelError(f"No IdentityNet found at {path}: expected {IDENTITYNET_WEIGHTS} there or in "
                         f"{IDENTITYNET_FOLDER}/. {SEE_MODELS}")
    config = weights.parent / "config.json"
    return weights, config if weights != path and config.is_file() else None


def _heads_from_config(config_file: Path) -> tuple[int, ...] | None:
    config = json.loads(config_file.read_text())
    # diffusers' legacy naming: attention_head_dim holds the head count when num_attention_heads is absent.
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    if heads is None:
        return None
    n_blocks = len(config.get("block_out_channels", ()))
    return tuple(heads) if isinstance(heads, list) else (heads,) * n_blocks


def check_identitynet_weights(sd: Mapping[str, torch.Tensor | Sequence[int]], name: str) -> None:
    """Refuse anything but a diffusers-format ControlNet; like `check_adapter_weights`, from keys alone."""
    if any(k.startswith("image_proj.") or k.startswith("ip_adapter.") for k in sd):
        raise ModelError(f"{name} is InstantID's face adapter, not the IdentityNet: choose it as the adapter model.")
    if any(k.startswith(("control_model.", "input_hint_block.")) for k in sd):
        raise ModelError(
            f"{name} is a ControlNet in the WebUI's own format (input_hint_block), not InstantID's IdentityNet, which is "
            f"published in diffusers format. {SEE_MODELS}"
        )
    required = ("conv_in.weight", "controlnet_cond_embedding.conv_in.weight", "controlnet_mid_block.weight")
    if not all(k in sd for k in required):
        raise ModelError(f"{name} is not a ControlNet in diffusers format: {_describe(sd)}. {SEE_MODELS}")


def _adopt(module: nn.Module, sd: dict[str, torch.Tensor], name: str) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - sd.keys()), sorted(sd.keys() - expected)
    if missing or unexpected:
        raise ModelError(
            f"{name} does not have the layout of an IdentityNet: missing {missing[:3]}, unexpected {unexpected[:3]}."
        )
    try:
        module.load_state_dict(sd, strict=True, assign=True)
    except RuntimeError as e:
        raise ModelError(f"{name}: tensor shapes do not fit an IdentityNet ({e}).") from e


def _describe(sd: Mapping[str, object]) -> str:
    sample = ", ".join(sorted(sd)[:3])
    return f"found {len(sd)} tensors such as {sample}"


M = TypeVar("M", bound=nn.Module)


class ModelCache:
    """Loaded models keyed by file identity (path, mtime, size) and placement; the least recently used goes first."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        # key -> (model, the (device as the caller named it, dtype) it was last moved to here)
        self._entries: OrderedDict[tuple, tuple[nn.Module, tuple]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, loader: Callable[[Path], M], device: torch.device | None,
            dtype: torch.dtype | None) -> M:
        """The model of this file on `device` in `dtype` (None: the file's own). Device None: wherever it is (the
        loader's CPU at first), for a host whose memory manager moves it."""
        key = (_file_identity(Path(path)), loader.__name__)
        target = (device, dtype)
        with self._lock:
            model, placed = self._entries.pop(key, (None, None))
            if model is None:
                log.info("Loading %s", path)
                model = loader(Path(path))
            # .to() walks every module even when nothing moves; skip it when this cache placed the model there and
            # it is still there (a host may have moved it since, e.g. offloading to the CPU between jobs).
            if placed != target or not _still_placed(model, *target):
                place(model, device, dtype)
            self._entries[key] = (model, target)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
            return model

    def offload(self, device: torch.device) -> None:
        """Move every cached model to `device` (the CPU), keeping it loaded: for when InstantID is not in use."""
        with self._lock:
            for key, (model, (placed, dtype)) in list(self._entries.items()):
                if placed != device:
                    place(model, device, dtype)
                    self._entries[key] = (model, (device, dtype))

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def resolved(device: torch.device) -> torch.device:
    """The device tensors report for `device` ("cuda" is the current CUDA device, e.g. cuda:0)."""
    return torch.empty(0, device=device).device


def _still_placed(model: nn.Module, device: torch.device | None, dtype: torch.dtype | None) -> bool:
    first = next(model.parameters(), None)
    return first is None or ((device is None or first.device == resolved(device))
                             and (dtype is None or first.dtype == dtype))


def _file_identity(path: Path) -> tuple[str, int, int]:
    target = identitynet_weights(path) if path.is_dir() else path
    target = target or path
    try:
        stat = target.stat()
    except OSError as e:
        raise ModelError(f"Model file not found: {path}. {SEE_MODELS}") from e
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size
