"""Attach InstantID to an ldm/sgm-layout UNet with PyTorch hooks, and detach it without a trace.

Nothing of the UNet is replaced: the host's attention implementation and any LoRA patching of the linears keep
running. Per UNet call:
- a forward pre-hook on the UNet asks the caller which rows are cond/uncond and which step it is, and runs the
  IdentityNet when its window is active;
- forward pre-hooks on each output block add the IdentityNet residuals to the skip half of their input, a forward hook
  on the middle block adds the middle residual;
- in every cross-attention layer a forward hook on `to_q` keeps the query, and a forward pre-hook on `to_out[0]`
  adds s·Attn(Q, K_face, V_face) to the text attention's output. `to_out` is linear, so this equals the paper's
  to_out(Attn_text + s·Attn_face) without a second projection.
"""
from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .conditioning import FaceTokens, HintFeatures, LayerKV, face_kv
from .errors import ModelError
from .models.adapter import FaceAdapter
from .models.identitynet import IdentityNet
from .models.resampler import merge_heads, split_heads

LATENT_SCALE = 8  # pixels per latent cell in SD/SDXL VAEs
FAMILY_BY_LAYER_COUNT = {70: "SDXL", 16: "SD1.5/SD2"}
_ATTACHED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # UNets with hooks, without marking the UNet itself


@dataclass(frozen=True)
class Schedule:
    """A path's weight and the fraction of sampling steps it is active in."""

    weight: float
    start: float = 0.0
    end: float = 1.0

    def active(self, step: int, total_steps: int) -> bool:
        return self.weight != 0 and self.start <= step / total_steps and (step + 1) / total_steps <= self.end


@dataclass(frozen=True)
class CallInfo:
    """What the caller knows about one UNet call: each row's kind (conditioning.UNCOND/COND) and the step."""

    row_kind: torch.Tensor  # long [B]
    step: int
    total_steps: int


CallInfoSource = Callable[[torch.Tensor, torch.Tensor], CallInfo]  # (x, context) of a UNet call -> CallInfo


def cross_attention_layers(unet: nn.Module) -> list[nn.Module]:
    """The `attn2` modules in the order the adapter's weights are published: input, output, then middle blocks."""
    layers = []
    for part in (unet.input_blocks, unet.output_blocks, unet.middle_block):
        layers += [m for name, m in part.named_modules() if name.endswith("attn2")]
    return layers


def skip_channels(unet: nn.Module) -> list[int]:
    """Channels of each input block's output, i.e. of each skip connection."""
    channels = []
    for block in unet.input_blocks:
        last = next(m for m in reversed(list(block.children())) if hasattr(m, "out_channels"))
        channels.append(last.out_channels)
    return channels


def check_compatible(unet: nn.Module, adapter: FaceAdapter | None, identitynet: IdentityNet | None) -> None:
    """Refuse weights made for another UNet family, saying what was found and what the UNet needs."""
    layers = cross_attention_layers(unet)
    context_dim = layers[0].to_k.in_features
    unet_family = _family(len(layers))
    if adapter is not None:
        shapes = [tuple(kv.to_k_ip.weight.shape) for kv in adapter.layers]
        wanted = [tuple(layer.to_k.weight.shape) for layer in layers]
        if shapes != wanted:
            raise ModelError(
                f"The face adapter is made for {_family(len(shapes))} ({len(shapes)} cross-attention layers, context "
                f"{adapter.context_dim}) but the loaded checkpoint is {unet_family} ({len(wanted)} layers, context "
                f"{context_dim}). Choose the adapter that matches the checkpoint."
            )
    if identitynet is not None:
        cfg = identitynet.config
        found = (cfg.context_dim, identitynet.residual_channels(), cfg.addition_dim)
        wanted = (context_dim, skip_channels(unet), _label_dim(unet))
        if found != wanted:
            raise ModelError(
                f"The IdentityNet does not fit the loaded checkpoint ({unet_family}): it has context {found[0]}, "
                f"{len(found[1])} skip residuals and added-condition width {found[2]}; the checkpoint needs context "
                f"{wanted[0]}, {len(wanted[1])} residuals and width {wanted[2]}. Choose the IdentityNet that matches "
                f"the checkpoint."
            )


def _family(layer_count: int) -> str:
    return FAMILY_BY_LAYER_COUNT.get(layer_count, "an unknown model family")


def _label_dim(unet: nn.Module) -> int | None:
    label_emb = getattr(unet, "label_emb", None)
    if label_emb is None:
        return None
    return next(m for m in label_emb.modules() if isinstance(m, nn.Linear)).in_features


@dataclass
class _CallState:
    row_kind: torch.Tensor
    adapter_weight: float  # 0 when the adapter path is off for this call
    residuals: list[torch.Tensor] | None  # scaled, in the order of the input blocks
    mid: torch.Tensor | None


