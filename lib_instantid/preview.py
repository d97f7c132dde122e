"""What the face analysis found, drawn on the photo: the Preview button, the detect route and the doctor use it."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageOps

from .errors import InstantIDError
from .face import DetectedFace, FaceAnalyzer, no_face_message
from .keypoints import draw_keypoints

CHOSEN, OTHER = (0, 255, 0), (160, 160, 160)


@dataclass(frozen=True)
class Detection:
    image: np.ndarray  # RGB uint8 overlay
    faces: list[DetectedFace]
    message: str


def detect(analyzer: FaceAnalyzer, image: Image.Image, index: int = 0, what: str = "image") -> Detection:
    """Faces in `image` and an overlay: every box, the chosen one (index, 0 = largest) in green with its keypoints."""
    image = ImageOps.exif_transpose(image)  # the analyser sees the photo upright; so must the overlay
    faces = analyzer.detect(image)
    rgb = np.array(image.convert("RGB"))
    if not faces:
        return Detection(rgb, [], no_face_message(what))
    if not 0 <= index < len(faces):
        raise InstantIDError(f"Face index {index} is out of range: {len(faces)} face(s) found in the {what}.",
                             field="face_index")
    overlay = draw_overlay(rgb, faces, index)
    size = faces[index]
    message = (f"{len(faces)} face(s) found in the {what}; using #{index + 1} by size "
               f"({int(size.box[2] - size.box[0])}x{int(size.box[3] - size.box[1])} px, score {size.score:.2f}).")
    return Detection(overlay, faces, message)


def draw_overlay(rgb: np.ndarray, faces: list[DetectedFace], chosen: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    keypoints = draw_keypoints(faces[chosen].keypoints, (width, height))
    lit = keypoints.any(axis=2, keepdims=True)
    out = np.where(lit, keypoints, rgb // 2 + rgb // 4).astype(np.uint8)  # dim the photo so the points stand out
    thickness = max(2, round(max(width, height) / 400))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(out, (x1, y1), (x2, y2), CHOSEN if i == chosen else OTHER, thickness)
    return out
