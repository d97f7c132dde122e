"""modules/sd_samplers_timesteps.py stand-in (with the sampling loops of sd_samplers_timesteps_impl.py and a small
UniPC): "DDIM", "DDIM CFG++", "PLMS" and "UniPC".

These samplers work on DDPM timesteps, not sigmas: the schedule is timesteps = clip(range(0, 1000, 1000 // steps)
+ 1, 0, 999), whose length L = len(range(0, 1000, 1000 // steps)) can exceed `steps` (30 -> 31, 60 -> 63). The
CFG denoiser (CFGDenoiserTimesteps) receives the timestep itself in the `sigma` argument (a float tensor per row),
its inner model returns eps (apply_model as is, no input scaling), get_pred_x0 turns eps into x0 through
alphas_cumprod[int(t)], and the inpainting blend happens BEFORE denoising (mask_before_denoising). Calls:
  * DDIM / DDIM CFG++: one per timestep but the first -> L - 1 calls (img2img: len(timesteps[:t_enc]) - 1);
    DDIM CFG++ sets denoiser.cond_scale_miltiplier = 1 / 12.5 and need_last_noise_uncond = True and steps along
    the uncond noise;
  * PLMS: its first step makes two calls (a pseudo improved Euler start) -> L calls;
  * UniPC: one initial call plus one corrector call per step but the last -> L calls, at continuous timesteps
    (t - 1/1000) * 1000; it asserts L >= opts.uni_pc_order ("UniPC order must be < sampling steps").
The step callback of DDIM/PLMS runs at the end of each iteration, UniPC's after each update (a lag of 2 calls).
total_steps is `steps` (no second order); DDIM's eta comes from p.eta or opts.eta_ddim (its noise is drawn from
p.rng on every step, as A1111 does). Not modelled: v-prediction models. UniPC's variants (bh1/bh2/vary_coeff),
order and lower_order_final change numbers, not calls, so UniPC here is a first-order predictor with a
trapezoidal corrector (uni_pc_order is only checked; uni_pc_skip_type picks the time grid).
"""
from __future__ import annotations

import inspect
import sys

import torch

from modules import devices, sd_samplers_common
from modules.options import OptionInfo
from modules.sd_samplers_cfg_denoiser import CFGDenoiser
import modules.shared as shared
from modules.shared import opts

for _key, _default, _label in (
    ('uni_pc_variant', "bh1", "UniPC variant"),
    ('uni_pc_skip_type', "time_uniform", "UniPC skip type"),
    ('uni_pc_order', 3, "UniPC order"),
    ('uni_pc_lower_order_final', True, "UniPC lower order final"),
):
    if _key not in opts.data_labels:
        opts.add_option(_key, OptionInfo(_default, _label))


def _noise_like(x):
    from modules import sd_samplers_kdiffusion
    return sd_samplers_kdiffusion.ktorch.randn_like(x)


def _ddim_tables(model, timesteps, x, eta):
    alphas_cumprod = model.inner_model.inner_model.alphas_cumprod
    alphas = alphas_cumprod[timesteps]
    previous = torch.cat([timesteps.new_zeros(1), timesteps[:-1]])  # the timestep each step lands on (0 first)
    alphas_prev = alphas_cumprod[previous].double()
    sigmas = eta * ((1 - alphas_prev) / (1 - alphas) * (1 - alphas / alphas_prev)).sqrt()
    return alphas, alphas_prev, (1 - alphas).sqrt(), sigmas


def _ddim_loop(model, x, timesteps, extra_args, callback, eta, along_uncond):
    alphas, alphas_prev, sqrt_one_minus_alphas, sigmas = _ddim_tables(model, timesteps, x, eta)
    extra_args = extra_args or {}
    rows = x.new_ones((x.shape[0],))
    like = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * rows, **extra_args)
        direction = model.last_noise_uncond if along_uncond else e_t
        a_t, a_prev = alphas[index].item() * like, alphas_prev[index].item() * like
        sigma_t = sigmas[index].item() * like
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * like * e_t) / a_t.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1. - a_prev - sigma_t ** 2).sqrt() * direction + sigma_t * _noise_like(x)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': 0, 'sigma_hat': 0, 'denoised': pred_x0})
    return x


