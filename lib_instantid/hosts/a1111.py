"""AUTOMATIC1111 glue: where the UNet, models and devices are, which rows are cond/uncond, where keypoints land,
and the scope of one job's hooks.

Errors found while preparing a job cannot be raised from the script hooks: the WebUI catches and logs those and
generates anyway, silently without the identity. They are kept and raised when sampling starts, from our wrapper of
`p.sample`, which ends the job with the message (the UI shows it; the API answers with it and its status code).
The same wrapper scopes the UNet hooks: attached just before sampling, removed in `finally`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from modules import devices, shared

from ..args import AUTOMATIC, INFOTEXT_KEY, InstantIDArgs
from ..conditioning import COND, UNCOND
from ..errors import InstantIDError
from ..face import DetectedFace, FaceAnalyzer, find_antelopev2, webui_antelopev2_roots
from ..keypoints import Placement
from ..models import catalog
from ..pipeline import MODEL_CACHE, Job, analyse_faces, prepare_job
from ..unet_hooks import LATENT_SCALE, CallInfo

log = logging.getLogger(__name__)

CONTROLNET_MARK = 1024.0  # sd-webui-controlnet prepends a token row of +1024 (cond) / -1024 (uncond)
MARK_EPS = 1e-3


def models_path() -> Path:
    return Path(shared.models_path)


def installed_models() -> list[catalog.ModelEntry]:
    return catalog.scan(models_path())


def antelopev2_roots() -> list[Path]:
    return webui_antelopev2_roots(models_path(), Path(shared.script_path))


_analyzers: dict[Path, FaceAnalyzer] = {}


def face_analyzer_pack() -> Path:
    return find_antelopev2(*antelopev2_roots())


def face_analyzer() -> FaceAnalyzer:
    pack = face_analyzer_pack()
    if pack not in _analyzers:
        _analyzers.clear()
        _analyzers[pack] = FaceAnalyzer(pack)
    return _analyzers[pack]


def unet_of(p) -> torch.nn.Module:
    return p.sd_model.model.diffusion_model


class RowTracker:
    """Which rows of each UNet call are cond and which uncond, from the CFG denoiser's layout.

    The denoiser stacks [cond rows (one per AND-subprompt per image); uncond rows] and announces them through
    `on_cfg_denoiser`; it then calls the UNet on consecutive slices of that stack (all at once, in chunks, cond
    rows only). sd-webui-controlnet marks each row's context instead; when marks are present they decide.
    """

    def __init__(self) -> None:
        self.kinds: list[int] = []
        self.cursor = 0
        self.step, self.total_steps = 0, 1

    def on_cfg_denoiser(self, params) -> None:
        n_cond = _rows(params.text_cond)
        self.kinds = [COND] * n_cond + [UNCOND] * (params.x.shape[0] - n_cond)
        self.cursor = 0
        self.step, self.total_steps = params.denoiser.step, params.denoiser.total_steps

    def __call__(self, x: torch.Tensor, context: torch.Tensor) -> CallInfo:
        rows = x.shape[0]
        kinds = self.kinds[self.cursor:self.cursor + rows]
        self.cursor += rows
        marked = controlnet_marks(context)
        if marked is not None:
            kinds = marked
        elif len(kinds) != rows:
            raise InstantIDError(
                "InstantID could not tell cond from uncond rows: the UNet was called outside the WebUI's CFG "
                "denoiser, or with more rows than it announced. Another extension may be calling the UNet itself."
            )
        return CallInfo(tuple(kinds), self.step, self.total_steps)


def _rows(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def controlnet_marks(context: torch.Tensor | None) -> list[int] | None:
    """Row kinds from sd-webui-controlnet's marker token, or None when the context is not marked."""
    if context is None or context.ndim != 3:
        return None
    first = context[:, 0, :].float()
    cond = (first - CONTROLNET_MARK).abs().mean(dim=-1) < MARK_EPS
    uncond = (first + CONTROLNET_MARK).abs().mean(dim=-1) < MARK_EPS
    if not bool((cond | uncond).all()):
        return None
    return [COND if c else UNCOND for c in cond.tolist()]


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


