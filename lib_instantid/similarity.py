"""How much a generated image looks like the reference identity: the cosine similarity of the best-matching face's
raw embedding (antelopev2, as for the face photos) to the identity InstantID generated with."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .face import DetectedFace, FaceAnalyzer, ImageInput

NO_FACE = "no face found"


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def best_match(faces: Sequence[DetectedFace], reference: np.ndarray) -> float | None:
    """The highest similarity among the faces (the one that is the person, when an image shows several); None
    without faces."""
    return max((cosine(face.embedding, reference) for face in faces), default=None)


def image_similarity(analyzer: FaceAnalyzer, image: ImageInput, reference: np.ndarray) -> float | None:
    return best_match(analyzer.detect(image), reference)


def described(score: float | None) -> str:
    """As the infotext records it: `0.64`, or `no face found`."""
    return NO_FACE if score is None else f"{score:.2f}"
