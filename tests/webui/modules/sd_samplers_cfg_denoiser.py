"""modules/sd_samplers_cfg_denoiser.py stand-in: CFGDenoiser.forward with A1111 1.10's row layout and call split.

Per call: interrupt check -> rebuild conds for `self.step` -> x_in = [cond rows grouped per image (AND sub-prompts
consecutive), then B uncond rows] -> cfg_denoiser_callback (always sees the uncond rows) -> skip-uncond decision
(skip_early_cond, s_min_uncond) trims x_in/sigma_in but not image_cond_in -> optional padding -> UNet call(s):
one call (batch_cond_uncond), chunks of B rows (batch_cond_uncond off), or, for different token lengths, cond
chunks of B (2B with batch_cond_uncond) then one separate uncond call -> fake uncond when skipping ->
cfg_denoised_callback -> combine_denoised -> mask blend -> last_latent -> cfg_after_cfg_callback -> step += 1.
InstructPix2Pix (edit) models and unCLIP (crossattn-adm) are not modelled.
"""
from __future__ import annotations

import torch

from modules import prompt_parser, sd_samplers_common
import modules.shared as shared
from modules.shared import opts, state
from modules.script_callbacks import CFGDenoiserParams, cfg_denoiser_callback
from modules.script_callbacks import CFGDenoisedParams, cfg_denoised_callback
from modules.script_callbacks import AfterCFGCallbackParams, cfg_after_cfg_callback


def catenate_conds(conds):
    """torch.cat of the conds; dict conds (SDXL: crossattn + vector) are joined key by key."""
    first = conds[0]
    if isinstance(first, dict):
        return {key: torch.cat([cond[key] for cond in conds]) for key in first}
    return torch.cat(conds)


def subscript_cond(cond, a, b):
    if isinstance(cond, dict):
        return {key: value[a:b] for key, value in cond.items()}
    return cond[a:b]


def pad_cond(tensor, repeats, empty):
    """Appends `repeats` copies of the empty-prompt embedding on the token axis (of 'crossattn' for dict conds)."""
    if isinstance(tensor, dict):
        tensor['crossattn'] = pad_cond(tensor['crossattn'], repeats, empty)
        return tensor
    filler = empty.repeat((tensor.shape[0], repeats, 1))
    return torch.cat([tensor, filler], dim=1)


