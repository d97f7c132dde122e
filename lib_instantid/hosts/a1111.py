"""AUTOMATIC1111 glue: the UNet and its devices, which rows of each UNet call are cond/uncond, and the scope of one
job's PyTorch hooks (attached just before sampling, removed in `finally`). What Forge shares with it is in webui.py.
"""
from __future__ import annotations

import contextlib
import logging

import torch

from modules import devices

from ..args import INFOTEXT_KEY, InstantIDArgs
from ..conditioning import COND, UNCOND
from ..errors import InstantIDError
from ..models.loading import place
from ..pipeline import CONDITIONING, MODEL_CACHE, Job, prepare_job
from ..session import OFF, CallInfo
from ..unet_hooks import InstantIDHooks, unet_architecture
from .webui import ActiveRun, SampleScope, Settings, for_host, unet_of_model

log = logging.getLogger(__name__)

CONTROLNET_MARK = 1024.0  # sd-webui-controlnet prepends a token row of +1024 (cond) / -1024 (uncond)
MARK_EPS = 1e-3


def unet_of(p) -> torch.nn.Module:
    return unet_of_model(p.sd_model)


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

def start_job(p, script_args: tuple) -> None:
    """The script's `process` hook, for every processing of `p`. Nothing at all unless InstantID is turned on (then
    the models InstantID keeps loaded leave the GPU for the other job)."""
    if not InstantIDArgs.requested(script_args):
        SampleScope.set_run(p, None)
        release_device_memory()
        return
    run = JobRun(p)
    SampleScope.set_run(p, run)  # before preparing: no failure below lets the job run without us
    run.prepare(script_args)


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

    def prepare(self, script_args: tuple) -> None:
        """Settings, faces and models, once per processing. Any error is kept for `p.sample` to raise."""
        try:
            self.settings = Settings(self.p, script_args)
            self.tracker = RowTracker(self.settings.served, self.settings.per_image)
            self.low_vram = low_vram(self.p)
            self.job = self._prepare_for(unet_of(self.p))
            self._write_infotext()
        except Exception as e:  # kept, not swallowed: raised when sampling starts
            self.error = e

    def _prepare_for(self, unet: torch.nn.Module) -> Job:
        s = self.settings
        identitynet_device = devices.cpu if self.low_vram else devices.device
        return prepare_job(s.args, s.people, s.models, unet, devices.device, devices.dtype_unet, identitynet_device)

    def _write_infotext(self) -> None:
        self.p.extra_generation_params[INFOTEXT_KEY] = self.job.infotext(self.settings.notes)

    # --- while p.sample runs

    def sample(self, original, args: tuple, kwargs: dict):
        try:
            self._hook(unet_of(self.p), self.job)
        except InstantIDError as e:
            raise for_host(self.p, e) from e
        with ACTIVE.running(self):
            try:
                return original(*args, **kwargs)
            finally:
                self._unhook()

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
        if not any(self.settings.served):
            return  # nothing to serve in this batch (tiles without a face)
        residency = Residency(job.identitynet, self.low_vram)
        self.hooks = job.hooks(unet, self.tracker, residency.scope).attach()
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
            self.settings.notes[part] = "without InstantID (no fitting models)"
            log.warning("InstantID: the %s (%s) runs without InstantID: %s", part.lower(),
                        unet_architecture(unet).family, e)
        else:
            self._hook(unet, job)
            self.settings.notes.pop(part, None)
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


# --- memory ------------------------------------------------------------------------------------------------------

def release_device_memory() -> None:
    """InstantID is not in use: its models leave the GPU (they stay loaded), its tokens and hints go."""
    MODEL_CACHE.offload(devices.cpu)
    CONDITIONING.clear()


def release_models() -> None:
    MODEL_CACHE.clear()
    CONDITIONING.clear()
    devices.torch_gc()


ACTIVE = ActiveRun(release_models)
on_cfg_denoiser, on_model_loaded = ACTIVE.on_cfg_denoiser, ACTIVE.on_model_loaded  # the script registers these
