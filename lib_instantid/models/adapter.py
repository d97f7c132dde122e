"""The face adapter of `ip-adapter.bin`: the projection and one K/V pair per UNet cross-attention layer.

The module tree mirrors the file: `image_proj.*` is the Resampler, `ip_adapter.{2n+1}.to_{k,v}_ip.weight` the K/V
projections of the n-th cross-attention layer (input blocks, then output blocks, then the middle block). The odd
numbers are an artefact of the original loader, which enumerated self- and cross-attention processors together.
"""
from __future__ import annotations

import torch
from torch import nn

from .architecture import Architecture
from .resampler import Resampler, ResamplerConfig


class FaceKV(nn.Module):
    """The face-token key and value projections of one cross-attention layer (no biases)."""

    def __init__(self, context_dim: int, inner_dim: int) -> None:
        super().__init__()
        self.to_k_ip = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v_ip = nn.Linear(context_dim, inner_dim, bias=False)


class FaceAdapter(nn.Module):
    def __init__(self, resampler: ResamplerConfig, inner_dims: list[int]) -> None:
        super().__init__()
        self.image_proj = Resampler(resampler)
        self.ip_adapter = nn.ModuleDict(
            {str(2 * n + 1): FaceKV(resampler.output_dim, d) for n, d in enumerate(inner_dims)}
        )

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "FaceAdapter":
        """Build on the meta device and adopt the given tensors (no copies). Keys carry the two prefixes."""
        proj = {k.removeprefix("image_proj."): v for k, v in sd.items() if k.startswith("image_proj.")}
        layer_ids = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".to_k_ip.weight"))
        inner_dims = [sd[f"ip_adapter.{i}.to_k_ip.weight"].shape[0] for i in layer_ids]
        with torch.device("meta"):
            adapter = cls(ResamplerConfig.from_state_dict(proj), inner_dims)
        adapter.load_state_dict(sd, strict=True, assign=True)
        return adapter.eval().requires_grad_(False)

    @property
    def context_dim(self) -> int:
        return self.image_proj.config.output_dim

    @property
    def architecture(self) -> Architecture:
        return Architecture(self.context_dim, attention_widths=tuple(kv.to_k_ip.out_features for kv in self.layers))

    @property
    def layers(self) -> list[FaceKV]:
        """Per cross-attention layer, in the published order."""
        return list(self.ip_adapter.values())
