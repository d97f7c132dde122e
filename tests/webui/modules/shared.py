"""modules/shared.py stand-in: opts, cmd_opts, state, sd_model and a few module-level tables.

`sd_model` is a plain attribute here (A1111 routes it through a property to sd_models.model_data); set it with
`modules.sd_models.load_model(...)` so on_model_loaded fires.
"""
from __future__ import annotations

import sys

from modules import options, shared_cmd_options, shared_state
from modules.paths_internal import models_path, script_path, data_path, extensions_dir, extensions_builtin_dir  # noqa: F401
from modules.options import OptionInfo, OptionHTML, options_section  # noqa: F401

cmd_opts = shared_cmd_options.cmd_opts
parser = shared_cmd_options.parser

batch_cond_uncond = True  # old field, unused in 1.10
parallel_processing_allowed = True
demo = None
device = None  # set below from devices
hypernetworks = {}
loaded_hypernetworks = []
face_restorers = []
sd_upscalers = []
sd_model = None
settings_components = None
tab_names = []
progress_print_out = sys.stdout
hf_endpoint = "https://huggingface.co"

latent_upscale_default_mode = "Latent"
# hires-fix latent upscalers: label -> torch interpolate mode and antialias flag
latent_upscale_modes = {
    label: {"mode": mode, "antialias": antialias}
    for label, mode, antialias in (
        ("Latent", "bilinear", False),
        ("Latent (antialiased)", "bilinear", True),
        ("Latent (bicubic)", "bicubic", False),
        ("Latent (bicubic antialiased)", "bicubic", True),
        ("Latent (nearest)", "nearest", False),
        ("Latent (nearest-exact)", "nearest-exact", False),
    )
}

# (default, label) of the options the stand-in reads; the first block is the notes' §5.2 table.
_OPTION_DEFAULTS = {
    "batch_cond_uncond": True,
    "s_min_uncond": 0.0,
    "s_min_uncond_all": False,
    "skip_early_cond": 0.0,
    "pad_cond_uncond": False,
    "pad_cond_uncond_v0": False,
    "persistent_cond_cache": True,
    "upcast_attn": False,
    "cross_attention_optimization": "Automatic",
    "lora_functional": False,
    "hires_fix_use_firstpass_conds": False,
    "img2img_fix_steps": False,
    "overlay_inpaint": True,
    # sampling
    "s_churn": 0.0, "s_tmin": 0.0, "s_tmax": 0.0, "s_noise": 1.0, "eta_ancestral": 1.0, "eta_ddim": 0.0,
    "eta_noise_seed_delta": 0, "randn_source": "GPU", "enable_quantization": False, "k_sched_type": "Automatic",
    "always_discard_next_to_last_sigma": False, "sgm_noise_multiplier": False, "img2img_extra_noise": 0.0,
    "initial_noise_multiplier": 1.0, "use_old_scheduling": False, "CLIP_stop_at_last_layers": 1,
    "sdxl_crop_top": 0, "sdxl_crop_left": 0, "sdxl_refiner_low_aesthetic_score": 2.5,
    "sdxl_refiner_high_aesthetic_score": 6.0, "inpainting_mask_weight": 1.0, "fp8_storage": "Disable",
    "cache_fp16_weight": False, "emphasis": "Original", "token_merging_ratio": 0.0, "token_merging_ratio_img2img": 0.0,
    "token_merging_ratio_hr": 0.0, "live_preview_content": "Prompt", "live_previews_enable": False,
    "show_progress_type": "Approx NN", "sd_vae_encode_method": "Full", "sd_vae_decode_method": "Full",
    "use_old_hires_fix_width_height": False, "upscaler_for_img2img": None, "img2img_color_correction": False,
    "img2img_background_color": "#ffffff", "face_restoration": False, "face_restoration_model": "CodeFormer",
    "tiling": False,
    # infotext / output
    "add_model_hash_to_info": True, "add_model_name_to_info": True, "add_vae_hash_to_info": True,
    "add_vae_name_to_info": True, "add_version_to_infotext": True, "add_user_name_to_info": False,
    "enable_pnginfo": True, "return_grid": True, "grid_save": True, "grid_only_if_multiple": True, "n_rows": -1,
    "grid_format": "png", "samples_save": True, "samples_format": "png", "jpeg_quality": 80,
    "save_incomplete_images": False, "save_images_before_face_restoration": False,
    "save_images_before_color_correction": False, "save_images_before_highres_fix": False, "save_mask": False,
    "save_mask_composite": False, "return_mask": False, "return_mask_composite": False, "save_init_img": False,
    "infotext_skip_pasting": [], "infotext_styles": "Apply if any", "disable_weights_auto_swap": True,
    "outdir_txt2img_samples": "", "outdir_img2img_samples": "", "outdir_txt2img_grids": "", "outdir_img2img_grids": "",
    # api / ui
    "api_enable_requests": True, "api_forbid_local_requests": True, "api_useragent": "", "ui_reorder_list": [],
    "sd_model_checkpoint": None, "sd_vae": "Automatic", "img_max_size_mp": 200, "return_mask_overlay": False,
}

options_templates = {key: OptionInfo(value, key) for key, value in _OPTION_DEFAULTS.items()}
opts = options.Options(options_templates)
restricted_opts = set()

state = shared_state.State()


class _PromptStyles:
    """Styles are not modelled: prompts pass through unchanged."""

    def apply_styles_to_prompt(self, prompt, styles):
        return prompt

    def apply_negative_styles_to_prompt(self, prompt, styles):
        return prompt

    def extract_styles_from_prompt(self, prompt, negative_prompt):
        return [], prompt, negative_prompt


prompt_styles = _PromptStyles()


class _TotalTqdm:
    def update(self):
        pass

    def updateTotal(self, new_total):
        pass

    def clear(self):
        pass


total_tqdm = _TotalTqdm()


def ldm_print(*args, **kwargs):
    print(*args, **kwargs)


def reload_gradio_theme(theme_name=None):
    pass


from modules import devices as _devices  # noqa: E402

device = _devices.device
