"""The IdentityNet: a ControlNet whose parameter names equal the diffusers `ControlNetModel` keys it is published with.

Only inference is implemented, and only what InstantID's IdentityNet (SDXL) and SD1.5-style ControlNets use.
The architecture is read off the weights; the head count, which weights cannot show, comes from config.json when
there is one, else from the model family (SD1.x: 8 heads; SDXL and SD2: 64 channels per head).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .architecture import Architecture
from .resampler import merge_heads, split_heads

SD1_CONTEXT_DIM = 768
SD1_HEADS = 8
HEAD_DIM = 64
NORM_GROUPS = 32


@dataclass(frozen=True)
class IdentityNetConfig:
    in_channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    transformer_depths: tuple[int, ...]  # per down block; 0 = no attention in that block
    mid_transformer_depth: int
    context_dim: int
    linear_projection: bool
    hint_channels: tuple[int, ...]  # conditioning embedding widths, e.g. (16, 32, 96, 256)
    addition_dim: int | None  # input width of add_embedding (SDXL: 2816); None without one
    heads: tuple[int, ...]  # per down block (the middle block uses the last)

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.block_out_channels[0]

    @property
    def is_sdxl_family(self) -> bool:
        return self.addition_dim is not None


def family_heads(channels: tuple[int, ...], context_dim: int, has_addition: bool) -> tuple[int, ...]:
    if not has_addition and context_dim == SD1_CONTEXT_DIM:
        return tuple(SD1_HEADS for _ in channels)
    return tuple(max(1, c // HEAD_DIM) for c in channels)


def config_from_state_dict(sd: dict[str, torch.Tensor], heads: tuple[int, ...] | None = None) -> IdentityNetConfig:
    """Infer the architecture from diffusers-named ControlNet weights."""
    n_blocks = 1 + _max_index(sd, "down_blocks.")
    channels = tuple(sd[f"down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(n_blocks))
    depths = tuple(_count(sd, f"down_blocks.{i}.attentions.0.transformer_blocks.") for i in range(n_blocks))
    first_attn = next(i for i, d in enumerate(depths) if d)
    attn_prefix = f"down_blocks.{first_attn}.attentions.0."
    context_dim = sd[attn_prefix + "transformer_blocks.0.attn2.to_k.weight"].shape[1]
    n_hint = _count(sd, "controlnet_cond_embedding.blocks.") // 2
    hint_channels = tuple(sd[f"controlnet_cond_embedding.blocks.{2 * i}.weight"].shape[0] for i in range(n_hint))
    hint_channels += (sd["controlnet_cond_embedding.conv_out.weight"].shape[1],)
    addition = sd.get("add_embedding.linear_1.weight")
    addition_dim = None if addition is None else addition.shape[1]
    return IdentityNetConfig(
        in_channels=sd["conv_in.weight"].shape[1],
        block_out_channels=channels,
        layers_per_block=_count(sd, "down_blocks.0.resnets."),
        transformer_depths=depths,
        mid_transformer_depth=_count(sd, "mid_block.attentions.0.transformer_blocks."),
        context_dim=context_dim,
        linear_projection=sd[attn_prefix + "proj_in.weight"].ndim == 2,
        hint_channels=hint_channels,
        addition_dim=addition_dim,
        heads=heads or family_heads(channels, context_dim, addition_dim is not None),
    )


def _max_index(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return max(int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix))


def _count(sd: dict[str, torch.Tensor], prefix: str) -> int:
    return 1 + _max_index(sd, prefix) if any(k.startswith(prefix) for k in sd) else 0


def timestep_features(timesteps: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features [cos | sin], as both the UNet and diffusers (flip_sin_to_cos, shift 0) compute them."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class MLPEmbedding(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.linear_2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_ch, eps=1e-5)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_ch, eps=1e-5)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


@dataclass(frozen=True)
class ProjectedContext:
    """A cross-attention context already projected to keys and values by every cross-attention layer:
    {attn2 module: (k, v)}, each [B, heads, N, head_dim].

    InstantID's IdentityNet context is the face tokens, constant for a whole generation, so their to_k/to_v
    projections are computed once (`IdentityNet.project_context`) instead of in every call. Exact: the same
    products, only not repeated.
    """

    kv: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Identity()])  # index 1 held dropout

    def project(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a context [B, N, context_dim], split into heads."""
        return split_heads(self.to_k(context), self.heads), split_heads(self.to_v(context), self.heads)

    def forward(self, x: torch.Tensor, context: torch.Tensor | ProjectedContext | None = None) -> torch.Tensor:
        q = split_heads(self.to_q(x), self.heads)
        if isinstance(context, ProjectedContext):
            k, v = context.kv[self]
        else:
            k, v = self.project(x if context is None else context)
        return self.to_out[0](merge_heads(F.scaled_dot_product_attention(q, k, v)))


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, gate = self.proj(x).chunk(2, dim=-1)
        return hidden * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GEGLU(dim, 4 * dim), nn.Identity(), nn.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, context_dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | ProjectedContext) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    def __init__(self, dim: int, context_dim: int, heads: int, depth: int, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(NORM_GROUPS, dim, eps=1e-6)
        self.proj_in = nn.Linear(dim, dim) if linear else nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(dim, context_dim, heads) for _ in range(depth))
        self.proj_out = nn.Linear(dim, dim) if linear else nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | ProjectedContext) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x)
        if not self.linear:
            tokens = self.proj_in(tokens)
        tokens = tokens.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.linear:
            tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        if self.linear:
            tokens = self.proj_out(tokens)
        tokens = tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)
        if not self.linear:
            tokens = self.proj_out(tokens)
        return x + tokens


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class DownBlock(nn.Module):
    """Resnets (each followed by a transformer when depth > 0) and an optional downsampler; yields every output."""

    def __init__(self, in_ch: int, out_ch: int, cfg: IdentityNetConfig, index: int, last: bool) -> None:
        super().__init__()
        n, depth = cfg.layers_per_block, cfg.transformer_depths[index]
        self.resnets = nn.ModuleList(
            ResnetBlock(in_ch if i == 0 else out_ch, out_ch, cfg.time_embed_dim) for i in range(n)
        )
        if depth:
            heads = cfg.heads[index]
            self.attentions = nn.ModuleList(
                Transformer2D(out_ch, cfg.context_dim, heads, depth, cfg.linear_projection) for _ in range(n)
            )
        self.downsamplers = None if last else nn.ModuleList([Downsample(out_ch)])

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | ProjectedContext) -> list[torch.Tensor]:
        outputs = []
        attentions = getattr(self, "attentions", [None] * len(self.resnets))
        for resnet, attention in zip(self.resnets, attentions):
            h = resnet(h, temb)
            if attention is not None:
                h = attention(h, context)
            outputs.append(h)
        if self.downsamplers is not None:
            outputs.append(self.downsamplers[0](outputs[-1]))
        return outputs


