"""Forge glue (the Forge 2 backend: lllyasviel main, Forge Neo): InstantID through Forge's own mechanisms only.

Before every sampling pass Forge gives each script a fresh UNet patcher (`forge_objects` is reset per pass). InstantID
clones it and adds
- an attn2 replace patch on every cross-attention layer, chained onto any patch already there (Forge's built-in
  IP-Adapter, other extensions): text attention as before, plus s·Attn(Q, K_face, V_face) — the paper's term;
- the IdentityNet as a ControlNet in Forge's chain. It gives itself the face tokens of each row and hands the other
  ControlNets an untouched copy of the text conditioning, and Forge's memory manager moves it with the UNet.
Which rows are cond/uncond comes from each call's `cond_or_uncond`; the step from the CFG denoiser callback, so start
and end mean the same fraction of steps as on A1111. The patches hold only small objects that are not deep-copied
with each clone: the adapter stays on the CPU (its per-layer face K/V are made once per job), the IdentityNet is
referenced by its ControlNet object. What A1111 and Forge share (settings, identity, poses, the `p.sample` wrapper
that raises kept errors) is in webui.py.
"""
from __future__ import annotations

import logging
import weakref

import torch

from backend import attention, memory_management
from backend.patcher.base import ModelPatcher
from backend.patcher.controlnet import ControlNet

from ..args import INFOTEXT_KEY, InstantIDArgs
from ..conditioning import COND, UNCOND
from ..errors import InstantIDError
from ..models.identitynet import IdentityNet
from ..pipeline import CONDITIONING, MODEL_CACHE, Job, prepare_job
from ..session import OFF, CallInfo, CallState, Session, add_heads, face_attention
from .webui import ActiveRun, SampleScope, Settings, for_host

log = logging.getLogger(__name__)

FORGE_COND, FORGE_UNCOND = 0, 1  # the chunk kinds in Forge's cond_or_uncond


# --- where InstantID goes in Forge's UNet ------------------------------------------------------------------------

def attn2_keys(unet: torch.nn.Module) -> list[tuple[str, int, int]]:
    """Forge's attn2 patch key (block, number, index in the block's transformer) of every cross-attention layer, in
    the adapter's order (input, output, then middle blocks: how the published weights are numbered)."""
    keys = []
    for part, blocks in (("input", unet.input_blocks), ("output", unet.output_blocks), ("middle", [unet.middle_block])):
        for number, block in enumerate(blocks):
            for layer in block:
                keys += [(part, number, index) for index in range(len(getattr(layer, "transformer_blocks", ())))]
    return keys


class RowSource:
    """Each call's rows from Forge's per-call information: the chunks of `cond_or_uncond` (0 cond, 1 uncond), each
    the whole image batch in order; the step from the CFG denoiser callback."""

    def __init__(self, served: tuple[bool, ...], per_image: bool) -> None:
        self.served, self.per_image = served, per_image
        self.step, self.total_steps = 0, 1

    def on_cfg_denoiser(self, params) -> None:
        self.step, self.total_steps = params.denoiser.step, params.denoiser.total_steps

    def info(self, chunks: list[int] | None, rows: int) -> CallInfo:
        if not chunks or rows % len(chunks):
            raise InstantIDError(
                f"InstantID could not tell cond from uncond rows: a UNet call of {rows} rows came without Forge's "
                f"row information ({chunks!r}). Another extension may be calling the UNet itself.")
        per_chunk = rows // len(chunks)
        if self.per_image and per_chunk != len(self.served):
            raise InstantIDError(
                f"InstantID: a UNet call has {per_chunk} images per chunk but the batch has {len(self.served)}; "
                "another extension changes the batch, which InstantID cannot follow. Disable one of them.")
        images = [i if self.per_image else 0 for i in range(per_chunk)] * len(chunks)
        kinds = [UNCOND if chunk == FORGE_UNCOND else COND for chunk in chunks for _ in range(per_chunk)]
        kinds = [kind if self.served[image] else OFF for kind, image in zip(kinds, images)]
        return CallInfo(tuple(kinds), self.step, self.total_steps, tuple(images) if self.per_image else None)


