"""One InstantID job, host-agnostic: settings → identity → models → conditioning, ready to hook a UNet.

The host supplies what only it knows: the UNet, its device and dtype, the model folders, which rows of each UNet
call are cond/uncond, and where the pose keypoints land in each generation size.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .args import InstantIDArgs
from .conditioning import ConditioningStore, FaceTokens, HintFeatures
from .face import DetectedFace, FaceAnalyzer, average_embedding, choose_face
from .models import catalog
from .models.adapter import FaceAdapter
from .models.identitynet import IdentityNet
from .models.loading import ModelCache, load_adapter, load_identitynet
from .session import IdentityTerms, RegionSource, Schedule, Session
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


def analyse_identity(analyzer: FaceAnalyzer, photos: Sequence[Image.Image], face_index: int,
                     person: str = "") -> Identity:
    """The identity of the chosen face in each photo; `person` names whose photos they are in messages."""
    chosen, found = [], []
    for i, photo in enumerate(photos):
        what = "face image" if len(photos) == 1 else f"face image {i + 1}"
        faces = analyzer.detect(photo)
        chosen.append(choose_face(faces, face_index, f"{person}{what}"))
        found.append(len(faces))
    return Identity(average_embedding(chosen), chosen[0], tuple(found))


KeypointSource = Callable[[int, int, int], np.ndarray]  # (width, height, image) -> 5 keypoints on that canvas


@dataclass(frozen=True)
class Person:
    """One identity of a job as the host stages it: who, their two weights, and where they go: their keypoints on
    each canvas (None: no IdentityNet pass for them, pose "none") and their region (None: everywhere)."""

    identity: Identity
    face_index: int
    adapter_weight: float
    identitynet_weight: float
    keypoints_for: KeypointSource | None
    region: RegionSource | None = None

    @property
    def posed(self) -> bool:
        return self.keypoints_for is not None and self.identitynet_weight != 0


@dataclass
class Job:
    """Everything computed once per job for one UNet; `hooks` attaches it to that UNet for one sampling call."""

    args: InstantIDArgs
    people: tuple[Person, ...]
    adapter_entry: catalog.ModelEntry
    identitynet_entry: catalog.ModelEntry | None
    adapter: FaceAdapter
    identitynet: IdentityNet | None
    tokens: tuple[FaceTokens, ...]  # per person

    def hooks(self, unet: torch.nn.Module, call_info: CallInfoSource,
              identitynet_scope: Callable[[], AbstractContextManager] = contextlib.nullcontext) -> InstantIDHooks:
        """PyTorch hooks on `unet` (the A1111 host): they ask `call_info` about each UNet call's rows and step."""
        return InstantIDHooks(unet, self.tokens[0], call_info, **self._session_parts(identitynet_scope))

    def session(self, unet: torch.nn.Module) -> Session:
        """What each call of `unet` needs (the Forge host applies it with its own patches and ControlNet chain)."""
        check_compatible(unet_architecture(unet), self.adapter, self.identitynet)
        heads = [layer.heads for layer in cross_attention_layers(unet)]
        return Session(self.tokens[0], heads, **self._session_parts(contextlib.nullcontext))

    def _session_parts(self, identitynet_scope: Callable[[], AbstractContextManager]) -> dict:
        a = self.args
        terms = [IdentityTerms(
            tokens, Schedule(person.adapter_weight, a.adapter_start, a.adapter_end),
            Schedule(person.identitynet_weight, a.identitynet_start, a.identitynet_end),
            HintFeatures(self.identitynet, person.keypoints_for, CONDITIONING)
            if self.identitynet is not None and person.posed else None, person.region)
            for person, tokens in zip(self.people, self.tokens)]
        first = terms[0]
        return dict(
            adapter=self.adapter, adapter_schedule=first.adapter_schedule, identitynet=self.identitynet,
            identitynet_schedule=first.identitynet_schedule, hint=first.hint, store=CONDITIONING,
            identitynet_scope=identitynet_scope, region=first.region, others=terms[1:],
        )

    def infotext(self, extra: dict[str, str] | None = None) -> str:
        resolved = self.args.with_overrides(
            adapter_model=self.adapter_entry.name,
            identitynet_model=self.identitynet_entry.name if self.identitynet_entry else self.args.identitynet_model,
        )
        faces = "; ".join(person.identity.describe(person.face_index) for person in self.people)
        return resolved.infotext({"Face": faces, **(extra or {})})


def prepare_job(args: InstantIDArgs, people: Sequence[Person], models: list[catalog.ModelEntry],
                unet: torch.nn.Module, device: torch.device, dtype: torch.dtype,
                identitynet_device: torch.device | None = None) -> Job:
    """Choose and load the models for this UNet and project each person's face. Raises with a clear message on any
    misfit.

    The adapter stays on the CPU in its file's dtype: only its tokens and per-layer K/V (megabytes) are made on
    `device`. The IdentityNet is in `dtype` on `identitynet_device`; None leaves it where the host's memory manager
    put it (Forge moves it with the UNet), on the CPU when first loaded."""
    shape = unet_architecture(unet)
    adapter_entry = catalog.choose(models, catalog.ADAPTER, args.adapter_model, shape, "adapter_model")
    identitynet_entry = None
    if any(person.posed for person in people):
        identitynet_entry = catalog.choose(models, catalog.IDENTITYNET, args.identitynet_model, shape,
                                           "identitynet_model")
    adapter = MODEL_CACHE.get(adapter_entry.path, load_adapter, CPU, None)
    identitynet = None
    if identitynet_entry is not None:
        identitynet = MODEL_CACHE.get(identitynet_entry.path, load_identitynet, identitynet_device, dtype)
    tokens = tuple(CONDITIONING.tokens(adapter, person.identity.embedding, device, dtype, args.uncond_noise)
                   for person in people)
    return Job(args, tuple(people), adapter_entry, identitynet_entry, adapter, identitynet, tokens)
