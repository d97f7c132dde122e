"""What InstantID computes once per generation: face tokens, per-layer face K/V, and keypoint hints per size."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .keypoints import draw_keypoints
from .models.adapter import FaceAdapter
from .models.identitynet import IdentityNet
from .models.resampler import split_heads

UNCOND, COND = 0, 1  # row indices into every [2, ...] tensor below


@dataclass(frozen=True)
class FaceTokens:
    """Projected face tokens: [2, N, C], row UNCOND = R(0) (not zeros), row COND = R(embedding)."""

    both: torch.Tensor

    def for_rows(self, row_kind: torch.Tensor) -> torch.Tensor:
        """[B, N, C] for a [B] tensor of UNCOND/COND indices."""
        return self.both.index_select(0, row_kind)


@torch.no_grad()
def project_face(adapter: FaceAdapter, embedding: np.ndarray, device: torch.device, dtype: torch.dtype) -> FaceTokens:
    e = torch.as_tensor(np.asarray(embedding, dtype=np.float32)).reshape(1, 1, -1)
    proj = adapter.image_proj
    inputs = torch.cat([torch.zeros_like(e), e]).to(proj.latents.device, proj.latents.dtype)
    return FaceTokens(proj(inputs).to(device, dtype))


@dataclass(frozen=True)
class LayerKV:
    """One cross-attention layer's face keys/values, split into heads: [2, heads, N, head_dim]."""

    k: torch.Tensor
    v: torch.Tensor


@torch.no_grad()
def face_kv(adapter: FaceAdapter, tokens: FaceTokens, heads: list[int]) -> list[LayerKV]:
    """K/V of the face tokens for every cross-attention layer, given each layer's head count."""
    out = []
    for layer, n_heads in zip(adapter.layers, heads):
        t = tokens.both.to(layer.to_k_ip.weight.device, layer.to_k_ip.weight.dtype)
        k, v = (split_heads(proj(t), n_heads).to(tokens.both.device, tokens.both.dtype)
                for proj in (layer.to_k_ip, layer.to_v_ip))
        out.append(LayerKV(k, v))
    return out


class HintFeatures:
    """The IdentityNet's embedding of the keypoint image, drawn natively at each requested size and cached.

    The embedding depends only on the image, so it is computed once per size instead of at every step.
    `keypoints_for(width, height)` gives the 5 keypoints in the pixels of a generation of that size.
    """

    def __init__(self, identitynet: IdentityNet, keypoints_for: Callable[[int, int], np.ndarray]) -> None:
        self.identitynet = identitynet
        self.keypoints_for = keypoints_for
        self._by_size: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def get(self, width: int, height: int) -> torch.Tensor:
        if (width, height) not in self._by_size:
            self._by_size[(width, height)] = self.identitynet.embed_hint(self.image(width, height))
        return self._by_size[(width, height)]

    def image(self, width: int, height: int) -> torch.Tensor:
        """The keypoint image as the IdentityNet takes it: [1, 3, H, W], RGB in [0, 1]."""
        drawn = draw_keypoints(self.keypoints_for(width, height), (width, height))
        p = next(self.identitynet.parameters())
        return (torch.from_numpy(drawn).permute(2, 0, 1)[None].float() / 255.0).to(p.device, p.dtype)