class _FaceAttention:
    """The face term of one cross-attention layer."""

    def __init__(self, hooks: "InstantIDHooks", attn: nn.Module, kv: LayerKV) -> None:
        self.hooks, self.kv, self.heads = hooks, kv, attn.heads
        self.query: torch.Tensor | None = None

    def keep_query(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        state = self.hooks.call
        self.query = output if state is not None and state.adapter_weight else None

    def add_face(self, module: nn.Module, args: tuple) -> tuple | None:
        query, self.query = self.query, None
        state = self.hooks.call
        if query is None or state is None:
            return None
        if query.shape[0] != state.row_kind.shape[0]:
            raise RuntimeError(
                f"InstantID: a cross-attention layer saw {query.shape[0]} rows but the UNet call has "
                f"{state.row_kind.shape[0]}; another extension changes the batch inside the UNet, which InstantID "
                "cannot follow. Disable one of them."
            )
        k, v = (t.index_select(0, state.row_kind) for t in (self.kv.k, self.kv.v))
        face = F.scaled_dot_product_attention(split_heads(query, self.heads), k.to(query.dtype), v.to(query.dtype))
        hidden = args[0]
        return (hidden + state.adapter_weight * merge_heads(face).to(hidden.dtype),) + args[1:]


class InstantIDHooks:
    """InstantID on one UNet for one generation. Use as a context manager, or attach()/detach()."""

    def __init__(
        self,
        unet: nn.Module,
        tokens: FaceTokens,
        call_info: CallInfoSource,
        *,
        adapter: FaceAdapter | None = None,
        adapter_schedule: Schedule = Schedule(0.0),
        identitynet: IdentityNet | None = None,
        identitynet_schedule: Schedule = Schedule(0.0),
        hint: HintFeatures | None = None,
    ) -> None:
        check_compatible(unet, adapter, identitynet)
        self.unet, self.tokens, self.call_info = unet, tokens, call_info
        self.adapter_schedule = adapter_schedule if adapter is not None else Schedule(0.0)
        self.identitynet, self.identitynet_schedule = identitynet, identitynet_schedule
        self.hint = hint
        self.layers = cross_attention_layers(unet)
        self.face_kv = face_kv(adapter, tokens, [a.heads for a in self.layers]) if adapter is not None else []
        self.call: _CallState | None = None
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "InstantIDHooks":
        if self.attached:
            return self
        if self.unet in _ATTACHED:
            raise RuntimeError("InstantID is already attached to this UNet; detach the other session first.")
        hook = self._handles.append
        hook(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        hook(self.unet.register_forward_hook(self._after_unet, always_call=True))
        if self.identitynet is not None:
            n = len(self.unet.output_blocks)
            for j, block in enumerate(self.unet.output_blocks):
                hook(block.register_forward_pre_hook(self._skip_adder(n - 1 - j)))
            hook(self.unet.middle_block.register_forward_hook(self._add_mid))
        for attn, kv in zip(self.layers, self.face_kv):
            face = _FaceAttention(self, attn, kv)
            hook(attn.to_q.register_forward_hook(face.keep_query))
            hook(attn.to_out[0].register_forward_pre_hook(face.add_face))
        _ATTACHED.add(self.unet)
        return self

    def detach(self) -> None:
        if not self.attached:
            return
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.call = None
        _ATTACHED.discard(self.unet)

    def __enter__(self) -> "InstantIDHooks":
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _before_unet(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        x, timesteps, context, y = _unet_inputs(args, kwargs)
        info = self.call_info(x, context)
        if info.row_kind.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"InstantID: the UNet was called with {x.shape[0]} rows but the sampler described "
                f"{info.row_kind.shape[0]}; cannot tell cond from uncond rows."
            )
        row_kind = info.row_kind.to(self.tokens.both.device)
        adapter_on = self.adapter_schedule.active(info.step, info.total_steps)
        residuals, mid = None, None
        if self.identitynet is not None and self.identitynet_schedule.active(info.step, info.total_steps):
            residuals, mid = self._run_identitynet(x, timesteps, row_kind, y)
        self.call = _CallState(row_kind, self.adapter_schedule.weight if adapter_on else 0.0, residuals, mid)

    def _after_unet(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.call = None

    @torch.no_grad()
    def _run_identitynet(
        self, x: torch.Tensor, timesteps: torch.Tensor, row_kind: torch.Tensor, y: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        net = self.identitynet
        dtype = next(net.parameters()).dtype
        hint = self.hint.get(x.shape[-1] * LATENT_SCALE, x.shape[-2] * LATENT_SCALE)
        # Inpainting UNets take extra input channels (mask, masked image); the IdentityNet sees the latent only.
        latent = x[:, : net.config.in_channels].to(dtype)
        context = self.tokens.for_rows(row_kind).to(dtype)
        down, mid = net(latent, timesteps, context, hint, None if y is None else y.to(dtype))
        weight = self.identitynet_schedule.weight
        return [r * weight for r in down], mid * weight

    def _skip_adder(self, index: int) -> Callable:
        def add_to_skip(module: nn.Module, args: tuple) -> tuple | None:
            state = self.call
            if state is None or state.residuals is None:
                return None
            h = args[0]
            residual = state.residuals[index]
            skip = h[:, -residual.shape[1]:] + residual.to(h.dtype)
            return (torch.cat([h[:, : -residual.shape[1]], skip], dim=1),) + args[1:]

        return add_to_skip

    def _add_mid(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = self.call
        if state is None or state.mid is None:
            return None
        return output + state.mid.to(output.dtype)


def _unet_inputs(args: tuple, kwargs: dict) -> tuple:
    """(x, timesteps, context, y) of `UNetModel.forward(x, timesteps=None, context=None, y=None, **kwargs)`."""
    names = ("x", "timesteps", "context", "y")
    values = dict(zip(names, args))
    values.update({k: kwargs[k] for k in names if k in kwargs})
    return tuple(values.get(k) for k in names)
