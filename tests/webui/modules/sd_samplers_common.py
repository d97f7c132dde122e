"""modules/sd_samplers_common.py stand-in: Sampler base class (launch_sampling turns an interrupt into "return the
last latent"), InterruptedException (a BaseException), img2img step arithmetic and the VAE helpers."""
from __future__ import annotations

from collections import namedtuple

import torch

from modules import devices, shared
from modules.shared import opts, state

SamplerDataTuple = namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        # second-order samplers (Heun, DPM2, ...) evaluate the model about twice per step
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p, steps=None):
    """-> (length of the schedule, number of steps actually run from the end of it: t_enc)."""
    strength = min(p.denoising_strength, 0.999)
    if steps is None and not opts.img2img_fix_steps:
        return p.steps, int(strength * p.steps)
    # "fixed" steps: stretch the schedule so that about the requested number of steps run
    wanted = steps or p.steps
    schedule = int(wanted / strength) if p.denoising_strength > 0 else 0
    return schedule, wanted - 1


approximation_indexes = {"Full": 0, "Approx NN": 1, "Approx cheap": 2, "TAESD": 3}


def samples_to_images_tensor(sample, approximation=None, model=None):
    """latents [B,4,h,w] -> images [B,3,8h,8w] in [-1, 1] (the stand-in VAE has no approximations)."""
    vae_owner = shared.sd_model if model is None else model
    with torch.no_grad(), devices.autocast():
        return vae_owner.decode_first_stage(sample.to(devices.dtype_vae))


def single_sample_to_image(sample, approximation=None):
    import numpy as np
    from PIL import Image

    pixels = samples_to_images_tensor(sample.unsqueeze(0), approximation)[0]
    pixels = (pixels * 0.5 + 0.5).clamp(0.0, 1.0)
    return Image.fromarray((255. * pixels.cpu().numpy().transpose(1, 2, 0)).astype(np.uint8))


def decode_first_stage(model, x):
    return samples_to_images_tensor(x.to(devices.dtype_vae), None, model)


def sample_to_image(samples, index=0, approximation=None):
    return single_sample_to_image(samples[index], approximation)


def samples_to_image_grid(samples, approximation=None):
    from modules import images
    return images.image_grid([single_sample_to_image(one, approximation) for one in samples])


def images_tensor_to_samples(image, approximation=None, model=None):
    """images [B,3,H,W] in [0, 1] -> latents."""
    vae_owner = shared.sd_model if model is None else model
    signed = image.to(shared.device, dtype=devices.dtype_vae) * 2 - 1  # the VAE works in -1..1
    return vae_owner.get_first_stage_encoding(vae_owner.encode_first_stage(signed))


def store_latent(decoded):
    state.current_latent = decoded


def is_sampler_using_eta_noise_seed_delta(p):
    return False


class InterruptedException(BaseException):
    pass


def replace_torchsde_browinan():
    pass


def apply_refiner(cfg_denoiser, sigma=None):
    """Refiner switching is not modelled."""
    return False


class TorchHijack:
    """Put in place of the `torch` module inside k-diffusion's sampling code so that its randn_like calls draw
    the next noise from p.rng (seed-reproducible); every other attribute comes from torch itself."""

    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        try:
            return getattr(torch, item)
        except AttributeError:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'") from None

    def randn_like(self, x):
        return self.rng.next()


class Sampler:
    def __init__(self, funcname):
        self.funcname = self.func = funcname
        self.config: SamplerData = None
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None
        self.options = {}
        self.conditioning_key = shared.sd_model.model.conditioning_key
        # sampling state
        self.sampler_noises = None
        self.stop_at = None
        self.last_latent = None
        # sampler parameters and their defaults
        self.extra_params = []
        self.eta = None
        self.eta_option_field, self.eta_infotext_field, self.eta_default = 'eta_ancestral', 'Eta', 1.0
        self.s_min_uncond = None
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = 0.0, 0.0, float('inf'), 1.0

    def callback_state(self, d):
        if self.stop_at is not None and d['i'] > self.stop_at:
            raise InterruptedException
        state.sampling_step = d['i']
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        denoiser = self.model_wrap_cfg
        denoiser.steps, denoiser.total_steps = steps, self.config.total_steps(steps)
        state.sampling_steps, state.sampling_step = steps, 0
        try:
            return func()
        except (RecursionError, InterruptedException) as stopped:
            # an interrupt (or a runaway recursion) ends sampling with the latest latent as the result
            if isinstance(stopped, RecursionError):
                print('Encountered RecursionError during sampling, returning last latent.')
            return self.last_latent

    def number_of_needed_noises(self, p):
        return p.steps

    def initialize(self, p) -> dict:
        self.p = p
        denoiser = self.model_wrap_cfg
        denoiser.p = p
        denoiser.mask, denoiser.nmask = getattr(p, 'mask', None), getattr(p, 'nmask', None)
        denoiser.step = 0
        denoiser.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.eta = getattr(opts, self.eta_option_field, 0.0) if p.eta is None else p.eta
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)

        kwargs = {name: getattr(p, name) for name in self.extra_params if hasattr(p, name)}
        if self.extra_params:
            # the sampler-parameter settings win over p's values and are written back to p
            chosen = {
                's_churn': getattr(opts, 's_churn', p.s_churn),
                's_tmin': getattr(opts, 's_tmin', p.s_tmin),
                's_tmax': getattr(opts, 's_tmax', p.s_tmax) or self.s_tmax,
                's_noise': getattr(opts, 's_noise', p.s_noise),
            }
            for name, value in chosen.items():
                if name in kwargs:
                    kwargs[name] = value
                    setattr(p, name, value)
        return kwargs

    def add_infotext(self, p):
        for flag, label in (("padded_cond_uncond", "Pad conds"), ("padded_cond_uncond_v0", "Pad conds v0")):
            if getattr(self.model_wrap_cfg, flag):
                p.extra_generation_params[label] = True

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()
