"""The IdentityNet's keypoint image, drawn natively at any size, and the maps between image spaces."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

# Right eye, left eye, nose, mouth corners, in insightface's keypoint order.
KEYPOINT_COLORS_RGB = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255))
LIMBS = ((0, 2), (1, 2), (3, 2), (4, 2))
LIMB_HALF_WIDTH = 4
LIMB_BRIGHTNESS = 0.6
POINT_RADIUS = 10


@dataclass(frozen=True)
class Placement:
    """Maps pixel coordinates of one image onto another: p' = p * scale + offset."""

    scale_x: float = 1.0
    scale_y: float = 1.0
    offset_x: float = 0.0
    offset_y: float = 0.0

    @classmethod
    def resize(cls, src_size: tuple[int, int], dst_size: tuple[int, int]) -> "Placement":
        """A plain (possibly anisotropic) resize of the whole image, pixel centres aligned as cv2/PIL resize them."""
        sx, sy = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
        return cls(sx, sy, 0.5 * sx - 0.5, 0.5 * sy - 0.5)

    @classmethod
    def crop(cls, box: tuple[float, float, float, float], out_size: tuple[int, int]) -> "Placement":
        """The region box = (x1, y1, x2, y2) of the current image, resized to out_size."""
        x1, y1, x2, y2 = box
        return cls(offset_x=-x1, offset_y=-y1).then(cls.resize((x2 - x1, y2 - y1), out_size))

    def then(self, other: "Placement") -> "Placement":
        """This map followed by `other`."""
        return Placement(
            self.scale_x * other.scale_x,
            self.scale_y * other.scale_y,
            self.offset_x * other.scale_x + other.offset_x,
            self.offset_y * other.scale_y + other.offset_y,
        )

    def apply(self, points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        scale = np.array([self.scale_x, self.scale_y])
        offset = np.array([self.offset_x, self.offset_y])
        return points * scale + offset


def draw_keypoints(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """InstantID's keypoint image (design §2.5) of size (width, height): HxWx3 RGB uint8.

    Coordinates are truncated to integers the way the reference drawing truncates them, so the image matches the one
    the IdentityNet was trained on pixel for pixel.
    """
    width, height = size
    points = np.asarray(points, dtype=np.float64).reshape(5, 2)
    limbs = np.zeros((height, width, 3), dtype=np.float64)
    for a, b in LIMBS:
        _draw_limb(limbs, points[a], points[b], KEYPOINT_COLORS_RGB[a])
    image = (limbs * LIMB_BRIGHTNESS).astype(np.uint8)
    for (x, y), color in zip(points, KEYPOINT_COLORS_RGB):
        cv2.circle(image, (int(x), int(y)), POINT_RADIUS, color, thickness=-1)
    return image


def _draw_limb(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, color: tuple[int, int, int]) -> None:
    """A filled ellipse of half-width LIMB_HALF_WIDTH spanning the segment start-end."""
    dx, dy = start - end
    length = math.hypot(dx, dy)
    angle = math.degrees(math.atan2(dy, dx))
    centre = (int((start[0] + end[0]) / 2), int((start[1] + end[1]) / 2))
    polygon = cv2.ellipse2Poly(centre, (int(length / 2), LIMB_HALF_WIDTH), int(angle), 0, 360, 1)
    cv2.fillConvexPoly(canvas, polygon, color)
