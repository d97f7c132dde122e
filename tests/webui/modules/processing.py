"""modules/processing.py stand-in (A1111 1.10): the processing objects and process_images().

Hook order (notes §1.5/§1.7), all through p.scripts:
  p.scripts / p.script_args assignment -> setup (once both are truthy)
  process_images: before_process -> override_settings -> process_images_inner:
    fill_fields_from_opts, setup_prompts, seeds -> process -> p.init(...) (img2img: mask/crop/paste_to/init_latent)
    per n_iter: before_process_batch -> extra networks (after_extra_networks_activate) -> process_batch ->
      setup_conds -> p.sample(...) [process_before_every_sampling before each sampler call; hires: before_hr,
      process_before_every_sampling, second sampler call] -> post_sample -> decode -> postprocess_batch ->
      postprocess_batch_list -> per image: postprocess_image, postprocess_maskoverlay, overlay/paste-back,
      postprocess_image_after_composite, infotext
    grid -> extra networks deactivate -> Processed -> postprocess
Exceptions from sampling propagate (no postprocess); the caller's `closing(p)` still calls p.close().
Low VRAM (modules/lowvram.py): `lowvram.send_everything_to_cpu()` after each batch's VAE decode when the model is
in low-VRAM mode; under lowvram the hires conds are computed in setup_conds (before the text encoder is unloaded).
The stand-in writes its timeline events (`lowvram.record`) here: "text encode", "vae encode", "vae decode",
"sampling start"/"sampling end" (pass="txt2img"/"hires"/"img2img"); models that never went through
sd_models.send_model_to_device get it (`lowvram.ensure_applied`) when a job starts or the model is reloaded, and
the UNet modules get sd_hijack_unet's skip-size-tolerant torch.cat then too.
Inpainting masks (img2img init): p.image_mask is never changed; the local copy goes through create_binary_mask
(alpha of a translucent RGBA mask), invert ("Inpaint not masked"), Gaussian blur x then y, then "Only masked"
(crop box = get_crop_region_v2 + expand_crop_region, p.paste_to) or "Whole picture" (resize, overlay mask x2);
a blank mask under "Only masked" sets p.inpaint_full_res = False for good (later calls on the same p see it).
Not modelled: face restoration, colour correction (setup_color_correction only), firstpass_image,
styles, token merging, saving files, inpainting-model conditioning (image_conditioning is A1111's dummy zeros
[B,5,1,1]).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

import modules.sd_models as sd_models
import modules.shared as shared
from modules import devices, errors, extra_networks, images, infotext_utils, lowvram, masking, prompt_parser, rng, scripts
from modules import sd_hijack_unet, sd_samplers, sd_samplers_common, sd_unet
from modules.sd_samplers_common import approximation_indexes, decode_first_stage, images_tensor_to_samples  # noqa: F401
from modules.shared import cmd_opts, opts, state

opt_C = 4  # latent channels (SD1.x / SDXL)
opt_f = 8  # VAE downscale factor

_SEED_LIMIT = 4294967294  # random seeds are drawn from [0, this)


def program_version():
    return "v1.10.1-standin"


def setup_color_correction(image):
    """The LAB image colour correction is calibrated on (applying it is not modelled)."""
    return cv2.cvtColor(np.asarray(image.copy()), cv2.COLOR_RGB2LAB)


def uncrop(image, dest_size, paste_loc):
    """Scales `image` into the box paste_loc=(x, y, w, h) of a transparent RGBA canvas of dest_size."""
    left, top, box_w, box_h = paste_loc
    canvas = Image.new('RGBA', dest_size)
    canvas.paste(images.resize_image(1, image, box_w, box_h), (left, top))
    return canvas


def apply_overlay(image, paste_loc, overlay):
    """-> (image with the inpaint overlay composited on top, the same image before compositing)."""
    if overlay is None:
        return image, image.copy()
    base = image if paste_loc is None else uncrop(image, (overlay.width, overlay.height), paste_loc)
    composed = base.convert('RGBA')
    composed.alpha_composite(overlay)
    return composed.convert('RGB'), base.copy()


def create_binary_mask(image, round=True):
    """A mask image as mode L. An RGBA mask with some transparency is read from its alpha channel, which is
    thresholded (> 128 -> 255, else 0) when `round`; any other image is simply converted to L."""
    translucent = image.mode == 'RGBA' and image.getextrema()[-1] != (255, 255)
    if not translucent:
        return image.convert('L')
    alpha = image.getchannel('A')
    if not round:
        return alpha
    return alpha.point(lambda level: 255 if level > 128 else 0)


def txt2img_image_conditioning(sd_model, x, width, height):
    # Non-inpainting models get a placeholder of shape [B, 5, 1, 1]; only its batch dimension matters.
    return torch.zeros((x.shape[0], 5, 1, 1), dtype=x.dtype, device=x.device)


def get_fixed_seed(seed):
    """Seeds of -1, None, '' or text that is not a number are replaced by a random one; others pass through."""
    if isinstance(seed, str):
        try:
            seed = int(seed) if seed else -1
        except ValueError:
            seed = -1
    if seed is None or seed == -1:
        return int(random.randrange(_SEED_LIMIT))
    return seed


def fix_seed(p):
    p.seed, p.subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model, batch, target_device=None, check_for_nans=False):
    """VAE-decodes the latents one at a time into a DecodedSamples list (optionally NaN-checked, moved)."""
    if check_for_nans:
        devices.test_for_nans(batch, "unet")
    decoded = DecodedSamples()
    for latent in batch.split(1):
        pixels = decode_first_stage(model, latent)[0]
        lowvram.record("vae decode")
        if check_for_nans:
            devices.test_for_nans(pixels, "vae")
        decoded.append(pixels if target_device is None else pixels.to(target_device))
    return decoded


def _first_truthy(*candidates):
    """Like `a or b or c`: the first truthy candidate, else the last one."""
    return next((value for value in candidates if value), candidates[-1])


def _reset_caches(cls, *names):
    for name in names:
        setattr(cls, name, [None, None])


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    prompt_for_display: str = None
    negative_prompt: str = ""
    styles: list[str] = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool = None
    tiling: bool = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = None
    overlay_images: list = None
    eta: float = None
    do_not_reload_embeddings: bool = False
    denoising_strength: float = None
    ddim_discretize: str = None
    s_min_uncond: float = None
    s_churn: float = None
    s_tmax: float = None
    s_tmin: float = None
    s_noise: float = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    sampler_index: int = None
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    token_merging_ratio = 0
    token_merging_ratio_hr = 0
    disable_extra_networks: bool = False
    firstpass_image: Image.Image = None

    scripts_value: scripts.ScriptRunner = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)

    cached_uc = [None, None]
    cached_c = [None, None]

    comments: dict = None
    sampler: sd_samplers_common.Sampler | None = field(default=None, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    paste_to: tuple | None = field(default=None, init=False)
    is_hr_pass: bool = field(default=False, init=False)
    c: tuple = field(default=None, init=False)
    uc: tuple = field(default=None, init=False)
    rng: rng.ImageRNG | None = field(default=None, init=False)
    step_multiplier: int = field(default=1, init=False)
    color_corrections: list = field(default=None, init=False)
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    user: str = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    sd_vae_name: str = field(default=None, init=False)
    sd_vae_hash: str = field(default=None, init=False)
    is_api: bool = field(default=False, init=False)

    def __post_init__(self):
        self.comments = {}
        if self.styles is None:
            self.styles = []
        self.sampler_noise_scheduler_override = None
        for name in ("extra_generation_params", "override_settings"):
            if not getattr(self, name):
                setattr(self, name, {})
        if not self.script_args:
            self.script_args = {}  # an empty dict: slicing it in a hook raises (and is logged)
        self.refiner_checkpoint_info = None
        if not self.seed_enable_extras:  # variation seed and "resize seed from" are switched off
            self.subseed, self.subseed_strength = -1, 0
            self.seed_resize_from_w = self.seed_resize_from_h = 0
        # the cond caches are class-level lists shared by every p (close() may swap them for fresh ones)
        self.cached_c, self.cached_uc = StableDiffusionProcessing.cached_c, StableDiffusionProcessing.cached_uc

    def fill_fields_from_opts(self):
        for name in ("s_min_uncond", "s_churn", "s_tmin", "s_tmax", "s_noise"):
            if getattr(self, name) is None:
                setattr(self, name, getattr(opts, name))
        self.s_tmax = self.s_tmax or float('inf')  # 0 means "no upper limit"

    @property
    def sd_model(self):
        return shared.sd_model

    @sd_model.setter
    def sd_model(self, value):
        """Ignored: p.sd_model always reads shared.sd_model."""

    # setup() runs the first time both scripts and script_args are truthy, whichever is assigned last.
    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        self._maybe_setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        self._maybe_setup_scripts()

    def _maybe_setup_scripts(self):
        both_given = bool(self.scripts_value) and bool(self.script_args_value)
        if both_given and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        runner = self.scripts
        runner.setup_scrips(self, is_ui=not self.is_api)  # (sic: A1111's method name)

    def comment(self, text):
        self.comments[text] = 1

    def txt2img_image_conditioning(self, x, width=None, height=None):
        key = self.sd_model.model.conditioning_key
        self.is_using_inpainting_conditioning = key in ('hybrid', 'concat')
        return txt2img_image_conditioning(self.sd_model, x, width or self.width, height or self.height)

    def img2img_image_conditioning(self, source_image, latent_image, image_mask=None, round_image_mask=True):
        return torch.zeros((latent_image.shape[0], 5, 1, 1), dtype=latent_image.dtype, device=latent_image.device)

    def init(self, all_prompts, all_seeds, all_subseeds):
        pass

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        raise NotImplementedError()

    def close(self):
        self.sampler = self.c = self.uc = None
        if not opts.persistent_cond_cache:
            _reset_caches(StableDiffusionProcessing, "cached_c", "cached_uc")

    def get_token_merging_ratio(self, for_hr=False):
        if not for_hr:
            return self.token_merging_ratio or opts.token_merging_ratio
        return _first_truthy(self.token_merging_ratio_hr, opts.token_merging_ratio_hr, self.token_merging_ratio, opts.token_merging_ratio)

    def setup_prompts(self):
        positive, negative = self.prompt, self.negative_prompt
        if isinstance(positive, list):
            positives = positive
        else:
            count = len(negative) if isinstance(negative, list) else self.batch_size * self.n_iter
            positives = [positive] * count
        negatives = negative if isinstance(negative, list) else [negative] * len(positives)
        if len(positives) != len(negatives):
            raise RuntimeError(f"Received a different number of prompts ({len(positives)}) and negative prompts ({len(negatives)})")

        styles = shared.prompt_styles
        self.all_prompts = [styles.apply_styles_to_prompt(text, self.styles) for text in positives]
        self.all_negative_prompts = [styles.apply_negative_styles_to_prompt(text, self.styles) for text in negatives]
        self.main_prompt, self.main_negative_prompt = self.all_prompts[0], self.all_negative_prompts[0]

    def cached_params(self, required_prompts, steps, extra_network_data, hires_steps=None, use_old_scheduling=False):
        """The cache key: every input whose change makes a cached conditioning stale."""
        model_state = (shared.sd_model.sd_checkpoint_info, opts.CLIP_stop_at_last_layers, opts.fp8_storage, opts.cache_fp16_weight, opts.emphasis)
        return (required_prompts, steps, hires_steps, use_old_scheduling, model_state, extra_network_data,
                (opts.sdxl_crop_left, opts.sdxl_crop_top), (self.width, self.height))

    def get_conds_with_caching(self, function, required_prompts, steps, caches, extra_network_data, hires_steps=None):
        """Returns function(sd_model, prompts, steps, hires_steps, use_old_scheduling), reusing a result stored in
        any of `caches` ([key, value] lists) under the same key; a fresh result is stored in caches[0]."""
        key = self.cached_params(required_prompts, steps, extra_network_data, hires_steps, opts.use_old_scheduling)
        hit = next((slot for slot in caches if slot[0] is not None and slot[0] == key), None)
        if hit is not None:
            return hit[1]
        slot = caches[0]
        with devices.autocast():
            slot[1] = function(shared.sd_model, required_prompts, steps, hires_steps, opts.use_old_scheduling)
        lowvram.record("text encode")
        slot[0] = key
        return slot[1]

    @staticmethod
    def _denoiser_calls(sampler_name, steps):
        """How many denoiser calls `steps` sampling steps take with this sampler (Heun-like ones make ~2 a step)."""
        config = sd_samplers.find_sampler_config(sampler_name)
        return config.total_steps(steps) if config else steps

    def setup_conds(self):
        size = dict(width=self.width, height=self.height)
        positives = prompt_parser.SdConditioning(self.prompts, **size)
        negatives = prompt_parser.SdConditioning(self.negative_prompts, is_negative_prompt=True, **size)
        calls = self._denoiser_calls(self.sampler_name, self.steps)
        self.step_multiplier = calls // self.steps
        self.firstpass_steps = calls
        self.uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negatives, calls, [self.cached_uc], self.extra_network_data)
        self.c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, positives, calls, [self.cached_c], self.extra_network_data)

    def get_conds(self):
        return self.c, self.uc

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def save_samples(self) -> bool:
        if self.do_not_save_samples or not opts.samples_save:
            return False
        return opts.save_incomplete_images or not (state.interrupted or state.skipped)

    def _image_rng(self, shape):
        return rng.ImageRNG(shape, self.seeds, subseeds=self.subseeds, subseed_strength=self.subseed_strength,
                            seed_resize_from_h=self.seed_resize_from_h, seed_resize_from_w=self.seed_resize_from_w)


def _scalar(value):
    """A list-valued prompt or seed is summarised by its first entry."""
    return value[0] if isinstance(value, list) else value


class Processed:
    # attributes copied verbatim from p
    _FROM_P = ("prompt", "negative_prompt", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
               "batch_size", "restore_faces", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash",
               "seed_resize_from_w", "seed_resize_from_h", "extra_generation_params", "styles", "token_merging_ratio",
               "token_merging_ratio_hr", "eta", "ddim_discretize", "s_churn", "s_tmin", "s_tmax", "s_noise",
               "s_min_uncond", "sampler_noise_scheduler_override", "is_using_inpainting_conditioning")
    # the keys of js(), in A1111's order (all but the two prompts are attribute names)
    _JS_KEYS = ("prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed",
                "all_subseeds", "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps",
                "batch_size", "restore_faces", "face_restoration_model", "sd_model_name", "sd_model_hash",
                "sd_vae_name", "sd_vae_hash", "seed_resize_from_w", "seed_resize_from_h", "denoising_strength",
                "extra_generation_params", "index_of_first_image", "infotexts", "styles", "job_timestamp",
                "clip_skip", "is_using_inpainting_conditioning", "version")

    def __init__(self, p: StableDiffusionProcessing, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None, all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        for name in self._FROM_P:
            setattr(self, name, getattr(p, name))
        self.images = images_list
        self.info = info
        self.comments = "".join(f"{text}\n" for text in p.comments)
        self.image_cfg_scale = getattr(p, 'image_cfg_scale', None)
        self.denoising_strength = getattr(p, 'denoising_strength', None)
        self.face_restoration_model = opts.face_restoration_model if p.restore_faces else None
        self.index_of_first_image, self.job_timestamp = index_of_first_image, state.job_timestamp
        self.clip_skip = opts.CLIP_stop_at_last_layers

        self.prompt = _scalar(self.prompt)
        self.negative_prompt = _scalar(self.negative_prompt)
        self.seed = -1 if seed is None else int(_scalar(seed))
        self.subseed = -1 if subseed is None else int(_scalar(subseed))

        self.all_prompts = _first_truthy(all_prompts, p.all_prompts, [self.prompt])
        self.all_negative_prompts = _first_truthy(all_negative_prompts, p.all_negative_prompts, [self.negative_prompt])
        self.all_seeds = _first_truthy(all_seeds, p.all_seeds, [self.seed])
        self.all_subseeds = _first_truthy(all_subseeds, p.all_subseeds, [self.subseed])
        self.infotexts = infotexts or [info] * len(images_list)
        self.version = program_version()

    def js(self):
        data = {key: getattr(self, key) for key in self._JS_KEYS}
        data["prompt"] = self.all_prompts[0]
        data["negative_prompt"] = self.all_negative_prompts[0]
        return json.dumps(data, default=lambda o: None)

    def infotext(self, p: StableDiffusionProcessing, index):
        iteration, position = divmod(index, self.batch_size)
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[], position_in_batch=position, iteration=iteration)

    def get_token_merging_ratio(self, for_hr=False):
        return self.token_merging_ratio_hr if for_hr else self.token_merging_ratio


def _shown_if(flag, value):
    return value if flag else None


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0, use_main_prompt=False, index=None, all_negative_prompts=None):
    """The image's parameters text. extra_generation_params values may be strings, lists (indexed by `index`) or
    callables called with this function's locals (p, index, prompt_text, negative_prompt, ...); a failing callable
    is logged and dropped; None values are dropped; values go through infotext_utils.quote."""
    if use_main_prompt:
        index = 0
    elif index is None:
        index = iteration * p.batch_size + position_in_batch
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts

    if use_main_prompt:
        prompt_text, negative_prompt, seed = p.main_prompt, p.main_negative_prompt, p.all_seeds[0]
    else:
        prompt_text, negative_prompt, seed = all_prompts[index], all_negative_prompts[index], all_seeds[index]

    variation = p.subseed_strength != 0
    variation_seed = None
    if variation:
        variation_seed = p.all_subseeds[0] if use_main_prompt else all_subseeds[index]
    resize_from = None
    if p.seed_resize_from_w > 0 and p.seed_resize_from_h > 0:
        resize_from = f"{p.seed_resize_from_w}x{p.seed_resize_from_h}"
    clip_skip = getattr(p, 'clip_skip', opts.CLIP_stop_at_last_layers)
    tome, tome_hr = p.get_token_merging_ratio(), p.get_token_merging_ratio(for_hr=True)
    hires = getattr(p, 'enable_hr', False)
    inpaint_weight = getattr(p, "inpainting_mask_weight", opts.inpainting_mask_weight)

    labelled = [
        ("Steps", p.steps),
        ("Sampler", p.sampler_name),
        ("Schedule type", p.scheduler),
        ("CFG scale", p.cfg_scale),
        ("Image CFG scale", getattr(p, 'image_cfg_scale', None)),
        ("Seed", seed),
        ("Face restoration", _shown_if(p.restore_faces, opts.face_restoration_model)),
        ("Size", f"{p.width}x{p.height}"),
        ("Model hash", _shown_if(opts.add_model_hash_to_info, p.sd_model_hash)),
        ("Model", _shown_if(opts.add_model_name_to_info, p.sd_model_name)),
        ("VAE hash", _shown_if(opts.add_vae_hash_to_info, p.sd_vae_hash)),
        ("VAE", _shown_if(opts.add_vae_name_to_info, p.sd_vae_name)),
        ("Variation seed", variation_seed),
        ("Variation seed strength", _shown_if(variation, p.subseed_strength)),
        ("Seed resize from", resize_from),
        ("Denoising strength", p.extra_generation_params.get("Denoising strength")),
        ("Conditional mask weight", _shown_if(p.is_using_inpainting_conditioning, inpaint_weight)),
        ("Clip skip", _shown_if(clip_skip > 1, clip_skip)),
        ("Token merging ratio", _shown_if(tome != 0, tome)),
        ("Token merging ratio hr", _shown_if(hires and tome_hr != 0, tome_hr)),
        ("Init image hash", getattr(p, 'init_img_hash', None)),
        ("RNG", _shown_if(opts.randn_source != "GPU", opts.randn_source)),
        ("Tiling", _shown_if(p.tiling, "True")),
    ]
    generation_params = dict(labelled)
    generation_params.update(p.extra_generation_params)  # an extension's key keeps the built-in key's position
    generation_params["Version"] = _shown_if(opts.add_version_to_infotext, program_version())
    generation_params["User"] = _shown_if(opts.add_user_name_to_info, p.user)

    context = dict(locals())
    for key, value in list(generation_params.items()):
        if not isinstance(value, list) and not callable(value):
            continue
        try:  # a list holds one value per image of the job; a callable computes the value
            resolved = value[index] if isinstance(value, list) else value(**context)
        except Exception:
            errors.report(f'Error creating infotext for key "{key}"', exc_info=True)
            resolved = None
        generation_params[key] = resolved

    pairs = [key if key == value else f"{key}: {infotext_utils.quote(value)}" for key, value in generation_params.items() if value is not None]
    lines = [prompt_text]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(pairs))
    return "\n".join(lines).strip()


def _reload_model_weights(**kwargs):
    """sd_models.reload_model_weights; a model that becomes current has been sent to its device (lowvram.apply)."""
    sd_models.reload_model_weights(**kwargs)
    lowvram.ensure_applied(shared.sd_model)


def process_images(p: StableDiffusionProcessing) -> Processed:
    lowvram.ensure_applied(shared.sd_model)  # done at load in A1111 (sd_models.send_model_to_device)
    sd_hijack_unet.apply()  # A1111 installs it at model load (sd_hijack's optimizations)
    if p.scripts is not None:
        p.scripts.before_process(p)

    # the options an override is about to change, to put back afterwards
    restore = {key: opts.data[key] for key in p.override_settings if key in opts.data}
    try:
        wanted = p.override_settings.get('sd_model_checkpoint')
        if sd_models.checkpoint_aliases.get(wanted) is None:  # no (known) checkpoint override: use the opts one
            p.override_settings.pop('sd_model_checkpoint', None)
            _reload_model_weights()

        for key, value in p.override_settings.items():
            opts.set(key, value, is_api=True, run_callbacks=False)
            if key == 'sd_model_checkpoint':
                _reload_model_weights()

        sd_models.apply_token_merging(p.sd_model, p.get_token_merging_ratio())
        sd_samplers.fix_p_invalid_sampler_and_scheduler(p)
        return process_images_inner(p)
    finally:
        sd_models.apply_token_merging(p.sd_model, 0)
        if p.override_settings_restore_afterwards:
            for key, value in restore.items():
                setattr(opts, key, value)


def _to_pil(x_sample):
    """A [3, H, W] tensor in 0..1 -> an RGB PIL image."""
    array = (255. * np.moveaxis(x_sample.cpu().numpy(), 0, 2)).astype(np.uint8)
    return Image.fromarray(array)


def _prepare_job(p):
    """Everything process_images_inner settles before the process() hook: defaults, model names, prompts, seeds."""
    if isinstance(p.prompt, list):
        assert len(p.prompt) > 0
    else:
        assert p.prompt is not None

    devices.torch_gc()
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    for attribute, option in (("restore_faces", "face_restoration"), ("tiling", "tiling")):
        if getattr(p, attribute) is None:  # not given: the setting decides
            setattr(p, attribute, getattr(opts, option))

    if p.refiner_checkpoint not in (None, "", "None", "none"):
        p.refiner_checkpoint_info = sd_models.get_closet_checkpoint_match(p.refiner_checkpoint)
        if p.refiner_checkpoint_info is None:
            raise Exception(f'Could not find checkpoint with name {p.refiner_checkpoint}')

    model = shared.sd_model
    p.sd_model_name = model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = model.sd_model_hash
    p.sd_vae_name = p.sd_vae_hash = None

    p.fill_fields_from_opts()
    p.setup_prompts()

    count = len(p.all_prompts)
    # with a variation seed every image keeps the base seed; otherwise seeds count up
    step = 0 if p.subseed_strength != 0 else 1
    p.all_seeds = seed if isinstance(seed, list) else [int(seed) + i * step for i in range(count)]
    p.all_subseeds = subseed if isinstance(subseed, list) else [int(subseed) + i for i in range(count)]


def _activate_networks_unconditionally(p, data):
    with devices.autocast():
        extra_networks.activate(p, data)


def _activate_networks(p, data):
    """extra_networks.activate (under autocast) unless the job disables extra networks."""
    if p.disable_extra_networks:
        return
    with devices.autocast():
        extra_networks.activate(p, data)


def _stop_requested():
    return bool(state.interrupted or state.stopping_generation)


def _attach_infotext(image, text):
    if opts.enable_pnginfo:
        image.info["parameters"] = text


def _batch_infotext(p, index=0, use_main_prompt=False):
    return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index, all_negative_prompts=p.negative_prompts)


def _sample_batch(p, n):
    """One batch up to decoded pixels in 0..1 (after postprocess_batch_list), or None when the job stops early."""
    window = slice(n * p.batch_size, (n + 1) * p.batch_size)
    p.prompts, p.negative_prompts = p.all_prompts[window], p.all_negative_prompts[window]
    p.seeds, p.subseeds = p.all_seeds[window], p.all_subseeds[window]
    channels = getattr(shared.sd_model, 'latent_channels', opt_C)
    p.rng = p._image_rng((channels, p.height // opt_f, p.width // opt_f))

    batch_info = dict(batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
    if p.scripts is not None:
        p.scripts.before_process_batch(p, **batch_info)
    if not p.prompts:
        return None

    p.parse_extra_network_prompts()
    _activate_networks(p, p.extra_network_data)
    if p.scripts is not None:
        p.scripts.process_batch(p, **batch_info)

    p.setup_conds()
    if n == 0 and not cmd_opts.no_prompt_history:
        Processed(p, []).infotext(p, 0)  # A1111 writes this to params.txt; the stand-in discards it
    if p.n_iter > 1:
        shared.state.job = f"Batch {n + 1} out of {p.n_iter}"

    precision = devices.without_autocast() if devices.unet_needs_upcast else devices.autocast()
    with precision:
        latents = p.sample(conditioning=p.c, unconditional_conditioning=p.uc, seeds=p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength, prompts=p.prompts)

    if p.scripts is not None:
        sampled = scripts.PostSampleArgs(latents)
        p.scripts.post_sample(p, sampled)
        latents = sampled.samples

    if getattr(latents, 'already_decoded', False):
        decoded = latents
    else:
        devices.test_for_nans(latents, "unet")
        decoded = decode_latent_batch(p.sd_model, latents, target_device=devices.cpu, check_for_nans=True)
    pixels = ((torch.stack(decoded).float() + 1.0) / 2.0).clamp(0.0, 1.0)
    del latents

    lowvram.ensure_applied(shared.sd_model)
    if lowvram.is_enabled(shared.sd_model):
        lowvram.send_everything_to_cpu()

    state.nextjob()

    if p.scripts is not None:
        p.scripts.postprocess_batch(p, pixels, batch_number=n)
        p.prompts, p.negative_prompts = p.all_prompts[window], p.all_negative_prompts[window]
        listed = scripts.PostprocessBatchListArgs(list(pixels))
        p.scripts.postprocess_batch_list(p, listed, batch_number=n)
        pixels = listed.images
    return pixels


def _finish_image(p, i, x_sample):
    """postprocess_image -> postprocess_maskoverlay -> overlay / paste back -> postprocess_image_after_composite.
    Returns (final image, the mask for overlay as the scripts left it)."""
    image = _to_pil(x_sample)
    if p.scripts is not None:
        hook_args = scripts.PostprocessImageArgs(image)
        p.scripts.postprocess_image(p, hook_args)
        image = hook_args.image

    mask_for_overlay = getattr(p, "mask_for_overlay", None)
    overlays = getattr(p, "overlay_images", None)
    overlay = None
    if opts.overlay_inpaint and overlays is not None and i < len(overlays):
        overlay = overlays[i]
    if p.scripts is not None:
        hook_args = scripts.PostProcessMaskOverlayArgs(i, mask_for_overlay, overlay)
        p.scripts.postprocess_maskoverlay(p, hook_args)
        mask_for_overlay, overlay = hook_args.mask_for_overlay, hook_args.overlay_image

    image, _before_overlay = apply_overlay(image, p.paste_to, overlay)
    if p.scripts is not None:
        hook_args = scripts.PostprocessImageArgs(image)
        p.scripts.postprocess_image_after_composite(p, hook_args)
        image = hook_args.image
    return image, mask_for_overlay


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    """The main loop shared by txt2img and img2img."""
    _prepare_job(p)
    if p.scripts is not None:
        p.scripts.process(p)

    infotexts, output_images = [], []
    with torch.no_grad(), p.sd_model.ema_scope():
        with devices.autocast():
            p.init(p.all_prompts, p.all_seeds, p.all_subseeds)
            sd_unet.apply_unet()  # the replacement UNet the setting names, if any
        if state.job_count == -1:  # not set by the caller: one job per batch
            state.job_count = p.n_iter

        for n in range(p.n_iter):
            p.iteration = n
            state.skipped = False  # a skip ends only the batch it was requested in
            if _stop_requested():
                break
            _reload_model_weights()  # the refiner may have swapped the model

            pixels = _sample_batch(p, n)
            if pixels is None:
                break

            for i, x_sample in enumerate(pixels):
                p.batch_index = i
                image, mask_for_overlay = _finish_image(p, i, x_sample)
                text = _batch_infotext(p, i)
                _attach_infotext(image, text)
                output_images.append(image)
                infotexts.append(text)
                if opts.return_mask and mask_for_overlay is not None:
                    output_images.append(mask_for_overlay.convert('RGB'))
            del pixels

        index_of_first_image = 0
        if not infotexts:  # nothing was generated: still describe the job
            infotexts.append(Processed(p, []).infotext(p, 0))
        p.color_corrections = None
        wants_grid = (opts.return_grid or opts.grid_save) and not p.do_not_save_grid
        too_few = opts.grid_only_if_multiple and len(output_images) < 2
        if wants_grid and not too_few:
            grid = images.image_grid(output_images, p.batch_size)
            if opts.return_grid:
                text = _batch_infotext(p, use_main_prompt=True)
                _attach_infotext(grid, text)
                output_images.insert(0, grid)
                infotexts.insert(0, text)
                index_of_first_image = 1

    if p.extra_network_data and not p.disable_extra_networks:
        extra_networks.deactivate(p, p.extra_network_data)

    result = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                       index_of_first_image=index_of_first_image, infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, result)
    return result


def old_hires_fix_first_pass_dimensions(width, height):
    """The pre-1.0 first-pass size: about 512x512 pixels with the final aspect, each side rounded up to 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str = None
    hr_sampler_name: str = None
    hr_scheduler: str = None
    hr_prompt: str = ''
    hr_negative_prompt: str = ''
    force_task_id: str = None

    cached_hr_uc = [None, None]
    cached_hr_c = [None, None]

    hr_checkpoint_info: dict = field(default=None, init=False)
    hr_upscale_to_x: int = field(default=0, init=False)
    hr_upscale_to_y: int = field(default=0, init=False)
    truncate_x: int = field(default=0, init=False)
    truncate_y: int = field(default=0, init=False)
    applied_old_hires_behavior_to: tuple = field(default=None, init=False)
    latent_scale_mode: dict = field(default=None, init=False)
    hr_c: tuple | None = field(default=None, init=False)
    hr_uc: tuple | None = field(default=None, init=False)
    all_hr_prompts: list = field(default=None, init=False)
    all_hr_negative_prompts: list = field(default=None, init=False)
    hr_prompts: list = field(default=None, init=False)
    hr_negative_prompts: list = field(default=None, init=False)
    hr_extra_network_data: list = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        if self.firstphase_width or self.firstphase_height:
            # legacy "first pass size" arguments: the given size becomes the hires target
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.width, self.height
            self.width, self.height = self.firstphase_width, self.firstphase_height
        cls = StableDiffusionProcessingTxt2Img
        self.cached_hr_c, self.cached_hr_uc = cls.cached_hr_c, cls.cached_hr_uc

    def calculate_target_resolution(self):
        """hr_upscale_to_x/y (no rounding to 8) and, when both resize sides are given, the latent overshoot
        truncate_x/y (in latent pixels) of the cover-the-box resize."""
        if opts.use_old_hires_fix_width_height and self.applied_old_hires_behavior_to != (self.width, self.height):
            # width/height were the final size: the first pass gets a ~512x512 size of the same aspect
            self.hr_resize_x, self.hr_resize_y = self.width, self.height
            self.hr_upscale_to_x, self.hr_upscale_to_y = self.width, self.height
            self.width, self.height = old_hires_fix_first_pass_dimensions(self.width, self.height)
            self.applied_old_hires_behavior_to = (self.width, self.height)

        want_w, want_h = self.hr_resize_x, self.hr_resize_y
        if not want_w and not want_h:
            scale = self.hr_scale
            self.extra_generation_params["Hires upscale"] = scale
            self.hr_upscale_to_x, self.hr_upscale_to_y = int(self.width * scale), int(self.height * scale)
            return

        self.extra_generation_params["Hires resize"] = f"{want_w}x{want_h}"
        fit_width = (want_w, want_w * self.height // self.width)
        fit_height = (want_h * self.width // self.height, want_h)
        if not want_h:
            self.hr_upscale_to_x, self.hr_upscale_to_y = fit_width
        elif not want_w:
            self.hr_upscale_to_x, self.hr_upscale_to_y = fit_height
        else:
            # both given: cover the box keeping the aspect ratio, then crop the overshoot in latent space
            wider_box = self.width / self.height < want_w / want_h
            self.hr_upscale_to_x, self.hr_upscale_to_y = fit_width if wider_box else fit_height
            self.truncate_x = (self.hr_upscale_to_x - want_w) // opt_f
            self.truncate_y = (self.hr_upscale_to_y - want_h) // opt_f

    def init(self, all_prompts, all_seeds, all_subseeds):
        if not self.enable_hr:
            return
        params = self.extra_generation_params
        params["Denoising strength"] = self.denoising_strength

        wanted = self.hr_checkpoint_name
        if wanted and wanted != 'Use same checkpoint':
            info = sd_models.get_closet_checkpoint_match(wanted)
            if info is None:
                raise Exception(f'Could not find checkpoint with name {wanted}')
            self.hr_checkpoint_info = info
            params["Hires checkpoint"] = info.short_title

        if self.hr_sampler_name is not None and self.hr_sampler_name != self.sampler_name:
            params["Hires sampler"] = self.hr_sampler_name

        def differs_from(all_attr, first_pass_key):
            # an infotext callable: the hires text of image `index`, only where it differs from the first pass
            def value(p, index, **context):
                text = getattr(p, all_attr)[index]
                return None if text == context[first_pass_key] else text
            return value

        params["Hires prompt"] = differs_from("all_hr_prompts", "prompt_text")
        params["Hires negative prompt"] = differs_from("all_hr_negative_prompts", "negative_prompt")
        params["Hires schedule type"] = None  # filled in by the sampler
        if self.hr_scheduler is None:
            self.hr_scheduler = self.scheduler

        modes = shared.latent_upscale_modes
        if self.hr_upscaler is None:
            self.latent_scale_mode = modes.get(shared.latent_upscale_default_mode, "nearest")
        else:
            self.latent_scale_mode = modes.get(self.hr_upscaler)
        if self.latent_scale_mode is None and all(upscaler.name != self.hr_upscaler for upscaler in shared.sd_upscalers):
            raise Exception(f"could not find upscaler named {self.hr_upscaler}")

        self.calculate_target_resolution()

        if not state.processing_has_refined_job_count:  # every batch now takes two jobs
            state.job_count = (self.n_iter if state.job_count == -1 else state.job_count) * 2
            state.processing_has_refined_job_count = True

        if self.hr_second_pass_steps:
            params["Hires steps"] = self.hr_second_pass_steps
        if self.hr_upscaler is not None:
            params["Hires upscaler"] = self.hr_upscaler

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        if self.enable_hr and self.firstpass_image is not None:
            raise NotImplementedError("firstpass_image is not modelled by the stand-in")

        noise = self.rng.next()
        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=noise, noise=noise, c=conditioning, uc=unconditional_conditioning)
        lowvram.record("sampling start", **{"pass": "txt2img"})
        first_pass = self.sampler.sample(self, noise, conditioning, unconditional_conditioning, image_conditioning=self.txt2img_image_conditioning(noise))
        lowvram.record("sampling end", **{"pass": "txt2img"})
        del noise
        if not self.enable_hr:
            return first_pass

        pixels = None
        if self.latent_scale_mode is None:  # an image upscaler works on decoded pixels
            pixels = torch.stack(decode_latent_batch(self.sd_model, first_pass, target_device=devices.cpu, check_for_nans=True)).to(dtype=torch.float32)

        with sd_models.SkipWritingToConfig():
            _reload_model_weights(info=self.hr_checkpoint_info)
        return self.sample_hr_pass(first_pass, pixels, seeds, subseeds, subseed_strength, prompts)

    def _upscaled_batch(self, decoded_samples, width, height):
        """Decoded first-pass images (-1..1) through the image upscaler -> a [B, 3, H, W] tensor in 0..1."""
        resized = []
        for x_sample in ((decoded_samples + 1.0) / 2.0).clamp(0.0, 1.0):
            image = images.resize_image(0, _to_pil(x_sample), width, height, upscaler_name=self.hr_upscaler)
            resized.append(np.moveaxis(np.asarray(image, dtype=np.float32) / 255.0, 2, 0))
        return torch.from_numpy(np.stack(resized)).to(shared.device, dtype=devices.dtype_vae)

    def sample_hr_pass(self, samples, decoded_samples, seeds, subseeds, subseed_strength, prompts):
        if shared.state.interrupted:
            return samples

        self.is_hr_pass = True
        width, height = self.hr_upscale_to_x, self.hr_upscale_to_y
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)

        if self.latent_scale_mode is None:
            pixels = self._upscaled_batch(decoded_samples, width, height)
            latents = images_tensor_to_samples(pixels, approximation_indexes.get(opts.sd_vae_encode_method))
            lowvram.record("vae encode")
            image_conditioning = self.img2img_image_conditioning(pixels, latents)
        else:
            mode = self.latent_scale_mode
            latents = torch.nn.functional.interpolate(samples, size=(height // opt_f, width // opt_f), mode=mode["mode"], antialias=mode["antialias"])
            image_conditioning = self.txt2img_image_conditioning(latents)

        shared.state.nextjob()

        # drop the overshoot of a cover-the-box resize, split between both sides
        cut_x, cut_y = self.truncate_x, self.truncate_y
        rows, cols = latents.shape[2], latents.shape[3]
        latents = latents[:, :, cut_y // 2:rows - (cut_y + 1) // 2, cut_x // 2:cols - (cut_x + 1) // 2]

        self.rng = self._image_rng(latents.shape[1:])
        noise = self.rng.next()

        _activate_networks(self, self.hr_extra_network_data)
        with devices.autocast():
            self.calculate_hr_conds()

        runner = self.scripts
        if runner is not None:
            runner.before_hr(self)
            runner.process_before_every_sampling(p=self, x=latents, noise=noise, c=self.hr_c, uc=self.hr_uc)

        steps = self.hr_second_pass_steps or self.steps
        lowvram.record("sampling start", **{"pass": "hires"})
        latents = self.sampler.sample_img2img(self, latents, noise, self.hr_c, self.hr_uc, steps=steps, image_conditioning=image_conditioning)
        lowvram.record("sampling end", **{"pass": "hires"})

        self.sampler = None
        result = decode_latent_batch(self.sd_model, latents, target_device=devices.cpu, check_for_nans=True)
        self.is_hr_pass = False
        return result

    def close(self):
        super().close()
        self.hr_c = self.hr_uc = None
        if not opts.persistent_cond_cache:
            _reset_caches(StableDiffusionProcessingTxt2Img, "cached_hr_c", "cached_hr_uc")

    def setup_prompts(self):
        super().setup_prompts()
        if not self.enable_hr:
            return
        # an empty hires prompt means "the same as the first pass"
        self.hr_prompt = self.prompt if self.hr_prompt == '' else self.hr_prompt
        self.hr_negative_prompt = self.negative_prompt if self.hr_negative_prompt == '' else self.hr_negative_prompt

        count = self.batch_size * self.n_iter
        positives = self.hr_prompt if isinstance(self.hr_prompt, list) else [self.hr_prompt] * count
        negatives = self.hr_negative_prompt if isinstance(self.hr_negative_prompt, list) else [self.hr_negative_prompt] * count
        styles = shared.prompt_styles
        self.all_hr_prompts = [styles.apply_styles_to_prompt(text, self.styles) for text in positives]
        self.all_hr_negative_prompts = [styles.apply_negative_styles_to_prompt(text, self.styles) for text in negatives]

    def calculate_hr_conds(self):
        if self.hr_c is not None:
            return
        size = dict(width=self.hr_upscale_to_x, height=self.hr_upscale_to_y)
        positives = prompt_parser.SdConditioning(self.hr_prompts, **size)
        negatives = prompt_parser.SdConditioning(self.hr_negative_prompts, is_negative_prompt=True, **size)
        hires_calls = self._denoiser_calls(self.hr_sampler_name or self.sampler_name, self.hr_second_pass_steps or self.steps)
        # the first-pass caches are searched too, so unchanged hires prompts reuse the first-pass conds
        self.hr_uc = self.get_conds_with_caching(prompt_parser.get_learned_conditioning, negatives, self.firstpass_steps, [self.cached_hr_uc, self.cached_uc], self.hr_extra_network_data, hires_calls)
        self.hr_c = self.get_conds_with_caching(prompt_parser.get_multicond_learned_conditioning, positives, self.firstpass_steps, [self.cached_hr_c, self.cached_c], self.hr_extra_network_data, hires_calls)

    def setup_conds(self):
        if self.is_hr_pass:  # called again during the hires pass (a refiner swap): only the hires conds
            self.hr_c = None
            self.calculate_hr_conds()
            return
        super().setup_conds()
        self.hr_c = self.hr_uc = None
        if not self.enable_hr or self.hr_checkpoint_info is not None:
            return
        if shared.opts.hires_fix_use_firstpass_conds:
            self.calculate_hr_conds()
        elif lowvram.is_enabled(shared.sd_model) and shared.sd_model.sd_checkpoint_info == sd_models.select_checkpoint():
            # low VRAM: the hires conds are made now, while the text encoder is still loaded (with the hires
            # prompts' extra networks activated for the moment)
            _activate_networks_unconditionally(self, self.hr_extra_network_data)
            self.calculate_hr_conds()
            _activate_networks_unconditionally(self, self.extra_network_data)

    def get_conds(self):
        if self.is_hr_pass:
            return self.hr_c, self.hr_uc
        return super().get_conds()

    def parse_extra_network_prompts(self):
        result = super().parse_extra_network_prompts()
        if self.enable_hr:
            start = self.iteration * self.batch_size
            self.hr_negative_prompts = self.all_hr_negative_prompts[start:start + self.batch_size]
            self.hr_prompts, self.hr_extra_network_data = extra_networks.parse_prompts(self.all_hr_prompts[start:start + self.batch_size])
        return result


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    init_images: list = None
    resize_mode: int = 0
    denoising_strength: float = 0.75
    image_cfg_scale: float = None
    mask: Any = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float = None
    latent_mask: Image.Image = None
    force_task_id: str = None

    image_mask: Any = field(default=None, init=False)
    nmask: torch.Tensor = field(default=None, init=False)
    image_conditioning: torch.Tensor = field(default=None, init=False)
    init_img_hash: str = field(default=None, init=False)
    mask_for_overlay: Image.Image = field(default=None, init=False)
    init_latent: torch.Tensor = field(default=None, init=False)

    def __post_init__(self):
        super().__post_init__()
        # the constructor's `mask` is the user's mask image; p.mask later holds the latent keep-mask
        self.image_mask, self.mask = self.mask, None
        if self.initial_noise_multiplier is None:
            self.initial_noise_multiplier = opts.initial_noise_multiplier

    @property
    def mask_blur(self):
        same = self.mask_blur_x == self.mask_blur_y
        return self.mask_blur_x if same else None

    @mask_blur.setter
    def mask_blur(self, value):
        if isinstance(value, int):  # the dataclass default (None, or the property object itself) is ignored
            self.mask_blur_x = self.mask_blur_y = value

    @staticmethod
    def _gaussian_blur(mask, sigma, horizontal):
        kernel = 2 * int(2.5 * sigma + 0.5) + 1
        size = (kernel, 1) if horizontal else (1, kernel)
        return Image.fromarray(cv2.GaussianBlur(np.array(mask), size, sigma))

    def _prepare_mask(self):
        """Binary mask -> invert -> blur x, y -> crop ("Only masked") or resize ("Whole picture").
        Returns (processing-size mask or None, crop_region or None)."""
        params = self.extra_generation_params
        mask = create_binary_mask(self.image_mask, round=self.mask_round)
        if self.inpainting_mask_invert:
            mask = ImageOps.invert(mask)
            params["Mask mode"] = "Inpaint not masked"
        for sigma, horizontal in ((self.mask_blur_x, True), (self.mask_blur_y, False)):
            if sigma > 0:
                mask = self._gaussian_blur(mask, sigma, horizontal)
        if self.mask_blur_x > 0 or self.mask_blur_y > 0:
            params["Mask blur"] = self.mask_blur
        self.overlay_images = []

        if not self.inpaint_full_res:
            mask = images.resize_image(self.resize_mode, mask, self.width, self.height)
            # the overlay uses the mask at double strength, so the blur fades in over half its width
            strong = np.clip(np.asarray(mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8)
            self.mask_for_overlay = Image.fromarray(strong)
            return mask, None

        self.mask_for_overlay = mask
        gray = mask.convert('L')
        region = masking.get_crop_region_v2(gray, self.inpaint_full_res_padding)  # taken on the blurred mask
        if not region:  # a blank mask: fall back to plain img2img
            self.mask_for_overlay = None
            self.inpaint_full_res = False
            self.comment('Unable to perform "Inpaint Only mask" because mask is blank, switch to img2img mode.')
            return None, None
        region = masking.expand_crop_region(region, self.width, self.height, gray.width, gray.height)
        left, top, right, bottom = region
        self.paste_to = (left, top, right - left, bottom - top)
        params["Inpaint area"] = "Only masked"
        params["Masked area padding"] = self.inpaint_full_res_padding
        return images.resize_image(2, gray.crop(region), self.width, self.height), region

    def _prepare_init_image(self, img, image_mask, latent_mask, crop_region):
        """One init image -> a [3, H, W] float array in 0..1 (overlay recorded, crop taken, masked area filled)."""
        image = images.flatten(img, opts.img2img_background_color)
        whole_frame = crop_region is None and self.resize_mode != 3  # mode 3 resizes in latent space instead
        if whole_frame:
            image = images.resize_image(self.resize_mode, image, self.width, self.height)

        if image_mask is not None:
            if self.mask_for_overlay.size != image.size:
                self.mask_for_overlay = images.resize_image(self.resize_mode, self.mask_for_overlay, image.width, image.height)
            # the overlay: the init image where it is kept, transparent where it is inpainted
            kept = Image.new('RGBa', image.size)
            kept.paste(image.convert("RGBA").convert("RGBa"), mask=ImageOps.invert(self.mask_for_overlay.convert('L')))
            self.overlay_images.append(kept.convert('RGBA'))

        if crop_region is not None:  # the crop is taken from the full-resolution init image
            image = images.resize_image(2, image.crop(crop_region), self.width, self.height)

        if image_mask is not None and self.inpainting_fill != 1:  # every mode but "original" pre-fills the hole
            image = masking.fill(image, latent_mask)
            if self.inpainting_fill == 0:
                params = self.extra_generation_params
                params["Masked content"] = 'fill'

        return np.moveaxis(np.asarray(image, dtype=np.float32) / 255.0, 2, 0)

    def init(self, all_prompts, all_seeds, all_subseeds):
        self.extra_generation_params["Denoising strength"] = self.denoising_strength
        self.image_cfg_scale = None  # only InstructPix2Pix ("edit") models use it
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)

        image_mask, crop_region = (None, None) if self.image_mask is None else self._prepare_mask()
        latent_mask = image_mask if self.latent_mask is None else self.latent_mask

        arrays = [self._prepare_init_image(img, image_mask, latent_mask, crop_region) for img in self.init_images]
        if len(arrays) == 1:  # one init image serves the whole batch
            batch = np.repeat(arrays[0][None], self.batch_size, axis=0)
            if self.overlay_images is not None:
                self.overlay_images = self.overlay_images * self.batch_size
        elif len(arrays) <= self.batch_size:
            self.batch_size = len(arrays)
            batch = np.stack(arrays)
        else:
            raise RuntimeError(f"bad number of images passed: {len(arrays)}; expecting {self.batch_size} or less")

        image = torch.from_numpy(batch).to(shared.device, dtype=devices.dtype_vae)
        self.init_latent = images_tensor_to_samples(image, approximation_indexes.get(opts.sd_vae_encode_method), self.sd_model)
        lowvram.record("vae encode")
        if self.resize_mode == 3:  # "just resize (latent upscale)"
            self.init_latent = torch.nn.functional.interpolate(self.init_latent, size=(self.height // opt_f, self.width // opt_f), mode="bilinear")

        if image_mask is not None:
            self._set_latent_masks(latent_mask, all_seeds)

        self.image_conditioning = self.img2img_image_conditioning(image * 2 - 1, self.init_latent, image_mask, self.mask_round)

    def _set_latent_masks(self, latent_mask, all_seeds):
        """p.nmask (1 = inpaint) and p.mask (1 = keep) at latent size, then "Masked content" 2/3 applied."""
        channels, rows, cols = self.init_latent.shape[1:]
        small = latent_mask.convert('RGB').resize((cols, rows))
        weight = np.asarray(small, dtype=np.float32)[..., 0] / 255
        if self.mask_round:
            weight = np.around(weight)
        weight = np.repeat(weight[None], channels, axis=0)
        self.mask = torch.tensor(1.0 - weight, device=shared.device).type(devices.dtype)
        self.nmask = torch.tensor(weight, device=shared.device).type(devices.dtype)

        if self.inpainting_fill == 2:  # latent noise
            count = self.init_latent.shape[0]
            noise = torch.stack([rng.randn(seed, self.init_latent.shape[1:]) for seed in all_seeds[:count]])
            self.init_latent = self.init_latent * self.mask + noise * self.nmask
            self.extra_generation_params["Masked content"] = 'latent noise'
        elif self.inpainting_fill == 3:  # latent nothing
            self.init_latent = self.init_latent * self.mask
            self.extra_generation_params["Masked content"] = 'latent nothing'

    def sample(self, conditioning, unconditional_conditioning, seeds, subseeds, subseed_strength, prompts):
        noise = self.rng.next()
        factor = self.initial_noise_multiplier
        if factor != 1.0:
            self.extra_generation_params["Noise multiplier"] = factor
            noise *= factor

        if self.scripts is not None:
            self.scripts.process_before_every_sampling(p=self, x=self.init_latent, noise=noise, c=conditioning, uc=unconditional_conditioning)
        lowvram.record("sampling start", **{"pass": "img2img"})
        latents = self.sampler.sample_img2img(self, self.init_latent, noise, conditioning, unconditional_conditioning, image_conditioning=self.image_conditioning)
        lowvram.record("sampling end", **{"pass": "img2img"})

        if self.mask is None:
            return latents
        # the final blend: original latents where the mask keeps them
        blend = scripts.MaskBlendArgs(latents, self.nmask, self.init_latent, self.mask, latents * self.nmask + self.init_latent * self.mask)
        if self.scripts is not None:
            self.scripts.on_mask_blend(self, blend)
        return blend.blended_latent

    def get_token_merging_ratio(self, for_hr=False):
        explicit = "token_merging_ratio" in self.override_settings and opts.token_merging_ratio
        return _first_truthy(self.token_merging_ratio, explicit, opts.token_merging_ratio_img2img, opts.token_merging_ratio)
