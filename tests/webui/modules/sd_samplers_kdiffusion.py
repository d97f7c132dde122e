"""modules/sd_samplers_kdiffusion.py stand-in with a small k-diffusion of its own.

The inner model plays k-diffusion's CompVisDenoiser: DDPM sigmas from `sd_model.alphas_cumprod`, the model
called as `sd_model.apply_model(x / sqrt(sigma^2 + 1), t(sigma), cond=...)` with t by log-sigma interpolation
(opts.enable_quantization=False).

The 15 k-diffusion samplers of A1111 1.10 are registered with their names, aliases and options, in A1111's order
(so "DPM++ 2M" is the first sampler and the UI's default). The sampling loops are written here from the published
algorithms (not taken from k-diffusion) and keep what an extension can observe: the number and order of denoiser
calls, the sigmas they get, and when the step callback (which sets state.sampling_step) runs:
  * one call per step: Euler, Euler a, LMS, DPM++ 2M, DPM++ 2M SDE (+ Heun), DPM++ 3M SDE -> N calls;
  * second order (a second call per step except when the step ends at sigma 0): Heun, DPM2, DPM2 a, DPM++ 2S a,
    DPM++ SDE -> 2N-1 calls, total_steps 2N; Restart (sd_samplers_extra) likewise;
  * DPM fast: N calls in steps of order 3 (the callback runs once per order-step);
  * DPM adaptive: 3 calls per attempt (accepted or not), however many attempts its error control takes; N is not
    passed to it at all.
The step callback runs after the first call of a step (callback index i), so the calls of Euler-like samplers
see state.sampling_step 0, 0, 1, ..., N-2.
The schedulers other than "Automatic" are not modelled (sd_schedulers): a sampler's default scheduler (karras,
exponential) falls back to the model's own schedule, which changes sigmas but not the call counts.
Noise: randn_like through `ktorch` (a TorchHijack drawing from p.rng once a sampler is initialized); SDE samplers
get per-seed noise from Sampler.create_noise_sampler instead of torchsde's Brownian tree.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import torch

from modules import sd_samplers_common, sd_samplers_cfg_denoiser, sd_samplers_extra, sd_schedulers
import modules.shared as shared
from modules.shared import opts

# What k-diffusion's sampling module sees as `torch`; Sampler.initialize replaces it with a TorchHijack(p).
ktorch = torch


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


def append_zero(sigmas):
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7., device='cpu'):
    """Karras et al. (2022): n sigmas evenly spaced in sigma^(1/rho), then a final 0."""
    ramp = torch.linspace(0, 1, n)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((high + ramp * (low - high)) ** rho).to(device)


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
        self.register_buffer("log_sigmas", self.sigmas.log())
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


# --- sampling loops ------------------------------------------------------------------------------------------

def to_d(x, sigma, denoised):
    """The probability-flow ODE's dx/dsigma at (x, sigma) for a scalar sigma, given the denoised estimate."""
    return (x - denoised) / sigma


def get_ancestral_step(sigma_from, sigma_to, eta=1.):
    """-> (sigma_down, sigma_up): where an ancestral step goes deterministically, and the noise it adds back."""
    if not eta:
        return sigma_to, 0.
    sigma_up = min(sigma_to, eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def default_noise_sampler(x):
    return lambda sigma, sigma_next: ktorch.randn_like(x)


def _call(model, x, sigma, extra_args):
    """One denoiser call at a scalar sigma for every row."""
    return model(x, x.new_full([x.shape[0]], float(sigma)), **extra_args)


def _report(callback, x, i, sigma, sigma_hat, denoised):
    if callback is not None:
        callback({'x': x, 'i': i, 'sigma': sigma, 'sigma_hat': sigma_hat, 'denoised': denoised})


def _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise):
    """Karras' stochastic churn: -> (x with the extra noise, the raised sigma). The noise is drawn on every step
    (as k-diffusion does), used only when gamma > 0."""
    gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.
    eps = ktorch.randn_like(x) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


