"""Where each image's face keypoints land in each generation, read off an A1111-family processing object `p`.

A1111 and Forge share the processing API (`p.width`, hires fields, init images, masks, the "only masked" crop), so
both hosts use this module; it never imports the WebUI's `modules` and reads `p` by attribute only.

Sizes are those of the canvas the UNet works on: 8 x its latent size, which is what the IdentityNet's keypoint
image must match. The WebUI makes latents of `size // 8`, so a width of 516 gives a 512-pixel canvas.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import ImageOps

from .. import pose_presets
from ..errors import NoFaceError
from ..face import DetectedFace, no_face_message
from ..keypoints import Placement

LATENT_SCALE = 8  # pixels per latent cell in SD/SDXL VAEs
# Built-in and popular scripts whose images are tiles of a larger picture: a tile without a face is processed
# without InstantID instead of stopping the job.
TILING_SCRIPTS = ("SD upscale", "Ultimate SD upscale", "Poor man's outpainting")


def canvas(width: int, height: int) -> tuple[int, int]:
    """The pixel size of the canvas the UNet sees for a requested size."""
    return width // LATENT_SCALE * LATENT_SCALE, height // LATENT_SCALE * LATENT_SCALE


def webui_resize(mode: int, src: tuple[int, int], dst: tuple[int, int]) -> Placement:
    """Where a point lands when the WebUI resizes an image with `images.resize_image(mode, ...)`: 0 just resize,
    1 crop and resize, 2 resize and fill (and 3, which resizes the latent, like 0). Integer arithmetic as there."""
    (w, h), (dw, dh) = src, dst
    if mode not in (1, 2):
        return Placement.resize(src, dst)
    ratio, src_ratio = dw / dh, w / h
    if mode == 1:  # cover, then crop the overflow
        fit = (dw if ratio > src_ratio else w * dh // h, dh if ratio <= src_ratio else h * dw // w)
    else:  # fit inside, then fill the bands
        fit = (dw if ratio < src_ratio else w * dh // h, dh if ratio >= src_ratio else h * dw // w)
    centred = Placement(offset_x=dw // 2 - fit[0] // 2, offset_y=dh // 2 - fit[1] // 2)
    return Placement.resize(src, fit).then(centred)


def txt2img_canvases(p, pose_size: tuple[int, int]) -> dict[tuple[int, int], Placement]:
    """Pose image → the first pass's canvas (crop and resize) and → the hires pass's. The hires pass upscales the
    first-pass image (a pixel upscaler to exactly hr_upscale_to; a latent one to its latent size), then crops
    `truncate` latent cells centrally. Only valid after `p.init` (hires sizes are computed there)."""
    first = canvas(p.width, p.height)
    to_first = webui_resize(1, pose_size, first)
    placements = {first: to_first}
    if getattr(p, "enable_hr", False) and getattr(p, "hr_upscale_to_x", 0):
        up_x, up_y = p.hr_upscale_to_x, p.hr_upscale_to_y
        tx, ty = getattr(p, "truncate_x", 0), getattr(p, "truncate_y", 0)
        latent_upscaler = getattr(p, "latent_scale_mode", None) is not None
        upscaled = canvas(up_x, up_y) if latent_upscaler else (up_x, up_y)
        hires = to_first.then(Placement.resize(first, upscaled)).then(
            Placement(offset_x=-(tx // 2) * LATENT_SCALE, offset_y=-(ty // 2) * LATENT_SCALE))
        placements[(canvas(up_x, up_y)[0] - tx * LATENT_SCALE, canvas(up_x, up_y)[1] - ty * LATENT_SCALE)] = hires
    return placements


def img2img_placement(p, init_size: tuple[int, int]) -> Placement:
    """Init image → the processed image: the "only masked" crop when there is one, else the resize mode. The canvas
    is the top-left part of the processed image (the WebUI encodes `size // 8` latent cells)."""
    if getattr(p, "paste_to", None):
        x1, y1, w, h = p.paste_to
        return Placement(offset_x=-x1, offset_y=-y1).then(webui_resize(2, (w, h), (p.width, p.height)))
    return webui_resize(p.resize_mode, init_size, (p.width, p.height))


def effective_mask(p) -> np.ndarray | None:
    """The inpainting mask as the WebUI uses it, in [0, 1] at the init image's pixels (1: repainted): a mask with
    transparency is read from its alpha channel, and "Inpaint not masked" inverts it. None without a mask."""
    mask = getattr(p, "image_mask", None)
    if mask is None:
        return None
    if mask.mode == "RGBA" and mask.getextrema()[-1] != (255, 255):
        mask = mask.split()[-1]
    mask = mask.convert("L")
    if getattr(p, "inpainting_mask_invert", 0):
        mask = ImageOps.invert(mask)
    return np.asarray(mask, dtype=np.float32) / 255


def face_under_mask(p) -> Callable[[list[DetectedFace]], DetectedFace] | None:
    """For inpainting: the face with most of its box in the repainted area (the one being replaced)."""
    coverage = effective_mask(p)
    if coverage is None:
        return None

    def covered(face: DetectedFace) -> float:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        return float(coverage[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)].sum())

    return lambda faces: max(faces, key=covered)


def selected_script(p) -> str | None:
    """The title of the script chosen in the Script dropdown (e.g. "SD upscale"), or None."""
    runner, args = getattr(p, "scripts", None), getattr(p, "script_args", None)
    index = args[0] if args else 0
    selectable = getattr(runner, "selectable_scripts", None) or []
    if not isinstance(index, int) or not 0 < index <= len(selectable):
        return None
    return selectable[index - 1].title()


REGION_MARGIN = 0.2  # the face region: the face box enlarged by this fraction of its size on each side,
REGION_FEATHER = 0.15  # then fading to nothing over this fraction of its size
HEAD_ASPECT = 0.75  # a chosen head pose's region: width / height of the head box


def region_mask(box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[H, W] in [0, 1]: 1 inside the enlarged face box, fading linearly to 0 around it."""
    x1, y1, x2, y2 = (float(v) for v in box)
    extent = max(x2 - x1, y2 - y1, 1.0)
    margin, feather = REGION_MARGIN * extent, max(REGION_FEATHER * extent, 1.0)
    width, height = size
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    dx = np.maximum(np.maximum(x1 - margin - xs, xs - x2 - margin), 0)
    dy = np.maximum(np.maximum(y1 - margin - ys, ys - y2 - margin), 0)
    distance = np.hypot(dx[None, :], dy[:, None])
    return np.clip(1 - distance / feather, 0, 1).astype(np.float32)


