"""modules/sd_samplers_cfg_denoiser.py stand-in: Forge's CFGDenoiser.forward (modules/sd_samplers_cfg_denoiser.py:166-236):
interrupt check; cond/uncond reconstructed at self.step; inpainting: x re-noised outside the mask from init_latent before the
step; `cfg_denoiser_callback(CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond,
self))`; in the hires pass cond_scale = p.hr_cfg; skip-early-CFG (opts.skip_early_cond: step/total_steps <= value) and NGMS
(s_min_uncond on odd steps or all) set cond_scale = 1 and record their infotext entries; then backend
sampling_function(self, denoiser_params, cond_scale, cond_composition); masked blend + on_mask_blend; cfg_after_cfg callback;
step += 1. Not modelled: edit (instruct-pix2pix) models, classic DDIM eps estimation, refiner switching, padding conds."""
import torch

from backend.sampling.sampling_function import sampling_function
from modules import prompt_parser, sd_samplers_common
from modules import shared
from modules.script_callbacks import AfterCFGCallbackParams, CFGDenoiserParams, cfg_after_cfg_callback, cfg_denoiser_callback
from modules.shared import state


class CFGDenoiser(torch.nn.Module):
    def __init__(self, sampler):
        super().__init__()
        self.model_wrap = None
        self.mask = self.nmask = self.init_latent = None
        self.steps = self.total_steps = None
        self.step = 0
        self.image_cfg_scale = None
        self.padded_cond_uncond = False
        self.sampler = sampler
        self.p = None
        self.need_last_noise_uncond = False
        self.last_noise_uncond = None

    @property
    def inner_model(self):
        raise NotImplementedError()

    def forward(self, x, sigma, uncond, cond, cond_scale, s_min_uncond, image_cond):
        if state.interrupted or state.skipped:
            raise sd_samplers_common.InterruptedException
        original_x_device, original_x_dtype = x.device, x.dtype
        cond_composition, cond = prompt_parser.reconstruct_multicond_batch(cond, self.step)
        uncond = prompt_parser.reconstruct_cond_batch(uncond, self.step) if uncond is not None else None
        if self.mask is not None:
            predictor = self.inner_model.inner_model.forge_objects.unet.model.predictor
            noisy = predictor.noise_scaling(sigma[:, None, None, None], torch.randn_like(self.init_latent), self.init_latent, max_denoise=False)
            x = x * self.nmask + noisy * self.mask
        denoiser_params = CFGDenoiserParams(x, image_cond, sigma, state.sampling_step, state.sampling_steps, cond, uncond, self)
        cfg_denoiser_callback(denoiser_params)
        if self.p.is_hr_pass:
            cond_scale = self.p.hr_cfg
        if shared.opts.skip_early_cond > 0 and self.step / self.total_steps <= shared.opts.skip_early_cond:
            cond_scale = 1.0
            self.p.extra_generation_params["Skip Early CFG"] = shared.opts.skip_early_cond
        elif (self.step % 2 or shared.opts.s_min_uncond_all) and s_min_uncond > 0 and sigma[0] < s_min_uncond:
            cond_scale = 1.0
            self.p.extra_generation_params["NGMS"] = s_min_uncond
            if shared.opts.s_min_uncond_all:
                self.p.extra_generation_params["NGMS all steps"] = shared.opts.s_min_uncond_all
        denoised, cond_pred, uncond_pred = sampling_function(self, denoiser_params=denoiser_params, cond_scale=cond_scale,
                                                             cond_composition=cond_composition)
        if self.need_last_noise_uncond:
            self.last_noise_uncond = (x - uncond_pred) / sigma[:, None, None, None]
        if self.mask is not None:
            blended = denoised * self.nmask + self.init_latent * self.mask
            if self.p.scripts is not None:
                from modules import scripts
                mba = scripts.MaskBlendArgs(denoised, self.nmask, self.init_latent, self.mask, blended, denoiser=self, sigma=sigma)
                self.p.scripts.on_mask_blend(self.p, mba)
                blended = mba.blended_latent
            denoised = blended
        self.sampler.last_latent = denoised
        sd_samplers_common.store_latent(denoised)
        after = AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        cfg_after_cfg_callback(after)
        denoised = after.x
        self.step += 1
        return denoised.to(device=original_x_device, dtype=original_x_dtype)