def txt2img_placements(p, pose_size: tuple[int, int]) -> dict[tuple[int, int], Placement]:
    """Pose image → the first pass (crop and resize) and → the hires pass (stretched, then truncated)."""
    first = webui_resize(1, pose_size, (p.width, p.height))
    placements = {(p.width, p.height): first}
    if getattr(p, "enable_hr", False):
        up = (p.hr_upscale_to_x, p.hr_upscale_to_y)
        tx, ty = getattr(p, "truncate_x", 0), getattr(p, "truncate_y", 0)
        hires = first.then(Placement.resize((p.width, p.height), up)).then(
            Placement(offset_x=-(tx // 2) * LATENT_SCALE, offset_y=-(ty // 2) * LATENT_SCALE))
        placements[(up[0] - tx * LATENT_SCALE, up[1] - ty * LATENT_SCALE)] = hires
    return placements


def img2img_placement(p, init_size: tuple[int, int]) -> Placement:
    """Init image → the processed image: the "only masked" crop when there is one, else the resize mode."""
    if getattr(p, "paste_to", None):
        x1, y1, w, h = p.paste_to
        return Placement(offset_x=-x1, offset_y=-y1).then(webui_resize(2, (w, h), (p.width, p.height)))
    return webui_resize(p.resize_mode, init_size, (p.width, p.height))


def keypoints_source(points: np.ndarray, placements: Callable[[], dict[tuple[int, int], Placement]],
                     pose_size: tuple[int, int]) -> Callable[[int, int], np.ndarray]:
    """Keypoints at each generation size. Placements are built lazily: img2img's crop exists only after p.init."""

    def keypoints_for(width: int, height: int) -> np.ndarray:
        placement = placements().get((width, height)) or webui_resize(1, pose_size, (width, height))
        return placement.apply(points)

    return keypoints_for


def check_single_checkpoint(p) -> None:
    """A refiner or a hires checkpoint swaps the UNet mid-job, which would silently drop the identity."""
    hires = getattr(p, "hr_checkpoint_name", None) if getattr(p, "enable_hr", False) else None
    if hires and hires != "Use same checkpoint":
        raise InstantIDError("InstantID cannot follow a separate hires-fix checkpoint; use the same checkpoint for "
                             "the hires pass.", field="hr_checkpoint_name")
    if getattr(p, "refiner_checkpoint", None) and getattr(p, "refiner_switch_at", 1.0) < 1.0:
        raise InstantIDError("InstantID cannot follow a refiner checkpoint (it swaps the UNet mid-sampling); turn "
                             "the refiner off.", field="refiner_checkpoint")


def inside_mask(p) -> Callable[[list[DetectedFace]], DetectedFace] | None:
    """For inpainting: the face with most of its box under the mask (the one being replaced)."""
    mask = getattr(p, "image_mask", None)
    if mask is None:
        return None
    coverage = np.asarray(mask.convert("L"), dtype=np.float32) / 255

    def covered(face: DetectedFace) -> float:
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        region = coverage[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]
        return float(region.sum())

    return lambda faces: max(faces, key=covered)


def start_job(p, script_args: tuple, tracker: RowTracker) -> None:
    """The script's `process` hook: nothing at all unless InstantID is turned on."""
    if InstantIDArgs.requested(script_args):
        JobRun(p, tracker).prepare(script_args)


class JobRun:
    """One generation job with InstantID enabled: prepared at `process`, active only while `p.sample` runs."""

    def __init__(self, p, tracker: RowTracker) -> None:
        self.p, self.tracker = p, tracker
        self.job: Job | None = None
        self.error: BaseException | None = None
        self._wrap_sample()  # first, so that no failure below can let the job run without InstantID

    def prepare(self, script_args: tuple) -> None:
        """Settings, faces and models, once per job. Any error is kept for `p.sample` to raise."""
        try:
            p = self.p
            args = InstantIDArgs.from_script_args(script_args)
            overrides = getattr(p, "instantid_overrides", None)  # set by XYZ plot axes
            if overrides:
                args = args.with_overrides(**overrides)
            args.check_ready()
            check_single_checkpoint(p)
            is_img2img = hasattr(p, "init_images")
            pose, pose_what, pick = args.pose_image, "pose image", None
            if pose is None and is_img2img:
                pose, pose_what = p.init_images[0], "init image (used for the pose; give a pose image to override)"
                pick = inside_mask(p)
            faces = analyse_faces(face_analyzer(), args, pose, pose_what, pick)
            self.job = prepare_job(args, faces, installed_models(), unet_of(p), devices.device, devices.dtype_unet)
            self._keypoints_for = self._keypoint_source(faces, pose, is_img2img)
            p.extra_generation_params[INFOTEXT_KEY] = self.job.infotext()
        except Exception as e:  # kept, not swallowed: raised when sampling starts
            self.error = e

    def _keypoint_source(self, faces, pose, is_img2img: bool) -> Callable[[int, int], np.ndarray]:
        p = self.p
        points = faces.pose.keypoints
        pose_size = faces.pose.image_size
        if not is_img2img:
            return keypoints_source(points, lambda: txt2img_placements(p, pose_size), pose_size)
        init_size = p.init_images[0].size
        to_init = Placement() if pose is p.init_images[0] else webui_resize(1, pose_size, init_size)
        return keypoints_source(points, lambda: {(p.width, p.height): to_init.then(img2img_placement(p, init_size))},
                                pose_size)

    def _wrap_sample(self) -> None:
        original = self.p.sample

        def sample_with_instantid(*args, **kwargs):
            hooks = self._hooks()
            try:
                with hooks:
                    return original(*args, **kwargs)
            finally:
                self._release_memory()

        self.p.sample = sample_with_instantid

    def _hooks(self):
        """The hooks for the UNet loaded now; raises the error kept from `prepare`, or the hooks' own refusal of
        weights that do not fit this UNet, in the form the host answers best."""
        try:
            if self.error is not None:
                raise self.error
            return self.job.hooks(unet_of(self.p), self.tracker, self._keypoints_for)
        except InstantIDError as e:
            raise _for_host(self.p, e)

    def _release_memory(self) -> None:
        if self.job is not None and self.job.identitynet is not None and _low_vram():
            self.job.identitynet.to(devices.cpu)
            devices.torch_gc()


def _for_host(p, error: BaseException) -> BaseException:
    """An API request's input error becomes an HTTPException: the API answers it with its status and message and,
    unlike other exceptions, does not print a traceback to the server console for it."""
    if getattr(p, "is_api", False) and isinstance(error, InstantIDError):
        from fastapi import HTTPException

        http = HTTPException(status_code=error.status_code, detail=f"{type(error).__name__}: {error}")
        http.__cause__ = error  # the original stays attached for logs
        return http
    return error


def _low_vram() -> bool:
    opts = shared.cmd_opts
    return bool(getattr(opts, "lowvram", False) or getattr(opts, "medvram", False))


def model_choices(kind: str) -> list[str]:
    return [AUTOMATIC] + [e.name for e in installed_models() if e.kind == kind]


def refreshed_choices() -> tuple[dict, dict]:
    import gradio as gr

    return (gr.update(choices=model_choices(catalog.IDENTITYNET)), gr.update(choices=model_choices(catalog.ADAPTER)))


def preview(face_files, pose_image, face_index) -> tuple[list, str]:
    """The panel's Preview button: overlays of what was found, and what to do when nothing was."""
    from .. import preview as drawing
    from ..images import decode_image

    try:
        analyzer = face_analyzer()
        images = [(decode_image(f, "face_image"), f"face photo {i + 1}") for i, f in enumerate(face_files or [])]
        if pose_image is not None:
            images.append((decode_image(pose_image, "pose_image"), "pose photo"))
        if not images:
            return [], "Upload a face photo first."
        found = [drawing.detect(analyzer, image, int(face_index or 0), what) for image, what in images]
    except InstantIDError as e:
        return [], str(e)
    return [d.image for d in found], "\n\n".join(d.message for d in found)


def release_models() -> None:
    MODEL_CACHE.clear()
    _analyzers.clear()
