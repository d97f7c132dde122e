"""What InstantID computes in each UNet call, whichever way a host injects it: the rows' face keys/values for the
face attention, and the IdentityNet's residuals. With several identities (people) each has its own tokens, keypoints
and region: the face term is the sum of each identity's term masked to its region, the residuals the sum of each
identity's IdentityNet pass, weighted and masked to its region. The A1111 host applies them with PyTorch hooks
(unet_hooks), Forge with its own patches and ControlNet chain (hosts/forge); both ask a Session.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .conditioning import ConditioningStore, FaceTokens, HintFeatures, face_kv
from .models.adapter import FaceAdapter
from .models.identitynet import IdentityNet, ProjectedContext
from .models.resampler import split_heads

LATENT_SCALE = 8  # pixels per latent cell in SD/SDXL VAEs
OFF = 2  # a row kind beside conditioning.UNCOND/COND: a row InstantID leaves untouched (an image it does not serve)
MAX_ROW_LAYOUTS = 8  # row layouts remembered per session (a job sees 1-3: batched, split, cond only)


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


@dataclass(frozen=True)
class CallInfo:
    """What the host knows about one UNet call: each row's kind (conditioning.UNCOND/COND, or OFF), the image of
    the batch each row belongs to (for per-image keypoints; None: one pose for all), and the step."""

    row_kinds: tuple[int, ...]  # one per row of the call
    step: int
    total_steps: int
    row_images: tuple[int, ...] | None = None


RegionSource = Callable[[int, int, int], np.ndarray]  # (width, height, image) -> [H, W] in [0, 1]


class RegionMasks:
    """Where InstantID acts in one canvas size, per row: [rows or 1, 1, H, W] in [0, 1] at the canvas's pixels, and
    that mask brought to each layer's resolution the way the reference full pipeline brings it: bilinear for the
    IdentityNet residuals, nearest (by the pixels-per-token ratio) for the face attention term."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels
        self._residual: dict[tuple, torch.Tensor] = {}
        self._attention: dict[int, torch.Tensor] = {}

    def residual(self, like: torch.Tensor) -> torch.Tensor:
        """[rows or 1, 1, h, w] in the dtype of `like`, a residual of that size."""
        key = (*like.shape[-2:], like.dtype)
        if key not in self._residual:
            self._residual[key] = F.interpolate(self.pixels, like.shape[-2:], mode="bilinear").to(like.dtype)
        return self._residual[key]

    def attention(self, tokens: int) -> torch.Tensor:
        """[rows or 1, tokens, 1, 1] for a layer whose query has `tokens` positions."""
        if tokens not in self._attention:
            height, width = self.pixels.shape[-2:]
            ratio = (height * width / tokens) ** 0.5
            mask = F.interpolate(self.pixels, scale_factor=1 / ratio, mode="nearest")
            self._attention[tokens] = mask.reshape(mask.shape[0], -1, 1, 1)
        return self._attention[tokens]


@dataclass(frozen=True)
class IdentityTerms:
    """One identity of a session: its face tokens, each path's schedule, its keypoint features (None: its
    IdentityNet path is off) and where in each image it acts (None: everywhere)."""

    tokens: FaceTokens
    adapter_schedule: Schedule
    identitynet_schedule: Schedule
    hint: HintFeatures | None = None
    region: RegionSource | None = None


class Rows:
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
        # per identity (index into the session's identities)
        self.face_kv: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.identitynet_context: dict[int, ProjectedContext] = {}
        self.hints: dict[tuple[int, int, int], torch.Tensor] = {}  # (identity, width, height)
        self.regions: dict[tuple[int, int, int], RegionMasks | None] = {}

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


@dataclass(frozen=True)
class FaceTerm:
    """One identity's face attention in one call: per layer (K, V × adapter weight) for the call's rows, and where
    the term acts (None: everywhere)."""

    kv: list[tuple[torch.Tensor, torch.Tensor]]
    region: RegionMasks | None = None