@dataclass(frozen=True)
class Pose:
    """One image's pose: the face's keypoints and box in the pixels of the image they were found in, and how those
    pixels map onto each canvas."""

    keypoints: np.ndarray
    image_size: tuple[int, int]
    placements: Callable[[], dict[tuple[int, int], Placement]]  # built lazily: crops exist only after p.init
    box: np.ndarray  # x1 y1 x2 y2

    def _placement(self, width: int, height: int) -> Placement:
        return self.placements().get((width, height)) or webui_resize(1, self.image_size, (width, height))

    def on_canvas(self, width: int, height: int) -> np.ndarray:
        return self._placement(width, height).apply(self.keypoints)

    def box_on_canvas(self, width: int, height: int) -> np.ndarray:
        return self._placement(width, height).apply(np.reshape(self.box, (2, 2))).reshape(4)


@dataclass(frozen=True)
class PresetPose:
    """A chosen head pose (pose_presets) in its box: the same fractions of every canvas, hires included."""

    pose: str
    box: tuple[float, float, float]
    photo_keypoints: np.ndarray | None  # the face photo's, for the person's proportions

    def on_canvas(self, width: int, height: int) -> np.ndarray:
        return pose_presets.preset_keypoints(self.pose, self.box, (width, height), self.photo_keypoints)

    def box_on_canvas(self, width: int, height: int) -> np.ndarray:
        cx, cy, head = self.box
        half_h, half_w = head * height / 2, head * height * HEAD_ASPECT / 2
        return np.array([cx * width - half_w, cy * height - half_h, cx * width + half_w, cy * height + half_h])


@dataclass(frozen=True)
class Poses:
    """The pose of each image of the batch; None for an image InstantID leaves alone (a tile without a face)."""

    per_image: tuple[Pose | PresetPose | None, ...]

    @property
    def served(self) -> tuple[bool, ...]:
        return tuple(pose is not None for pose in self.per_image)

    @property
    def shared(self) -> bool:
        """All images have the same pose (one keypoint image serves every row)."""
        return len(self.per_image) == 1

    def _pose(self, image: int) -> Pose | PresetPose:
        pose = self.per_image[0 if self.shared else image]
        if pose is None:
            raise RuntimeError("InstantID: keypoints asked for an image it does not serve")
        return pose

    def keypoints_for(self, width: int, height: int, image: int = 0) -> np.ndarray:
        return self._pose(image).on_canvas(width, height)

    def region_for(self, width: int, height: int, image: int = 0) -> np.ndarray:
        """face_region "face": around the pose's face, at this canvas size."""
        return region_mask(self._pose(image).box_on_canvas(width, height), (width, height))


def txt2img_poses(p, pose: DetectedFace) -> Poses:
    return Poses((Pose(pose.keypoints, pose.image_size, lambda: txt2img_canvases(p, pose.image_size), pose.box),))


def distinct_init_images(p) -> list:
    """The init images whose poses may differ: one when the WebUI repeats a single image over the batch."""
    return p.init_images[:1] if all(image is p.init_images[0] for image in p.init_images) else list(p.init_images)


def img2img_poses(p, detect: Callable[[object], list[DetectedFace]], pose_photo: DetectedFace | None,
                  pick: Callable[[list[DetectedFace]], DetectedFace] | None) -> Poses:
    """The pose of each of `distinct_init_images`: the pose photo's face mapped onto it when one is given, else its
    own face found by `detect` (the one under the mask when inpainting, else the largest). A tiling script's tile
    without a face is left alone; elsewhere an init image without a face stops the job."""
    tiles = selected_script(p) in TILING_SCRIPTS
    init_images = distinct_init_images(p)
    poses = []
    for i, image in enumerate(init_images):
        to_processed = (lambda size: lambda: {canvas(p.width, p.height): img2img_placement(p, size)})(image.size)
        if pose_photo is not None:
            photo_to_init = webui_resize(1, pose_photo.image_size, image.size)
            box = photo_to_init.apply(np.reshape(pose_photo.box, (2, 2))).reshape(4)
            poses.append(Pose(photo_to_init.apply(pose_photo.keypoints), image.size, to_processed, box))
            continue
        faces = detect(image)
        if faces:
            face = pick(faces) if pick is not None else faces[0]
            poses.append(Pose(face.keypoints, image.size, to_processed, face.box))
        elif tiles:
            poses.append(None)
        else:
            which = "init image" if len(init_images) == 1 else f"init image {i + 1} of {len(init_images)}"
            raise NoFaceError(no_face_message(f"{which} (used for the pose; give a pose photo to use another)"))
    return Poses(tuple(poses))
