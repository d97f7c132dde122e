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

import contextlib
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from .conditioning import ConditioningStore, FaceTokens, HintFeatures, face_kv
from .errors import ModelError
from .models.adapter import FaceAdapter
from .models.architecture import Architecture
from .models.catalog import misfit
from .models.identitynet import IdentityNet, ProjectedContext
from .models.resampler import split_heads

LATENT_SCALE = 8  # pixels per latent cell in SD/SDXL VAEs
_ATTACHED: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()  # UNets with hooks, without marking the UNet itself
_LAYERS: "weakref.WeakKeyDictionary[nn.Module, list[nn.Module]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Schedule:
    """A path's weight and the fraction of sampling steps it is active in."""

    weight: float
    start: float = 0.0
    end: float = 1.0

    def active(self, step: int, total_steps: int) -> bool:
        """Whether the path acts in the step-th of `total_steps` model calls. Some samplers call the model more often
        than their nominal steps (DPM adaptive; PLMS, UniPC, DDIM at some step counts): their late calls count as
        the end of sampling, so a window ending at 1 lasts until sampling ends."""
        begun, done = min(step / total_steps, 1.0), min((step + 1) / total_steps, 1.0)
        return self.weight != 0 and self.start <= begun and done <= self.end


OFF = 2  # a row kind beside conditioning.UNCOND/COND: a row InstantID leaves untouched (an image it does not serve)


@dataclass(frozen=True)
class CallInfo:
    """What the caller knows about one UNet call: each row's kind (conditioning.UNCOND/COND, or OFF), the image of
    the batch each row belongs to (for per-image keypoints; None: one pose for all), and the step."""

    row_kinds: tuple[int, ...]  # one per row of the call
    step: int
    total_steps: int
    row_images: tuple[int, ...] | None = None


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


MAX_ROW_LAYOUTS = 8  # row layouts remembered per session (a job sees 1-3: batched, split, cond only)


class _Rows:
    """What one row layout (the kind and image of each row of a UNet call) determines within a session: the face K/V
    of each layer for those rows, the IdentityNet's projected face context and its keypoint features. All are pure
    functions of the layout and the session's fixed tokens, weights and keypoints, so a later call with the same
    layout reuses them instead of selecting rows and projecting again in every layer of every step. The layout itself
    is still read in every call."""

    def __init__(self, kinds: tuple[int, ...], images: tuple[int, ...] | None, device: torch.device) -> None:
        self.kinds, self.images = kinds, images
        self.row_kind = torch.tensor(kinds, dtype=torch.long, device=device)
        # Rows the IdentityNet runs on (all but OFF rows), and their kinds.
        self.served = [i for i, kind in enumerate(kinds) if kind != OFF]
        self.served_index = torch.tensor(self.served, dtype=torch.long, device=device)
        self.served_kinds = tuple(kinds[i] for i in self.served)
        self.face_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.identitynet_context: ProjectedContext | None = None
        self.hints: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def all_served(self) -> bool:
        return len(self.served) == len(self.kinds)

    def select(self, both: torch.Tensor) -> torch.Tensor:
        """Rows of a [2, ...] UNCOND/COND tensor for this layout (zeros for OFF rows); a broadcast view when all rows
        are one kind."""
        if len(set(self.kinds)) == 1 and self.kinds[0] != OFF:
            kind = self.kinds[0]
            return both[kind:kind + 1].expand(len(self.kinds), *both.shape[1:])
        if not self.all_served:
            both = torch.cat([both, both.new_zeros(1, *both.shape[1:])])
        return both.index_select(0, self.row_kind)


@dataclass
class _CallState:
    rows: _Rows
    face_kv: list[tuple[torch.Tensor, torch.Tensor]] | None  # per layer, for these rows, V × adapter weight; None: off
    residuals: list[torch.Tensor] | None  # unscaled, in the order of the input blocks
    mid: torch.Tensor | None
    identitynet_weight: float

    @property
    def row_kind(self) -> torch.Tensor:
        return self.rows.row_kind