class MidBlock(nn.Module):
    def __init__(self, ch: int, cfg: IdentityNetConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(ch, ch, cfg.time_embed_dim) for _ in range(2))
        self.attentions = nn.ModuleList(
            [Transformer2D(ch, cfg.context_dim, cfg.heads[-1], cfg.mid_transformer_depth, cfg.linear_projection)]
        )

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | ProjectedContext) -> torch.Tensor:
        h = self.resnets[0](h, temb)
        return self.resnets[1](self.attentions[0](h, context), temb)


class HintEmbedding(nn.Module):
    """Encodes the keypoint image down to the latent resolution."""

    def __init__(self, channels: tuple[int, ...], out_ch: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, channels[0], 3, padding=1)
        self.blocks = nn.ModuleList()
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            self.blocks.append(nn.Conv2d(c_in, c_in, 3, padding=1))
            self.blocks.append(nn.Conv2d(c_in, c_out, 3, padding=1, stride=2))
        self.conv_out = nn.Conv2d(channels[-1], out_ch, 3, padding=1)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.conv_in(hint))
        for conv in self.blocks:
            h = F.silu(conv(h))
        return self.conv_out(h)


class IdentityNet(nn.Module):
    def __init__(self, cfg: IdentityNetConfig) -> None:
        super().__init__()
        self.config = cfg
        ch = cfg.block_out_channels
        self.conv_in = nn.Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        self.time_embedding = MLPEmbedding(ch[0], cfg.time_embed_dim)
        if cfg.addition_dim is not None:
            self.add_embedding = MLPEmbedding(cfg.addition_dim, cfg.time_embed_dim)
        self.controlnet_cond_embedding = HintEmbedding(cfg.hint_channels, ch[0])
        last = len(ch) - 1
        self.down_blocks = nn.ModuleList(
            DownBlock(ch[max(i - 1, 0)], c, cfg, i, i == last) for i, c in enumerate(ch)
        )
        self.mid_block = MidBlock(ch[-1], cfg)
        self.controlnet_down_blocks = nn.ModuleList(nn.Conv2d(c, c, 1) for c in self.residual_channels())
        self.controlnet_mid_block = nn.Conv2d(ch[-1], ch[-1], 1)

    def residual_channels(self) -> list[int]:
        """Channels of each down residual, in the order of the UNet's skip connections."""
        ch, n = self.config.block_out_channels, self.config.layers_per_block
        out = [ch[0]]
        for i, c in enumerate(ch):
            out += [c] * (n + (i < len(ch) - 1))
        return out

    @property
    def architecture(self) -> Architecture:
        cfg = self.config
        return Architecture(cfg.context_dim, skip_channels=tuple(self.residual_channels()), addition_dim=cfg.addition_dim)

    @torch.no_grad()
    def project_context(self, context: torch.Tensor) -> ProjectedContext:
        """The keys/values of a cross-attention context [B, N, context_dim] for every transformer block, to pass as
        `forward`'s context when the same context serves many calls."""
        return ProjectedContext({block.attn2: block.attn2.project(context)
                                 for block in self.modules() if isinstance(block, TransformerBlock)})

    def embed_hint(self, hint: torch.Tensor) -> torch.Tensor:
        """The keypoint image [B, 3, H, W] (RGB in [0, 1]) encoded to the latent resolution; constant per image."""
        return self.controlnet_cond_embedding(hint)

    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | ProjectedContext,
        hint_features: torch.Tensor,
        y: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for the UNet's skip connections and its middle block (unscaled).

        `y` is the UNet's own added-condition vector (SDXL: pooled text + size embeddings), which is exactly what
        add_embedding takes; `context` holds the face tokens of each row [B, N, C], or their `project_context`;
        `hint_features` come from `embed_hint`.
        """
        temb = self.time_embedding(timestep_features(timesteps, self.config.block_out_channels[0]).to(x.dtype))
        if self.config.addition_dim is not None:
            temb = temb + self.add_embedding(y.to(x.dtype))
        h = self.conv_in(x) + hint_features
        skips = [h]
        for block in self.down_blocks:
            skips += block(h, temb, context)
            h = skips[-1]
        h = self.mid_block(h, temb, context)
        down = [zero_conv(s) for zero_conv, s in zip(self.controlnet_down_blocks, skips)]
        return down, self.controlnet_mid_block(h)
