"""What InstantID computes once per generation: face tokens, per-layer face K/V, and keypoint hints per size; and a
store that keeps them across jobs."""
from __future__ import annotations

import hashlib
import itertools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .keypoints import draw_keypoints
from .models.adapter import FaceAdapter
from .models.identitynet import IdentityNet, ProjectedContext
from .models.resampler import split_heads

UNCOND, COND = 0, 1  # row indices into every [2, ...] tensor below


@dataclass(frozen=True)
class FaceTokens:
    """Projected face tokens: [2, N, C], row UNCOND = R(0) (not zeros; R(noise) with uncond_noise), row COND =
    R(embedding)."""

    both: torch.Tensor

    def for_rows(self, row_kind: torch.Tensor) -> torch.Tensor:
        """[B, N, C] for a [B] tensor of UNCOND/COND indices."""
        return self.both.index_select(0, row_kind)


def uncond_embedding(embedding: np.ndarray, noise: float) -> np.ndarray:
    """What the unconditional rows' tokens are projected from: zeros (the paper), or with `noise` > 0 uniform noise
    of that amplitude (ComfyUI_InstantID's remedy for burnt images at higher CFG), seeded by the embedding itself so
    a job is repeatable."""
    e = np.ascontiguousarray(embedding, dtype=np.float32)
    if noise == 0:
        return np.zeros_like(e)
    seed = int.from_bytes(hashlib.sha256(e.tobytes()).digest()[:8], "little")
    return np.random.default_rng(seed).random(e.shape, dtype=np.float32) * np.float32(noise)


@torch.no_grad()
def project_face(adapter: FaceAdapter, embedding: np.ndarray, device: torch.device, dtype: torch.dtype,
                 uncond_noise: float = 0.0) -> FaceTokens:
    """Both rows of tokens, computed on `device` in `dtype` wherever the adapter's weights are kept (its copies
    there are made for the call only: the adapter need not live on the GPU)."""
    e = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(1, 1, -1)
    u = torch.as_tensor(uncond_embedding(embedding, uncond_noise)).reshape(1, 1, -1)
    inputs = torch.cat([u, e]).to(device, dtype)
    proj = adapter.image_proj
    weights = {name: t.to(device, dtype) for name, t in itertools.chain(proj.named_parameters(), proj.named_buffers())}
    return FaceTokens(torch.func.functional_call(proj, weights, (inputs,)))


@dataclass(frozen=True)
class LayerKV:
    """One cross-attention layer's face keys/values, split into heads: [2, heads, N, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor


@torch.no_grad()
def face_kv(adapter: FaceAdapter, tokens: FaceTokens, heads: list[int]) -> list[LayerKV]:
    """K/V of the face tokens for every cross-attention layer, given each layer's head count; computed where the
    tokens are, one layer's weights copied there at a time."""
    t = tokens.both
    out = []
    for layer, n_heads in zip(adapter.layers, heads):
        k, v = (split_heads(F.linear(t, proj.weight.to(t.device, t.dtype)), n_heads)
                for proj in (layer.to_k_ip, layer.to_v_ip))
        out.append(LayerKV(k, v))
    return out


T = TypeVar("T")


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


HINT_BUDGET_BYTES = 512 * 2**20  # keypoint features kept across jobs, all models together