@torch.no_grad()
def ddim(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    return _ddim_loop(model, x, timesteps, extra_args, callback, eta, along_uncond=False)


@torch.no_grad()
def ddim_cfgpp(model, x, timesteps, extra_args=None, callback=None, disable=None, eta=0.0):
    """CFG++ (Chung et al. 2024): the guidance scale mapped from [0, 12.5] to [0, 1], and the step direction taken
    from the unconditional noise prediction."""
    model.cond_scale_miltiplier = 1 / 12.5
    model.need_last_noise_uncond = True
    return _ddim_loop(model, x, timesteps, extra_args, callback, eta, along_uncond=True)


@torch.no_grad()
def plms(model, x, timesteps, extra_args=None, callback=None, disable=None):
    alphas, alphas_prev, sqrt_one_minus_alphas, _ = _ddim_tables(model, timesteps, x, 0.0)
    extra_args = extra_args or {}
    rows = x.new_ones([x.shape[0]])
    like = x.new_ones((x.shape[0], 1, 1, 1))
    old_eps = []

    def step(x, e_t, index):
        a_t, a_prev = alphas[index].item() * like, alphas_prev[index].item() * like
        pred_x0 = (x - sqrt_one_minus_alphas[index].item() * like * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1. - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = model(x, timesteps[index].item() * rows, **extra_args)
        if not old_eps:  # start: a pseudo improved Euler step (a second call at the next timestep)
            x_next, _ = step(x, e_t, index)
            e_t_next = model(x_next, timesteps[max(index - 1, 0)].item() * rows, **extra_args)
            e_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:  # then Adams-Bashforth of growing order
            e_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x, pred_x0 = step(x, e_prime, index)
        old_eps = (old_eps + [e_t])[-3:]
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': 0, 'sigma_hat': 0, 'denoised': pred_x0})
    return x


class _NoiseScheduleVP:
    """The discrete VP schedule in continuous time t in (0, 1]: log alpha_t interpolated from alphas_cumprod."""

    def __init__(self, alphas_cumprod):
        self.total_N = len(alphas_cumprod)
        self.T = 1.
        self.t_array = torch.linspace(0., 1., self.total_N + 1)[1:].reshape((1, -1)).double()
        self.log_alpha_array = (0.5 * torch.log(alphas_cumprod.double())).reshape((1, -1))

    def log_alpha(self, t):
        from modules.sd_samplers_kdiffusion import _interpolate
        t = torch.as_tensor(t, dtype=torch.float64)
        return _interpolate(t.reshape(-1), self.t_array[0], self.log_alpha_array[0]).reshape(t.shape)

    def alpha(self, t):
        return self.log_alpha(t).exp()

    def sigma(self, t):
        return (1. - (2. * self.log_alpha(t)).exp()).sqrt()

    def lambda_(self, t):
        return self.log_alpha(t) - self.sigma(t).log()


def _unipc_times(schedule, skip_type, t_T, t_0, n):
    if skip_type == 'logSNR':
        lambdas = torch.linspace(float(schedule.lambda_(t_T)), float(schedule.lambda_(t_0)), n + 1)
        grid = torch.linspace(0., 1., 100001)[1:].double()  # invert lambda(t) numerically (it decreases in t)
        values = schedule.lambda_(grid)
        return grid[torch.searchsorted(-values, -lambdas.double()).clamp(max=len(grid) - 1)]
    if skip_type == 'time_quadratic':
        return torch.linspace(t_T ** 0.5, t_0 ** 0.5, n + 1).double() ** 2
    return torch.linspace(t_T, t_0, n + 1).double()


@torch.no_grad()
def unipc(model, x, timesteps, extra_args=None, callback=None, disable=None, is_img2img=False):
    extra_args = extra_args or {}
    schedule = _NoiseScheduleVP(model.inner_model.inner_model.alphas_cumprod)
    steps, order = len(timesteps), shared.opts.uni_pc_order
    assert steps >= order, "UniPC order must be < sampling steps"
    t_0 = 1. / schedule.total_N
    t_T = float(timesteps[-1] / 1000 + 1 / 1000) if is_img2img else schedule.T
    times = _unipc_times(schedule, shared.opts.uni_pc_skip_type, t_T, t_0, steps)
    rows = x.shape[0]
    index = 0

    def data_prediction(x, t):
        t_input = (t - 1. / schedule.total_N) * 1000.  # the model's (continuous) timestep
        eps = model(x, x.new_full([rows], float(t_input)), **extra_args)
        return (x - float(schedule.sigma(t)) * eps) / float(schedule.alpha(t))

    def after_update(x, model_x):
        nonlocal index
        if callback is not None:
            callback({'x': x, 'i': index, 'sigma': 0, 'sigma_hat': 0, 'denoised': model_x})
        index += 1

    previous = data_prediction(x, times[0])
    for k in range(1, steps + 1):
        s, t = times[k - 1], times[k]
        h = float(schedule.lambda_(t) - schedule.lambda_(s))
        ratio = float(schedule.sigma(t) / schedule.sigma(s))
        weight = float(schedule.alpha(t)) * -torch.expm1(torch.tensor(-h)).item()
        predicted = ratio * x + weight * previous  # first-order data-prediction step (DPM-Solver++ 1)
        if k < steps:  # the corrector: evaluate at the new point, redo the step with the averaged estimate
            current = data_prediction(predicted, t)
            x = ratio * x + weight * (previous + current) / 2
            previous = current
        else:
            x = predicted
        after_update(x, previous)
    return x


samplers_timesteps = [
    ('DDIM', ddim, ['ddim'], {}),
    ('DDIM CFG++', ddim_cfgpp, ['ddim_cfgpp'], {}),
    ('PLMS', plms, ['plms'], {}),
    ('UniPC', unipc, ['unipc'], {}),
]

samplers_data_timesteps = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname: CompVisSampler(funcname, model), aliases, options)
    for label, funcname, aliases, options in samplers_timesteps
]


