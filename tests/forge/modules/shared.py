"""modules/shared.py stand-in: opts (Options with Forge's defaults for what processing reads; `add_option`, `set`,
`onchange`, unknown names raise AttributeError), cmd_opts (a Namespace of the flags used), state (the job state:
interrupted / skipped, job_count, sampling_step / sampling_steps, begin / end / nextjob), sd_model (set by sd_models),
the folders, latent upscale modes and upscaler names, prompt styles (identity), total_tqdm (no-op)."""
import argparse
import types

from modules.paths_internal import data_path, extensions_dir, models_path, script_path  # noqa: F401


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None, **kwargs):
        self.default, self.label, self.component, self.component_args = default, label, component, component_args
        self.onchange, self.section = onchange, section
        self.comment_before = self.comment_after = ""

    def info(self, text):
        self.comment_after += f"({text})"
        return self

    def html(self, text):
        return self

    def needs_reload_ui(self):
        return self

    def needs_restart(self):
        return self


DEFAULTS = dict(
    samples_save=False, grid_save=False, return_grid=True, grid_only_if_multiple=True, enable_pnginfo=True,
    persistent_cond_cache=True, CLIP_stop_at_last_layers=1, skip_early_cond=0.0, s_min_uncond=0.0, s_min_uncond_all=False,
    s_churn=0.0, s_tmin=0.0, s_tmax=0.0, s_noise=1.0, eta_ancestral=1.0, eta_ddim=0.0, use_old_scheduling=False,
    sdxl_crop_left=0, sdxl_crop_top=0, img2img_fix_steps=False, img2img_extra_noise=0.0, initial_noise_multiplier=1.0,
    always_discard_next_to_last_sigma=False, sigma_min=0.0, sigma_max=0.0, rho=0.0, sgm_noise_multiplier=False,
    use_old_hires_fix_width_height=False, hires_fix_use_firstpass_conds=False, inpainting_mask_weight=1.0,
    img2img_color_correction=False, img2img_background_color="#ffffff", overlay_inpaint=True, return_mask=False,
    return_mask_composite=False, save_mask=False, save_mask_composite=False, sd_noise_schedule="Default",
    token_merging_ratio=0.0, token_merging_ratio_hr=0.0, token_merging_ratio_img2img=0.0, sd_vae_encode_method="Full",
    sd_vae_decode_method="Full", face_restoration=False, tiling=False, sd_model_checkpoint=None, forge_additional_modules=[],
    emphasis="Original", fp8_storage="Disable", cache_fp16_weight=False, live_previews_enable=False,
    add_model_name_to_info=True, add_model_hash_to_info=True, add_version_to_infotext=True, add_user_name_to_info=False,
    outdir_txt2img_samples="", outdir_img2img_samples="", outdir_txt2img_grids="", outdir_img2img_grids="",
    infotext_skip_pasting=[], infotext_styles="Apply if any", show_progress_every_n_steps=0, disable_all_extensions="none",
    interrupt_after_current=True, use_old_karras_scheduler_sigmas=False, hires_fix_refiner_pass="second pass",
    lora_functional=False, sd_checkpoints_limit=1, sd_unet="Automatic", save_images_before_highres_fix=False,
)


class Options:
    def __init__(self):
        self.__dict__["data_labels"] = {k: OptionInfo(v) for k, v in DEFAULTS.items()}
        self.__dict__["data"] = {}
        self.__dict__["typemap"] = {}

    def reset(self):
        self.__dict__["data_labels"] = {k: OptionInfo(v) for k, v in DEFAULTS.items()}
        self.data.clear()

    def __getattr__(self, item):
        if item in self.data:
            return self.data[item]
        if item in self.data_labels:
            return self.data_labels[item].default
        raise AttributeError(f"opts has no option {item!r}")

    def __setattr__(self, key, value):
        if key in self.data_labels or key in self.data:
            self.data[key] = value
            return
        super().__setattr__(key, value)

    def set(self, key, value, is_api=False, run_callbacks=True):
        old = self.data.get(key, self.get_default(key))
        if old == value:
            return False
        self.data[key] = value
        info = self.data_labels.get(key)
        if run_callbacks and info is not None and info.onchange is not None:
            info.onchange()
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
        if key not in self.data and not getattr(info, "do_not_save", False):
            self.data[key] = info.default

    def onchange(self, key, func, call=True):
        self.data_labels[key].onchange = func
        if call:
            func()


def options_section(section_identifier, options_dict):
    for value in options_dict.values():
        value.section = section_identifier
    return options_dict


class State:
    def __init__(self):
        self.reset()

    def reset(self):
        self.interrupted = self.skipped = self.stopping_generation = False
        self.job, self.job_no, self.job_count = "", 0, 0
        self.sampling_step = self.sampling_steps = 0
        self.processing_has_refined_job_count = False
        self.current_latent = self.current_image = None

    def begin(self, job="(unknown)"):
        self.reset()
        self.job = job
        self.job_count = -1

    def end(self):
        self.job = ""
        self.job_count = 0

    def nextjob(self):
        self.job_no += 1
        self.sampling_step = 0

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    def set_current_image(self):
        pass

    def assign_current_image(self, image):
        self.current_image = image


def _default_cmd_opts():
    return argparse.Namespace(api=False, nowebui=False, api_auth=None, api_log=False, api_server_stop=False, gradio_auth=None,
                              data_dir=data_path, models_dir=None, lora_dir=None, embeddings_dir="", no_prompt_history=True,
                              disable_safe_unpickle=True, medvram=False, lowvram=False, listen=False, subpath=None,
                              ckpt_dir=None, controlnet_dir=None)


cmd_opts = _default_cmd_opts()
opts = Options()
state = State()
sd_model = None
demo = None
device = None
parallel_processing_allowed = True
hypernetworks = {}
face_restorers = []
latent_upscale_default_mode = "Latent"
latent_upscale_modes = {
    "Latent": {"mode": "bilinear", "antialias": False},
    "Latent (antialiased)": {"mode": "bilinear", "antialias": True},
    "Latent (bicubic)": {"mode": "bicubic", "antialias": False},
    "Latent (nearest)": {"mode": "nearest", "antialias": False},
}
sd_upscalers = [types.SimpleNamespace(name=name) for name in ("None", "Lanczos", "Nearest")]
prompt_styles = types.SimpleNamespace(apply_styles_to_prompt=lambda prompt, styles: prompt,
                                      apply_negative_styles_to_prompt=lambda prompt, styles: prompt, styles={})
total_tqdm = types.SimpleNamespace(updateTotal=lambda *a: None, update=lambda *a: None, clear=lambda *a: None)


def reset_cmd_opts():
    vars(cmd_opts).clear()
    vars(cmd_opts).update(vars(_default_cmd_opts()))
