"""One InstantID job, host-agnostic: settings → faces → models → conditioning, ready to hook a UNet.

The host supplies what only it knows: the UNet, its device and dtype, the model folders, which rows of each UNet
call are cond/uncond, and where the pose keypoints land in each generation size.
"""
from __future__ import annotations

from collections.abc import Callable
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
from .unet_hooks import CallInfoSource, InstantIDHooks, Schedule, unet_architecture

MODEL_CACHE = ModelCache(capacity=2)
# Tokens, K/V and hints of recent faces, per loaded model: a repeated job (same face, models, size) reuses them.
CONDITIONING = ConditioningStore()


@dataclass(frozen=True)
class Faces:
    """The identity (averaged raw embedding) and the pose keypoints, in the pixels of the pose image."""

    embedding: np.ndarray
    pose: DetectedFace
    found: list[int]  # faces found in each face photo

    def describe(self, face_index: int) -> str:
        found = ", ".join(str(n) for n in self.found)
        which = "largest" if face_index == 0 else f"#{face_index + 1} by size"
        return f"{which} of {found}"


def analyse_faces(
    analyzer: FaceAnalyzer,
    args: InstantIDArgs,
    pose_image: Image.Image | None = None,
    pose_what: str = "pose image",
    pick_pose: Callable[[list[DetectedFace]], DetectedFace] | None = None,
) -> Faces:
    """Faces of one job. Without a pose image the chosen face of the first face photo gives the pose; in a pose
    image `pick_pose` chooses among the faces found (default: the largest)."""
    chosen, found = [], []
    for i, photo in enumerate(args.face_image):
        what = "face image" if len(args.face_image) == 1 else f"face image {i + 1}"
        faces = analyzer.detect(photo)
        chosen.append(choose_face(faces, args.face_index, what))
        found.append(len(faces))
    pose = chosen[0]
    if pose_image is not None:
        faces = analyzer.detect(pose_image)
        pose = choose_face(faces, 0, pose_what)
        if pick_pose is not None:
            pose = pick_pose(faces)
    return Faces(average_embedding(chosen), pose, found)


@dataclass
class Job:
    """Everything computed once per job; `hooks` attaches it to the UNet of one sampling call."""

    args: InstantIDArgs
    faces: Faces
    adapter_entry: catalog.ModelEntry
    identitynet_entry: catalog.ModelEntry | None
    adapter: FaceAdapter
    identitynet: IdentityNet | None
    tokens: FaceTokens

    def hooks(self, unet: torch.nn.Module, call_info: CallInfoSource,
              keypoints_for: Callable[[int, int], np.ndarray]) -> InstantIDHooks:
        a = self.args
        hint = None if self.identitynet is None else HintFeatures(self.identitynet, keypoints_for, CONDITIONING)
        return InstantIDHooks(
            unet, self.tokens, call_info,
            adapter=self.adapter, adapter_schedule=Schedule(a.adapter_weight, a.adapter_start, a.adapter_end),
            identitynet=self.identitynet,
            identitynet_schedule=Schedule(a.identitynet_weight, a.identitynet_start, a.identitynet_end),
            hint=hint, store=CONDITIONING,
        )

    def infotext(self) -> str:
        resolved = self.args.with_overrides(
            adapter_model=self.adapter_entry.name,
            identitynet_model=self.identitynet_entry.name if self.identitynet_entry else self.args.identitynet_model,
        )
        return resolved.infotext({"Face": self.faces.describe(self.args.face_index)})


def prepare_job(args: InstantIDArgs, faces: Faces, models: list[catalog.ModelEntry], unet: torch.nn.Module,
                device: torch.device, dtype: torch.dtype) -> Job:
    """Choose and load the models for this UNet and project the face. Raises with a clear message on any misfit."""
    shape = unet_architecture(unet)
    adapter_entry = catalog.choose(models, catalog.ADAPTER, args.adapter_model, shape, "adapter_model")
    identitynet_entry = None
    if args.identitynet_weight:
        identitynet_entry = catalog.choose(models, catalog.IDENTITYNET, args.identitynet_model, shape,
                                           "identitynet_model")
    adapter = MODEL_CACHE.get(adapter_entry.path, load_adapter, device, dtype)
    identitynet = None
    if identitynet_entry is not None:
        identitynet = MODEL_CACHE.get(identitynet_entry.path, load_identitynet, device, dtype)
    tokens = CONDITIONING.tokens(adapter, faces.embedding, device, dtype)
    return Job(args, faces, adapter_entry, identitynet_entry, adapter, identitynet, tokens)