class Injection:
    """InstantID in one patched UNet: the session, and the state of the call being made (found once per call: all
    patches and the ControlNet of one call see the same `cond_or_uncond` list, a new one for each call)."""

    def __init__(self, session: Session, rows: RowSource) -> None:
        self.session, self.rows = session, rows
        self._chunks: list[int] | None = None
        self._state: CallState | None = None

    def state(self, options: dict, latent_shape: tuple[int, ...]) -> CallState:
        """The call's state, given its options and the shape of its latent input (the rows first)."""
        chunks = options.get("cond_or_uncond")
        if chunks is not self._chunks or self._state is None:
            self._state = self.session.state(self.rows.info(chunks, latent_shape[0]), latent_shape)
            self._chunks = chunks
        return self._state


class FaceAttentionPatch:
    """Forge's attn2 replace patch for the index-th cross-attention layer: the layer's attention (or the patch that
    was there) on the projected q/k/v, plus the face term. Forge deep-copies patches with every UNet clone: this
    one is shared instead (it holds no tensors of its own)."""

    def __init__(self, injection: Injection, index: int, previous=None) -> None:
        self.injection, self.index, self.previous = injection, index, previous

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        heads = extra_options["n_heads"]
        if self.previous is not None:
            out = self.previous(q, k, v, extra_options)
        else:
            out = attention.attention_function(q, k, v, heads)
        state = self.injection.state(extra_options, extra_options["original_shape"])
        if not state.faces:
            return out
        return add_heads(out, face_attention(state, self.index, q, heads))

    def __deepcopy__(self, memo: dict) -> "FaceAttentionPatch":
        return self


class IdentityNetControl(ControlNet):
    """The IdentityNet as a ControlNet of Forge's chain. Unlike a plain ControlNet it does not run the chain's
    conditioning modifiers on itself and passes the ControlNets below it a copy of `cond` (Forge's built-in InstantID
    modifier replaces the text with face tokens in place): they see the text, it sees the face tokens."""

    def __init__(self, injection: Injection, identitynet: IdentityNet, patcher: ModelPatcher) -> None:
        super().__init__(identitynet, load_device=patcher.load_device)
        self.control_model_wrapped = patcher  # one per model, so Forge sees the same model loaded, not a new one
        self.injection = injection

    def get_control(self, x_noisy, t, cond, batched_number, *more):
        previous = None
        if self.previous_controlnet is not None:
            previous = self.previous_controlnet.get_control(x_noisy, t, dict(cond), batched_number, *more)
        state = self.injection.state(self.transformer_options, x_noisy.shape)
        if not state.identitynet_acts:
            return previous
        sampling = self.model_sampling_current
        x = sampling.calculate_input(t, x_noisy)
        down, mid = self.injection.session.identitynet_residuals(
            x, sampling.timestep(t).float(), state.rows, cond.get("y"), state.identitynet_identities)
        self.strength = state.identitynet_weight
        return self.control_merge(None, [*down, mid], previous, x_noisy.dtype)

    def copy(self):
        raise RuntimeError("InstantID's IdentityNet is added by InstantID itself, not as a ControlNet unit.")


_PATCHERS: "weakref.WeakKeyDictionary[IdentityNet, ModelPatcher]" = weakref.WeakKeyDictionary()


def identitynet_patcher(identitynet: IdentityNet) -> ModelPatcher:
    """The model patcher Forge's memory manager moves the IdentityNet with: one per loaded model."""
    patcher = _PATCHERS.get(identitynet)
    if patcher is None:
        patcher = _PATCHERS[identitynet] = ModelPatcher(
            identitynet, load_device=memory_management.get_torch_device(),
            offload_device=memory_management.unet_offload_device())
    return patcher


def patched(unet_patcher, injection: Injection, identitynet: IdentityNet | None):
    """A clone of Forge's UNet patcher with InstantID added."""
    unet = unet_patcher.clone()
    replace = unet.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    keys = attn2_keys(unet.model.diffusion_model)
    for index, (block, number, transformer) in enumerate(keys[:injection.session.face_layers]):
        previous = replace.get((block, number, transformer)) or replace.get((block, number))
        unet.set_model_attn2_replace(FaceAttentionPatch(injection, index, previous), block, number, transformer)
    if identitynet is not None:
        unet.add_patched_controlnet(IdentityNetControl(injection, identitynet, identitynet_patcher(identitynet)))
    return unet


# --- one job -----------------------------------------------------------------------------------------------------

def start_job(p, script_args: tuple) -> None:
    """The script's `process` hook, for every processing of `p`. Nothing at all unless InstantID is turned on."""
    if not InstantIDArgs.requested(script_args):
        SampleScope.set_run(p, None)
        CONDITIONING.clear()
        return
    run = ForgeRun(p)
    SampleScope.set_run(p, run)  # before preparing: no failure below lets the job run without us
    run.prepare(script_args)


