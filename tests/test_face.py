"""Face analysis through the real insightface code path, with synthetic ONNX models and real photos."""
from __future__ import annotations

import functools
import io
import logging
from pathlib import Path

import insightface
import numpy as np
import onnxruntime
import pytest
import skimage.data
from insightface.utils.face_align import norm_crop
from PIL import Image

from lib_instantid import face as face_module
from lib_instantid.errors import InstantIDError, ModelError, NoFaceError, SetupError
from lib_instantid.face import (
    FaceAnalyzer,
    average_embedding,
    find_antelopev2,
    onnx_providers,
    to_bgr_uint8,
)
from tests.fixtures.face_models import (
    DETECTOR_FILE,
    RECOGNIZER_FILE,
    expected_face,
    paint_marker,
    write_antelopev2,
    write_detector,
    write_recognizer,
)

# insightface's face_align calls a scikit-image API deprecated in 0.26; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

CPU = ["CPUExecutionProvider"]
PHOTO_DIR = Path(insightface.__file__).parent / "data" / "images"


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    if name == "astronaut":
        rgb = skimage.data.astronaut()
    else:
        rgb = np.asarray(Image.open(PHOTO_DIR / name).convert("RGB"))
    rgb.setflags(write=False)
    return rgb


def photo(name: str) -> np.ndarray:
    """A writable copy of a real RGB photo shipped in an installed package."""
    return _photo(name).copy()


def assert_face_at(found, centre, side, *, tolerance=0.03):
    """Box and keypoints match the marker's, within `tolerance` of the box side (resampling blurs marker edges)."""
    box, keypoints = expected_face(centre, side)
    atol = tolerance * (box[2] - box[0])
    np.testing.assert_allclose(found.box, box, atol=atol)
    np.testing.assert_allclose(found.keypoints, keypoints, atol=atol)


