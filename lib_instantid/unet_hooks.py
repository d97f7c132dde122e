"""Attach InstantID to an ldm/sgm-layout UNet with PyTorch hooks, and detach it without a trace.

Nothing of the UNet is replaced: the host's attention implementation and any LoRA patching of the linears keep
running. Per UNet call:
- a forward pre-hook on the UNet asks the caller which rows are cond/uncond and which step it is, and has the
  session (session.py) run the IdentityNet when its window is active;
- forward pre-hooks on each output block add the IdentityNet residuals to the skip half of their input, a forward hook
  on the middle block adds the middle residual;
- in every cross-attention layer a forward hook on `to_q` keeps the query, and a forward pre-hook on `to_out[0]`
  adds s·Attn(Q, K_face, V_face) to the text attention's output. `to_out` is linear, so this equals the paper's
  to_out(Attn_text + s·Attn_face) without a second projection.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .conditioning import ConditioningStore, FaceTokens, HintFeatures
from .errors import ModelError
from .models.adapter import FaceAdapter
from .models.architecture import Architecture
from .models.catalog import misfit
from .models.identitynet import IdentityNet
from .session import (CallInfo, CallState, IdentityTerms, RegionSource, Schedule, Session, add_heads, face_attention,
                      fitted)

_ATTACHED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # UNets with hooks, without marking the UNet itself
_LAYERS: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()

CallInfoSource = Callable[[torch.Tensor, torch.Tensor], CallInfo]  # (x, context) of a UNet call -> CallInfo


def cross_attention_layers(unet: nn.Module) -> list[nn.Module]:
    """The `attn2` modules in the order the adapter's weights are published: input, output, then middle blocks.
    Found once per UNet (a walk over thousands of modules): a checkpoint change with another architecture brings a
    new UNet object, and loading weights into the same one leaves its modules in place."""
    layers = _LAYERS.get(unet)
    if layers is None:
        layers = _LAYERS[unet] = [m for part in (unet.input_blocks, unet.output_blocks, unet.middle_block)
                                  for name, m in part.named_modules() if name.endswith("attn2")]
    return list(layers)


def unet_architecture(unet: nn.Module) -> Architecture:
    """The shapes InstantID weights must fit: cross-attention widths, skip channels, added-condition width."""
    layers = cross_attention_layers(unet)
    return Architecture(layers[0].to_k.in_features, tuple(layer.to_k.out_features for layer in layers),
                        tuple(_skip_channels(unet)), _label_dim(unet))


def _skip_channels(unet: nn.Module) -> list[int]:
    """Channels of each input block's output, i.e. of each skip connection."""
    channels = []
    for block in unet.input_blocks:
        last = next(m for m in reversed(list(block.children())) if hasattr(m, "out_channels"))
        channels.append(last.out_channels)
    return channels


def _label_dim(unet: nn.Module) -> int | None:
    label_emb = getattr(unet, "label_emb", None)
    if label_emb is None:
        return None
    return next(m for m in label_emb.modules() if isinstance(m, nn.Linear)).in_features


def check_compatible(unet: Architecture, adapter: FaceAdapter | None, identitynet: IdentityNet | None) -> None:
    """Refuse weights made for another UNet, saying what was found and what the UNet needs."""
    if adapter is not None and not adapter.architecture.adapter_fits(unet):
        raise ModelError(misfit("face adapter", adapter.architecture.describe_adapter(), unet))
    if identitynet is not None and not identitynet.architecture.identitynet_fits(unet):
        raise ModelError(misfit("IdentityNet", identitynet.architecture.describe_identitynet(), unet))


class _FaceAttention:
    """The face term of one cross-attention layer (the index-th in adapter order)."""

    def __init__(self, hooks: "InstantIDHooks", attn: nn.Module, index: int) -> None:
        self.hooks, self.index, self.heads = hooks, index, attn.heads
        self.query: torch.Tensor | None = None

    def keep_query(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        state = self.hooks.call
        self.query = output if state is not None and state.faces else None

    def add_face(self, module: nn.Module, args: tuple) -> tuple | None:
        query, self.query = self.query, None
        state = self.hooks.call
        if query is None or state is None:
            return None
        return (add_heads(args[0], face_attention(state, self.index, query, self.heads)),) + args[1:]


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
        store: ConditioningStore | None = None,
        identitynet_scope: Callable[[], AbstractContextManager] = contextlib.nullcontext,
        region: RegionSource | None = None,
        others: Sequence[IdentityTerms] = (),
    ) -> None:
        """See Session for the arguments; `call_info` describes each UNet call's rows and step."""
        self.layers = cross_attention_layers(unet)
        check_compatible(unet_architecture(unet), adapter, identitynet)
        self.unet, self.call_info = unet, call_info
        self.session = Session(tokens, [a.heads for a in self.layers], adapter=adapter,
                               adapter_schedule=adapter_schedule, identitynet=identitynet,
                               identitynet_schedule=identitynet_schedule, hint=hint, store=store,
                               identitynet_scope=identitynet_scope, region=region, others=others)
        self.call: CallState | None = None
        self._handles: list[RemovableHandle] = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self) -> "InstantIDHooks":
        """Registers every hook, or none: a failure half way removes those already registered."""
        if self.attached:
            return self
        if self.unet in _ATTACHED:
            raise RuntimeError("InstantID is already attached to this UNet; detach the other session first.")
        try:
            self._register()
        except BaseException:
            self.detach()
            raise
        _ATTACHED.add(self.unet)
        return self

    def _register(self) -> None:
        hook = self._handles.append
        hook(self.unet.register_forward_pre_hook(self._before_unet, with_kwargs=True))
        hook(self.unet.register_forward_hook(self._after_unet, always_call=True))
        if self.session.identitynet is not None:
            n = len(self.unet.output_blocks)
            for j, block in enumerate(self.unet.output_blocks):
                hook(block.register_forward_pre_hook(self._skip_adder(n - 1 - j)))
            hook(self.unet.middle_block.register_forward_hook(self._add_mid))
        for index, attn in enumerate(self.layers[:self.session.face_layers]):
            face = _FaceAttention(self, attn, index)
            hook(attn.to_q.register_forward_hook(face.keep_query))
            hook(attn.to_out[0].register_forward_pre_hook(face.add_face))

    def detach(self) -> None:
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
        self.call = self.session.call(self.call_info(x, context), x, timesteps, y)

    def _after_unet(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.call = None

    def _skip_adder(self, index: int) -> Callable:
        def add_to_skip(module: nn.Module, args: tuple) -> tuple | None:
            state = self.call
            if state is None or state.residuals is None:
                return None
            h = args[0]
            residual = fitted(state.residuals[index], h)
            skip = torch.add(h[:, -residual.shape[1]:], residual, alpha=state.identitynet_weight)
            return (torch.cat([h[:, : -residual.shape[1]], skip], dim=1),) + args[1:]

        return add_to_skip

    def _add_mid(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = self.call
        if state is None or state.mid is None:
            return None
        return torch.add(output, fitted(state.mid, output), alpha=state.identitynet_weight)


def _unet_inputs(args: tuple, kwargs: dict) -> tuple:
    """(x, timesteps, context, y) of `UNetModel.forward(x, timesteps=None, context=None, y=None, **kwargs)`."""
    names = ("x", "timesteps", "context", "y")
    values = dict(zip(names, args))
    values.update({k: kwargs[k] for k in names if k in kwargs})
    return tuple(values.get(k) for k in names)
