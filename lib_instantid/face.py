"""Face analysis with insightface's antelopev2 pack: detection + recognition, provider choice, det-size retries,
face choice, and a cache by image content."""
from __future__ import annotations

import functools
import glob
import hashlib
import threading
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np
from PIL import Image, ImageOps

from .errors import InstantIDError, ModelError, NoFaceError, SetupError
from .images import SOURCE_DIGEST

logger = logging.getLogger(__name__)

DETECTOR_FILE = "scrfd_10g_bnkps.onnx"
RECOGNIZER_FILE = "glintr100.onnx"
ANTELOPEV2_FILES = (DETECTOR_FILE, RECOGNIZER_FILE)  # detection + recognition only
# A face that fills the frame is too big for SCRFD's anchors at 640; smaller sizes shrink it into range.
DET_SIZES = tuple(range(640, 191, -64))
DET_THRESHOLD = 0.5
MAX_ANALYSIS_SIDE = 4096
MIN_FACE_SIDE = 8  # pixels: no detector finds a face in a thinner image

ImageInput = Union[Image.Image, np.ndarray]


@dataclass(frozen=True, eq=False)  # eq=False: field-wise == on numpy arrays would raise
class DetectedFace:
    box: np.ndarray  # (4,) float32, x1 y1 x2 y2 in the pixels of the image given
    keypoints: np.ndarray  # (5, 2) float32: right eye, left eye (insightface order), nose, mouth corners
    embedding: np.ndarray  # (512,) float32, insightface's raw `face.embedding` (not normed_embedding)
    score: float
    image_size: tuple[int, int]  # (width, height) of the image given, after EXIF rotation

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = (float(v) for v in self.box)
        return max(0.0, x2 - x1) * max(0.0, y2 - y1)


def _missing_files(folder: Path) -> list[str]:
    return [name for name in ANTELOPEV2_FILES if not (folder / name).is_file()]


def webui_antelopev2_roots(models_root: Path, extensions_dir: Path,
                           annotator_roots: Sequence[Path] = ()) -> list[Path]:
    """Where a WebUI may hold the antelopev2 pack, in search order: insightface's own layout under the models folder,
    our model folder, and the copies sd-webui-controlnet downloads (into its folder among the extensions, whatever
    that folder is named, or where its setting moved its downloads: `annotator_roots`). Here, not in the host glue,
    so that the doctor (which cannot import the WebUI's `modules`) searches the same places."""
    downloads = [Path(folder) for folder in sorted(glob.glob(str(extensions_dir / "*" / "annotator" / "downloads")))]
    return [models_root / "insightface" / "models", models_root / "insightface", models_root / "instantid",
            *(root / "insightface" / "models" for root in (*annotator_roots, *downloads))]


def find_antelopev2(*models_roots: Path) -> Path:
    """The folder holding the antelopev2 files: `<root>/antelopev2`, or the nested unzip
    `<root>/antelopev2/antelopev2`, for the first of the given roots that has them."""
    candidates = [c for root in models_roots for c in (root / "antelopev2", root / "antelopev2" / "antelopev2")]
    for folder in candidates:
        if not _missing_files(folder):
            return folder
    searched = "; ".join(f"{folder} lacks {', '.join(_missing_files(folder))}" for folder in candidates)
    raise SetupError(
        f"The antelopev2 face models were not found ({searched}). "
        f"Put {' and '.join(ANTELOPEV2_FILES)} in {candidates[0]} — see models.md — or use the InstantID panel's "
        "*Download missing models* button (or `python -m lib_instantid.doctor --download`)."
    )


def onnx_providers() -> list[str]:
    """ONNX Runtime providers for face analysis: CUDA first when a session really starts on it, else CPU."""
    return list(_chosen_providers())


@functools.lru_cache(maxsize=None)
def _chosen_providers() -> tuple[str, ...]:
    import onnxruntime

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        if _cuda_session_starts(onnxruntime):
            providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
        else:
            logger.warning(
                "onnxruntime lists CUDA but cannot start a session on it (missing CUDA/cuDNN libraries or no GPU); "
                "face analysis falls back to the CPU."
            )
    logger.info("InstantID face analysis runs on %s.", providers[0])
    return providers