def recognizer_embedding(pack: Path, bgr: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    """The recognizer's output on insightface's own aligned crop, computed without insightface's model classes."""
    crop = norm_crop(bgr, landmark=keypoints, image_size=112)
    blob = ((crop[..., ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    session = onnxruntime.InferenceSession(str(pack / RECOGNIZER_FILE), providers=CPU)
    return session.run(None, {"input.1": blob})[0][0]


@pytest.fixture
def analyzer(antelopev2_root) -> FaceAnalyzer:
    return FaceAnalyzer(find_antelopev2(antelopev2_root), providers=CPU)


@pytest.fixture
def session_runs(monkeypatch) -> list[tuple[int, ...]]:
    """Input shapes of every onnxruntime inference from here on (insightface's sessions included)."""
    shapes: list[tuple[int, ...]] = []
    original_run = onnxruntime.InferenceSession.run

    def recording_run(self, output_names, input_feed, *args, **kwargs):
        shapes.append(tuple(next(iter(input_feed.values())).shape))
        return original_run(self, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", recording_run)
    return shapes


def detector_sizes(shapes: list[tuple[int, ...]]) -> list[int]:
    return [shape[3] for shape in shapes if shape[2:] != (112, 112)]


# --- detection, keypoints, embeddings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "centre", "side"),
    [("Tom_Hanks_54745.png", (56, 52), 12), ("t1.jpg", (700, 300), 40), ("astronaut", (240, 120), 24)],
)
def test_face_box_keypoints_and_raw_embedding(analyzer, antelopev2_root, name, centre, side):
    rgb = paint_marker(photo(name), centre, side, "cyan")
    faces = analyzer.detect(rgb)

    assert len(faces) == 1
    found = faces[0]
    assert_face_at(found, centre, side)
    assert found.image_size == (rgb.shape[1], rgb.shape[0])
    assert found.score > 0.5
    assert found.box.dtype == found.keypoints.dtype == found.embedding.dtype == np.float32
    assert found.embedding.shape == (512,)
    expected = recognizer_embedding(antelopev2_root / "antelopev2", rgb[..., ::-1], found.keypoints)
    np.testing.assert_allclose(found.embedding, expected, rtol=1e-5, atol=1e-4)
    assert np.linalg.norm(found.embedding) > 5  # raw, not normed_embedding


def test_embeddings_differ_between_photos_and_repeat_for_the_same_one(antelopev2_root):
    def embedding(name: str) -> np.ndarray:
        fresh = FaceAnalyzer(antelopev2_root / "antelopev2", providers=CPU)
        return fresh.face(paint_marker(photo(name), (200, 200), 20, "cyan")).embedding

    astronaut = embedding("astronaut")
    other = embedding("t1.jpg")
    cosine = astronaut @ other / (np.linalg.norm(astronaut) * np.linalg.norm(other))
    assert cosine < 0.98
    np.testing.assert_array_equal(embedding("astronaut"), astronaut)


@pytest.mark.parametrize("image", [photo("astronaut"), np.full((300, 400, 3), 128, np.uint8)], ids=["photo", "flat"])
def test_no_face_gives_empty_list_and_an_actionable_error(analyzer, image):
    assert analyzer.detect(image) == []
    with pytest.raises(NoFaceError, match="No face found in the pose image") as error:
        analyzer.face(image, what="pose image")
    assert "frontal" in str(error.value) and "crop" in str(error.value)
    with pytest.raises(NoFaceError, match="in the face image"):
        analyzer.face(image)


def test_smaller_det_sizes_are_tried_when_640_finds_nothing(antelopev2_retry_root, session_runs):
    retry_analyzer = FaceAnalyzer(antelopev2_retry_root / "antelopev2", providers=CPU)
    rgb = paint_marker(photo("t1.jpg"), (640, 400), 48, "cyan")

    found = retry_analyzer.face(rgb)

    assert detector_sizes(session_runs) == [640, 576, 512, 448]
    assert_face_at(found, (640, 400), 48)


def test_no_retry_once_a_face_is_found(analyzer, session_runs):
    analyzer.face(paint_marker(photo("t1.jpg"), (640, 400), 48, "cyan"))
    assert detector_sizes(session_runs) == [640]


def test_retries_go_down_to_192_before_giving_up(analyzer, session_runs):
    assert analyzer.detect(photo("t1.jpg")) == []
    assert detector_sizes(session_runs) == list(range(640, 191, -64))


@pytest.mark.parametrize("large_colour", ["cyan", "magenta"])
def test_largest_face_first_and_index_choice(analyzer, large_colour):
    small_colour = "magenta" if large_colour == "cyan" else "cyan"
    rgb = paint_marker(photo("t1.jpg"), (300, 300), 80, large_colour)
    rgb = paint_marker(rgb, (1000, 600), 40, small_colour)

    faces = analyzer.detect(rgb)

    assert len(faces) == 2
    assert_face_at(faces[0], (300, 300), 80)
    assert_face_at(faces[1], (1000, 600), 40)
    assert faces[0].area > faces[1].area
    np.testing.assert_array_equal(analyzer.face(rgb).box, faces[0].box)
    assert_face_at(analyzer.face(rgb, 1), (1000, 600), 40)


@pytest.mark.parametrize("index", [2, -1])
def test_face_index_out_of_range_says_what_is_allowed(analyzer, index):
    rgb = paint_marker(paint_marker(photo("t1.jpg"), (300, 300), 80, "cyan"), (1000, 600), 40, "magenta")
    with pytest.raises(InstantIDError, match=r"2 face\(s\) found in the pose image, so use 0 to 1") as error:
        analyzer.face(rgb, index, what="pose image")
    assert not isinstance(error.value, NoFaceError)
    assert f"index {index}" in str(error.value)


# --- model folder layout --------------------------------------------------------------------------------------


def test_pack_folder_is_found_flat_or_nested(tmp_path):
    flat_root = write_antelopev2(tmp_path / "flat")
    nested_root = write_antelopev2(tmp_path / "nested", nested=True)

    assert find_antelopev2(flat_root) == flat_root / "antelopev2"
    nested_pack = find_antelopev2(nested_root)
    assert nested_pack == nested_root / "antelopev2" / "antelopev2"
    found = FaceAnalyzer(nested_pack, providers=CPU).face(paint_marker(photo("astronaut"), (256, 256), 32, "cyan"))
    assert_face_at(found, (256, 256), 32)


def test_missing_file_message_names_folders_files_and_models_md(tmp_path):
    root = write_antelopev2(tmp_path, missing=(RECOGNIZER_FILE,))
    with pytest.raises(SetupError) as error:
        find_antelopev2(root)
    message = str(error.value)
    assert f"{root / 'antelopev2'} lacks {RECOGNIZER_FILE};" in message
    assert f"{root / 'antelopev2' / 'antelopev2'} lacks {DETECTOR_FILE}, {RECOGNIZER_FILE}" in message
    assert "models.md" in message
    with pytest.raises(SetupError, match=f"lacks {RECOGNIZER_FILE} of the antelopev2"):
        FaceAnalyzer(root / "antelopev2", providers=CPU)


def test_a_model_that_is_no_detector_or_is_damaged_is_a_model_error(tmp_path):
    swapped = tmp_path / "swapped"
    swapped.mkdir()
    write_recognizer(swapped / DETECTOR_FILE)
    write_detector(swapped / RECOGNIZER_FILE)
    with pytest.raises(ModelError, match="is not antelopev2's face detection model"):
        FaceAnalyzer(swapped, providers=CPU)

    damaged = write_antelopev2(tmp_path / "damaged") / "antelopev2"
    (damaged / DETECTOR_FILE).write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match=f"Could not load {damaged / DETECTOR_FILE}.*download"):
        FaceAnalyzer(damaged, providers=CPU)


# --- cache ----------------------------------------------------------------------------------------------------


def test_same_content_is_answered_from_the_cache(analyzer, session_runs):
    rgb = paint_marker(photo("astronaut"), (256, 256), 32, "cyan")
    first = analyzer.detect(rgb)
    runs_after_first = len(session_runs)

    again = analyzer.detect(Image.fromarray(rgb.copy()))  # same pixels, new object, other type

    assert runs_after_first >= 2  # detector + recognizer ran once
    assert len(session_runs) == runs_after_first
    assert np.array_equal(again[0].embedding, first[0].embedding)
    with pytest.raises(ValueError):
        again[0].box[0] = 0  # cached results are read-only
    analyzer.detect(paint_marker(rgb, (100, 400), 20, "magenta"))
    assert len(session_runs) > runs_after_first


def test_the_same_file_bytes_skip_conversion_and_hashing_of_pixels(analyzer, session_runs, monkeypatch):
    from lib_instantid.images import decode_image

    buffer = io.BytesIO()
    Image.fromarray(paint_marker(photo("astronaut"), (256, 256), 40, "cyan")).save(buffer, format="PNG")
    first = analyzer.detect(decode_image(buffer.getvalue(), "face_image"))
    conversions = []
    monkeypatch.setattr(face_module, "to_bgr_uint8", lambda image: conversions.append(1))
    runs = len(session_runs)
    again = analyzer.detect(decode_image(buffer.getvalue(), "face_image"))
    assert not conversions and len(session_runs) == runs
    assert np.array_equal(again[0].keypoints, first[0].keypoints)


def test_concurrent_analyses_share_the_cache_safely(antelopev2_root, monkeypatch):
    """The Preview button and /instantid/detect run in other threads while a job analyses its photos: analyses
    take turns (the cache and insightface's models are shared), and every caller gets its own photo's faces."""
    import threading
    import time

    analyzer = FaceAnalyzer(antelopev2_root / "antelopev2", providers=CPU, cache_size=2)
    images = [paint_marker(photo("astronaut"), (120 + 40 * i, 256), 24 + 4 * i, "cyan") for i in range(4)]
    expected = [analyzer.detect(image)[0].box for image in images]
    inside, most_inside, errors, results = [0], [0], [], {}
    original = FaceAnalyzer._analyse

    def slow_analyse(self, *args):
        inside[0] += 1
        most_inside[0] = max(most_inside[0], inside[0])
        time.sleep(0.02)  # lets another thread run now, were it allowed in
        try:
            return original(self, *args)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(FaceAnalyzer, "_analyse", slow_analyse)

    def work(worker: int) -> None:
        try:
            for round_ in range(3):
                i = (worker + round_) % len(images)
                results.setdefault(i, []).append(analyzer.detect(images[i])[0].box)
        except Exception as error:  # collected for the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert most_inside[0] == 1
    assert all(np.array_equal(box, expected[i]) for i, boxes in results.items() for box in boxes)


def test_cache_is_bounded_least_recently_used_first(antelopev2_root, session_runs):
    small_cache = FaceAnalyzer(antelopev2_root / "antelopev2", providers=CPU, cache_size=2)
    images = [paint_marker(photo("astronaut"), (256, 256), side, "cyan") for side in (20, 24, 28)]
    for image in images:
        small_cache.detect(image)  # the first one is evicted by the third
    runs = len(session_runs)

    small_cache.detect(images[1])  # a hit, which makes images[2] the least recently used
    assert len(session_runs) == runs
    small_cache.detect(images[0])
    assert len(session_runs) > runs
    runs = len(session_runs)
    small_cache.detect(images[1])
    assert len(session_runs) == runs


# --- conversions ----------------------------------------------------------------------------------------------


def _encoded(image: Image.Image, fmt: str, **options) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    buffer.seek(0)
    return Image.open(buffer)


def test_transparent_pixels_are_composited_on_black(analyzer):
    visible = paint_marker(photo("t1.jpg"), (300, 300), 40, "cyan")
    hidden = paint_marker(visible, (1000, 600), 80, "magenta")
    alpha = np.full(hidden.shape[:2], 255, np.uint8)
    alpha[500:700, 900:1100] = 0
    rgba = np.dstack([hidden, alpha])

    assert len(analyzer.detect(hidden)) == 2  # the hidden marker is a face when alpha is ignored
    for image in (rgba, Image.fromarray(rgba, "RGBA")):
        faces = analyzer.detect(image)
        assert len(faces) == 1
        assert_face_at(faces[0], (300, 300), 40)
    np.testing.assert_array_equal(to_bgr_uint8(rgba)[600, 1000], [0, 0, 0])


def test_alpha_blends_partially_transparent_pixels():
    rgba = np.array([[[200, 100, 50, 128], [200, 100, 50, 255]]], np.uint8)
    la = Image.fromarray(np.array([[[200, 64]]], np.uint8), "LA")
    np.testing.assert_array_equal(to_bgr_uint8(rgba), [[[25, 50, 100], [50, 100, 200]]])
    np.testing.assert_array_equal(to_bgr_uint8(la), [[[50, 50, 50]]])


def test_rgb_becomes_bgr():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 1] = (255, 10, 0)
    bgr = to_bgr_uint8(rgb)
    assert bgr.flags["C_CONTIGUOUS"] and bgr.dtype == np.uint8
    np.testing.assert_array_equal(bgr[0, 1], [0, 10, 255])


def test_greyscale_and_palette_images():
    grey = np.array([[0, 7], [128, 255]], np.uint8)
    np.testing.assert_array_equal(to_bgr_uint8(Image.fromarray(grey, "L")), np.repeat(grey[..., None], 3, axis=2))
    np.testing.assert_array_equal(to_bgr_uint8(grey), np.repeat(grey[..., None], 3, axis=2))

    palette = Image.fromarray(np.array([[0, 1, 2]], np.uint8), "P")
    palette.putpalette([0, 0, 0, 255, 0, 255, 10, 20, 30] + [0] * (253 * 3))
    np.testing.assert_array_equal(to_bgr_uint8(palette), [[[0, 0, 0], [255, 0, 255], [30, 20, 10]]])
    palette.info["transparency"] = 2
    np.testing.assert_array_equal(to_bgr_uint8(palette)[0, 2], [0, 0, 0])


def test_sixteen_bit_images_are_scaled_not_clipped():
    values = np.array([[0, 1000, 32768, 65535]], np.uint16)
    reopened = _encoded(Image.fromarray(values), "PNG")
    assert reopened.mode.startswith("I")
    expected = np.array([[0, 4, 128, 255]], np.uint8)
    np.testing.assert_array_equal(to_bgr_uint8(reopened)[..., 0], expected)
    rgb16 = np.zeros((1, 1, 3), np.uint16)
    rgb16[0, 0] = (65535, 32768, 0)
    np.testing.assert_array_equal(to_bgr_uint8(rgb16), [[[0, 128, 255]]])


def test_cmyk_jpeg_finds_the_same_face(analyzer):
    rgb = paint_marker(photo("astronaut"), (300, 200), 40, "cyan")
    cmyk = _encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert cmyk.mode == "CMYK"
    assert_face_at(analyzer.face(cmyk), (300, 200), 40)


def test_exif_rotation_is_applied_before_analysis(analyzer):
    upright = paint_marker(photo("t1.jpg"), (900, 250), 48, "cyan")
    stored = np.ascontiguousarray(np.rot90(upright))  # as a camera held sideways saves it
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    jpeg = _encoded(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())

    assert to_bgr_uint8(jpeg).shape == upright.shape
    found = analyzer.face(jpeg)
    assert found.image_size == (upright.shape[1], upright.shape[0])
    assert_face_at(found, (900, 250), 48)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), np.float32), "pixel type float32"),
        (np.zeros((4, 4, 2), np.uint8), r"shape \(4, 4, 2\)"),
        ([[0, 0]], "got list"),
    ],
)
def test_unsupported_inputs_are_refused_clearly(image, message):
    with pytest.raises(InstantIDError, match=message):
        to_bgr_uint8(image)


