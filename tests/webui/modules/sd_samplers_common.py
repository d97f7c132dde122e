"""modules/sd_samplers_common.py stand-in: SamplerData, the Sampler base class, img2img step arithmetic, the VAE
helpers and the refiner switch.

Modelled as in A1111 1.10:
  * Sampler.launch_sampling: denoiser.steps = steps, denoiser.total_steps = config.total_steps(steps) (doubled for
    "second_order" samplers), state.sampling_steps = steps, state.sampling_step = 0; an interrupt (or a runaway
    recursion) ends sampling with the last latent as the result.
  * Sampler.callback_state (the sampling loops' step callback) is the ONLY writer of state.sampling_step.
  * Sampler.initialize: resets denoiser.step to 0, takes eta from p or the sampler's eta option, passes only the
    extra parameters the sampling function accepts, and puts a TorchHijack in place of k-diffusion's torch so its
    randn_like draws from p.rng.
  * apply_refiner: called by CFGDenoiser.forward on every call; switches to p.refiner_checkpoint_info once the
    completed ratio (timestep based, or step/total_steps with opts.refiner_switch_by_sample_steps) reaches
    p.refiner_switch_at (None: at the first call), honouring opts.hires_fix_refiner_pass; reloads the weights with
    SkipWritingToConfig, then p.setup_conds() and denoiser.update_inner_model().
Not modelled: live previews (store_latent only records the latent), VAE approximations, torchsde.
"""
from __future__ import annotations

import inspect
from collections import namedtuple

import torch

from modules import devices, shared
from modules.options import OptionInfo
from modules.shared import opts, state

SamplerDataTuple = namedtuple('SamplerData', ['name', 'constructor', 'aliases', 'options'])

# Options of shared_options.py that the samplers and the refiner read (registered here, where they are used).
for _key, _default, _label in (
    ("refiner_switch_by_sample_steps", False, "Switch to refiner by sampling steps instead of model timesteps. Old behavior for refiner."),
    ("hires_fix_refiner_pass", "second pass", "Hires fix: which pass to enable refiner for"),
    ("no_dpmpp_sde_batch_determinism", False, "Do not make DPM++ SDE deterministic across different batch sizes."),
    ("hide_samplers", [], "Hide samplers in user interface"),
):
    if _key not in opts.data_labels:
        opts.add_option(_key, OptionInfo(_default, _label))


class SamplerData(SamplerDataTuple):
    def total_steps(self, steps):
        # second-order samplers (Heun, DPM2, ...) evaluate the model about twice per step
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p, steps=None):
    """-> (length of the schedule, t_enc). Without fixed steps only the last t_enc = int(strength * steps) steps of a
    p.steps-long schedule run; with opts.img2img_fix_steps or explicit `steps` (the hires pass) the schedule is
    stretched so that `steps` steps run (t_enc = steps - 1)."""
    if opts.img2img_fix_steps or steps is not None:
        requested = steps or p.steps
        schedule = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        return schedule, requested - 1
    return p.steps, int(min(p.denoising_strength, 0.999) * p.steps)


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
    """Whether the job's sampler draws ancestral noise (so the ENSD setting matters): its eta is not 0 and its
    options say "uses_ensd"."""
    from modules import sd_samplers

    config = sd_samplers.find_sampler_config(p.sampler_name)
    eta = p.eta
    if eta is None and p.sampler is not None:
        eta = p.sampler.eta
    if eta is None and config is not None:
        eta = 0 if config.options.get("default_eta_is_0", False) else 1.0
    if eta == 0:
        return False
    return config.options.get("uses_ensd", False)


class InterruptedException(BaseException):
    pass


def replace_torchsde_browinan():
    pass