def _slope(model, x, sigma, extra_args):
    """dx/dsigma of the probability-flow ODE at (x, sigma), and the denoised estimate it came from."""
    denoised = _call(model, x, sigma, extra_args)
    return (x - denoised) / sigma, denoised


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        slope, denoised = _slope(model, x, sigma_hat, extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + slope * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        slope, denoised = _slope(model, x, sigma_hat, extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        following = sigmas[i + 1]
        step = following - sigma_hat
        predicted = x + slope * step
        if following > 0:  # the corrector: the slope at the step's end, averaged (no second call towards sigma 0)
            slope_end, _ = _slope(model, predicted, following, extra_args)
            predicted = x + (slope + slope_end) * step / 2
        x = predicted
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        slope, denoised = _slope(model, x, sigmas[i], extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = x + slope * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _midpoint(sigma_from, sigma_to):
    """The geometric mean of two sigmas (DPM-Solver-2's intermediate point)."""
    return (sigma_from.log() + 0.5 * (sigma_to.log() - sigma_from.log())).exp()


@torch.no_grad()
def sample_dpm_2(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0., s_tmin=0., s_tmax=float('inf'), s_noise=1.):
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churned(x, sigmas, i, s_churn, s_tmin, s_tmax, s_noise)
        slope, denoised = _slope(model, x, sigma_hat, extra_args)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + slope * (sigmas[i + 1] - sigma_hat)
            continue
        sigma_mid = _midpoint(sigma_hat, sigmas[i + 1])
        slope_mid, _ = _slope(model, x + slope * (sigma_mid - sigma_hat), sigma_mid, extra_args)
        x = x + slope_mid * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        slope, denoised = _slope(model, x, sigmas[i], extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + slope * (sigma_down - sigmas[i])
            continue
        sigma_mid = _midpoint(sigmas[i], sigma_down)
        slope_mid, _ = _slope(model, x + slope * (sigma_mid - sigmas[i]), sigma_mid, extra_args)
        x = x + slope_mid * (sigma_down - sigmas[i])
        x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order, t, i, j):
    """The integral over [t_i, t_i+1] of the Lagrange basis polynomial of node t_(i-j) among t_i ... t_(i-order+1)."""
    basis = np.poly1d([1.0])
    for k in range(order):
        if k != j:
            basis = basis * np.poly1d([1.0, -t[i - k]]) / (t[i - j] - t[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


@torch.no_grad()
def sample_lms(model, x, sigmas, extra_args=None, callback=None, disable=None, order=4):
    extra_args = extra_args or {}
    nodes = sigmas.detach().cpu().double().numpy()
    slopes = []
    for i in range(len(sigmas) - 1):
        slope, denoised = _slope(model, x, sigmas[i], extra_args)
        slopes = (slopes + [slope])[-order:]
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        current = min(i + 1, order)
        coefficients = [_lms_coefficient(current, nodes, i, j) for j in range(current)]
        x = x + sum(c * d for c, d in zip(coefficients, reversed(slopes)))
    return x


def _t(sigma):
    return -sigma.log()


def _sigma(t):
    return (-t).exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        sigma_down, sigma_up = get_ancestral_step(sigmas[i], sigmas[i + 1], eta=eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:  # DPM-Solver++(2S): a half step in log-sigma, then the full step with that estimate
            t, t_next = _t(sigmas[i]), _t(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma(s) / _sigma(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = _call(model, x_2, _sigma(s), extra_args)
            x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None, r=1 / 2):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        sd, su = get_ancestral_step(_sigma(t), _sigma(s), eta)  # first stage: to the intermediate point
        s_ = _t(sd)
        x_2 = (_sigma(s_) / _sigma(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise_sampler(_sigma(t), _sigma(s)) * s_noise * su
        denoised_2 = _call(model, x_2, _sigma(s), extra_args)
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)  # second stage: the whole step
        t_next_ = _t(sd)
        mixed = (1 - 1 / (2 * r)) * denoised + (1 / (2 * r)) * denoised_2
        x = (_sigma(t_next_) / _sigma(t)) * x - (t - t_next_).expm1() * mixed
        x = x + noise_sampler(_sigma(t), _sigma(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    extra_args = extra_args or {}
    previous = None
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t(sigmas[i]), _t(sigmas[i + 1])
        h = t_next - t
        estimate = denoised
        if previous is not None and sigmas[i + 1] != 0:  # second order from the previous step's estimate
            r = (t - _t(sigmas[i - 1])) / h
            estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * previous
        x = (_sigma(t_next) / _sigma(t)) * x - (-h).expm1() * estimate
        previous = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None, solver_type='midpoint'):
    if solver_type not in {'heun', 'midpoint'}:
        raise ValueError('solver_type must be \'heun\' or \'midpoint\'')
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    previous, h_last = None, None
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if previous is not None:
                r = h_last / h
                if solver_type == 'heun':
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - previous)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - previous)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        previous, h_last = denoised, h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1., s_noise=1., noise_sampler=None):
    extra_args = extra_args or {}
    noise_sampler = noise_sampler or default_noise_sampler(x)
    history = []  # (denoised, h) of the previous steps, newest first
    for i in range(len(sigmas) - 1):
        denoised = _call(model, x, sigmas[i], extra_args)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        h = None
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = _t(sigmas[i + 1]) - _t(sigmas[i])
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if len(history) >= 2 and history[1][1] is not None:
                (d_1, h_1), (d_2, h_2) = history[0], history[1]
                r0, r1 = h_1 / h, h_2 / h
                d1_0, d1_1 = (denoised - d_1) / r0, (d_1 - d_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                x = x + phi_2 * d1 - (phi_2 / h_eta - 0.5) * d2
            elif history:
                d_1, h_1 = history[0]
                x = x + phi_2 * (denoised - d_1) / (h_1 / h)
            if eta:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        history = [(denoised, h)] + history[:1]
    return x


class _DPMSolver:
    """DPM-Solver (Lu et al. 2022) in t = -log(sigma): single steps of order 1-3 built from eps evaluations."""

    def __init__(self, model, extra_args, info_callback):
        self.model, self.extra_args, self.info_callback = model, extra_args or {}, info_callback

    def eps(self, x, t):
        sigma = _sigma(t)
        return (x - _call(self.model, x, sigma, self.extra_args)) / sigma

    def step_1(self, x, t, t_next, eps):
        return x - _sigma(t_next) * (t_next - t).expm1() * eps

    def step_2(self, x, t, t_next, eps, r1=1 / 2):
        """-> (x at t_next, the eps at the intermediate point, which step_3 reuses when r1 = 1/3)."""
        h = t_next - t
        s1 = t + r1 * h
        eps_r1 = self.eps(x - _sigma(s1) * (r1 * h).expm1() * eps, s1)
        x_2 = x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)
        return x_2, eps_r1

    def step_3(self, x, t, t_next, eps, eps_r1=None, r1=1 / 3, r2=2 / 3):
        h = t_next - t
        s1, s2 = t + r1 * h, t + r2 * h
        if eps_r1 is None:
            eps_r1 = self.eps(x - _sigma(s1) * (r1 * h).expm1() * eps, s1)
        u2 = x - _sigma(s2) * (r2 * h).expm1() * eps - _sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps)
        eps_r2 = self.eps(u2, s2)
        return x - _sigma(t_next) * h.expm1() * eps - _sigma(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)

    def ancestral_target(self, t, t_next, t_end, eta):
        """-> (where the deterministic part of the step ends, the noise to add back)."""
        if not eta:
            return t_next, 0.
        sd, su = get_ancestral_step(_sigma(t), _sigma(t_next), eta)
        t_next_ = torch.minimum(t_end, _t(sd))
        return t_next_, (_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5

    def fast(self, x, t_start, t_end, nfe, eta=0., s_noise=1., noise_sampler=None):
        """nfe evaluations split into steps of order 3 (the last ones of order 2/1), evenly spaced in t."""
        noise_sampler = noise_sampler or default_noise_sampler(x)
        m = nfe // 3 + 1
        ts = torch.linspace(float(t_start), float(t_end), m + 1)
        orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
        for i, order in enumerate(orders):
            t, t_next = ts[i], ts[i + 1]
            t_next_, su = self.ancestral_target(t, t_next, t_end, eta)
            eps = self.eps(x, t)
            if self.info_callback is not None:
                self.info_callback({'x': x, 'i': i, 't': t, 't_up': t, 'denoised': x - _sigma(t) * eps})
            if order == 1:
                x = self.step_1(x, t, t_next_, eps)
            elif order == 2:
                x, _ = self.step_2(x, t, t_next_, eps)
            else:
                x = self.step_3(x, t, t_next_, eps)
            x = x + su * s_noise * noise_sampler(_sigma(t), _sigma(t_next))
        return x

    def adaptive(self, x, t_start, t_end, rtol=0.05, atol=0.0078, h_init=0.05, accept_safety=0.81, eta=0., s_noise=1., noise_sampler=None):
        """DPM-Solver-23 with an integral step-size controller: every attempt costs 3 evaluations, a rejected
        attempt shrinks the step and retries."""
        noise_sampler = noise_sampler or default_noise_sampler(x)
        order = 1.5 if eta else 3
        h, s, x_prev = abs(h_init), t_start, x
        attempts = 0
        while s < t_end - 1e-5:
            t = torch.minimum(t_end, s + h)
            t_, su = self.ancestral_target(s, t, t_end, eta)
            eps = self.eps(x, s)
            x_low, eps_r1 = self.step_2(x, s, t_, eps, r1=1 / 3)
            x_high = self.step_3(x, s, t_, eps, eps_r1=eps_r1)
            scale = torch.maximum(torch.tensor(atol), rtol * torch.maximum(x_low.abs(), x_prev.abs()))
            error = float(torch.linalg.norm((x_low - x_high) / scale) / x.numel() ** 0.5)
            factor = 1 + math.atan((1 / (error + 1e-8)) ** (1 / order) - 1)
            h *= factor
            if factor >= accept_safety:
                x_prev = x_low
                x = x_high + su * s_noise * noise_sampler(_sigma(s), _sigma(t))
                s = t
            attempts += 1
            if self.info_callback is not None:
                self.info_callback({'x': x, 'i': attempts - 1, 't': s, 't_up': s, 'denoised': x - _sigma(s) * eps, 'error': error, 'h': h})
        return x


def _solver(model, extra_args, callback):
    info_callback = None
    if callback is not None:
        def info_callback(info):
            callback({'sigma': _sigma(info['t']), 'sigma_hat': _sigma(info['t_up']), **info})
    return _DPMSolver(model, extra_args, info_callback)


@torch.no_grad()
def sample_dpm_fast(model, x, sigma_min, sigma_max, n, extra_args=None, callback=None, disable=None, eta=0., s_noise=1., noise_sampler=None):
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError('sigma_min and sigma_max must not be 0')
    solver = _solver(model, extra_args, callback)
    return solver.fast(x, _t(torch.tensor(float(sigma_max))), _t(torch.tensor(float(sigma_min))), n, eta, s_noise, noise_sampler)


@torch.no_grad()
def sample_dpm_adaptive(model, x, sigma_min, sigma_max, extra_args=None, callback=None, disable=None, order=3, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0., icoeff=1., dcoeff=0., accept_safety=0.81, eta=0., s_noise=1., noise_sampler=None, return_info=False):
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError('sigma_min and sigma_max must not be 0')
    solver = _solver(model, extra_args, callback)
    return solver.adaptive(x, _t(torch.tensor(float(sigma_max))), _t(torch.tensor(float(sigma_min))), rtol, atol, h_init, accept_safety, eta, s_noise, noise_sampler)


samplers_k_diffusion = [
    ('DPM++ 2M', sample_dpmpp_2m, ['k_dpmpp_2m'], {'scheduler': 'karras'}),
    ('DPM++ SDE', sample_dpmpp_sde, ['k_dpmpp_sde'], {'scheduler': 'karras', "second_order": True, "brownian_noise": True}),
    ('DPM++ 2M SDE', sample_dpmpp_2m_sde, ['k_dpmpp_2m_sde'], {'scheduler': 'exponential', "brownian_noise": True}),
    ('DPM++ 2M SDE Heun', sample_dpmpp_2m_sde, ['k_dpmpp_2m_sde_heun'], {'scheduler': 'exponential', "brownian_noise": True, "solver_type": "heun"}),
    ('DPM++ 2S a', sample_dpmpp_2s_ancestral, ['k_dpmpp_2s_a'], {'scheduler': 'karras', "uses_ensd": True, "second_order": True}),
    ('DPM++ 3M SDE', sample_dpmpp_3m_sde, ['k_dpmpp_3m_sde'], {'scheduler': 'exponential', 'discard_next_to_last_sigma': True, "brownian_noise": True}),
    ('Euler a', sample_euler_ancestral, ['k_euler_a', 'k_euler_ancestral'], {"uses_ensd": True}),
    ('Euler', sample_euler, ['k_euler'], {}),
    ('LMS', sample_lms, ['k_lms'], {}),
    ('Heun', sample_heun, ['k_heun'], {"second_order": True}),
    ('DPM2', sample_dpm_2, ['k_dpm_2'], {'scheduler': 'karras', 'discard_next_to_last_sigma': True, "second_order": True}),
    ('DPM2 a', sample_dpm_2_ancestral, ['k_dpm_2_a'], {'scheduler': 'karras', 'discard_next_to_last_sigma': True, "uses_ensd": True, "second_order": True}),
    ('DPM fast', sample_dpm_fast, ['k_dpm_fast'], {"uses_ensd": True}),
    ('DPM adaptive', sample_dpm_adaptive, ['k_dpm_ad'], {"uses_ensd": True}),
    ('Restart', sd_samplers_extra.restart_sampler, ['restart'], {'scheduler': 'karras', "second_order": True}),
]

sampler_extra_params = {
    'sample_euler': ['s_churn', 's_tmin', 's_tmax', 's_noise'],
    'sample_heun': ['s_churn', 's_tmin', 's_tmax', 's_noise'],
    'sample_dpm_2': ['s_churn', 's_tmin', 's_tmax', 's_noise'],
    'sample_dpm_fast': ['s_noise'],
    'sample_dpm_2_ancestral': ['s_noise'],
    'sample_dpmpp_2s_ancestral': ['s_noise'],
    'sample_dpmpp_sde': ['s_noise'],
    'sample_dpmpp_2m_sde': ['s_noise'],
    'sample_dpmpp_3m_sde': ['s_noise'],
}


def _constructor_for(sample_function):
    return lambda model: KDiffusionSampler(sample_function, model)


samplers_data_k_diffusion = [sd_samplers_common.SamplerData(label, _constructor_for(function), aliases, options)
                             for label, function, aliases, options in samplers_k_diffusion]
k_diffusion_samplers_map = {x.name: x for x in samplers_data_k_diffusion}
k_diffusion_scheduler = {x.name: x.function for x in sd_schedulers.schedulers}


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
        self.funcname = funcname.__name__
        self.options = dict(options or {})
        self.extra_params = sampler_extra_params.get(funcname.__name__, [])
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        discard = self.config is not None and self.config.options.get('discard_next_to_last_sigma', False)
        if opts.always_discard_next_to_last_sigma and not discard:
            discard = True
            p.extra_generation_params["Discard penultimate sigma"] = True
        steps += 1 if discard else 0

        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or 'Automatic'
        if scheduler_name == 'Automatic':
            scheduler_name = self.config.options.get('scheduler', None)
        scheduler = sd_schedulers.schedulers_map.get(scheduler_name)
        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        elif scheduler is None or scheduler.function is None:
            sigmas = self.model_wrap.get_sigmas(steps)
        else:
            sigmas = scheduler.function(n=steps, sigma_min=self.model_wrap.sigmas[0].item(), sigma_max=self.model_wrap.sigmas[-1].item(), device='cpu')

        if discard:
            sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
        return sigmas.cpu()

    def _denoiser_kwargs(self, p, conditioning, unconditional_conditioning, image_conditioning):
        # the keyword arguments CFGDenoiser.forward receives from the sampling loop
        return dict(cond=conditioning, image_cond=image_conditioning, uncond=unconditional_conditioning,
                    cond_scale=p.cfg_scale, s_min_uncond=self.s_min_uncond)

    def _sampler_options(self, kwargs, x, sigmas, p):
        if self.config.options.get('brownian_noise', False):
            kwargs['noise_sampler'] = self.create_noise_sampler(x, sigmas, p)
        if self.config.options.get('solver_type', None) == 'heun':
            kwargs['solver_type'] = 'heun'

    def _launch(self, steps, start, sampler_kwargs):
        def run():
            return self.func(self.model_wrap_cfg, start, extra_args=self.sampler_extra_args, disable=False,
                             callback=self.callback_state, **sampler_kwargs)
        return self.launch_sampling(steps, run)

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps)
        # only the last t_enc + 1 intervals of a `steps`-long schedule run, from the init latent noised to their start
        tail = sigmas[steps - t_enc - 1:]
        start = x + noise * tail[0]
        if opts.img2img_extra_noise > 0:
            from modules.script_callbacks import ExtraNoiseParams, extra_noise_callback
            p.extra_generation_params["Extra noise"] = opts.img2img_extra_noise
            params = ExtraNoiseParams(noise, x, start)
            extra_noise_callback(params)
            start = start + params.noise * opts.img2img_extra_noise

        sampler_kwargs = self.initialize(p)
        accepted = inspect.signature(self.func).parameters
        if 'sigma_min' in accepted:  # DPM fast / adaptive: the last sigma is 0, which they cannot take
            sampler_kwargs['sigma_min'] = tail[-2]
        if 'sigma_max' in accepted:
            sampler_kwargs['sigma_max'] = tail[0]
        if 'n' in accepted:
            sampler_kwargs['n'] = len(tail) - 1
        if 'sigmas' in accepted:
            sampler_kwargs['sigmas'] = tail
        self._sampler_options(sampler_kwargs, x, sigmas, p)

        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = self._denoiser_kwargs(p, conditioning, unconditional_conditioning, image_conditioning)
        result = self._launch(t_enc + 1, start, sampler_kwargs)
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
        accepted = inspect.signature(self.func).parameters
        if 'n' in accepted:
            sampler_kwargs['n'] = steps
        if 'sigma_min' in accepted:  # the model's whole range, not the schedule
            sampler_kwargs['sigma_min'] = self.model_wrap.sigmas[0].item()
            sampler_kwargs['sigma_max'] = self.model_wrap.sigmas[-1].item()
        if 'sigmas' in accepted:
            sampler_kwargs['sigmas'] = sigmas
        self._sampler_options(sampler_kwargs, start, sigmas, p)

        self.last_latent = start
        self.sampler_extra_args = self._denoiser_kwargs(p, conditioning, unconditional_conditioning, image_conditioning)
        result = self._launch(steps, start, sampler_kwargs)
        self.add_infotext(p)
        return result