def _cuda_session_starts(onnxruntime) -> bool:
    # onnxruntime-gpu lists CUDA even without a usable GPU; only a real session tells.
    from onnx import TensorProto, helper

    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "cuda_probe",
        [value("x", TensorProto.FLOAT, [1])],
        [value("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    try:
        session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CUDAExecutionProvider"])
        session.run(None, {"x": np.zeros(1, np.float32)})
    except Exception:  # onnxruntime reports a missing CUDA runtime with several error types
        return False
    return session.get_providers()[0] == "CUDAExecutionProvider"


def to_bgr_uint8(image: ImageInput) -> np.ndarray:
    """HxWx3 BGR uint8 (contiguous) from a PIL image (EXIF-rotated first) or a uint8/uint16 array that is HxW,
    HxWx3 RGB or HxWx4 RGBA. 16-bit values are scaled to 8 bits."""
    if isinstance(image, Image.Image):
        array = _pil_pixels(image)
    elif isinstance(image, np.ndarray):
        array = image
    else:
        raise InstantIDError(f"Expected a PIL image or a numpy array, got {type(image).__name__}.")
    pixels = _as_uint8(array)
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if pixels.ndim == 3 and pixels.shape[2] == 4:
        # Transparent pixels can hide arbitrary colours; premultiplying (black behind) hides them, and black is also
        # what insightface's face crops use for padding.
        alpha = pixels[..., 3:].astype(np.uint16)
        pixels = ((pixels[..., :3].astype(np.uint16) * alpha + 127) // 255).astype(np.uint8)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return np.ascontiguousarray(pixels[..., ::-1])
    raise InstantIDError(f"Unsupported image shape {pixels.shape}: expected HxW, HxWx3 (RGB) or HxWx4 (RGBA).")


def _pil_pixels(image: Image.Image) -> np.ndarray:
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit greyscale (I;16*), or "I" as older Pillow opens 16-bit PNGs
        return np.clip(np.asarray(image), 0, 65535).astype(np.uint16)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    return np.asarray(image.convert("RGBA" if has_alpha else "RGB"))


def _as_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return ((array.astype(np.uint32) + 128) // 257).astype(np.uint8)  # round(v * 255 / 65535)
    raise InstantIDError(f"Unsupported pixel type {array.dtype}: give an 8-bit or 16-bit image.")


class FaceAnalyzer:
    """antelopev2's SCRFD detector and ArcFace recognizer, run through insightface; results cached by content."""

    def __init__(self, pack_dir: Path, providers: list[str] | None = None, cache_size: int = 16) -> None:
        missing = _missing_files(pack_dir)
        if missing:
            raise SetupError(f"{pack_dir} lacks {', '.join(missing)} of the antelopev2 face models — see models.md.")
        providers = onnx_providers() if providers is None else providers
        # The two files are loaded directly, not through FaceAnalysis: that would also load every other .onnx in
        # the folder (the pack's 3 unused models, ~140 MB) and let any of them take a task by sorting first.
        self._detector = _load_model(pack_dir / DETECTOR_FILE, "detection", providers)
        self._recognizer = _load_model(pack_dir / RECOGNIZER_FILE, "recognition", providers)
        # ctx_id 0 keeps the providers chosen above (a negative one would force the CPU).
        self._detector.prepare(0, input_size=(DET_SIZES[0], DET_SIZES[0]), det_thresh=DET_THRESHOLD)
        self._cache: OrderedDict[bytes, list[DetectedFace]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def detect(self, image: ImageInput) -> list[DetectedFace]:
        """All faces, largest box first; [] when none. One analysis at a time: the Preview button and the detect
        route may run while a job analyses its photos, and they share the cache."""
        with self._lock:
            return self._detect(image)

    def _detect(self, image: ImageInput) -> list[DetectedFace]:
        key = _file_key(image)
        faces = None if key is None else self._cache.get(key)
        if faces is None:
            bgr = to_bgr_uint8(image)
            analysed = _downscaled(bgr)
            key = key or _content_key(analysed, bgr.shape)
            faces = self._cache.get(key) or self._analyse(analysed, bgr.shape)
            self._cache[key] = faces
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return list(faces)

    def face(self, image: ImageInput, index: int = 0, *, what: str = "face image") -> DetectedFace:
        """The face at `index` (0 = largest) in `image`; `what` names the image in error messages."""
        return choose_face(self.detect(image), index, what)

    def _analyse(self, analysed: np.ndarray, input_shape: tuple[int, ...]) -> list[DetectedFace]:
        from insightface.app.common import Face

        boxes, keypoints = self._detect_any_size(analysed)
        height, width = input_shape[:2]
        scale = np.array([width / analysed.shape[1], height / analysed.shape[0]], dtype=np.float32)
        faces = []
        for box, points in zip(boxes, keypoints):
            found = Face(bbox=box[:4], kps=points, det_score=box[4])
            embedding = self._recognizer.get(analysed, found)
            faces.append(
                DetectedFace(
                    box=_read_only(box[:4] * np.tile(scale, 2)),
                    keypoints=_read_only(points * scale),
                    embedding=_read_only(embedding),
                    score=float(box[4]),
                    image_size=(width, height),
                )
            )
        return sorted(faces, key=lambda face: face.area, reverse=True)

    def _detect_any_size(self, analysed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = analysed.shape[:2]
        # The detector letterboxes into a square; a sliver would shrink to nothing there (and cannot hold a face).
        if min(height, width) < MIN_FACE_SIDE or min(height, width) * DET_SIZES[-1] < max(height, width):
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        for size in DET_SIZES:
            boxes, keypoints = self._detector.detect(analysed, input_size=(size, size))
            if len(boxes):
                break
        return boxes, keypoints


def no_face_message(what: str) -> str:
    return (f"No face found in the {what}. Try a clearer, larger, frontal photo with the face well lit, "
            "or crop the image closer to the face.")


def choose_face(faces: Sequence[DetectedFace], index: int, what: str) -> DetectedFace:
    """The face at `index` of faces found (largest first), or why there is none; `what` names the image."""
    if not faces:
        raise NoFaceError(no_face_message(what))
    if not 0 <= index < len(faces):
        raise InstantIDError(
            f"Face index {index} is out of range: {len(faces)} face(s) found in the {what}, "
            f"so use 0 to {len(faces) - 1} (0 is the largest face)."
        )
    return faces[index]


def _load_model(path: Path, task: str, providers: list[str]):
    from insightface.model_zoo import get_model

    try:
        model = get_model(str(path), providers=providers)  # an existing .onnx path: never downloads
    except Exception as error:  # onnxruntime raises its own error types for unreadable files
        raise ModelError(
            f"Could not load {path}: {error}. The file may be damaged or incomplete; "
            "download the antelopev2 pack again (see models.md)."
        ) from error
    if getattr(model, "taskname", None) != task or (task == "detection" and not model.use_kps):
        raise ModelError(
            f"{path} is not antelopev2's face {task} model; replace it with the file from the pack (see models.md)."
        )
    return model


def _downscaled(bgr: np.ndarray) -> np.ndarray:
    height, width = bgr.shape[:2]
    factor = MAX_ANALYSIS_SIDE / max(height, width)
    if factor >= 1:
        return bgr
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)


def _file_key(image: ImageInput) -> bytes | None:
    """For an image decoded from file bytes (lib_instantid.images records their digest), a key from those bytes:
    cheaper than hashing the pixels, and the pixels follow from the bytes."""
    digest = image.info.get(SOURCE_DIGEST) if isinstance(image, Image.Image) else None
    return None if digest is None else repr((digest, image.size, image.mode)).encode()


def _content_key(analysed: np.ndarray, input_shape: tuple[int, ...]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((analysed.shape, input_shape)).encode())
    digest.update(analysed.data)
    return digest.digest()


def _read_only(values: np.ndarray) -> np.ndarray:
    # Cached faces are shared between calls; read-only arrays keep one caller from changing another's result.
    array = np.array(values, dtype=np.float32)
    array.setflags(write=False)
    return array


def average_embedding(faces: Sequence[DetectedFace]) -> np.ndarray:
    """The mean of several faces' raw embeddings, float32 (512,).

    Raw, not normalised: the InstantID projection was trained on raw embeddings, and their norm carries
    information (it grows with how clearly the face was seen), so each photo keeps the weight the recognizer gave it.
    """
    if not faces:
        raise InstantIDError("No faces to average: give at least one face image.")
    return np.mean([face.embedding for face in faces], axis=0).astype(np.float32)
