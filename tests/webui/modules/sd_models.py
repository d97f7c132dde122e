"""modules/sd_models.py stand-in: a loaded "checkpoint" around a UNet handed in by the tests.

`load_model(unet, kind)` wraps a tiny ldm (SD1.5) or sgm (SDXL) UNetModel into a `StandInSDModel`, makes it
`shared.sd_model` and fires `on_model_loaded`. The object reaches the UNet the way A1111 does
(`sd_model.model.diffusion_model`) and calls it the way A1111 does:
  * SDXL: apply_model(x, t, cond) -> model(x, t, cond) (sgm OpenAIWrapper) ->
          diffusion_model(x, timesteps=t, context=cond['crossattn'], y=cond['vector'])   (keyword call)
  * SD1.5: apply_model(x, t, cond) -> model(x, t, **cond) (ldm DiffusionWrapper, 'crossattn') ->
          diffusion_model(x, t, context=cat(c_crossattn, 1))                              (t positional)
Text conditioning is a deterministic pseudo-embedding derived from the prompt text (see get_learned_conditioning);
the "VAE" is a fixed linear 4->3 map upsampled x8 (decode) and its pseudo-inverse after 8x8 average pooling (encode).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os

import torch
import torch.nn.functional as F

from modules import devices, paths, script_callbacks, shared
from modules.prompt_parser import DictWithShape

TOKENS_PER_CHUNK = 75  # words per 77-token chunk in this stand-in's "tokenizer"

# Decoder of the stand-in VAE: image rgb = W @ latent, per latent pixel.
_VAE_DECODER = torch.tensor([
    [0.60, 0.25, -0.20, 0.15],
    [-0.20, 0.55, 0.30, 0.10],
    [0.15, -0.25, 0.50, 0.35],
], dtype=torch.float32)
_VAE_ENCODER = torch.linalg.pinv(_VAE_DECODER)  # [4, 3]


def _seed_for(*parts) -> int:
    digest = hashlib.sha256("\x1f".join(str(x) for x in parts).encode("utf8")).hexdigest()
    return int(digest[:15], 16)


def _gaussian(shape, *seed_parts) -> torch.Tensor:
    generator = torch.Generator().manual_seed(_seed_for(*seed_parts))
    return torch.randn(shape, generator=generator)


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """sgm/ldm `timestep_embedding` (cos half first, then sin), for a 1-D tensor of values."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)
    args = values[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def token_count(text: str) -> int:
    """77 tokens per started chunk of 75 words (at least one chunk), like CLIP's chunking in A1111."""
    words = len(text.split())
    return 77 * max(1, math.ceil(words / TOKENS_PER_CHUNK))


class CheckpointInfo:
    def __init__(self, filename, name=None):
        self.filename = filename
        self.name = name or os.path.basename(filename)
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(self.name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = hashlib.sha256(self.name.encode("utf8")).hexdigest()[:8]
        self.sha256 = hashlib.sha256(filename.encode("utf8")).hexdigest()
        self.shorthash = self.sha256[0:10]
        self.title = f'{self.name} [{self.shorthash}]'
        self.short_title = f'{self.name_for_extra} [{self.shorthash}]'
        self.ids = [self.hash, self.model_name, self.title, self.name, self.name_for_extra, self.short_title]
        self.metadata = {}

    def __repr__(self):
        return f"CheckpointInfo({self.title!r})"


class DiffusionWrapper(torch.nn.Module):
    """ldm's DiffusionWrapper for conditioning_key 'crossattn' (what SD1.5 uses)."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"

    def forward(self, x, t, c_concat=None, c_crossattn=None, c_adm=None):
        cc = torch.cat(c_crossattn, 1)
        return self.diffusion_model(x, t, context=cc)


class OpenAIWrapper(torch.nn.Module):
    """sgm's OpenAIWrapper (SDXL): concat channels from c["concat"], then a keyword call."""

    def __init__(self, diffusion_model):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.conditioning_key = "crossattn"  # set by A1111's extend_sdxl

    def forward(self, x, t, c, **kwargs):
        x = torch.cat((x, c.get("concat", torch.Tensor([]).type_as(x))), dim=1)
        return self.diffusion_model(x, timesteps=t, context=c.get("crossattn", None), y=c.get("vector", None), **kwargs)


class StandInSDModel(torch.nn.Module):
    """What `shared.sd_model` looks like to an extension (the parts this project touches)."""

    def __init__(self, unet: torch.nn.Module, kind: str, name: str | None = None, *, sdxl_time_embed_dim: int = 8):
        super().__init__()
        if kind not in ("sdxl", "sd15"):
            raise ValueError(f"kind must be 'sdxl' or 'sd15', not {kind!r}")
        self.kind = kind
        self.is_sdxl = kind == "sdxl"
        self.is_sd1 = kind == "sd15"
        self.is_sd2 = False
        self.is_sd3 = False
        self.is_ssd = False
        self.is_sdxl_inpaint = False
        self.model = OpenAIWrapper(unet) if self.is_sdxl else DiffusionWrapper(unet)
        self.cond_stage_key = "txt"
        self.parameterization = "eps"
        self.latent_channels = 4

        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

        attn2 = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
        self.context_dim = attn2.to_k.in_features
        if self.is_sdxl:
            self.adm_in_channels = unet.label_emb[0][0].in_features
            self.sdxl_time_embed_dim = sdxl_time_embed_dim
            self.pooled_dim = self.adm_in_channels - 6 * sdxl_time_embed_dim
            self.conditioner = torch.nn.Module()  # A1111: "is_sdxl means has conditioner"
        else:
            self.cond_stage_model = torch.nn.Module()

        name = name or f"tiny-{kind}.safetensors"
        filename = os.path.join(paths.models_path, "Stable-diffusion", name)
        self.sd_checkpoint_info = CheckpointInfo(filename, name)
        self.sd_model_checkpoint = filename
        self.sd_model_hash = self.sd_checkpoint_info.shorthash
        self.prompt_embeddings: dict[str, torch.Tensor] = {}  # text -> first 77-token chunk, to identify contexts

    # --- what A1111 code reads -----------------------------------------------------------------------------

    @property
    def dtype(self):
        return next(self.model.diffusion_model.parameters()).dtype

    @property
    def device(self):
        return next(self.model.diffusion_model.parameters()).device

    @contextlib.contextmanager
    def ema_scope(self, context=None):
        yield

    @property
    def cond_stage_model_empty_prompt(self):
        from modules.prompt_parser import SdConditioning

        c = self.get_learned_conditioning(SdConditioning([""]))
        return c['crossattn'] if isinstance(c, dict) else c

    def _text_tokens(self, text: str, tokens: int) -> torch.Tensor:
        own_chunks = token_count(text) // 77
        chunks = [_gaussian((77, self.context_dim), "text", text, i) if i < own_chunks else _gaussian((77, self.context_dim), "empty-chunk")
                  for i in range(tokens // 77)]
        context = torch.cat(chunks)
        self.prompt_embeddings.setdefault(text, context[:77].clone())
        return context

    def get_learned_conditioning(self, texts):
        """SD1.5: tensor [N, T, C]. SDXL: DictWithShape {'crossattn': [N, T, C], 'vector': [N, adm]} with
        vector = [pooled | emb(h) emb(w) emb(crop top) emb(crop left) emb(h) emb(w)] (sgm's layout), and an
        all-empty negative batch zeroed like A1111's force_zero_embeddings. T is 77 per 75 words, the same for
        every text of one call (the longest wins, as CLIP chunking pads a batch)."""
        width = getattr(texts, 'width', None) or 1024
        height = getattr(texts, 'height', None) or 1024
        is_negative = getattr(texts, 'is_negative_prompt', False)
        texts = list(texts)
        tokens = max(token_count(text) for text in texts)
        crossattn = torch.stack([self._text_tokens(text, tokens) for text in texts]).to(devices.device, devices.dtype)
        if not self.is_sdxl:
            return crossattn

        pooled = torch.stack([_gaussian((self.pooled_dim,), "pooled", text) for text in texts])
        if is_negative and all(x == '' for x in texts):
            crossattn = torch.zeros_like(crossattn)
            pooled = torch.zeros_like(pooled)
        time_ids = torch.tensor([[height, width, shared.opts.sdxl_crop_top, shared.opts.sdxl_crop_left, height, width]] * len(texts), dtype=torch.float32)
        embedded = sinusoidal_embedding(time_ids.flatten(), self.sdxl_time_embed_dim).reshape(len(texts), -1)
        vector = torch.cat([pooled, embedded], dim=1).to(devices.device, devices.dtype)
        return DictWithShape({"crossattn": crossattn, "vector": vector}, crossattn.shape)

    def apply_model(self, x, t, cond):
        if self.is_sdxl:
            return self.model(x, t, cond)
        if not isinstance(cond, dict):
            cond = {"c_crossattn": cond if isinstance(cond, list) else [cond]}
        out = self.model(x, t, **cond)
        return out[0] if isinstance(out, tuple) else out

    def decode_first_stage(self, z):
        rgb = torch.einsum("oc,bchw->bohw", _VAE_DECODER.to(z), z)
        return F.interpolate(rgb, scale_factor=8, mode="nearest")

    def encode_first_stage(self, x):
        pooled = F.avg_pool2d(x, 8)
        return torch.einsum("co,bohw->bchw", _VAE_ENCODER.to(pooled), pooled)

    def get_first_stage_encoding(self, x):
        return x

    # --- stand-in helpers for tests ----------------------------------------------------------------------

    def describe_context(self, context: torch.Tensor) -> list[str]:
        """Names the prompt behind each row of a [B, T, C] context: its text, "<zero>" for an all-zero row
        (SDXL's empty negative prompt), "?" if unknown. A ControlNet-style mark row in front is skipped and
        reported as a "+"/"-" prefix."""
        names = []
        for row in context:
            prefix = ""
            if row.shape[0] % 77 == 1:
                mark = row[0].mean().item()
                prefix = "+" if mark > 0 else "-"
                row = row[1:]
            if not torch.any(row):
                names.append(prefix + "<zero>")
                continue
            head = row[:77]
            name = next((text for text, emb in self.prompt_embeddings.items() if torch.equal(emb.to(head), head)), "?")
            names.append(prefix + name)
        return names


class ModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v):
        self.sd_model = v


model_data = ModelData()
checkpoints_list: dict[str, CheckpointInfo] = {}
checkpoint_aliases: dict[str, CheckpointInfo] = {}
_models_by_title: dict[str, StandInSDModel] = {}


def _activate(model):
    model_data.set_sd_model(model)
    shared.sd_model = model
    shared.opts.data["sd_model_checkpoint"] = model.sd_checkpoint_info.title
    script_callbacks.model_loaded_callback(model)
    return model


def load_model(unet=None, kind="sdxl", name=None, *, activate=True, **kwargs):
    """Stand-in loader: wrap `unet` as a checkpoint named `name`, register it, and (by default) make it the
    current model, firing on_model_loaded like A1111's load_model."""
    model = StandInSDModel(unet, kind, name, **kwargs).eval()
    info = model.sd_checkpoint_info
    checkpoints_list[info.title] = info
    for alias in info.ids:
        checkpoint_aliases[alias] = info
    _models_by_title[info.title] = model
    if activate:
        _activate(model)
    return model


def select_checkpoint():
    info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if info is not None:
        return info
    return shared.sd_model.sd_checkpoint_info if shared.sd_model is not None else None


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string)
    if info is not None:
        return info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    return found[0] if found else None


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """Switches to the checkpoint named by `info` or opts.sd_model_checkpoint if it differs from the current one
    (firing on_model_loaded), else returns the current model."""
    checkpoint_info = info or select_checkpoint()
    current = shared.sd_model
    if checkpoint_info is None or (current is not None and current.sd_checkpoint_info is checkpoint_info and not forced_reload):
        return current
    model = _models_by_title.get(checkpoint_info.title)
    if model is None:
        return current
    return _activate(model)


def unload_model_weights(sd_model=None, info=None):
    pass


def apply_token_merging(sd_model, token_merging_ratio):
    pass


def apply_alpha_schedule_override(sd_model, p=None):
    pass


class SkipWritingToConfig:
    """While active, loading a checkpoint leaves the sd_model_checkpoint setting alone (hires/refiner swaps)."""

    skip = False

    def __enter__(self):
        self.previous, SkipWritingToConfig.skip = SkipWritingToConfig.skip, True
        return self

    def __exit__(self, *exc_info):
        SkipWritingToConfig.skip = self.previous


def reset():
    """Stand-in only: forget every registered checkpoint (does not fire callbacks)."""
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    _models_by_title.clear()
    model_data.set_sd_model(None)
    shared.sd_model = None