def test_huge_images_are_downscaled_for_analysis(analyzer, monkeypatch):
    huge = np.zeros((10000, 2500, 3), np.uint8)
    huge[4000:4200, 1000:1200] = (0, 255, 255)  # cyan marker, side 200, centred at (1100, 4100)
    analysed_shapes = []
    detect = analyzer._detector.detect

    def spying_detect(image, *args, **kwargs):
        analysed_shapes.append(image.shape)
        return detect(image, *args, **kwargs)

    monkeypatch.setattr(analyzer._detector, "detect", spying_detect)
    found = analyzer.face(huge)

    assert analysed_shapes == [(4096, 1024, 3)]
    assert found.image_size == (2500, 10000)
    assert_face_at(found, (1100, 4100), 200)


# --- several reference photos ---------------------------------------------------------------------------------


def test_average_embedding_is_the_mean_of_raw_embeddings(analyzer):
    first = analyzer.face(paint_marker(photo("astronaut"), (256, 256), 32, "cyan"))
    second = analyzer.face(paint_marker(photo("t1.jpg"), (640, 400), 48, "cyan"))

    mean = average_embedding([first, second])

    assert mean.dtype == np.float32 and mean.shape == (512,)
    np.testing.assert_allclose(mean, (first.embedding + second.embedding) / 2, rtol=1e-6)
    np.testing.assert_array_equal(average_embedding([first]), first.embedding)
    with pytest.raises(InstantIDError, match="at least one face"):
        average_embedding([])