class _FaceAttention:
    """The face term of one cross-attention layer (the index-th in adapter order)."""

    def __init__(self, hooks: "InstantIDHooks", attn: nn.Module, index: int) -> None:
        self.hooks, self.index, self.heads = hooks, index, attn.heads
        self.query: torch.Tensor | None = None

    def keep_query(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        state = self.hooks.call
        self.query = output if state is not None and state.face_kv is not None else None

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
        k, v = state.face_kv[self.index]  # V carries the adapter weight s
        face = F.scaled_dot_product_attention(split_heads(query, self.heads), k.to(query.dtype), v.to(query.dtype))
        hidden = args[0]
        # hidden + merge_heads(face), adding through a [B, N, heads, d] view instead of materialising the merge.
        b, n, _ = hidden.shape
        added = hidden.reshape(b, n, self.heads, -1) + face.transpose(1, 2).to(hidden.dtype)
        return (added.reshape(b, n, -1),) + args[1:]


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
    ) -> None:
        """`store` keeps the face K/V and the IdentityNet's projected face context for later sessions (jobs) with
        the same tokens and models; without one they are computed for this session only. Each IdentityNet run
        happens inside `identitynet_scope()`: the host's way to have it on the right device then."""
        self.layers = cross_attention_layers(unet)
        check_compatible(unet_architecture(unet), adapter, identitynet)
        self.unet, self.tokens, self.call_info = unet, tokens, call_info
        self.adapter_schedule = adapter_schedule if adapter is not None else Schedule(0.0)
        self.identitynet, self.identitynet_schedule = identitynet, identitynet_schedule
        self.hint, self.store, self.identitynet_scope = hint, store, identitynet_scope
        self.face_kv = []
        if adapter is not None:
            heads = [a.heads for a in self.layers]
            self.face_kv = store.face_kv(adapter, tokens, heads) if store else face_kv(adapter, tokens, heads)
        self.call: _CallState | None = None
        self._handles: list[RemovableHandle] = []
        self._rows: dict[tuple, _Rows] = {}

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
        if self.identitynet is not None:
            n = len(self.unet.output_blocks)
            for j, block in enumerate(self.unet.output_blocks):
                hook(block.register_forward_pre_hook(self._skip_adder(n - 1 - j)))
            hook(self.unet.middle_block.register_forward_hook(self._add_mid))
        for index, attn in enumerate(self.layers[:len(self.face_kv)]):
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
        info = self.call_info(x, context)
        if len(info.row_kinds) != x.shape[0]:
            raise RuntimeError(
                f"InstantID: the UNet was called with {x.shape[0]} rows but the sampler described "
                f"{len(info.row_kinds)}; cannot tell cond from uncond rows."
            )
        rows = self._rows_of(tuple(info.row_kinds), info.row_images)
        face_kv = None
        if rows.served and self.adapter_schedule.active(info.step, info.total_steps):
            face_kv = self._face_kv_of(rows)
        residuals, mid = None, None
        if rows.served and self.identitynet is not None and self.identitynet_schedule.active(info.step,
                                                                                            info.total_steps):
            with self.identitynet_scope():
                residuals, mid = self._run_identitynet(x, timesteps, rows, y)
        self.call = _CallState(rows, face_kv, residuals, mid, self.identitynet_schedule.weight)

    def _rows_of(self, kinds: tuple[int, ...], images: tuple[int, ...] | None) -> _Rows:
        key = (kinds, images)
        rows = self._rows.get(key)
        if rows is None:
            if len(self._rows) >= MAX_ROW_LAYOUTS:
                self._rows.pop(next(iter(self._rows)))
            rows = self._rows[key] = _Rows(kinds, images, self.tokens.both.device)
        return rows

    def _face_kv_of(self, rows: _Rows) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if rows.face_kv is None:
            s = self.adapter_schedule.weight
            rows.face_kv = [(rows.select(kv.k), rows.select(kv.v * s)) for kv in self.face_kv]
        return rows.face_kv

    def _after_unet(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.call = None

    @torch.no_grad()
    def _run_identitynet(
        self, x: torch.Tensor, timesteps: torch.Tensor, rows: _Rows, y: torch.Tensor | None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for every row of the call (zero for OFF rows); the IdentityNet runs on the served rows."""
        net = self.identitynet
        dtype = next(net.parameters()).dtype
        hint = self._hint_of(rows, x.shape[-1] * LATENT_SCALE, x.shape[-2] * LATENT_SCALE)
        # Inpainting UNets take extra input channels (mask, masked image); the IdentityNet sees the latent only.
        latent = x[:, : net.config.in_channels].to(dtype)
        if y is not None:
            y = y.to(dtype)
        if not rows.all_served:
            latent, timesteps = latent[rows.served_index], timesteps[rows.served_index]
            y = None if y is None else y[rows.served_index]
        if rows.identitynet_context is None:  # the face tokens of these rows, projected by every attn2 once
            def project():
                return net.project_context(self.tokens.for_rows(rows.served_index.new_tensor(rows.served_kinds))
                                           .to(dtype))

            rows.identitynet_context = (project() if self.store is None else self.store.projected_context(
                net, self.tokens, rows.served_kinds, project))
        # Unscaled: the weight is applied where the residuals are added (torch.add's alpha, no extra pass).
        down, mid = net(latent, timesteps, rows.identitynet_context, hint, y)
        if rows.all_served:
            return down, mid
        return [_scattered(r, rows, len(rows.kinds)) for r in down], _scattered(mid, rows, len(rows.kinds))

    def _hint_of(self, rows: _Rows, width: int, height: int) -> torch.Tensor:
        """The keypoint features of the served rows' images at this size: [1, ...] when they share one image."""
        hint = rows.hints.get((width, height))
        if hint is None:
            images = (0,) if rows.images is None else tuple(rows.images[i] for i in rows.served)
            features = {image: self.hint.get(width, height, image) for image in dict.fromkeys(images)}
            hint = next(iter(features.values())) if len(features) == 1 else torch.cat([features[i] for i in images])
            rows.hints[(width, height)] = hint
        return hint

    def _skip_adder(self, index: int) -> Callable:
        def add_to_skip(module: nn.Module, args: tuple) -> tuple | None:
            state = self.call
            if state is None or state.residuals is None:
                return None
            h = args[0]
            residual = _fitted(state.residuals[index], h)
            skip = torch.add(h[:, -residual.shape[1]:], residual, alpha=state.identitynet_weight)
            return (torch.cat([h[:, : -residual.shape[1]], skip], dim=1),) + args[1:]

        return add_to_skip

    def _add_mid(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = self.call
        if state is None or state.mid is None:
            return None
        return torch.add(output, _fitted(state.mid, output), alpha=state.identitynet_weight)


def _scattered(values: torch.Tensor, rows: _Rows, total: int) -> torch.Tensor:
    """Values of the served rows placed among zeros for all `total` rows of the call."""
    out = values.new_zeros(total, *values.shape[1:])
    return out.index_copy_(0, rows.served_index, values)


def _fitted(residual: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A residual in the target's dtype and spatial size: extensions that rescale feature maps inside the UNet
    (Kohya's Hires.fix / Deep Shrink) make them differ; resized by nearest neighbour, as sd-webui-controlnet does."""
    residual = residual.to(target.dtype)
    if residual.shape[-2:] != target.shape[-2:]:
        residual = F.interpolate(residual, size=target.shape[-2:], mode="nearest")
    return residual


def _unet_inputs(args: tuple, kwargs: dict) -> tuple:
    """(x, timesteps, context, y) of `UNetModel.forward(x, timesteps=None, context=None, y=None, **kwargs)`."""
    names = ("x", "timesteps", "context", "y")
    values = dict(zip(names, args))
    values.update({k: kwargs[k] for k in names if k in kwargs})
    return tuple(values.get(k) for k in names)
