"""Face keypoints for a chosen head pose, without a pose photo: a 3D layout of the five points (eyes, nose tip,
mouth corners), turned to the pose's yaw, projected, and placed where the user wants the head.

The layout's frontal proportions come from the face photo when it is roughly frontal (so the generated face keeps
the person's eye spacing and nose and mouth heights), else from an average face; the depths are an average face's.
"""
from __future__ import annotations

import math

import numpy as np

PHOTO, NONE = "photo", "none"
# Yaw in degrees; positive turns the face towards the image's left.
YAW = {"front": 0.0, "three-quarter left": 35.0, "three-quarter right": -35.0, "profile left": 70.0,
       "profile right": -70.0}
POSES = (PHOTO, *YAW, NONE)
DEFAULT_BOX = (0.5, 0.5, 0.4)  # head centre x, y and head height, as fractions of the image

# An average face in units of the eye distance, origin between the eyes; x to the image's right, y down, z towards
# the camera. Insightface's order: the person's right eye (on the image's left), left eye, nose tip, mouth corners.
AVERAGE_FACE = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.62], [-0.42, 1.05], [0.42, 1.05]])
DEPTH = np.array([0.0, 0.0, 0.55, 0.1, 0.1])
EYE_DISTANCE_PER_HEAD = 0.27  # eye distance / head height (chin to crown) of an average head
EYES_FROM_CENTRE = -0.05  # where the eyes are in the head box: above its centre, in head heights
FRONTAL_NOSE_OFFSET = 0.15  # a photo whose nose is further than this (eye distances) off the eyes' middle is turned


def frontal_layout(photo_keypoints: np.ndarray | None) -> np.ndarray:
    """The five points of the person's frontal face in eye distances: the face photo's, levelled and normalised,
    when the photo is roughly frontal; the average face's otherwise."""
    if photo_keypoints is None:
        return AVERAGE_FACE.copy()
    points = np.asarray(photo_keypoints, dtype=np.float64).reshape(5, 2)
    middle = (points[0] + points[1]) / 2
    dx, dy = points[1] - points[0]
    distance = math.hypot(dx, dy)
    if distance == 0:
        return AVERAGE_FACE.copy()
    angle = math.atan2(dy, dx)
    level = np.array([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    layout = (points - middle) @ level.T / distance
    if abs(layout[2, 0]) > FRONTAL_NOSE_OFFSET or layout[2, 1] <= 0 or layout[3, 1] <= layout[2, 1]:
        return AVERAGE_FACE.copy()
    layout[:, 0] -= layout[2, 0] * (layout[:, 1] / layout[2, 1])  # small residual turn: nose back on the midline
    return layout


def preset_keypoints(pose: str, box: tuple[float, float, float], size: tuple[int, int],
                     photo_keypoints: np.ndarray | None = None) -> np.ndarray:
    """The five keypoints [5, 2] in the pixels of an image of `size` (width, height) for a head in `pose` whose box
    is `box` = (centre x, centre y, height) in fractions of the image."""
    yaw = math.radians(YAW[pose])
    layout = frontal_layout(photo_keypoints)
    turned = np.stack([layout[:, 0] * math.cos(yaw) - DEPTH * math.sin(yaw), layout[:, 1]], axis=1)
    width, height = size
    cx, cy, head = box
    scale = EYE_DISTANCE_PER_HEAD * head * height
    eyes = np.array([cx * width, (cy + EYES_FROM_CENTRE * head) * height])
    return turned * scale + eyes