def apply_refiner(cfg_denoiser, sigma=None):
    """Swaps to the refiner checkpoint when this denoiser call is past p.refiner_switch_at; True if it swapped."""
    p = cfg_denoiser.p
    if opts.refiner_switch_by_sample_steps or sigma is None:
        completed_ratio = cfg_denoiser.step / cfg_denoiser.total_steps
        p.extra_generation_params["Refiner switch by sampling steps"] = True
    else:
        try:  # the schedule index of the largest sigma in the batch
            model_sigmas = cfg_denoiser.inner_model.sigmas
            timestep = torch.argmin(torch.abs(model_sigmas.to(sigma.device) - torch.max(sigma)))
        except AttributeError:  # timesteps samplers (DDIM, PLMS, UniPC) pass the timestep itself as "sigma"
            timestep = torch.max(sigma).to(dtype=int)
        completed_ratio = (999 - timestep) / 1000

    refiner_switch_at = p.refiner_switch_at
    refiner_checkpoint_info = p.refiner_checkpoint_info
    if refiner_switch_at is not None and completed_ratio < refiner_switch_at:
        return False
    if refiner_checkpoint_info is None or shared.sd_model.sd_checkpoint_info == refiner_checkpoint_info:
        return False

    if getattr(p, "enable_hr", False):
        is_second_pass = p.is_hr_pass
        if opts.hires_fix_refiner_pass == "first pass" and is_second_pass:
            return False
        if opts.hires_fix_refiner_pass == "second pass" and not is_second_pass:
            return False
        if opts.hires_fix_refiner_pass != "second pass":
            p.extra_generation_params['Hires refiner'] = opts.hires_fix_refiner_pass

    p.extra_generation_params['Refiner'] = refiner_checkpoint_info.short_title
    p.extra_generation_params['Refiner switch at'] = refiner_switch_at

    from modules import sd_models
    with sd_models.SkipWritingToConfig():
        sd_models.reload_model_weights(info=refiner_checkpoint_info)

    devices.torch_gc()
    p.setup_conds()
    cfg_denoiser.update_inner_model()
    return True


class TorchHijack:
    """Put in place of the `torch` that k-diffusion's sampling code uses (sd_samplers_kdiffusion.ktorch here) so
    that its randn_like calls draw the next noise from p.rng (seed-reproducible); every other attribute comes from
    torch itself."""

    def __init__(self, p):
        self.rng = p.rng

    def __getattr__(self, item):
        if item == 'randn_like':
            return self.randn_like
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

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
        self.conditioning_key = getattr(shared.sd_model.model, 'conditioning_key', 'crossattn')
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
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, 's_min_uncond', 0.0)

        from modules import sd_samplers_kdiffusion
        sd_samplers_kdiffusion.ktorch = TorchHijack(p)

        accepted = inspect.signature(self.func).parameters
        kwargs = {name: getattr(p, name) for name in self.extra_params if hasattr(p, name) and name in accepted}
        if 'eta' in accepted:
            if self.eta != self.eta_default:
                p.extra_generation_params[self.eta_infotext_field] = self.eta
            kwargs['eta'] = self.eta

        if self.extra_params:
            # the sampler-parameter settings win over p's values and are written back to p when they differ
            chosen = (
                ('s_churn', getattr(opts, 's_churn', p.s_churn), self.s_churn, 'Sigma churn'),
                ('s_tmin', getattr(opts, 's_tmin', p.s_tmin), self.s_tmin, 'Sigma tmin'),
                ('s_tmax', getattr(opts, 's_tmax', p.s_tmax) or self.s_tmax, self.s_tmax, 'Sigma tmax'),  # 0 = inf
                ('s_noise', getattr(opts, 's_noise', p.s_noise), self.s_noise, 'Sigma noise'),
            )
            for name, value, default, label in chosen:
                if name in kwargs and value != default:
                    kwargs[name] = value
                    setattr(p, name, value)
                    p.extra_generation_params[label] = value
        return kwargs

    def create_noise_sampler(self, x, sigmas, p):
        """For the SDE samplers ("brownian_noise"): noise per image from its own seed, so that a batch gives the same
        images as the single jobs (A1111 uses torchsde's BrownianTree; the stand-in uses per-seed generators)."""
        if shared.opts.no_dpmpp_sde_batch_determinism:
            return None
        seeds = p.all_seeds[p.iteration * p.batch_size:(p.iteration + 1) * p.batch_size]
        generators = [torch.Generator(devices.cpu).manual_seed(int(seed)) for seed in seeds]

        def noise_sampler(sigma, sigma_next):
            rows = [torch.randn(x.shape[1:], generator=generator) for generator in generators]
            return torch.stack(rows).to(x)

        return noise_sampler

    def add_infotext(self, p):
        for flag, label in (("padded_cond_uncond", "Pad conds"), ("padded_cond_uncond_v0", "Pad conds v0")):
            if getattr(self.model_wrap_cfg, flag):
                p.extra_generation_params[label] = True

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None, image_conditioning=None):
        raise NotImplementedError()
