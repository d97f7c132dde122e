"""modules/sd_samplers_kdiffusion.py stand-in with a small k-diffusion of its own.

The inner model plays k-diffusion's CompVisDenoiser: DDPM sigmas from `sd_model.alphas_cumprod`, the model
called as `sd_model.apply_model(x / sqrt(sigma^2 + 1), t(sigma), cond=...)` with t by log-sigma interpolation
(opts.enable_quantization=False). Samplers: "Euler" and "Heun" (second order: two denoiser calls per step but the
last, so total_steps is doubled as in A1111), written here from the ODE, not taken from k-diffusion.
"""
from __future__ import annotations

import torch

from modules import sd_samplers_common, sd_samplers_cfg_denoiser
import modules.shared as shared
from modules.shared import opts


def _per_row(sigma, like):
    """A per-row sigma [B] shaped to broadcast over latents like `like` [B, C, H, W]."""
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def _interpolate(x, xs, ys):
    """Piecewise-linear y(x) through the increasing points (xs, ys), clamped to their range."""
    x = x.clamp(xs[0], xs[-1])
    upper = torch.searchsorted(xs, x).clamp(1, len(xs) - 1)
    lower = upper - 1
    weight = (x - xs[lower]) / (xs[upper] - xs[lower])
    return ys[lower] + weight * (ys[upper] - ys[lower])


class CompVisDenoiser(torch.nn.Module):
    """An eps-predicting DDPM seen as a function of sigma (the role k-diffusion's wrapper of that name plays in A1111).

    sigma_t = sqrt((1 - alphabar_t) / alphabar_t); a sigma maps to a fractional training step by interpolating
    log-sigma; the model sees x / sqrt(sigma^2 + 1) and its eps gives denoised = x - sigma * eps.
    """

    def __init__(self, model, quantize=False):
        super().__init__()
        self.inner_model = model
        alphabar = model.alphas_cumprod.float()
        self.register_buffer("sigmas", ((1 - alphabar) / alphabar).sqrt())
        self.quantize = quantize
        self.sigma_data = 1.0

    @property
    def sigma_min(self):
        return self.sigmas[0]

    @property
    def sigma_max(self):
        return self.sigmas[-1]

    def _steps(self):
        return torch.arange(len(self.sigmas), dtype=torch.float32, device=self.sigmas.device)

    def sigma_to_t(self, sigma, quantize=None):
        t = _interpolate(sigma.log(), self.sigmas.log(), self._steps())
        return t.round() if (self.quantize if quantize is None else quantize) else t

    def t_to_sigma(self, t):
        return _interpolate(t.float(), self._steps(), self.sigmas.log()).exp()

    def get_sigmas(self, n=None):
        steps = self._steps().flip(0) if n is None else torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.t_to_sigma(steps.to(self.sigmas.device)), self.sigmas.new_zeros(1)])

    def forward(self, input, sigma, **kwargs):
        scaled = input / _per_row((sigma ** 2 + self.sigma_data ** 2).sqrt(), input)
        eps = self.inner_model.apply_model(scaled, self.sigma_to_t(sigma), **kwargs)
        return input - _per_row(sigma, input) * eps


def _slope(model, x, sigma, extra_args):
    """dx/dsigma of the probability-flow ODE at (x, sigma), and the denoised estimate it came from."""
    sigmas = x.new_full([x.shape[0]], float(sigma))
    denoised = model(x, sigmas, **extra_args)
    return (x - denoised) / sigma, denoised


def _integrate(model, x, sigmas, extra_args, callback, corrector: bool):
    """Steps x along the schedule; Euler, or Heun when `corrector` re-evaluates the slope at each step's end."""
    extra_args = extra_args or {}
    for i, (sigma, following) in enumerate(zip(sigmas[:-1], sigmas[1:])):
        slope, denoised = _slope(model, x, sigma, extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        step = following - sigma
        predicted = x + slope * step
        if corrector and following > 0:
            slope_end, _ = _slope(model, predicted, following, extra_args)
            predicted = x + (slope + slope_end) * step / 2
        x = predicted
    return x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    return _integrate(model, x, sigmas, extra_args, callback, corrector=False)


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    return _integrate(model, x, sigmas, extra_args, callback, corrector=True)


samplers_k_diffusion = [
    ('Euler', sample_euler, ['k_euler'], {}),
    ('Heun', sample_heun, ['k_heun'], {"second_order": True}),
]

sampler_extra_params = {
    'sample_euler': ['s_churn', 's_tmin', 's_tmax', 's_noise'],
    'sample_heun': ['s_churn', 's_tmin', 's_tmax', 's_noise'],
}

def _constructor_for(sample_function):
    return lambda model: KDiffusionSampler(sample_function, model)


samplers_data_k_diffusion = [sd_samplers_common.SamplerData(label, _constructor_for(function), aliases, options)
                             for label, function, aliases, options in samplers_k_diffusion]


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisDenoiser(shared.sd_model, quantize=shared.opts.enable_quantization)
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.func = funcname  # here the sampling function itself, not its name
        self.options = dict(options or {})
        self.extra_params = sampler_extra_params.get(funcname.__name__, [])
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        return self.model_wrap.get_sigmas(steps)

    def _denoiser_kwargs(self, p, conditioning, unconditional_conditioning, image_conditioning):
        # the keyword arguments CFGDenoiser.forward receives from the sampling loop
        return dict(cond=conditioning, image_cond=image_conditioning, uncond=unconditional_conditioning,
                    cond_scale=p.cfg_scale, s_min_uncond=self.s_min_uncond)

    def _launch(self, steps, start, sigmas, sampler_kwargs):
        def run():
            return self.func(self.model_wrap_cfg, start, sigmas, extra_args=self.sampler_extra_args, disable=False,
                             callback=self.callback_state, **sampler_kwargs)
        return self.launch_sampling(steps, run)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        # only the last t_enc steps of a `steps`-long schedule run, from the init latent noised to their first sigma
        tail = self.get_sigmas(p, steps)[steps - t_enc - 1:]
        start = x + noise * tail[0]

        sampler_kwargs = self.initialize(p)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._denoiser_kwargs(p, conditioning, unconditional_conditioning, image_conditioning)
        result = self._launch(t_enc + 1, start, tail, sampler_kwargs)
        self.add_infotext(p)
        return result

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps)
        if opts.sgm_noise_multiplier:  # SDXL-style scaling of the initial noise
            p.extra_generation_params["SGM noise multiplier"] = True
            start = x * torch.sqrt(1.0 + sigmas[0] ** 2.0)
        else:
            start = x * sigmas[0]

        sampler_kwargs = self.initialize(p)
        self.last_latent = start
        self.sampler_extra_args = self._denoiser_kwargs(p, conditioning, unconditional_conditioning, image_conditioning)
        result = self._launch(steps, start, sigmas, sampler_kwargs)
        self.add_infotext(p)
        return result
