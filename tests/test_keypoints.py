import numpy as np
import pytest

from lib_instantid.keypoints import Placement, draw_keypoints

RED, GREEN, BLUE, YELLOW, MAGENTA = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)

# A face with generous spacing so every probe below hits exactly one drawn element.
FACE = np.array([[60.0, 60.0], [140.0, 60.0], [100.0, 110.0], [70.0, 160.0], [130.0, 160.0]])


def dim(color):
    return tuple(int(c * 0.6) for c in color)


@pytest.mark.parametrize("size", [(200, 200), (320, 240)])
def test_points_are_full_colour_discs_of_radius_10(size):
    image = draw_keypoints(FACE, size)
    assert image.shape == (size[1], size[0], 3) and image.dtype == np.uint8
    for (x, y), color in zip(FACE.astype(int), (RED, GREEN, BLUE, YELLOW, MAGENTA)):
        assert tuple(image[y, x]) == color
        assert tuple(image[y - 10, x]) == color and tuple(image[y + 10, x]) == color  # radius 10 included
        # Beyond the radius, straight up (away from every limb), the canvas is black.
        assert tuple(image[y - 12, x]) == (0, 0, 0)


def test_limbs_join_each_point_to_the_nose_in_the_first_points_colour_dimmed():
    image = draw_keypoints(FACE, (200, 200))
    nose = FACE[2]
    for index, color in ((0, RED), (1, GREEN), (3, YELLOW), (4, MAGENTA)):
        mid = (FACE[index] + nose) / 2
        x, y = int(mid[0]), int(mid[1])
        assert tuple(image[y, x]) == dim(color)


def test_limb_half_width_is_4_px():
    # A horizontal limb (left eye at the nose's height) makes the width easy to read off a column.
    face = np.array([[20.0, 100.0], [180.0, 40.0], [100.0, 100.0], [20.0, 180.0], [180.0, 180.0]])
    image = draw_keypoints(face, (200, 200))
    column = image[80:120, 60]  # between the right eye (x=20) and the nose (x=100), outside both discs
    lit = 80 + np.flatnonzero(column.any(axis=1))
    assert lit.min() == 96 and lit.max() == 104
    assert tuple(image[100, 60]) == dim(RED)


def test_coordinates_are_truncated_like_the_reference_drawing():
    shifted = FACE + [0.9, 0.0]  # int(60.9) == 60: the disc must not move
    assert np.array_equal(draw_keypoints(shifted, (200, 200)), draw_keypoints(FACE, (200, 200)))
    moved = FACE + [2.0, 0.0]
    assert not np.array_equal(draw_keypoints(moved, (200, 200)), draw_keypoints(FACE, (200, 200)))


def test_discs_keep_their_pixel_size_at_any_canvas_size():
    """Drawn natively: a 4x larger canvas gets 4x farther points but the same 10 px discs."""
    big = Placement.resize((200, 200), (800, 800)).apply(FACE)
    image = draw_keypoints(big, (800, 800))
    x, y = big[2].astype(int)
    assert tuple(image[y + 10, x]) == BLUE and tuple(image[y + 13, x]) != BLUE


def test_points_off_the_canvas_are_clipped_not_an_error():
    image = draw_keypoints(FACE - 500, (200, 200))
    assert not image.any()


def test_resize_aligns_pixel_centres():
    p = Placement.resize((100, 50), (200, 200))
    # The centre of the first source pixel maps to the centre of the first 2x4 block of target pixels.
    assert np.allclose(p.apply([[0.0, 0.0]]), [[0.5, 1.5]])
    assert np.allclose(p.apply([[99.0, 49.0]]), [[198.5, 197.5]])


def test_crop_then_compose():
    crop = Placement.crop((100, 50, 300, 250), (100, 100))  # a 200x200 region halved
    assert np.allclose(crop.apply([[100.0, 50.0]]), [[-0.25, -0.25]])
    assert np.allclose(crop.apply([[200.0, 150.0]]), [[49.75, 49.75]])
    double = Placement.resize((10, 10), (20, 20))
    both = crop.then(double)
    point = np.array([[173.0, 91.0]])
    assert np.allclose(both.apply(point), double.apply(crop.apply(point)))