@dataclass
class CallState:
    """One UNet call's share of InstantID."""

    rows: Rows
    faces: tuple[FaceTerm, ...]  # of the identities whose adapter acts in this call; empty: the face term is off
    residuals: list[torch.Tensor] | None  # in the order of the input blocks, masked to the regions
    mid: torch.Tensor | None
    identitynet_weight: float  # what the residuals are added with (1 when they come weighted: several identities)
    identitynet_identities: tuple[int, ...] = ()  # whose IdentityNet pass runs in this call

    @property
    def identitynet_acts(self) -> bool:
        return bool(self.identitynet_identities)


class Session:
    """InstantID for one sampling run on one UNet: each identity's fixed tokens, per-layer face K/V, schedules,
    keypoints and region, and what each call needs of them."""

    def __init__(
        self,
        tokens: FaceTokens,
        layer_heads: list[int],
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
        """The first identity is given by `tokens`, the two schedules, `hint` and `region`; `others` are further
        identities (several people), each with its own. `layer_heads`: the head count of each cross-attention layer,
        in the adapter's order. `region`: where in each image the identity acts; None: everywhere. `store` keeps the
        face K/V and the IdentityNet's projected face context for later sessions (jobs) with the same tokens and
        models; without one they are computed for this session only. Each IdentityNet run happens inside
        `identitynet_scope()`: the host's way to have it on the right device then."""
        off = Schedule(0.0)
        self.identities = [
            IdentityTerms(terms.tokens, terms.adapter_schedule if adapter is not None else off,
                          terms.identitynet_schedule if identitynet is not None and terms.hint is not None else off,
                          terms.hint, terms.region)
            for terms in (IdentityTerms(tokens, adapter_schedule, identitynet_schedule, hint, region), *others)]
        self.identitynet = identitynet
        self.store, self.identitynet_scope = store, identitynet_scope
        self.device = tokens.both.device
        self.face_kv = []  # per identity, per layer
        if adapter is not None:
            self.face_kv = [store.face_kv(adapter, t.tokens, layer_heads) if store else
                            face_kv(adapter, t.tokens, layer_heads) for t in self.identities]
        self._rows: dict[tuple, Rows] = {}

    @property
    def face_layers(self) -> int:
        """How many cross-attention layers get a face term (the adapter's; none without an adapter)."""
        return len(self.face_kv[0]) if self.face_kv else 0

    def call(self, info: CallInfo, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None) -> CallState:
        """What this call needs: the face K/V when the adapter acts, the residuals when the IdentityNet does."""
        state = self.state(info, x.shape)
        if state.identitynet_acts:
            with self.identitynet_scope():
                state.residuals, state.mid = self.identitynet_residuals(
                    x, timesteps, state.rows, y, state.identitynet_identities)
        return state

    def state(self, info: CallInfo, latent_shape: tuple[int, ...]) -> CallState:
        """The call's state without the residuals (the host runs the IdentityNet when `identitynet_acts`)."""
        if len(info.row_kinds) != latent_shape[0]:
            raise RuntimeError(
                f"InstantID: the UNet was called with {latent_shape[0]} rows but the sampler described "
                f"{len(info.row_kinds)}; cannot tell cond from uncond rows."
            )
        rows = self.rows(tuple(info.row_kinds), info.row_images)
        acting = tuple(self._acting(info, "identitynet_schedule")) if rows.served else ()
        # One identity's residuals come unscaled (its weight is applied where they are added: torch.add's alpha, no
        # extra pass); several identities' come summed, each weighted.
        weight = self.identities[0].identitynet_schedule.weight if len(self.identities) == 1 else 1.0
        return CallState(rows, self.faces_for(rows, info, latent_shape), None, None, weight, acting)

    def _acting(self, info: CallInfo, schedule: str) -> list[int]:
        """The identities whose path (its schedule's attribute name) acts in this call."""
        return [i for i, t in enumerate(self.identities) if getattr(t, schedule).active(info.step, info.total_steps)]

    def region_of(self, rows: Rows, identity: int, latent_shape: tuple[int, ...]) -> RegionMasks | None:
        """An identity's region in each row's image at the canvas size of a latent of this shape; None when it acts
        everywhere."""
        source = self.identities[identity].region
        if source is None:
            return None
        size = (latent_shape[-1] * LATENT_SCALE, latent_shape[-2] * LATENT_SCALE)
        key = (identity, *size)
        if key not in rows.regions:
            images = [0] * len(rows.kinds) if rows.images is None else list(rows.images)
            masks = {image: source(*size, image) for image in dict.fromkeys(images)}
            stacked = [masks[image] for image in (images[:1] if len(masks) == 1 else images)]
            pixels = torch.from_numpy(np.stack(stacked)[:, None].astype(np.float32)).to(self.device)
            rows.regions[key] = RegionMasks(pixels)
        return rows.regions[key]

    def rows(self, kinds: tuple[int, ...], images: tuple[int, ...] | None) -> Rows:
        key = (kinds, images)
        rows = self._rows.get(key)
        if rows is None:
            if len(self._rows) >= MAX_ROW_LAYOUTS:
                self._rows.pop(next(iter(self._rows)))
            rows = self._rows[key] = Rows(kinds, images, self.device)
        return rows

    def faces_for(self, rows: Rows, info: CallInfo, latent_shape: tuple[int, ...]) -> tuple[FaceTerm, ...]:
        """The face term of each identity whose adapter acts in this call: its per-layer (K, s·V) of these rows."""
        if not rows.served:
            return ()
        terms = []
        for i in self._acting(info, "adapter_schedule"):
            if i not in rows.face_kv:
                s = self.identities[i].adapter_schedule.weight
                rows.face_kv[i] = [(rows.select(kv.k), rows.select(kv.v * s)) for kv in self.face_kv[i]]
            terms.append(FaceTerm(rows.face_kv[i], self.region_of(rows, i, latent_shape)))
        return tuple(terms)

    @torch.no_grad()
    def identitynet_residuals(
        self, x: torch.Tensor, timesteps: torch.Tensor, rows: Rows, y: torch.Tensor | None,
        acting: tuple[int, ...]
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Residuals for every row of the call (zero for OFF rows), to be added with the call state's
        `identitynet_weight`. The IdentityNet runs on the served rows, once per identity in `acting`."""
        net = self.identitynet
        dtype = next(net.parameters()).dtype
        # Inpainting UNets take extra input channels (mask, masked image); the IdentityNet sees the latent only.
        latent = x[:, : net.config.in_channels].to(dtype)
        if y is not None:
            y = y.to(dtype)
        if not rows.all_served:
            latent, timesteps = latent[rows.served_index], timesteps[rows.served_index]
            y = None if y is None else y[rows.served_index]
        if len(self.identities) == 1:
            down, mid = self._identity_residuals(0, latent, timesteps, rows, y, x.shape)
        else:
            down, mid = None, None
            for i in acting:
                w = self.identities[i].identitynet_schedule.weight
                d, m = self._identity_residuals(i, latent, timesteps, rows, y, x.shape)
                down = [r * w for r in d] if down is None else [a.add_(r, alpha=w) for a, r in zip(down, d)]
                mid = m * w if mid is None else mid.add_(m, alpha=w)
        if rows.all_served:
            return down, mid
        total = len(rows.kinds)
        return [_scattered(r, rows, total) for r in down], _scattered(mid, rows, total)

    def _identity_residuals(self, identity: int, latent: torch.Tensor, timesteps: torch.Tensor, rows: Rows,
                            y: torch.Tensor | None, latent_shape: tuple[int, ...]
                            ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """One identity's IdentityNet pass on the served rows, masked to its region."""
        net, terms = self.identitynet, self.identities[identity]
        dtype = latent.dtype
        hint = self._hint_of(rows, identity, latent_shape[-1] * LATENT_SCALE, latent_shape[-2] * LATENT_SCALE)
        if identity not in rows.identitynet_context:  # its face tokens of these rows, projected by every attn2 once
            def project():
                return net.project_context(terms.tokens.for_rows(rows.served_index.new_tensor(rows.served_kinds))
                                           .to(dtype))

            rows.identitynet_context[identity] = (project() if self.store is None else self.store.projected_context(
                net, terms.tokens, rows.served_kinds, project))
        down, mid = net(latent, timesteps, rows.identitynet_context[identity], hint, y)
        region = self.region_of(rows, identity, latent_shape)
        if region is not None:
            down, mid = self._in_region(region, rows, down, mid)
        return down, mid

    @staticmethod
    def _in_region(region: RegionMasks, rows: Rows, down: list[torch.Tensor], mid: torch.Tensor
                   ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The residuals of the served rows, zero outside each row's region."""
        def masked(residual: torch.Tensor) -> torch.Tensor:
            mask = region.residual(residual)
            if mask.shape[0] > 1 and not rows.all_served:
                mask = mask[rows.served_index]
            return residual * mask

        return [masked(r) for r in down], masked(mid)

    def _hint_of(self, rows: Rows, identity: int, width: int, height: int) -> torch.Tensor:
        """An identity's keypoint features of the served rows' images at this size: [1, ...] when they share one
        image."""
        key = (identity, width, height)
        hint = rows.hints.get(key)
        if hint is None:
            source = self.identities[identity].hint
            images = (0,) if rows.images is None else tuple(rows.images[i] for i in rows.served)
            features = {image: source.get(width, height, image) for image in dict.fromkeys(images)}
            hint = next(iter(features.values())) if len(features) == 1 else torch.cat([features[i] for i in images])
            rows.hints[key] = hint
        return hint


def face_attention(state: CallState, index: int, query: torch.Tensor, heads: int) -> torch.Tensor:
    """s·Attn(Q, K_face, V_face) of the index-th cross-attention layer for a projected query [B, N, heads·d], as
    [B, N, heads, d] (add it to the text attention's output viewed the same way); with several identities the sum
    of each one's term, masked to its region."""
    if query.shape[0] != state.rows.row_kind.shape[0]:
        raise RuntimeError(
            f"InstantID: a cross-attention layer saw {query.shape[0]} rows but the UNet call has "
            f"{state.rows.row_kind.shape[0]}; another extension changes the batch inside the UNet, which InstantID "
            "cannot follow. Disable one of them."
        )
    q = split_heads(query, heads)
    total = None
    for term in state.faces:  # one per identity
        k, v = term.kv[index]  # V carries the adapter weight s
        face = F.scaled_dot_product_attention(q, k.to(query.dtype), v.to(query.dtype)).transpose(1, 2)
        if term.region is not None:
            face = face * term.region.attention(query.shape[1]).to(face.dtype)
        total = face if total is None else total + face
    return total


def add_heads(hidden: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """hidden [B, N, heads·d] + face [B, N, heads, d], through a view instead of materialising the merge."""
    b, n, _ = hidden.shape
    return (hidden.reshape(b, n, face.shape[2], -1) + face.to(hidden.dtype)).reshape(b, n, -1)


def fitted(residual: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A residual in the target's dtype and spatial size: extensions that rescale feature maps inside the UNet
    (Kohya's Hires.fix / Deep Shrink) make them differ; resized by nearest neighbour, as sd-webui-controlnet does."""
    residual = residual.to(target.dtype)
    if residual.shape[-2:] != target.shape[-2:]:
        residual = F.interpolate(residual, size=target.shape[-2:], mode="nearest")
    return residual


def _scattered(values: torch.Tensor, rows: Rows, total: int) -> torch.Tensor:
    """Values of the served rows placed among zeros for all `total` rows of the call."""
    out = values.new_zeros(total, *values.shape[1:])
    return out.index_copy_(0, rows.served_index, values)