class CFGDenoiser(torch.nn.Module):
    """Classifier-free guidance wrapper around the inner (k-diffusion style) model."""

    def __init__(self, sampler):
        super().__init__()
        self.sampler = sampler
        self.model_wrap = None
        self.p = None
        # inpainting: latent masks and the init latent, blended after (or before) each call
        self.mask = self.nmask = self.init_latent = None
        self.mask_before_denoising = False
        # steps: as requested; total_steps: the denoiser calls the sampler will make; step: calls made so far
        self.steps = self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = self.padded_cond_uncond_v0 = False
        self.cond_scale_miltiplier = 1.0  # (sic: A1111's attribute name)
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def combine_denoised(self, x_out, conds_list, uncond, cond_scale):
        """uncond + the sum over each image's sub-prompts of (cond - uncond) * weight * cond_scale."""
        unconditioned = x_out[-uncond.shape[0]:]
        result = unconditioned.clone()
        for image, sub_prompts in enumerate(conds_list):
            for row, weight in sub_prompts:
                result[image] += (x_out[row] - unconditioned[image]) * (weight * cond_scale)
        return result

    def get_pred_x0(self, x_in, x_out, sigma):
        return x_out

    def update_inner_model(self):
        self.model_wrap = None
        cond, uncond = self.p.get_conds()
        self.sampler.sampler_extra_args.update(cond=cond, uncond=uncond)

    def pad_cond_uncond(self, cond, uncond):
        empty = shared.sd_model.cond_stage_model_empty_prompt
        # whole empty-prompt chunks that even out the token lengths (negative: the cond is the shorter one)
        chunks = (cond.shape[1] - uncond.shape[1]) // empty.shape[1]
        if chunks > 0:
            uncond = pad_cond(uncond, chunks, empty)
        elif chunks < 0:
            cond = pad_cond(cond, -chunks, empty)
        if chunks:
            self.padded_cond_uncond = True
        return cond, uncond

    def pad_cond_uncond_v0(self, cond, uncond):
        """Pads (with its last token) or truncates uncond's tokens to cond's length (pre-1.6 DDIM behaviour)."""
        tokens = uncond['crossattn'] if isinstance(uncond, dict) else uncond
        missing = cond.shape[1] - tokens.shape[1]
        if missing > 0:
            tokens = torch.cat([tokens, tokens[:, -1:].repeat([1, missing, 1])], dim=1)
        elif missing < 0:
            tokens = tokens[:, :cond.shape[1]]
        if missing:
            self.padded_cond_uncond_v0 = True
        if isinstance(uncond, dict):
            uncond['crossattn'] = tokens
            return cond, uncond
        return cond, tokens

    # --- forward, split into the stages A1111 runs in this order -------------------------------------------

    def _blend(self, latent, sigma):
        """Inpainting blend with the init latent, offered to scripts' on_mask_blend."""
        blended = latent * self.nmask + self.init_latent * self.mask
        if self.p.scripts is not None:
            from modules import scripts
            args = scripts.MaskBlendArgs(latent, self.nmask, self.init_latent, self.mask, blended, denoiser=self, sigma=sigma)
            self.p.scripts.on_mask_blend(self.p, args)
            blended = args.blended_latent
        return blended

    @staticmethod
    def _expand_rows(values, repeats, tail):
        """Each image's row repeated once per AND sub-prompt, then the `tail` rows (the uncond half)."""
        grouped = [values[i].unsqueeze(0).expand(n, *values.shape[1:]) for i, n in enumerate(repeats)]
        return torch.cat(grouped + [tail])

    def _decide_skip_uncond(self, sigma, s_min_uncond):
        extra = self.p.extra_generation_params
        if opts.skip_early_cond != 0. and self.step / self.total_steps <= opts.skip_early_cond:
            extra["Skip Early CFG"] = opts.skip_early_cond
            return True
        odd_step_or_all = self.step % 2 or opts.s_min_uncond_all
        if odd_step_or_all and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            extra["NGMS"] = s_min_uncond
            if opts.s_min_uncond_all:
                extra["NGMS all steps"] = opts.s_min_uncond_all
            return True
        return False

    def _run_inner(self, x_in, sigma_in, image_cond_in, text_cond, text_uncond, n_images, skip_uncond, make_cond):
        """Calls the inner model once or several times and returns the denoised rows in x_in's order."""
        same_length = text_cond.shape[1] == text_uncond.shape[1]
        if same_length or skip_uncond:
            context = text_cond if skip_uncond else catenate_conds([text_cond, text_uncond])
            if opts.batch_cond_uncond:
                return self.inner_model(x_in, sigma_in, cond=make_cond(context, image_cond_in))
            out = torch.zeros_like(x_in)
            for a in range(0, out.shape[0], n_images):
                rows = slice(a, a + n_images)
                out[rows] = self.inner_model(x_in[rows], sigma_in[rows], cond=make_cond(subscript_cond(context, a, a + n_images), image_cond_in[rows]))
            return out

        # Different token lengths: cond rows in chunks, then the uncond rows in one call of their own.
        out = torch.zeros_like(x_in)
        chunk = n_images * 2 if opts.batch_cond_uncond else n_images
        n_cond = text_cond.shape[0]
        for a in range(0, n_cond, chunk):
            b = min(a + chunk, n_cond)
            out[a:b] = self.inner_model(x_in[a:b], sigma_in[a:b], cond=make_cond(subscript_cond(text_cond, a, b), image_cond_in[a:b]))
        if not skip_uncond:
            n_uncond = text_uncond.shape[0]
            out[-n_uncond:] = self.inner_model(x_in[-n_uncond:], sigma_in[-n_uncond:], cond=make_cond(text_uncond, image_cond_in[-n_uncond:]))
        return out

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.skipped or state.interrupted:  # ends sampling; the sampler then returns its last latent
            raise sd_samplers_common.InterruptedException

        if sd_samplers_common.apply_refiner(self, sigma):  # the model was swapped: use the conds made for it
            extra = self.sampler.sampler_extra_args
            cond, uncond = extra['cond'], extra['uncond']

        conds_list, text_cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        text_uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step)

        if self.mask_before_denoising and self.mask is not None:
            x = self._blend(x, sigma)

        n_images = len(conds_list)
        repeats = [len(sub_prompts) for sub_prompts in conds_list]

        if isinstance(text_uncond, dict):
            def make_cond(context, concat):
                return {**context, "c_concat": [concat]}
        else:
            def make_cond(context, concat):
                return {"c_crossattn": [context], "c_concat": [concat]}

        x_in = self._expand_rows(x, repeats, x)
        sigma_in = self._expand_rows(sigma, repeats, sigma)
        image_cond_in = self._expand_rows(image_cond, repeats, image_cond)

        params = CFGDenoiserParams(x_in, image_cond_in, sigma_in, state.sampling_step, state.sampling_steps, text_cond, text_uncond, self)
        cfg_denoiser_callback(params)
        x_in, image_cond_in, sigma_in = params.x, params.image_cond, params.sigma
        text_cond, text_uncond = params.text_cond, params.text_uncond

        skip_uncond = self._decide_skip_uncond(sigma, s_min_uncond)
        if skip_uncond:  # image_cond_in keeps its uncond rows, as in A1111
            x_in = x_in[:-n_images]
            sigma_in = sigma_in[:-n_images]

        self.padded_cond_uncond = False
        self.padded_cond_uncond_v0 = False
        if text_cond.shape[1] != text_uncond.shape[1]:
            if opts.pad_cond_uncond_v0:
                text_cond, text_uncond = self.pad_cond_uncond_v0(text_cond, text_uncond)
            elif opts.pad_cond_uncond:
                text_cond, text_uncond = self.pad_cond_uncond(text_cond, text_uncond)

        x_out = self._run_inner(x_in, sigma_in, image_cond_in, text_cond, text_uncond, n_images, skip_uncond, make_cond)

        first_rows = [sub_prompts[0][0] for sub_prompts in conds_list]
        if skip_uncond:  # each image's first cond output stands in for its uncond output
            x_out = torch.cat([x_out, x_out[first_rows]])

        cfg_denoised_callback(CFGDenoisedParams(x_out, state.sampling_step, state.sampling_steps, self.inner_model))

        if self.need_last_noise_uncond:
            self.last_noise_uncond = torch.clone(x_out[-text_uncond.shape[0]:])

        scale = 1.0 if skip_uncond else cond_scale * self.cond_scale_miltiplier
        denoised = self.combine_denoised(x_out, conds_list, text_uncond, scale)

        if not self.mask_before_denoising and self.mask is not None:
            denoised = self._blend(denoised, sigma)

        self.sampler.last_latent = self.get_pred_x0(x_in[first_rows], x_out[first_rows], sigma)
        if opts.live_preview_content == "Negative prompt":
            preview = self.get_pred_x0(x_in[-text_uncond.shape[0]:], x_out[-text_uncond.shape[0]:], sigma)
        elif opts.live_preview_content == "Prompt":
            preview = self.sampler.last_latent
        else:
            preview = self.get_pred_x0(x_in[first_rows], denoised[first_rows], sigma)
        sd_samplers_common.store_latent(preview)

        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)

        self.step += 1
        return after.x
