"""modules/sd_models.py stand-in: "checkpoints" made of tiny A1111-layout UNets handed in by the tests, as Forge 2 models.

`load_model(unet, kind, name)` builds a `StandInForgeModel` (a ForgeDiffusionEngine) around that very UNet object:
  forge_objects.unet = UnetPatcher(KModel(IntegratedUNet2DConditionModel(unet), Prediction())) -- the UNet's blocks are shared,
  forge_objects.clip = a stand-in text encoder with its own ModelPatcher (loaded to the GPU for each encode, as Forge does),
  forge_objects.vae  = a fixed linear 4<->3 "VAE" (x8 nearest up / 8x8 average down, pseudo-inverse for encoding),
  forge_objects_original / forge_objects_after_applying_lora = shallow copies; then shared.sd_model = it and on_model_loaded.
Text conditioning is a deterministic pseudo-embedding per prompt (77 tokens per started chunk of 75 words, seeded by the
text; `describe_context(context)` names the prompt of each row, "<zero>" for zero rows). SDXL: dict(crossattn, vector) with
vector = [pooled | 6 sinusoidal embeddings of (h, w, crop top, crop left, target h, target w)]; an all-empty negative prompt
gives zeros (Forge's force_zero_negative_prompt). `forge_model_reload()` returns (shared.sd_model, False): no checkpoint
switching, no refiner, no additional modules (VAE / text encoder choices) are modelled."""
import hashlib
import math
import os

import torch
import torch.nn.functional as F

from backend import memory_management
from backend.diffusion_engine.base import ForgeDiffusionEngine, ForgeObjects
from backend.modules.k_prediction import Prediction
from backend.nn.unet import IntegratedUNet2DConditionModel
from backend.patcher.base import ModelPatcher
from backend.patcher.unet import UnetPatcher
from modules import script_callbacks, shared

WORDS_PER_CHUNK = 75
_DECODER = torch.tensor([[0.60, 0.25, -0.20, 0.15], [-0.20, 0.55, 0.30, 0.10], [0.15, -0.25, 0.50, 0.35]])
_ENCODER = torch.linalg.pinv(_DECODER)


class CheckpointInfo:
    def __init__(self, filename, name=None):
        self.filename = filename
        self.name = name or os.path.basename(filename)
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(self.name)[0]
        self.sha256 = hashlib.sha256(filename.encode()).hexdigest()
        self.shorthash = self.sha256[:10]
        self.hash = self.sha256[:8]
        self.title = f"{self.name} [{self.shorthash}]"
        self.short_title = f"{self.name_for_extra} [{self.shorthash}]"


def _gaussian(shape, *parts):
    seed = int(hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:15], 16)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


class TextEncoderModule(torch.nn.Module):
    def __init__(self, context_dim):
        super().__init__()
        self.register_buffer("token_scale", torch.ones(context_dim))


class CLIP:
    def __init__(self, context_dim):
        self.cond_stage_model = TextEncoderModule(context_dim)
        self.patcher = ModelPatcher(self.cond_stage_model, load_device=memory_management.text_encoder_device(),
                                    offload_device=memory_management.text_encoder_offload_device())


class VAEModule(torch.nn.Module):
    def process_in(self, x):
        return x

    def process_out(self, x):
        return x


class VAE:
    latent_channels = 4

    def __init__(self):
        self.first_stage_model = VAEModule()

    def decode(self, latent):  # [B,4,h,w] -> [B,8h,8w,3] in [0, 1]
        rgb = torch.einsum("ck,bkhw->bchw", _DECODER.to(latent), latent)
        return (F.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1) * 0.5 + 0.5)

    def encode(self, pixels):  # [B,H,W,3] in [0, 1] -> [B,4,H/8,W/8]
        rgb = F.avg_pool2d(pixels.movedim(-1, 1) * 2 - 1, 8)
        return torch.einsum("kc,bchw->bkhw", _ENCODER.to(rgb), rgb)


