"""AUTOMATIC1111 glue: where the UNet, models and devices are, which rows are cond/uncond, and the scope of one
job's hooks.

Errors found while preparing a job cannot be raised from the script hooks: the WebUI catches and logs those and
generates anyway, silently without the identity. They are kept and raised when sampling starts, from our wrapper of
`p.sample`, which ends the job with the message (the UI shows it; the API answers with it and its status code).
The same wrapper scopes the UNet hooks: attached just before sampling, removed in `finally`. Scripts that process
one `p` several times (img2img batch, Loopback, SD upscale, outpainting) run `process` again on it: each run
replaces the previous one's state, and the wrapper is installed once.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from pathlib import Path

import torch

from modules import devices, shared

from ..args import AUTOMATIC, INFOTEXT_KEY, InstantIDArgs, in_panel_words
from ..conditioning import COND, UNCOND
from ..errors import InstantIDError
from ..face import FaceAnalyzer, choose_face, find_antelopev2, webui_antelopev2_roots
from ..models import catalog
from ..models.loading import place
from ..pipeline import CONDITIONING, MODEL_CACHE, Identity, Job, analyse_identity, prepare_job
from ..session import OFF, CallInfo
from ..unet_hooks import InstantIDHooks, unet_architecture
from . import poses as posing

log = logging.getLogger(__name__)

CONTROLNET_MARK = 1024.0  # sd-webui-controlnet prepends a token row of +1024 (cond) / -1024 (uncond)
MARK_EPS = 1e-3


class InstantID(RuntimeError):
    """What a job with InstantID stops with in the panel: the WebUI shows the class name, then the message."""


# --- where things are --------------------------------------------------------------------------------------------

def models_path() -> Path:
    return Path(shared.models_path)


def installed_models() -> list[catalog.ModelEntry]:
    return catalog.scan(models_path())


def antelopev2_roots() -> list[Path]:
    from modules import paths

    extensions = Path(getattr(paths, "extensions_dir", Path(shared.script_path) / "extensions"))
    return webui_antelopev2_roots(models_path(), extensions, _controlnet_annotator_roots())


def _controlnet_annotator_roots() -> list[Path]:
    """Where sd-webui-controlnet keeps its downloads when its setting or command-line flag moved them."""
    from modules import paths

    moved = shared.opts.data.get("control_net_modules_path") or getattr(shared.cmd_opts,
                                                                        "controlnet_annotator_models_path", None)
    if not moved:
        return []
    folder = Path(moved)
    return [folder if folder.is_absolute() else Path(paths.data_path) / folder]


_analyzers: dict[Path, FaceAnalyzer] = {}
_analyzers_lock = threading.Lock()


def face_analyzer_pack() -> Path:
    return find_antelopev2(*antelopev2_roots())


def face_analyzer() -> FaceAnalyzer:
    pack = face_analyzer_pack()
    with _analyzers_lock:
        if pack not in _analyzers:
            _analyzers.clear()
            _analyzers[pack] = FaceAnalyzer(pack)
        return _analyzers[pack]


def unet_of(p) -> torch.nn.Module:
    return p.sd_model.model.diffusion_model


def low_vram(p) -> bool:
    """--lowvram, --medvram, or --medvram-sdxl with an SDXL model: the WebUI decides per model (`sd_model.lowvram`)."""
    return bool(getattr(p.sd_model, "lowvram", False))


def replacement_unet() -> str | None:
    """The label of a replacement UNet (Settings → SD Unet, e.g. TensorRT) that runs instead of the UNet's layers."""
    try:
        from modules import sd_unet
    except ImportError:
        return None
    if getattr(sd_unet, "current_unet", None) is None:
        return None
    option = getattr(sd_unet, "current_unet_option", None)
    return getattr(option, "label", None) or type(sd_unet.current_unet).__name__


# --- rows --------------------------------------------------------------------------------------------------------