class CompVisTimestepsDenoiser(torch.nn.Module):
    """eps = apply_model(x, t): no input scaling, the timestep as given."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.inner_model = model

    def forward(self, input, timesteps, **kwargs):
        return self.inner_model.apply_model(input, timesteps, **kwargs)


class CFGDenoiserTimesteps(CFGDenoiser):
    def __init__(self, sampler):
        super().__init__(sampler)
        self.alphas = shared.sd_model.alphas_cumprod
        self.mask_before_denoising = True

    def get_pred_x0(self, x_in, x_out, sigma):
        ts = sigma.to(dtype=int)
        a_t = self.alphas[ts][:, None, None, None]
        return (x_in - (1 - a_t).sqrt() * x_out) / a_t.sqrt()

    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = CompVisTimestepsDenoiser(shared.sd_model)
        return self.model_wrap


class CompVisSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model):
        super().__init__(funcname)
        self.funcname = funcname.__name__
        self.eta_option_field = 'eta_ddim'
        self.eta_infotext_field = 'Eta DDIM'
        self.eta_default = 0.0
        self.model_wrap_cfg = CFGDenoiserTimesteps(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_timesteps(self, p, steps):
        discard = self.config is not None and self.config.options.get('discard_next_to_last_sigma', False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0
        return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps)), device=devices.device) + 1, 0, 999)

    def _extra_args(self, p, conditioning, unconditional_conditioning, image_conditioning):
        return {'cond': conditioning, 'image_cond': image_conditioning, 'uncond': unconditional_conditioning,
                'cond_scale': p.cfg_scale, 's_min_uncond': self.s_min_uncond}

    def _launch(self, steps, x, kwargs):
        return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args, disable=False, callback=self.callback_state, **kwargs))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        timesteps = self.get_timesteps(p, steps)
        schedule = timesteps[:t_enc]

        alphas_cumprod = shared.sd_model.alphas_cumprod
        a = alphas_cumprod[timesteps[t_enc]]
        start = x * a.sqrt() + noise * (1 - a).sqrt()
        if opts.img2img_extra_noise > 0:
            from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, start)
            extra_noise_callback(params)
            start = start + params.noise * opts.img2img_extra_noise * a.sqrt()

        kwargs = self.initialize(p)
        accepted = inspect.signature(self.func).parameters
        if 'timesteps' in accepted:
            kwargs['timesteps'] = schedule
        if 'is_img2img' in accepted:
            kwargs['is_img2img'] = True

        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self._launch(t_enc + 1, start, kwargs)
        self.add_infotext(p)
        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps = steps or p.steps
        timesteps = self.get_timesteps(p, steps)
        kwargs = self.initialize(p)
        if 'timesteps' in inspect.signature(self.func).parameters:
            kwargs['timesteps'] = timesteps

        self.last_latent = x
        self.sampler_extra_args = self._extra_args(p, conditioning, unconditional_conditioning, image_conditioning)
        samples = self._launch(steps, x, kwargs)
        self.add_infotext(p)
        return samples


sys.modules['modules.sd_samplers_compvis'] = sys.modules[__name__]
VanillaStableDiffusionSampler = CompVisSampler  # A1111's alias for older extensions
