"""modules/sd_samplers_common.py stand-in: SamplerData (total_steps doubles for second-order samplers), the Sampler base
(initialize: p, mask, step 0; launch_sampling: state.sampling_steps = steps, state.sampling_step = 0; callback_state is the
ONLY writer of state.sampling_step, after each step -- so the denoiser of step i>=1 sees i-1, as in A1111/Forge),
setup_img2img_steps, InterruptedException, apply_refiner (no refiner: False)."""
from collections import namedtuple

from modules import shared
from modules.shared import opts, state


class SamplerData(namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])):
    def total_steps(self, steps):
        if self.options.get("second_order", False):
            steps = steps * 2
        return steps


class InterruptedException(BaseException):
    pass


def setup_img2img_steps(p, steps=None):
    if opts.img2img_fix_steps or steps is not None:
        requested_steps = steps or p.steps
        steps = int(requested_steps / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested_steps - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


def apply_refiner(cfg_denoiser, x=None):
    return False


def store_latent(decoded):
    state.current_latent = decoded


class Sampler:
    def __init__(self, funcname):
        self.funcname = funcname
        self.func = funcname
        self.extra_params = []
        self.sampler_noises = None
        self.stop_at = None
        self.eta = None
        self.config = None
        self.last_latent = None
        self.s_min_uncond = None
        self.s_churn = self.s_tmin = self.s_tmax = 0.0
        self.s_noise = 1.0
        self.eta_option_field = "eta_ancestral"
        self.conditioning_key = "crossattn"
        self.p = None
        self.model_wrap_cfg = None
        self.sampler_extra_args = None

    def callback_state(self, d):
        step = d["i"]
        if self.stop_at is not None and step > self.stop_at:
            raise InterruptedException
        state.sampling_step = step
        shared.total_tqdm.update()

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        try:
            return func()
        except InterruptedException:
            return self.last_latent

    def initialize(self, p) -> dict:
        self.p = p
        self.model_wrap_cfg.p = p
        self.model_wrap_cfg.mask = getattr(p, "mask", None)
        self.model_wrap_cfg.nmask = getattr(p, "nmask", None)
        self.model_wrap_cfg.step = 0
        self.model_wrap_cfg.image_cfg_scale = getattr(p, "image_cfg_scale", None)
        self.eta = p.eta if p.eta is not None else getattr(opts, self.eta_option_field, 0.0)
        self.s_min_uncond = getattr(p, "s_min_uncond", 0.0)
        return {name: getattr(p, name) for name in self.extra_params if hasattr(p, name)}

    def add_infotext(self, p):
        if self.model_wrap_cfg.padded_cond_uncond:
            p.extra_generation_params["Pad conds"] = True