class RowTracker:
    """Which rows of each UNet call are cond and which uncond, and which image of the batch each belongs to, from
    the CFG denoiser's layout.

    The denoiser stacks [cond rows (one per AND-subprompt, image by image); uncond rows (one per image)] and announces
    them through `on_cfg_denoiser`; it then calls the UNet on consecutive slices of that stack (all at once, in
    chunks, cond rows only). sd-webui-controlnet marks each row's context instead; when marks are present they
    decide the kinds. Rows of images the job does not serve (`served` False) are OFF.
    """

    def __init__(self, served: tuple[bool, ...], per_image: bool) -> None:
        self.served, self.per_image = served, per_image
        self.kinds: list[int] = []
        self.images: list[int] | None = None
        self.cursor = 0
        self.step, self.total_steps = 0, 1

    def on_cfg_denoiser(self, params) -> None:
        x = params.x
        n_cond = _rows(params.text_cond)
        n_images = x.shape[0] - n_cond
        images = _row_images(x, n_cond, n_images) if self.per_image else [0] * x.shape[0]
        kinds = [COND] * n_cond + [UNCOND] * n_images
        self.kinds = [kind if self.served[image] else OFF for kind, image in zip(kinds, images)]
        self.images = images if self.per_image else None
        self.cursor = 0
        self.step, self.total_steps = params.denoiser.step, params.denoiser.total_steps

    def __call__(self, x: torch.Tensor, context: torch.Tensor) -> CallInfo:
        rows = x.shape[0]
        span = slice(self.cursor, self.cursor + rows)
        kinds, self.cursor = self.kinds[span], self.cursor + rows
        marked = controlnet_marks(context)
        if marked is not None and len(kinds) == rows:
            kinds = [OFF if kind == OFF else mark for kind, mark in zip(kinds, marked)]
        elif marked is not None:
            kinds = marked
        if len(kinds) != rows:
            raise InstantIDError(
                "InstantID could not tell cond from uncond rows: the UNet was called outside the WebUI's CFG "
                "denoiser, or with more rows than it announced. Another extension may be calling the UNet itself."
            )
        images = None if self.images is None else tuple(self.images[span])
        return CallInfo(tuple(kinds), self.step, self.total_steps, images)


def _rows(cond) -> int:
    return (cond["crossattn"] if isinstance(cond, dict) else cond).shape[0]


