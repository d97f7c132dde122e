"""One InstantID job, host-agnostic: settings → identity → models → conditioning, ready to hook a UNet.

The host supplies what only it knows: the UNet, its device and dtype, the model folders, which rows of each UNet
call are cond/uncond, and where the pose keypoints land in each generation size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch

from . import pose_presets
from .args import InstantIDArgs
from .conditioning import ConditioningStore, FaceTokens, HintFeatures
from .face import DetectedFace, FaceAnalyzer, average_embedding, choose_face
from .models import catalog
from .models.adapter import FaceAdapter
from .models.identitynet import IdentityNet
from .models.loading import ModelCache, load_adapter, load_identitynet
from .session import RegionSource, Schedule, Session
from .unet_hooks import CallInfoSource, InstantIDHooks, check_compatible, cross_attention_layers, unet_architecture

CPU = torch.device("cpu")
MODEL_CACHE = ModelCache(capacity=2)
# Tokens, K/V and hints of recent faces, per loaded model: a repeated job (same face, models, size) reuses them.
CONDITIONING = ConditioningStore()


@dataclass(frozen=True)
class Identity:
    """Who to generate: the averaged raw embedding of the chosen face of every face photo."""

    embedding: np.ndarray
    first_face: DetectedFace  # the chosen face of the first photo (the pose when nothing else gives one)
    found: tuple[int, ...]  # faces found in each face photo

    def describe(self, face_index: int) -> str:
        found = ", ".join(str(n) for n in self.found)
        which = "largest" if face_index == 0 else f"#{face_index + 1} by size"
        return f"{which} of {found}"


def analyse_identity(analyzer: FaceAnalyzer, args: InstantIDArgs) -> Identity:
    chosen, found = [], []
    for i, photo in enumerate(args.face_image):
        what = "face image" if len(args.face_image) == 1 else f"face image {i + 1}"
        faces = analyzer.detect(photo)
        chosen.append(choose_face(faces, args.face_index, what))
        found.append(len(faces))
    return Identity(average_embedding(chosen), chosen[0], tuple(found))


@dataclass
class Job:
    """Everything computed once per job for one UNet; `hooks` attaches it to that UNet for one sampling call."""

    args: InstantIDArgs
    identity: Identity
    adapter_entry: catalog.ModelEntry
    identitynet_entry: catalog.ModelEntry | None
    adapter: FaceAdapter
    identitynet: IdentityNet | None
    tokens: FaceTokens

    def hooks(self, unet: torch.nn.Module, call_info: CallInfoSource,
              keypoints_for: Callable[[int, int, int], np.ndarray],
              identitynet_scope: Callable[[], AbstractContextManager] = contextlib.nullcontext,
              region: RegionSource | None = None) -> InstantIDHooks:
        """PyTorch hooks on `unet` (the A1111 host): they ask `call_info` about each UNet call's rows and step."""
        return InstantIDHooks(unet, self.tokens, call_info,
                              **self._session_parts(keypoints_for, identitynet_scope, region))

    def session(self, unet: torch.nn.Module, keypoints_for: Callable[[int, int, int], np.ndarray],
                region: RegionSource | None = None) -> Session:
        """What each call of `unet` needs (the Forge host applies it with its own patches and ControlNet chain)."""
        check_compatible(unet_architecture(unet), self.adapter, self.identitynet)
        heads = [layer.heads for layer in cross_attention_layers(unet)]
        return Session(self.tokens, heads, **self._session_parts(keypoints_for, contextlib.nullcontext, region))

    def _session_parts(self, keypoints_for: Callable[[int, int, int], np.ndarray],
                       identitynet_scope: Callable[[], AbstractContextManager], region: RegionSource | None) -> dict:
        a = self.args
        hint = None if self.identitynet is None else HintFeatures(self.identitynet, keypoints_for, CONDITIONING)
        return dict(
            adapter=self.adapter, adapter_schedule=Schedule(a.adapter_weight, a.adapter_start, a.adapter_end),
            identitynet=self.identitynet,
            identitynet_schedule=Schedule(a.identitynet_weight, a.identitynet_start, a.identitynet_end),
            hint=hint, store=CONDITIONING, identitynet_scope=identitynet_scope, region=region,
        )

    def infotext(self, extra: dict[str, str] | None = None) -> str:
        resolved = self.args.with_overrides(
            adapter_model=self.adapter_entry.name,
            identitynet_model=self.identitynet_entry.name if self.identitynet_entry else self.args.identitynet_model,
        )
        return resolved.infotext({"Face": self.identity.describe(self.args.face_index), **(extra or {})})


def prepare_job(args: InstantIDArgs, identity: Identity, models: list[catalog.ModelEntry], unet: torch.nn.Module,
                device: torch.device, dtype: torch.dtype, identitynet_device: torch.device | None = None) -> Job:
    """Choose and load the models for this UNet and project the face. Raises with a clear message on any misfit.

    The adapter stays on the CPU in its file's dtype: only its tokens and per-layer K/V (megabytes) are made on
    `device`. The IdentityNet is in `dtype` on `identitynet_device`; None leaves it where the host's memory manager
    put it (Forge moves it with the UNet), on the CPU when first loaded."""
    shape = unet_architecture(unet)
    adapter_entry = catalog.choose(models, catalog.ADAPTER, args.adapter_model, shape, "adapter_model")
    identitynet_entry = None
    if args.identitynet_weight and args.pose != pose_presets.NONE:
        identitynet_entry = catalog.choose(models, catalog.IDENTITYNET, args.identitynet_model, shape,
                                           "identitynet_model")
    adapter = MODEL_CACHE.get(adapter_entry.path, load_adapter, CPU, None)
    identitynet = None
    if identitynet_entry is not None:
        identitynet = MODEL_CACHE.get(identitynet_entry.path, load_identitynet, identitynet_device, dtype)
    tokens = CONDITIONING.tokens(adapter, identity.embedding, device, dtype, args.uncond_noise)
    return Job(args, identity, adapter_entry, identitynet_entry, adapter, identitynet, tokens)
