"""modules/sd_samplers_lcm.py stand-in: the "LCM" sampler (latent consistency models).

Its denoiser sees only the 50 "original" LCM timesteps 19, 39, ..., 999 (every 20th of the 1000 DDPM steps):
sigmas come from those 50 alphas_cumprod values, a sigma maps to the nearest of them (an integer timestep, passed
to apply_model), and the output is the consistency-model mix c_out * denoised + c_skip * x with the timestep
scaled by 10 and sigma_data 0.5. sample_lcm makes one call per step (N calls), jumping to the denoised estimate
and renoising to the next sigma. Because the inner model's `sigmas` has 50 entries, apply_refiner's timestep
index is 0..49, so its completed ratio (999 - index) / 1000 is always >= 0.95 (a refiner with switch_at <= 0.95
swaps at the first call) -- as in A1111.
"""
from __future__ import annotations

import torch

from modules import sd_samplers_cfg_denoiser, sd_samplers_common, sd_samplers_kdiffusion
import modules.shared as shared

TIMESTEPS = 1000
ORIGINAL_TIMESTEPS = 50


class LCMCompVisDenoiser(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.inner_model = model
        self.skip_steps = TIMESTEPS // ORIGINAL_TIMESTEPS
        picked = [TIMESTEPS - 1 - n * self.skip_steps for n in range(ORIGINAL_TIMESTEPS)][::-1]  # 19, 39, ..., 999
        alphas = model.alphas_cumprod.float()[picked]
        self.register_buffer("sigmas", ((1 - alphas) / alphas).sqrt())
        self.register_buffer("log_sigmas", self.sigmas.log())
        self.sigma_data = 1.0

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def sigma_to_t(self, sigma, quantize=None):
        nearest = (sigma.log() - self.log_sigmas[:, None]).abs().argmin(dim=0).view(sigma.shape)
        return nearest * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, timestep):
        position = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=len(self.sigmas) - 1)
        low, high = position.floor().long(), position.ceil().long()
        weight = position - low
        return ((1 - weight) * self.log_sigmas[low] + weight * self.log_sigmas[high]).exp()

    def get_sigmas(self, n=None):
        if n is None:
            return sd_samplers_kdiffusion.append_zero(self.sigmas.flip(0))
        start, end = self.sigma_to_t(self.sigma_max), self.sigma_to_t(self.sigma_min)
        return sd_samplers_kdiffusion.append_zero(self.t_to_sigma(torch.linspace(float(start), float(end), n)))

    def forward(self, input, sigma, **kwargs):
        rows = sd_samplers_kdiffusion._per_row
        c_in = 1 / (sigma ** 2 + self.sigma_data ** 2) ** 0.5
        timestep = self.sigma_to_t(sigma)
        eps = self.inner_model.apply_model(input * rows(c_in, input), timestep, **kwargs)
        denoised = input - rows(sigma, input) * eps
        scaled = rows(timestep.float(), input) * 10.0
        sigma_data = 0.5
        c_skip = sigma_data ** 2 / (scaled ** 2 + sigma_data ** 2)
        c_out = scaled / (scaled ** 2 + sigma_data ** 2) ** 0.5
        return c_out * denoised + c_skip * input


@torch.no_grad()
def sample_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None, noise_sampler=None):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or sd_samplers_kdiffusion.default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = sd_samplers_kdiffusion._call(model, x, sigmas[i], extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise_sampler(sigmas[i], sigmas[i + 1])
    return x


class CFGDenoiserLCM(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = LCMCompVisDenoiser(shared.sd_model)
        return self.model_wrap


class LCMSampler(sd_samplers_kdiffusion.KDiffusionSampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname, sd_model, options)
        self.model_wrap_cfg = CFGDenoiserLCM(self)
        self.model_wrap = self.model_wrap_cfg.inner_model


samplers_lcm = [('LCM', sample_lcm, ['k_lcm'], {})]
samplers_data_lcm = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: LCMSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_lcm
]
