"""modules/sd_samplers_kdiffusion.py stand-in: Forge's KDiffusionSampler path with this stand-in's own k-diffusion-style
loops: "Euler" (sample_euler, churn parameters) and "Heun" (sample_heun, second order: 2N-1 denoiser calls, the step callback
after the first call of a step), plus "Euler a" (ancestral, eta from opts). `sample` / `sample_img2img` read the UNet patcher
from shared.sd_model.forge_objects.unet when they start (after process_before_every_sampling), call backend
sampling_prepare(unet, x) (memory management + ControlNet pre_run), take sigmas from the scheduler ("Automatic" = the
model's uniform discrete schedule `ForgeScheduleLinker.get_sigmas`, "Karras"), scale the noise with the predictor, run the
loop through the CFG denoiser, then sampling_cleanup(unet). img2img: sigma_sched = sigmas[steps - t_enc - 1:],
xi = predictor.noise_scaling(sigma_sched[0], noise, x)."""
import inspect

import torch

from backend.sampling.sampling_function import sampling_cleanup, sampling_prepare
from modules import sd_samplers_cfg_denoiser, sd_samplers_common, shared
from modules.shared import opts


def append_zero(x):
    return torch.cat([x, x.new_zeros([1])])


def get_sigmas_karras(n, sigma_min, sigma_max, rho=7.0, device="cpu"):
    ramp = torch.linspace(0, 1, n, device=device)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma.view(-1, *([1] * (x.ndim - 1)))


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, s_noise=1.0, noise_sampler=None):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        sigma_up = min(sigmas[i + 1], eta * (sigmas[i + 1] ** 2 * (sigmas[i] ** 2 - sigmas[i + 1] ** 2) / sigmas[i] ** 2) ** 0.5)
        sigma_down = (sigmas[i + 1] ** 2 - sigma_up ** 2) ** 0.5
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + torch.randn_like(x) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        gamma = min(s_churn / (len(sigmas) - 1), 2 ** 0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + torch.randn_like(x) * s_noise * (sigma_hat ** 2 - sigmas[i] ** 2) ** 0.5
        denoised = model(x, sigma_hat * s_in, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigma_hat, "denoised": denoised})
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sigmas[i + 1] * s_in, **extra_args)
            d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
            x = x + (d + d_2) / 2 * dt
    return x


samplers_k_diffusion = [
    ("Euler a", sample_euler_ancestral, ["k_euler_a"], {"uses_ensd": True}),
    ("Euler", sample_euler, ["k_euler"], {}),
    ("Heun", sample_heun, ["k_heun"], {"second_order": True}),
]
sampler_extra_params = {sample_euler: ["s_churn", "s_tmin", "s_tmax", "s_noise"], sample_heun: ["s_churn", "s_tmin", "s_tmax", "s_noise"]}


class ForgeScheduleLinker(torch.nn.Module):
    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    @property
    def sigmas(self):
        return self.predictor.sigmas

    @property
    def log_sigmas(self):
        return self.predictor.sigmas.log()

    def get_sigmas(self, n=None):
        if n is None:
            return append_zero(self.sigmas.flip(0))
        t = torch.linspace(len(self.sigmas) - 1, 0, n, device=self.sigmas.device)
        return append_zero(self.predictor.sigma(t))

    def sigma_to_t(self, sigma, quantize=None):
        return self.predictor.timestep(sigma)

    def t_to_sigma(self, t):
        return self.predictor.sigma(t)


class CFGDenoiserKDiffusion(sd_samplers_cfg_denoiser.CFGDenoiser):
    @property
    def inner_model(self):
        if self.model_wrap is None:
            self.model_wrap = ForgeScheduleLinker(shared.sd_model.forge_objects.unet.model.predictor)
            self.model_wrap.inner_model = shared.sd_model
        return self.model_wrap


class KDiffusionSampler(sd_samplers_common.Sampler):
    def __init__(self, funcname, sd_model, options=None):
        super().__init__(funcname)
        self.extra_params = sampler_extra_params.get(funcname, [])
        self.options = options or {}
        self.func = funcname
        self.model_wrap_cfg = CFGDenoiserKDiffusion(self)
        self.model_wrap = self.model_wrap_cfg.inner_model

    def get_sigmas(self, p, steps):
        scheduler_name = (p.hr_scheduler if p.is_hr_pass else p.scheduler) or "Automatic"
        if scheduler_name == "Automatic":
            scheduler_name = self.config.options.get("scheduler", None)
        m_sigma_min, m_sigma_max = self.model_wrap.sigmas[0].item(), self.model_wrap.sigmas[-1].item()
        if p.sampler_noise_scheduler_override:
            sigmas = p.sampler_noise_scheduler_override(steps)
        elif scheduler_name == "Karras":
            if not p.is_hr_pass:
                p.extra_generation_params["Schedule type"] = "Karras"
            else:
                p.extra_generation_params["Hires schedule type"] = "Karras"
            sigmas = get_sigmas_karras(steps, m_sigma_min, m_sigma_max)
        else:
            sigmas = self.model_wrap.get_sigmas(steps)
        return sigmas.cpu()

    def _kwargs(self, p, sigmas):
        extra = self.initialize(p)
        parameters = inspect.signature(self.func).parameters
        if "sigmas" in parameters:
            extra["sigmas"] = sigmas
        if "eta" in parameters:
            extra["eta"] = self.eta
        return {k: v for k, v in extra.items() if k in parameters and v is not None}

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x=x)
        steps, t_enc = sd_samplers_common.setup_img2img_steps(p, steps)
        sigmas = self.get_sigmas(p, steps).to(x.device)
        sigma_sched = sigmas[steps - t_enc - 1:]
        x = x.to(noise)
        xi = self.model_wrap.predictor.noise_scaling(sigma_sched[0], noise, x, max_denoise=False)
        extra = self._kwargs(p, sigma_sched)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}
        samples = self.launch_sampling(t_enc + 1, lambda: self.func(self.model_wrap_cfg, xi, extra_args=self.sampler_extra_args,
                                                                    disable=False, callback=self.callback_state, **extra))
        self.add_infotext(p)
        sampling_cleanup(unet_patcher)
        return samples

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        unet_patcher = self.model_wrap.inner_model.forge_objects.unet
        sampling_prepare(self.model_wrap.inner_model.forge_objects.unet, x=x)
        steps = steps or p.steps
        sigmas = self.get_sigmas(p, steps).to(x.device)
        x = self.model_wrap.predictor.noise_scaling(sigmas[0], x, torch.zeros_like(x), max_denoise=opts.sgm_noise_multiplier)
        extra = self._kwargs(p, sigmas)
        self.last_latent = x
        self.sampler_extra_args = {"cond": conditioning, "image_cond": image_conditioning, "uncond": unconditional_conditioning,
                                   "cond_scale": p.cfg_scale, "s_min_uncond": self.s_min_uncond}
        samples = self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, extra_args=self.sampler_extra_args,
                                                                disable=False, callback=self.callback_state, **extra))
        self.add_infotext(p)
        sampling_cleanup(unet_patcher)
        return samples


samplers_data_k_diffusion = [
    sd_samplers_common.SamplerData(label, lambda model, funcname=funcname, options=options: KDiffusionSampler(funcname, model, options), aliases, options)
    for label, funcname, aliases, options in samplers_k_diffusion
]
