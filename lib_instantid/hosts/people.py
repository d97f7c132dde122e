"""Several people in one image (the `identities` setting): where each one goes, as fractions of the image, so the
same on every canvas (hires included): their region, and their pose placed inside the region's rectangle.
Like poses.py it reads no WebUI module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .. import pose_presets
from ..args import IdentityArgs
from ..face import DetectedFace
from ..keypoints import Placement
from .poses import PresetPose, webui_resize

HALVES = {"left": (0.0, 0.0, 0.5, 1.0), "right": (0.5, 0.0, 0.5, 1.0)}
Fractions = tuple[float, float, float, float]  # x, y, width, height as fractions of the image


def stretched(mask: Image.Image):
    """A mask image as a region source: [H, W] in [0, 1] of it stretched to each canvas."""
    grey = mask.convert("L")

    def source(width: int, height: int, image: int = 0) -> np.ndarray:
        return np.asarray(grey.resize((width, height), Image.BILINEAR), dtype=np.float32) / 255

    return source


def rectangle(fractions: Fractions):
    """A rectangle as a region source: 1 at the pixels whose centre lies inside it, 0 elsewhere."""
    x, y, w, h = fractions

    def source(width: int, height: int, image: int = 0) -> np.ndarray:
        xs, ys = (np.arange(width) + 0.5) / width, (np.arange(height) + 0.5) / height
        inside_x, inside_y = (xs >= x) & (xs < x + w), (ys >= y) & (ys < y + h)
        return (inside_y[:, None] & inside_x[None, :]).astype(np.float32)

    return source


def region_fractions(person: IdentityArgs, index: int) -> Fractions:
    """The rectangle the person's pose is placed in: their half, their box, or the bounds of their mask."""
    if person.region in HALVES:
        return HALVES[person.region]
    if person.region == "box":
        return person.region_box
    mask = np.asarray(person.region_mask.convert("L")) > 127  # not black everywhere: check_ready saw to that
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    height, width = mask.shape
    return (cols[0] / width, rows[0] / height, (cols[-1] + 1 - cols[0]) / width, (rows[-1] + 1 - rows[0]) / height)


def region_source(person: IdentityArgs, index: int):
    """Where the person acts on each canvas: their mask stretched, or their rectangle."""
    if person.region == "mask":
        return stretched(person.region_mask)
    return rectangle(region_fractions(person, index))


@dataclass(frozen=True)
class PlacedPose:
    """A photo's face placed into a rectangle of every canvas the way txt2img places a pose photo on its canvas
    (cover, then crop the overflow), so a person in the left half is posed there as the photo shows."""

    keypoints: np.ndarray
    box: np.ndarray  # x1 y1 x2 y2
    image_size: tuple[int, int]
    fractions: Fractions

    def _placement(self, width: int, height: int) -> Placement:
        x, y, w, h = self.fractions
        inside = webui_resize(1, self.image_size, (max(round(w * width), 1), max(round(h * height), 1)))
        return inside.then(Placement(offset_x=round(x * width), offset_y=round(y * height)))

    def on_canvas(self, width: int, height: int) -> np.ndarray:
        return self._placement(width, height).apply(self.keypoints)

    def box_on_canvas(self, width: int, height: int) -> np.ndarray:
        return self._placement(width, height).apply(np.reshape(self.box, (2, 2))).reshape(4)


def placed_pose(person: IdentityArgs, fractions: Fractions, pose_face: DetectedFace, photo_face: DetectedFace
                ) -> PresetPose | PlacedPose:
    """The person's pose in their rectangle: a chosen head pose (its box is of the rectangle, the proportions of
    their first face photo's face), or the face of their pose photo (else of their first face photo)."""
    if person.pose not in pose_presets.YAW:  # "photo"; "none" is never drawn (no IdentityNet pass for them)
        return PlacedPose(pose_face.keypoints, pose_face.box, pose_face.image_size, fractions)
    x, y, w, h = fractions
    cx, cy, size = person.pose_box
    return PresetPose(person.pose, (x + cx * w, y + cy * h, size * h), photo_face.keypoints)