class StandInForgeModel(ForgeDiffusionEngine):
    def __init__(self, unet, kind, checkpoint_info, time_embed_dim=8):
        super().__init__(estimated_config=type("Config", (), {"inpaint_model": staticmethod(lambda: False)})())
        if kind not in ("sdxl", "sd15"):
            raise ValueError(f"kind must be 'sdxl' or 'sd15', not {kind!r}")
        self.kind = kind
        self.unet = unet
        diffusion_model = IntegratedUNet2DConditionModel(unet)
        self.context_dim = diffusion_model.config["context_dim"]
        self.time_embed_dim = time_embed_dim
        self.pooled_dim = diffusion_model.config["adm_in_channels"] - 6 * time_embed_dim if kind == "sdxl" else None
        unet_patcher = UnetPatcher.from_model(diffusion_model, config=diffusion_model.config, k_predictor=Prediction())
        self.forge_objects = ForgeObjects(unet=unet_patcher, clip=CLIP(self.context_dim), vae=VAE(), clipvision=None)
        self.forge_objects_original = self.forge_objects.shallow_copy()
        self.forge_objects_after_applying_lora = self.forge_objects.shallow_copy()
        self.is_sdxl, self.is_sd1 = kind == "sdxl", kind == "sd15"
        self.sd_checkpoint_info = checkpoint_info
        self.sd_model_hash = checkpoint_info.shorthash
        self.sd_model_checkpoint = checkpoint_info.filename
        self.filename = checkpoint_info.filename
        self.comments = []
        self.extra_generation_params = {}
        self.latent_channels = 4
        self._rows = {}
        self.cond_stage_model_empty_prompt = None

    # --- text ------------------------------------------------------------------------------------------------------
    def _tokens(self, text):
        words = " ".join(text.split())
        length = 77 * max(1, math.ceil(len(words.split()) / WORDS_PER_CHUNK))
        tokens = _gaussian((length, self.context_dim), self.kind, "tokens", words)
        self._rows[tuple(tokens[0, :4].tolist())] = words
        return tokens

    def describe_context(self, context):
        names = []
        for row in context:
            if not row.any():
                names.append("<zero>")
            else:
                names.append(self._rows.get(tuple(row[0, :4].tolist()), "?"))
        return names

    @torch.inference_mode()
    def get_learned_conditioning(self, prompts):
        memory_management.load_model_gpu(self.forge_objects.clip.patcher)
        tokens = [self._tokens(text) for text in prompts]
        length = max(t.shape[0] for t in tokens)
        cond = torch.stack([t.repeat(length // t.shape[0], 1) if length % t.shape[0] == 0 else F.pad(t, (0, 0, 0, length - t.shape[0])) for t in tokens])
        if self.kind == "sd15":
            return cond
        width = getattr(prompts, "width", 1024) or 1024
        height = getattr(prompts, "height", 1024) or 1024
        ids = torch.tensor([height, width, shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left, height, width], dtype=torch.float32)
        embed = self.forge_objects.unet.model.diffusion_model._timestep_embedding(ids, self.time_embed_dim).flatten()
        pooled = torch.stack([_gaussian((self.pooled_dim,), self.kind, "pooled", " ".join(text.split())) for text in prompts])
        if getattr(prompts, "is_negative_prompt", False) and all(x == "" for x in prompts):
            pooled, cond = torch.zeros_like(pooled), torch.zeros_like(cond)
        return dict(crossattn=cond, vector=torch.cat([pooled, embed[None].repeat(len(prompts), 1)], dim=1))

    def get_prompt_lengths_on_ui(self, prompt):
        words = len(prompt.split())
        return words, WORDS_PER_CHUNK * max(1, math.ceil(words / WORDS_PER_CHUNK))

    # --- latents -----------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def decode_first_stage(self, x):
        return self.forge_objects.vae.decode(x).movedim(-1, 1) * 2.0 - 1.0

    @torch.inference_mode()
    def encode_first_stage(self, x):
        return self.forge_objects.vae.encode(x.movedim(1, -1) * 0.5 + 0.5)


class ModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []

    def get_sd_model(self):
        return self.sd_model


model_data = ModelData()
checkpoints_list: dict[str, CheckpointInfo] = {}
checkpoint_aliases: dict[str, CheckpointInfo] = {}


def load_model(unet, kind="sdxl", name=None):
    name = name or f"tiny-{kind}.safetensors"
    info = CheckpointInfo(os.path.join(shared.models_path, "Stable-diffusion", name), name)
    checkpoints_list[info.title] = info
    for alias in (info.title, info.name, info.model_name, info.hash, info.short_title):
        checkpoint_aliases[alias] = info
    model = StandInForgeModel(unet, kind, info)
    model_data.sd_model = shared.sd_model = model
    model_data.loaded_sd_models = [model]
    shared.opts.data["sd_model_checkpoint"] = info.title
    script_callbacks.model_loaded_callback(model)
    return model


def reset():
    model_data.sd_model = shared.sd_model = None
    model_data.loaded_sd_models = []
    checkpoints_list.clear()
    checkpoint_aliases.clear()


def forge_model_reload():
    return shared.sd_model, False


def get_closet_checkpoint_match(search_string):
    return checkpoint_aliases.get(search_string)


def apply_alpha_schedule_override(sd_model, p=None):
    return


class SkipWritingToConfig:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
