"""An sd-webui-controlnet-style neighbour, for interference tests (behaviour from its scripts/hook.py, HEAD 56cec5b2).

What it does, like ControlNet:
  * marks conds: `process_sample` (installed as the per-instance `p.sample`, original kept in
    `p.sample_before_CN_hack`) prepends one token row of +1024 (cond) / -1024 (uncond) to every per-prompt cond
    (for SDXL dicts to cond['crossattn'] only; already-marked conds are skipped), on conditioning,
    unconditional_conditioning, p.hr_c and p.hr_uc (the last two are still None during the first pass);
  * replaces the UNet's `forward` with an instance attribute that unmarks the context (first token row), then
    re-implements the UNet loop calling input_blocks[i](h, emb, context), middle_block, output_blocks with
    torch.cat([h, skip + residual], 1) as modules, so torch hooks on blocks still fire; the ControlNet-style
    residuals (optional `control_fn`) are added to the skips and after the middle block;
  * registers an on_cfg_denoiser callback while hooked; `restore()` removes it and the forward override
    (p.sample stays replaced for the life of p).
`ControlNetLikeScript` drives it like ControlNet's script: restore at the start of process(), hook in process()
when enabled, restore in postprocess() (so after a failed job the hook survives until the next run).
"""
from __future__ import annotations

import gradio as gr
import torch

from modules import processing, scripts, script_callbacks, shared
from modules.prompt_parser import ComposableScheduledPromptConditioning, MulticondLearnedConditioning, ScheduledPromptConditioning
from modules.sd_models import sinusoidal_embedding

POSITIVE_MARK_TOKEN = 1024
NEGATIVE_MARK_TOKEN = -POSITIVE_MARK_TOKEN
MARK_EPS = 1e-3


def prompt_context_is_marked(x):
    first_row = x[..., 0, :]
    return float(torch.mean(torch.abs(torch.abs(first_row) - POSITIVE_MARK_TOKEN))) < MARK_EPS


def _marked(cond, positive):
    mark = POSITIVE_MARK_TOKEN if positive else NEGATIVE_MARK_TOKEN
    return torch.cat([torch.zeros_like(cond)[:1] + mark, cond], dim=0)


def _mark_scheduled(entry, positive):
    """A ScheduledPromptConditioning with the mark row in front of its tokens (unchanged if already marked)."""
    cond = entry.cond
    tokens = cond['crossattn'] if isinstance(cond, dict) else cond  # SDXL: only the cross-attention tokens
    if prompt_context_is_marked(tokens):
        return entry
    tokens = _marked(tokens, positive)
    new_cond = dict(crossattn=tokens, vector=cond['vector']) if isinstance(cond, dict) else tokens
    return ScheduledPromptConditioning(end_at_step=entry.end_at_step, cond=new_cond)


def mark_prompt_context(x, positive):
    """Recursively marks lists, MulticondLearnedConditioning.batch, ComposableScheduledPromptConditioning.schedules
    and ScheduledPromptConditioning conds in place (returns x)."""
    if isinstance(x, ScheduledPromptConditioning):  # an immutable leaf: replaced, not modified
        return _mark_scheduled(x, positive)
    if isinstance(x, list):
        x[:] = [mark_prompt_context(item, positive) for item in x]
    elif isinstance(x, MulticondLearnedConditioning):
        x.batch = mark_prompt_context(x.batch, positive)
    elif isinstance(x, ComposableScheduledPromptConditioning):
        x.schedules = mark_prompt_context(x.schedules, positive)
    return x