def before_every_sampling(p, script_args: tuple) -> None:
    """The script's `process_before_every_sampling` hook: InstantID added to this pass's fresh UNet patcher."""
    scope = SampleScope.of(p)
    if scope is not None and scope.run is not None:
        scope.run.patch()


class ForgeRun:
    """One processing of `p` with InstantID on: prepared at `process`, patched into each sampling pass's UNet.
    Errors are kept and raised from `p.sample` (Forge only logs a script hook's exception and generates anyway).
    A pass on another UNet (a hires checkpoint) gets InstantID too when models fit it, else runs plain and the
    infotext says so."""

    def __init__(self, p) -> None:
        self.p = p
        self.error: BaseException | None = None
        # per UNet model of this processing (kept with it, so its id stays its own): its job and injection
        self.parts: dict[int, tuple[torch.nn.Module, Job | None, Injection | None]] = {}

    def prepare(self, script_args: tuple) -> None:
        try:
            self.settings = Settings(self.p, script_args)
            self.rows = RowSource(self.settings.served, self.settings.per_image)
            model = self._unet_patcher().model
            self.parts[id(model)] = (model, self._job_for(model), None)
            self._write_infotext()
        except Exception as e:  # kept, not swallowed: raised when sampling starts
            self.error = e

    def _unet_patcher(self):
        return self.p.sd_model.forge_objects.unet

    def _job_for(self, model) -> Job:
        s = self.settings
        return prepare_job(s.args, s.people, s.models, model.diffusion_model, memory_management.get_torch_device(),
                           model.computation_dtype, identitynet_device=None)

    def _write_infotext(self) -> None:
        job = next(job for _, job, _ in self.parts.values() if job is not None)
        self.p.extra_generation_params[INFOTEXT_KEY] = job.infotext(self.settings.notes)

    def sample(self, original, args: tuple, kwargs: dict):
        if self.error is not None:
            raise self._told(self.error)
        with ACTIVE.running(self):
            try:
                result = original(*args, **kwargs)
            except InstantIDError as e:
                raise for_host(self.p, e) from e
        if self.error is not None:  # a pass could not be patched: it ran without InstantID, so the job fails
            raise self._told(self.error)
        return result

    def on_denoiser(self, params) -> None:
        self.rows.on_cfg_denoiser(params)

    def _told(self, error: BaseException) -> BaseException:
        return for_host(self.p, error) if isinstance(error, InstantIDError) else error

    def patch(self) -> None:
        """InstantID into this pass's UNet patcher. Runs inside Forge's hook, which would swallow an exception."""
        if self.error is not None or not any(self.settings.served):
            return
        try:
            unet_patcher = self._unet_patcher()
            injection, identitynet = self._injection(unet_patcher.model)
            if injection is not None:
                self.p.sd_model.forge_objects.unet = patched(unet_patcher, injection, identitynet)
        except Exception as e:
            self.error = e

    def _injection(self, model) -> tuple[Injection | None, torch.nn.Module | None]:
        """This model's injection, made at its first pass; None for a hires checkpoint no models fit."""
        _, job, injection = self.parts.get(id(model)) or (model, self._other_job(model), None)
        if job is not None and injection is None:
            session = job.session(model.diffusion_model)
            injection = Injection(session, self.rows)
        self.parts[id(model)] = (model, job, injection)
        return injection, None if job is None else job.identitynet

    def _other_job(self, model) -> Job | None:
        part = "Hires checkpoint"
        try:
            job = self._job_for(model)
        except InstantIDError as e:
            self.settings.notes[part] = "without InstantID (no fitting models)"
            log.warning("InstantID: the hires checkpoint runs without InstantID: %s", e)
            job = None
        self._write_infotext()
        return job


# --- memory ------------------------------------------------------------------------------------------------------

def release_models() -> None:
    """Models, tokens and K/V go; an IdentityNet Forge still holds on the GPU is unloaded there."""
    patchers = list(_PATCHERS.values())
    for loaded in list(memory_management.current_loaded_models):
        if any(loaded.model is patcher for patcher in patchers):
            memory_management.current_loaded_models.remove(loaded)
            loaded.model_unload()
    _PATCHERS.clear()
    MODEL_CACHE.clear()
    CONDITIONING.clear()
    memory_management.soft_empty_cache()


ACTIVE = ActiveRun(release_models)
on_cfg_denoiser, on_model_loaded = ACTIVE.on_cfg_denoiser, ACTIVE.on_model_loaded  # the script registers these
