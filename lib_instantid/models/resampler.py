"""The face-embedding projection: a perceiver resampler whose parameter names equal the published `image_proj` keys."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64  # fixed by the IP-Adapter-Plus family; the head count follows from the width


@dataclass(frozen=True)
class ResamplerConfig:
    width: int = 1280
    depth: int = 4
    num_queries: int = 16
    embedding_dim: int = 512
    output_dim: int = 2048
    ff_mult: int = 4

    @property
    def heads(self) -> int:
        return self.width // HEAD_DIM

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "ResamplerConfig":
        """Read the architecture off the weights (keys without the `image_proj.` prefix)."""
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
        width = sd["latents"].shape[2]
        return cls(
            width=width,
            depth=depth,
            num_queries=sd["latents"].shape[1],
            embedding_dim=sd["proj_in.weight"].shape[1],
            output_dim=sd["proj_out.weight"].shape[0],
            ff_mult=sd["layers.0.1.1.weight"].shape[0] // width,
        )


class PerceiverAttention(nn.Module):
    """Queries from the latents; keys/values over [normed input; normed latents]."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.norm2 = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        latents = self.norm2(latents)
        q = self.to_q(latents)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(*(split_heads(t, self.heads) for t in (q, k, v)))
        return self.to_out(merge_heads(out))


def split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, heads*d] -> [B, heads, N, d]"""
    b, n, _ = t.shape
    return t.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """[B, heads, N, d] -> [B, N, heads*d]"""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def feed_forward(width: int, mult: int) -> nn.Sequential:
    # Indices 0..3 give the published keys layers.i.1.{0,1,3}.
    return nn.Sequential(
        nn.LayerNorm(width),
        nn.Linear(width, width * mult, bias=False),
        nn.GELU(),
        nn.Linear(width * mult, width, bias=False),
    )


class Resampler(nn.Module):
    """Projects a [B, 1, embedding_dim] face embedding to [B, num_queries, output_dim] tokens."""

    def __init__(self, config: ResamplerConfig) -> None:
        super().__init__()
        self.config = config
        self.latents = nn.Parameter(torch.zeros(1, config.num_queries, config.width))
        self.proj_in = nn.Linear(config.embedding_dim, config.width)
        self.proj_out = nn.Linear(config.width, config.output_dim)
        self.norm_out = nn.LayerNorm(config.output_dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(config.width, config.heads), feed_forward(config.width, config.ff_mult)])
            for _ in range(config.depth)
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(embedding)
        latents = self.latents.expand(x.shape[0], -1, -1)
        for attention, ff in self.layers:
            latents = latents + attention(x, latents)
            latents = latents + ff(latents)
        return self.norm_out(self.proj_out(latents))