def unmark_prompt_context(x):
    """-> (cond_mark [B,1,1,1] with 1 for cond rows, uc_indices, c_indices, context without the mark row).
    An unmarked context passes through with cond_mark all ones. Resets the processing cond caches."""
    if not prompt_context_is_marked(x):
        return torch.ones(size=(x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device), [], [], x
    mark = x[:, 0, :]
    context = x[:, 1:, :]
    is_cond = (torch.mean(torch.abs(mark - NEGATIVE_MARK_TOKEN), dim=1) > MARK_EPS).float()
    flags = is_cond.tolist()
    uc_indices = [i for i, flag in enumerate(flags) if flag < 0.5]
    c_indices = [i for i, flag in enumerate(flags) if not flag < 0.5]
    processing.StableDiffusionProcessing.cached_c = [None, None]
    processing.StableDiffusionProcessing.cached_uc = [None, None]
    return is_cond[:, None, None, None].to(x.dtype), uc_indices, c_indices, context


class ControlNetLikeHook:
    def __init__(self, control_fn=None):
        """control_fn(key, tensor) -> residual added to a skip (key = input block index) or after the middle
        block (key = "mid"); None adds nothing (the forward then matches the original one exactly)."""
        self.control_fn = control_fn
        self.model = None
        self.calls = []  # (rows, uc_indices, c_indices) per UNet call
        self.denoiser_steps = []

    def guidance_schedule_handler(self, params):
        self.denoiser_steps.append(params.denoiser.step)

    def hook(self, model, sd_ldm, p):
        self.model = model
        outer = self
        model_is_sdxl = getattr(sd_ldm, 'is_sdxl', False)

        def process_sample(*args, **kwargs):
            mark_prompt_context(kwargs.get('conditioning', []), positive=True)
            mark_prompt_context(kwargs.get('unconditional_conditioning', []), positive=False)
            mark_prompt_context(getattr(p, 'hr_c', []), positive=True)
            mark_prompt_context(getattr(p, 'hr_uc', []), positive=False)
            return p.sample_before_CN_hack(*args, **kwargs)

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            cond_mark, uc_indices, c_indices, context = unmark_prompt_context(context)
            outer.cond_mark = cond_mark
            outer.calls.append((int(x.shape[0]), uc_indices, c_indices))

            t_emb = sinusoidal_embedding(timesteps, self.model_channels).to(x.dtype)
            emb = self.time_embed(t_emb)
            if model_is_sdxl and y is not None:
                emb = emb + self.label_emb(y)

            hs = []
            h = x
            for module in self.input_blocks:
                h = module(h, emb, context)
                hs.append(h)
            h = self.middle_block(h, emb, context)
            h = h + outer._residual("mid", h)
            for module in self.output_blocks:
                skip = hs.pop()
                h = torch.cat([h, skip + outer._residual(len(hs), skip)], dim=1)
                h = module(h, emb, context)
            return self.out(h.type(x.dtype))

        if getattr(p, 'sample_before_CN_hack', None) is None:
            p.sample_before_CN_hack = p.sample
        p.sample = process_sample

        model._original_forward = model.forward
        model.forward = forward.__get__(model, type(model))
        script_callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

    def _residual(self, key, tensor):
        if self.control_fn is None:
            return 0.0
        return self.control_fn(key, tensor)

    def restore(self):
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward


def constant_control(scale=0.05):
    """A simple control_fn: a constant residual growing with the block index."""
    def control_fn(key, tensor):
        position = 13 if key == "mid" else key + 1
        return torch.full_like(tensor, scale * position)
    return control_fn


class ControlNetLikeScript(scripts.Script):
    """AlwaysVisible script that hooks like ControlNet (restore, then hook in process(); restore in postprocess())."""

    hook_instance = None  # shared by both tabs' instances, like ControlNet's global Script.latest_network
    control_fn = None

    def title(self):
        return "ControlNet-like"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        enabled = gr.Checkbox(label="Enable ControlNet-like", value=False, elem_id=self.elem_id("enabled"))
        return [enabled]

    def process(self, p, enabled=False, *args):
        if ControlNetLikeScript.hook_instance is not None:
            ControlNetLikeScript.hook_instance.restore()
            ControlNetLikeScript.hook_instance = None
        if not enabled:
            return
        hook = ControlNetLikeHook(control_fn=ControlNetLikeScript.control_fn)
        hook.hook(p.sd_model.model.diffusion_model, shared.sd_model, p)
        ControlNetLikeScript.hook_instance = hook

    def postprocess(self, p, processed, enabled=False, *args):
        if ControlNetLikeScript.hook_instance is not None:
            ControlNetLikeScript.hook_instance.restore()
            ControlNetLikeScript.hook_instance = None