def _row_images(x: torch.Tensor, n_cond: int, n_images: int) -> list[int]:
    """The image of each row: uncond rows are the images in order, and each cond row is a copy of its image's
    latent (one per AND sub-prompt), so equality finds it."""
    uncond = x[n_cond:]
    images = []
    for row in x[:n_cond]:
        match = next((j for j in range(n_images) if torch.equal(row, uncond[j])), None)
        if match is None:  # a callback changed the rows: fall back to the even split of the usual layout
            match = min(len(images) * n_images // max(n_cond, 1), n_images - 1)
        images.append(match)
    return images + list(range(n_images))


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


# --- one job -----------------------------------------------------------------------------------------------------

_ACTIVE: "JobRun | None" = None  # the run whose p.sample is running: the denoiser callback reports to it
_RELEASE_PENDING = False  # a checkpoint was loaded while a run was active: release the caches when it ends


def on_cfg_denoiser(params) -> None:
    """Registered for `on_cfg_denoiser`: every denoiser call of every job; only a running InstantID job listens."""
    if _ACTIVE is not None:
        _ACTIVE.on_denoiser(params)


def start_job(p, script_args: tuple) -> None:
    """The script's `process` hook, for every processing of `p`. Nothing at all unless InstantID is turned on (then
    the models InstantID keeps loaded leave the GPU for the other job)."""
    scope = SampleScope.of(p)
    if not InstantIDArgs.requested(script_args):
        if scope is not None:
            scope.run = None
        release_device_memory()
        return
    run = JobRun(p)
    (scope or SampleScope.install(p)).run = run  # before preparing: no failure below lets the job run without us
    run.prepare(script_args)


class SampleScope:
    """Installed once as `p.sample`: runs the current processing's InstantID run around the real `p.sample`."""

    def __init__(self, p) -> None:
        self.p = p
        self.original = p.sample
        self.run: JobRun | None = None

    @classmethod
    def install(cls, p) -> "SampleScope":
        p.sample = scope = cls(p)
        return scope

    @classmethod
    def of(cls, p) -> "SampleScope | None":
        scope = p.__dict__.get("sample")
        if isinstance(scope, cls) and scope.p is not p:  # a copy of another job: start afresh on this one's own
            p.sample = type(p).sample.__get__(p)
            return None
        return scope if isinstance(scope, cls) else None

    def __call__(self, *args, **kwargs):
        if self.run is None:
            return self.original(*args, **kwargs)
        return self.run.sample(self.original, args, kwargs)


class JobRun:
    """One processing of `p` with InstantID on: prepared at `process`, active only while `p.sample` runs. When the
    WebUI swaps the UNet during sampling (a refiner, a hires-fix checkpoint), InstantID follows it: it acts there too
    when models fit it, else that part runs plain and the infotext says so."""

    def __init__(self, p) -> None:
        self.p = p
        self.error: BaseException | None = None
        self.job: Job | None = None
        self.hooks: InstantIDHooks | None = None
        self.unet: torch.nn.Module | None = None  # the UNet the current hooks (or the refusal to hook) are about
        self.notes: dict[str, str] = {}

    def prepare(self, script_args: tuple) -> None:
        """Settings, faces and models, once per processing. Any error is kept for `p.sample` to raise."""
        try:
            p = self.p
            args = InstantIDArgs.from_script_args(script_args)
            overrides = getattr(p, "instantid_overrides", None)  # set by XYZ plot axes
            if overrides:
                args = args.with_overrides(**overrides)
            args.check_ready()
            self.args = args
            self.identity = analyse_identity(face_analyzer(), args)
            self.poses = self._poses(args, self.identity)
            self.tracker = RowTracker(self.poses.served, not self.poses.shared)
            self.models = installed_models()
            self.low_vram = low_vram(p)
            self.job = self._prepare_for(unet_of(p))
            unserved = self.poses.served.count(False)
            if unserved:
                self.notes["Images without a face"] = f"{unserved} of {len(self.poses.served)} (left unchanged)"
            self._write_infotext()
        except Exception as e:  # kept, not swallowed: raised when sampling starts
            self.error = e

    def _poses(self, args: InstantIDArgs, identity: Identity) -> posing.Poses:
        p = self.p
        pose_photo = None
        if args.pose_image is not None:
            pose_photo = choose_face(face_analyzer().detect(args.pose_image), 0, "pose image")
        if not hasattr(p, "init_images"):
            return posing.txt2img_poses(p, pose_photo or identity.first_face)
        return posing.img2img_poses(p, face_analyzer().detect, pose_photo, posing.face_under_mask(p))

    def _prepare_for(self, unet: torch.nn.Module) -> Job:
        identitynet_device = devices.cpu if self.low_vram else devices.device
        return prepare_job(self.args, self.identity, self.models, unet, devices.device, devices.dtype_unet,
                           identitynet_device)

    def _write_infotext(self) -> None:
        self.p.extra_generation_params[INFOTEXT_KEY] = self.job.infotext(self.notes)

    # --- while p.sample runs

    def sample(self, original, args: tuple, kwargs: dict):
        global _ACTIVE
        try:
            self._hook(unet_of(self.p), self.job)
        except InstantIDError as e:
            raise for_host(self.p, e) from e
        _ACTIVE = self
        try:
            return original(*args, **kwargs)
        finally:
            _ACTIVE = None
            self._unhook()
            if _RELEASE_PENDING:
                release_models()

    def _hook(self, unet: torch.nn.Module, job: Job | None) -> None:
        """Hooks for this UNet; raises the error kept from `prepare`, or a refusal of what cannot be served."""
        if self.error is not None:
            raise self.error
        replacement = replacement_unet()
        if replacement is not None:
            raise InstantIDError(
                f"InstantID cannot act through the replacement UNet {replacement!r} (Settings → SD Unet, e.g. "
                "TensorRT): it runs instead of the layers InstantID works in. Set SD Unet to None for InstantID jobs.")
        self.unet = unet
        if not any(self.poses.served):
            return  # nothing to serve in this batch (tiles without a face)
        residency = Residency(job.identitynet, self.low_vram)
        self.hooks = job.hooks(unet, self.tracker, self.poses.keypoints_for, residency.scope).attach()
        self.residency = residency

    def _unhook(self) -> None:
        if self.hooks is not None:
            self.hooks.detach()
            self.hooks = None
            self.residency.release()

    def on_denoiser(self, params) -> None:
        self.tracker.on_cfg_denoiser(params)
        unet = unet_of(self.p)
        if unet is not self.unet:
            try:
                self._follow(unet)
            except InstantIDError as e:
                raise for_host(self.p, e) from e

    def _follow(self, unet: torch.nn.Module) -> None:
        """The WebUI swapped the UNet inside sampling (refiner, hires checkpoint): act there too if models fit."""
        self._unhook()
        part = "Hires checkpoint" if getattr(self.p, "is_hr_pass", False) else "Refiner"
        try:
            job = self._prepare_for(unet)
        except InstantIDError as e:
            self.unet = unet
            self.notes[part] = "without InstantID (no fitting models)"
            log.warning("InstantID: the %s (%s) runs without InstantID: %s", part.lower(),
                        unet_architecture(unet).family, e)
        else:
            self._hook(unet, job)
            self.notes.pop(part, None)
        self._write_infotext()


class Residency:
    """Where a run's IdentityNet is while its sampling passes run. In the WebUI's low-VRAM modes it is on the GPU only
    while it computes (moved in and out around each run, as those modes treat the UNet), so the VAE and the hires
    upscaler have the memory; otherwise it stays there."""

    def __init__(self, identitynet: torch.nn.Module | None, low_vram: bool) -> None:
        self.identitynet, self.low_vram = identitynet, low_vram
        self.on_device = identitynet is not None and not low_vram  # prepare_job placed it there then

    @contextlib.contextmanager
    def scope(self):
        if not self.on_device:
            place(self.identitynet, devices.device, devices.dtype_unet)
            self.on_device = True
        try:
            yield
        finally:
            if self.low_vram:
                self.release()

    def release(self) -> None:
        if self.low_vram and self.on_device:
            place(self.identitynet, devices.cpu)
            self.on_device = False
            devices.torch_gc()


def for_host(p, error: InstantIDError) -> BaseException:
    """An API request's input error becomes an HTTPException: the API answers it with its status and message and,
    unlike other exceptions, does not print a traceback to the server console for it. In the panel the message is
    told in the panel's words."""
    if getattr(p, "is_api", False):
        from fastapi import HTTPException

        http = HTTPException(status_code=error.status_code, detail=f"{type(error).__name__}: {error}")
        http.__cause__ = error  # the original stays attached for logs
        return http
    return InstantID(in_panel_words(str(error)))


# --- memory ------------------------------------------------------------------------------------------------------

def release_device_memory() -> None:
    """InstantID is not in use: its models leave the GPU (they stay loaded), its tokens and hints go."""
    MODEL_CACHE.offload(devices.cpu)
    CONDITIONING.clear()


def on_model_loaded(sd_model) -> None:
    """Registered for `on_model_loaded`: a new checkpoint; what was loaded for the old one goes (after the running
    job, when a refiner or hires checkpoint is loaded during one)."""
    global _RELEASE_PENDING
    if _ACTIVE is not None:
        _RELEASE_PENDING = True
        return
    release_models()


def release_models() -> None:
    global _RELEASE_PENDING
    _RELEASE_PENDING = False
    MODEL_CACHE.clear()
    CONDITIONING.clear()
    devices.torch_gc()


def release_all() -> None:
    """Registered for `on_script_unloaded`."""
    release_models()
    with _analyzers_lock:
        _analyzers.clear()


# --- the panel ---------------------------------------------------------------------------------------------------

def loaded_architecture():
    """What the loaded checkpoint's UNet offers, or None while no checkpoint is loaded."""
    model = getattr(shared, "sd_model", None)
    unet = getattr(getattr(model, "model", None), "diffusion_model", None)
    return None if unet is None else unet_architecture(unet)


def model_choices(kind: str) -> list[str]:
    unet = loaded_architecture()
    return [AUTOMATIC] + [catalog.choice_label(e, unet) for e in installed_models() if e.kind == kind]


def refreshed_choices() -> tuple[dict, dict]:
    import gradio as gr

    return (gr.update(choices=model_choices(catalog.IDENTITYNET)), gr.update(choices=model_choices(catalog.ADAPTER)))


def choice_for(kind: str, name: str) -> str:
    """The dropdown entry of an installed model named `name` (e.g. from pasted infotext); Automatic when none is."""
    unet = loaded_architecture()
    for entry in installed_models():
        if entry.kind == kind and entry.name == name:
            return catalog.choice_label(entry, unet)
    return AUTOMATIC


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
        return [], in_panel_words(str(e))
    return [d.image for d in found], "\n\n".join(d.message for d in found)