# --- execution providers --------------------------------------------------------------------------------------


@pytest.fixture
def fresh_provider_choice():
    face_module._chosen_providers.cache_clear()
    yield
    face_module._chosen_providers.cache_clear()


def test_cpu_when_cuda_is_not_listed(fresh_provider_choice, monkeypatch, caplog):
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with caplog.at_level(logging.INFO, logger=face_module.__name__):
        assert onnx_providers() == ["CPUExecutionProvider"]
    assert [r.levelno for r in caplog.records] == [logging.INFO]


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_cuda_listed_but_unusable_falls_back_to_cpu_with_one_warning(fresh_provider_choice, monkeypatch, caplog):
    # This CPU build of onnxruntime really cannot start CUDA, like onnxruntime-gpu on a machine without a GPU.
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    with caplog.at_level(logging.INFO, logger=face_module.__name__):
        assert onnx_providers() == ["CPUExecutionProvider"]
        assert onnx_providers() == ["CPUExecutionProvider"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falls back to the CPU" in warnings[0].getMessage()
    assert len(caplog.records) == 2  # chosen and logged once


def test_cuda_first_when_a_session_starts_on_it(fresh_provider_choice, monkeypatch):
    started = []

    class CudaSession:
        def __init__(self, model, providers):
            started.append(providers)

        def run(self, output_names, feed):
            return [feed["x"]]

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", CudaSession)
    assert onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    onnx_providers().append("mutated")
    assert onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert started == [["CUDAExecutionProvider"]]