class ConditioningStore:
    """Face tokens, per-layer face K/V, the IdentityNet's projected face context and keypoint hints, kept across jobs.

    A repeated job (same face, same models, same size) then reuses them instead of running the Resampler, every
    layer's K/V projection and the full-resolution hint embedding again. Entries belong to one model object and go
    with it (weak keys: a model dropped from the model cache takes its entries along); each key names everything else
    the value depends on: the inputs' content (the embedding's and keypoints' bytes, the size, the rows' kinds), the
    tokens object it was derived from (kept alive by the entry, so its id cannot be reused), and the model's and the
    outputs' device and dtype. At most `per_model` entries per model and, for the keypoint features (megabytes each
    at hires sizes), at most `hint_bytes` in all; least recently used dropped first.
    """

    def __init__(self, per_model: int = 8, hint_bytes: int = HINT_BUDGET_BYTES) -> None:
        self.per_model, self.hint_bytes = per_model, hint_bytes
        self._entries: "weakref.WeakKeyDictionary[nn.Module, OrderedDict[Hashable, object]]" = weakref.WeakKeyDictionary()
        self._hints: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self._model_ids: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()
        self._ids = itertools.count()
        self._lock = threading.Lock()

    def _get(self, model: nn.Module, key: Hashable, compute: Callable[[], T]) -> T:
        key = (key, _placement(model))
        with self._lock:
            entries = self._entries.get(model)
            if entries is None:
                entries = self._entries[model] = OrderedDict()
            if key in entries:
                entries.move_to_end(key)
                return entries[key]
        value = compute()
        with self._lock:
            entries[key] = value
            while len(entries) > self.per_model:
                entries.popitem(last=False)
        return value

    def tokens(self, adapter: FaceAdapter, embedding: np.ndarray, device: torch.device, dtype: torch.dtype,
               uncond_noise: float = 0.0) -> FaceTokens:
        e = np.ascontiguousarray(embedding, dtype=np.float32)
        return self._get(adapter, ("tokens", e.tobytes(), uncond_noise, str(device), dtype),
                         lambda: project_face(adapter, e, device, dtype, uncond_noise))

    def face_kv(self, adapter: FaceAdapter, tokens: FaceTokens, heads: list[int]) -> list[LayerKV]:
        key = ("face_kv", id(tokens), tuple(heads))
        return self._get(adapter, key, lambda: (tokens, face_kv(adapter, tokens, heads)))[1]

    def projected_context(self, identitynet: IdentityNet, tokens: FaceTokens, kinds: tuple[int, ...],
                          compute: Callable[[], ProjectedContext]) -> ProjectedContext:
        """`compute` projects `tokens`' rows of these kinds with the IdentityNet."""
        return self._get(identitynet, ("context", id(tokens), kinds), lambda: (tokens, compute()))[1]

    def hint(self, identitynet: IdentityNet, keypoints: np.ndarray, size: tuple[int, int],
             compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`compute` draws and embeds the keypoint image of `keypoints` at `size`."""
        points = np.ascontiguousarray(keypoints, dtype=np.float64)
        with self._lock:
            model_id = self._model_ids.setdefault(identitynet, next(self._ids))
        key = (model_id, _placement(identitynet), tuple(size), points.tobytes())
        with self._lock:
            if key in self._hints:
                self._hints.move_to_end(key)
                return self._hints[key]
        value = compute()
        with self._lock:
            self._hints[key] = value
            while len(self._hints) > 1 and sum(_nbytes(v) for v in self._hints.values()) > self.hint_bytes:
                self._hints.popitem(last=False)
        return value

    @property
    def hint_bytes_held(self) -> int:
        with self._lock:
            return sum(_nbytes(v) for v in self._hints.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._hints.clear()


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class HintFeatures:
    """The IdentityNet's embedding of each image's keypoint image, drawn natively at each requested size and cached.

    The embedding depends only on the image, so it is computed once per image and size instead of at every step,
    and with a `store` once per keypoints and size across jobs.
    `keypoints_for(width, height, image)` gives the 5 keypoints of the image-th image of the batch in the pixels
    of a generation of that size.
    """

    def __init__(self, identitynet: IdentityNet, keypoints_for: Callable[[int, int, int], np.ndarray],
                 store: ConditioningStore | None = None) -> None:
        self.identitynet = identitynet
        self.keypoints_for = keypoints_for
        self.store = store
        self._cached: dict[tuple[int, int, int, tuple[torch.device, torch.dtype]], torch.Tensor] = {}

    @torch.no_grad()
    def get(self, width: int, height: int, image: int = 0) -> torch.Tensor:
        """[1, C, h, w] on the IdentityNet's device."""
        key = (width, height, image, _placement(self.identitynet))
        if key not in self._cached:
            def embed():
                return self.identitynet.embed_hint(self.image(width, height, image))

            if self.store is None:
                features = embed()
            else:
                features = self.store.hint(self.identitynet, self.keypoints_for(width, height, image),
                                           (width, height), embed)
            self._cached[key] = features
        return self._cached[key]

    def image(self, width: int, height: int, image: int = 0) -> torch.Tensor:
        """The keypoint image as the IdentityNet takes it: [1, 3, H, W], RGB in [0, 1]."""
        drawn = draw_keypoints(self.keypoints_for(width, height, image), (width, height))
        p = next(self.identitynet.parameters())
        return (torch.from_numpy(drawn).permute(2, 0, 1)[None].float() / 255.0).to(p.device, p.dtype)
