"""modules/sd_models.py stand-in: "checkpoints" made of UNets handed in by the tests, and A1111's model swapping.

`load_model(unet, kind)` (stand-in path, what the harness's set_model uses) wraps a tiny ldm (SD1.5) or sgm (SDXL)
UNetModel -- that very object -- into a `StandInSDModel`, registers it as a checkpoint "file", makes it
`shared.sd_model` and fires `on_model_loaded`. `register_checkpoint(unet, kind, name)` adds a checkpoint file
without loading it. The object reaches the UNet the way A1111 does
(`sd_model.model.diffusion_model`) and calls it the way A1111 does:
  * SDXL: apply_model(x, t, cond) -> model(x, t, cond) (sgm OpenAIWrapper) ->
          diffusion_model(x, timesteps=t, context=cond['crossattn'], y=cond['vector'])   (keyword call)
  * SD1.5: apply_model(x, t, cond) -> model(x, t, **cond) (ldm DiffusionWrapper, 'crossattn') ->
          diffusion_model(x, t, context=cat(c_crossattn, 1))                              (t positional)
Text conditioning is a deterministic pseudo-embedding derived from the prompt text (see get_learned_conditioning);
the "VAE" is a fixed linear 4->3 map upsampled x8 (decode) and its pseudo-inverse after 8x8 average pooling (encode).

Swapping (reload_model_weights, as A1111 1.10 does it; used by the refiner, the hires checkpoint, the swap back at
each n_iter iteration / job and the sd_model_checkpoint override):
  * the wanted checkpoint already loaded (same file) -> nothing happens, no callback;
  * with opts.sd_checkpoints_limit > 1 a model kept in model_data.loaded_sd_models is reused as is (no
    on_model_loaded), or a new one is loaded while under the limit;
  * otherwise (the default limit 1) the current model object is reused: sd_unet.apply_unet("None"), then
      - same config (the same UNet architecture and kind): the weights are loaded IN PLACE into the same model
        object (hooks on it stay and now run with the other weights), on_model_loaded(model), apply_unet();
      - another config: the old model goes to the meta device ("trash") and load_model builds a NEW object from
        the file (a fresh copy of the UNet without hooks), firing on_model_loaded(new); apply_unet is not called.
  * opts.sd_model_checkpoint is written with the title unless SkipWritingToConfig is active.
UNets handed in by tests that were loaded into in place or trashed get their own weights (and device) back in
reset(). Not modelled: fp8, VAE reloads, the checkpoint cache, hijack/undo_hijack, real files.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import re

import torch
import torch.nn.functional as F

from modules import devices, lowvram, paths, script_callbacks, sd_unet, shared
from modules.options import OptionInfo
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


def ddpm_alphas_cumprod() -> torch.Tensor:
    """SD's scaled-linear DDPM schedule (beta 0.00085 -> 0.012 over 1000 steps), cumulative alphas."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


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

    def __init__(self, unet: torch.nn.Module, kind: str, name: str | None = None, *, sdxl_time_embed_dim: int = 8,
                 checkpoint_info: "CheckpointInfo | None" = None):
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

        # a plain attribute, as A1111's extend_sdxl sets it (so a trashed model's schedule stays readable)
        self.alphas_cumprod = ddpm_alphas_cumprod()

        attn2 = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
        self.context_dim = attn2.to_k.in_features
        if self.is_sdxl:
            self.adm_in_channels = unet.label_emb[0][0].in_features
            self.sdxl_time_embed_dim = sdxl_time_embed_dim
            self.pooled_dim = self.adm_in_channels - 6 * sdxl_time_embed_dim
            self.conditioner = torch.nn.Module()  # A1111: "is_sdxl means has conditioner"
        else:
            self.cond_stage_model = torch.nn.Module()

        if checkpoint_info is None:
            name = name or f"tiny-{kind}.safetensors"
            checkpoint_info = CheckpointInfo(os.path.join(paths.models_path, "Stable-diffusion", name), name)
        self.set_checkpoint(checkpoint_info)
        self.used_config = None  # set by the loader: the "config" (architecture) the model was built for
        self.prompt_embeddings: dict[str, torch.Tensor] = {}  # text -> first 77-token chunk, to identify contexts

    def set_checkpoint(self, info: "CheckpointInfo"):
        """The fields load_model_weights sets for the checkpoint whose weights the model now holds."""
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.sd_model_hash = info.shorthash

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
    """model_data: the current model and the loaded ones (most recent first); shared.sd_model follows it."""

    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False

    def get_sd_model(self):
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        shared.sd_model = v  # A1111: shared.sd_model is a property reading model_data
        if v in self.loaded_sd_models:
            self.loaded_sd_models.remove(v)
        if v is not None:
            self.loaded_sd_models.insert(0, v)


model_data = ModelData()
checkpoints_list: dict[str, CheckpointInfo] = {}
checkpoint_aliases: dict[str, CheckpointInfo] = {}

for _key, _default, _label in (
    ("sd_checkpoints_limit", 1, "Maximum number of checkpoints loaded at the same time"),
    ("sd_checkpoints_keep_in_cpu", True, "Only keep one model on device"),
):
    if _key not in shared.opts.data_labels:
        shared.opts.add_option(_key, OptionInfo(_default, _label))


class CheckpointFile:
    """What the stand-in knows of a checkpoint file: the UNet to build models from, its kind, the model's extra
    arguments, the weights (a snapshot taken at registration) and the "config" (kind + UNet architecture)."""

    def __init__(self, info, unet, kind, kwargs):
        self.info, self.unet, self.kind, self.kwargs = info, unet, kind, dict(kwargs)
        self.weights = {key: value.detach().clone() for key, value in unet.state_dict().items()}
        shapes = tuple((key, tuple(value.shape)) for key, value in self.weights.items())
        self.config = f"{kind}-{type(unet).__name__}-{hashlib.sha256(repr((shapes, sorted(self.kwargs.items()))).encode()).hexdigest()[:12]}"


_files: dict[str, CheckpointFile] = {}  # by checkpoint title
_owned_unets: list = []  # (unet handed in by a test, its weights) that the loaders changed: restored by reset()

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
               "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs", "_forward_hooks_always_called")


def _fresh_unet(file: CheckpointFile):
    """A new UNet object with the file's weights: a copy of the registered module without its hooks or
    per-instance forward replacements (a model built from the file has none)."""
    memo = {}
    for module in file.unet.modules():
        for name in _HOOK_DICTS:
            hooks = module.__dict__.get(name)
            if hooks is not None:
                memo[id(hooks)] = type(hooks)()
        for name, value in module.__dict__.items():
            if name == "forward" or name.startswith("_original_forward"):
                memo[id(value)] = None
    unet = copy.deepcopy(file.unet, memo)
    for module in unet.modules():
        for name in [n for n, v in vars(module).items() if v is None and (n == "forward" or n.startswith("_original_forward"))]:
            delattr(module, name)
    if any(parameter.is_meta for parameter in unet.parameters()):
        unet.to_empty(device=devices.cpu)
    unet.load_state_dict(file.weights)
    return unet.eval()


def _remember_owned(model):
    """Before a loader changes a test's own UNet (in-place load, trash): remember its weights for reset()."""
    file = getattr(model, "standin_owned_file", None)
    unet = model.model.diffusion_model
    if file is not None and not any(entry[0] is unet for entry in _owned_unets):
        _owned_unets.append((unet, file.weights))


def register_checkpoint(unet, kind="sdxl", name=None, **kwargs) -> CheckpointInfo:
    """Stand-in helper: a checkpoint file named `name` whose model is `kind` around (a copy of) `unet`, with the
    weights `unet` has now. Listed in checkpoints_list / checkpoint_aliases; nothing is loaded."""
    if kind not in ("sdxl", "sd15"):
        raise ValueError(f"kind must be 'sdxl' or 'sd15', not {kind!r}")
    name = name or f"tiny-{kind}.safetensors"
    info = CheckpointInfo(os.path.join(paths.models_path, "Stable-diffusion", name), name)
    for old_title in [title for title, known in checkpoints_list.items() if known.name == name]:
        old = checkpoints_list.pop(old_title)
        _files.pop(old_title, None)
        for alias in [key for key, value in checkpoint_aliases.items() if value is old]:
            del checkpoint_aliases[alias]
    checkpoints_list[info.title] = info
    for alias in info.ids:
        checkpoint_aliases[alias] = info
    _files[info.title] = CheckpointFile(info, unet, kind, kwargs)
    return info


def checkpoint_file(info: CheckpointInfo) -> CheckpointFile:
    return _files[info.title]


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def list_models():
    """A1111 rescans the models folder; the stand-in's list is what was registered."""


def load_model_weights(model, checkpoint_info: CheckpointInfo, state_dict=None, timer=None):
    """The file's weights into `model` (same config), its checkpoint fields set, opts.sd_model_checkpoint written
    unless SkipWritingToConfig is active."""
    if not SkipWritingToConfig.skip:
        shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    file = checkpoint_file(checkpoint_info)
    _remember_owned(model)
    unet = model.model.diffusion_model
    if any(parameter.is_meta for parameter in unet.parameters()):
        unet.to_empty(device=devices.cpu)
    unet.load_state_dict(file.weights if state_dict is None else state_dict)
    model.set_checkpoint(checkpoint_info)


def model_target_device(m):
    return devices.cpu if lowvram.is_needed(m) else devices.device


def send_model_to_device(m):
    lowvram.apply(m)
    if not m.lowvram:
        m.to(shared.device)


def send_model_to_cpu(m):
    if m is not None:
        if getattr(m, "lowvram", False):
            lowvram.send_everything_to_cpu()
        else:
            m.to(devices.cpu)
    devices.torch_gc()


def send_model_to_trash(m):
    _remember_owned(m)
    m.to(device="meta")
    devices.torch_gc()


def _build(checkpoint_info):
    file = checkpoint_file(checkpoint_info)
    model = StandInSDModel(_fresh_unet(file), file.kind, checkpoint_info=checkpoint_info, **file.kwargs).eval()
    model.used_config = file.config
    return model


def _wrap_given(unet, kind, name, activate, kwargs):
    """The stand-in path: `unet` itself becomes the model of a (re-)registered checkpoint."""
    info = register_checkpoint(unet, kind, name, **kwargs)
    model = StandInSDModel(unet, kind, checkpoint_info=info, **kwargs).eval()
    model.used_config = checkpoint_file(info).config
    model.standin_owned_file = checkpoint_file(info)
    if activate:
        model_data.loaded_sd_models.clear()  # as if the WebUI had started with this checkpoint
        model_data.set_sd_model(model)
        model_data.was_loaded_at_least_once = True
        shared.opts.data["sd_model_checkpoint"] = info.title
        script_callbacks.model_loaded_callback(model)
    return model


def load_model(checkpoint_info=None, already_loaded_state_dict=None, name=None, *, activate=True, **kwargs):
    """Two paths. Stand-in: load_model(unet, kind="sdxl", name=None, activate=True, **model_kwargs) wraps that UNet
    object as the current checkpoint (see module doc; activate=False only registers it). A1111:
    load_model(checkpoint_info=None) trashes the current model and builds a new model object from the file
    (select_checkpoint() by default), makes it current and fires on_model_loaded."""
    if isinstance(checkpoint_info, torch.nn.Module):
        kind = kwargs.pop("kind", already_loaded_state_dict or "sdxl")
        return _wrap_given(checkpoint_info, kind, name, activate, kwargs)
    if checkpoint_info is None and "unet" in kwargs:
        return _wrap_given(kwargs.pop("unet"), kwargs.pop("kind", "sdxl"), name, activate, kwargs)

    checkpoint_info = checkpoint_info or select_checkpoint()
    if model_data.sd_model:
        send_model_to_trash(model_data.sd_model)
        model_data.sd_model = None
    model = _build(checkpoint_info)
    if not SkipWritingToConfig.skip:
        shared.opts.data["sd_model_checkpoint"] = checkpoint_info.title
    send_model_to_device(model)
    model_data.set_sd_model(model)
    model_data.was_loaded_at_least_once = True
    script_callbacks.model_loaded_callback(model)
    return model


def select_checkpoint():
    """The checkpoint opts.sd_model_checkpoint names; else the first registered one (A1111 prints a warning),
    else the current model's."""
    info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if info is not None:
        return info
    if checkpoints_list:
        return next(iter(checkpoints_list.values()))
    return shared.sd_model.sd_checkpoint_info if shared.sd_model is not None else None


re_strip_checksum = re.compile(r"\s*\[[^]]+]\s*$")


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string)
    if info is not None:
        return info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    without_checksum = re.sub(re_strip_checksum, '', search_string)
    found = sorted([info for info in checkpoints_list.values() if without_checksum in info.title], key=lambda x: len(x.title))
    return found[0] if found else None


def reuse_model_from_already_loaded(sd_model, checkpoint_info, timer=None):
    """A model to load `checkpoint_info` into (or that already holds it), dropping models over the limit."""
    if sd_model is not None and sd_model.sd_checkpoint_info.filename == checkpoint_info.filename:
        return sd_model
    if shared.opts.sd_checkpoints_keep_in_cpu:
        send_model_to_cpu(sd_model)

    loaded = model_data.loaded_sd_models
    already_loaded = None
    for i in reversed(range(len(loaded))):
        candidate = loaded[i]
        if candidate.sd_checkpoint_info.filename == checkpoint_info.filename:
            already_loaded = candidate
            continue
        if len(loaded) > shared.opts.sd_checkpoints_limit > 0:
            del loaded[i]
            send_model_to_trash(candidate)

    if already_loaded is not None:  # "Using already loaded model": no on_model_loaded
        send_model_to_device(already_loaded)
        model_data.set_sd_model(already_loaded, already_loaded=True)
        if not SkipWritingToConfig.skip:
            shared.opts.data["sd_model_checkpoint"] = already_loaded.sd_checkpoint_info.title
        return model_data.sd_model
    if shared.opts.sd_checkpoints_limit > 1 and len(loaded) < shared.opts.sd_checkpoints_limit:
        model_data.sd_model = None
        load_model(checkpoint_info)
        return model_data.sd_model
    if loaded:  # "Reusing loaded model ... to load ...": the weights will go into this object
        model_data.sd_model = loaded.pop()
        return model_data.sd_model
    return None


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """Makes `info` (default: select_checkpoint()) the current checkpoint the way A1111 does (see module doc)."""
    checkpoint_info = info or select_checkpoint()
    if not sd_model:
        sd_model = model_data.sd_model
    if checkpoint_info is None:
        return sd_model
    if sd_model is not None and sd_model.sd_model_checkpoint == checkpoint_info.filename and not forced_reload:
        return sd_model

    sd_model = reuse_model_from_already_loaded(sd_model, checkpoint_info)
    if not forced_reload and sd_model is not None and sd_model.sd_checkpoint_info.filename == checkpoint_info.filename:
        return sd_model

    if sd_model is not None:
        sd_unet.apply_unet("None")
        send_model_to_cpu(sd_model)

    if sd_model is None or checkpoint_file(checkpoint_info).config != sd_model.used_config:
        if sd_model is not None:
            send_model_to_trash(sd_model)
        load_model(checkpoint_info)
        return model_data.sd_model

    try:
        load_model_weights(sd_model, checkpoint_info)
    finally:
        if not getattr(sd_model, "lowvram", False):
            sd_model.to(devices.device)
        script_callbacks.model_loaded_callback(sd_model)
    model_data.set_sd_model(sd_model)
    sd_unet.apply_unet()
    return sd_model


def unload_model_weights(sd_model=None, info=None):
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model


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
    """Stand-in only: forget every registered checkpoint and loaded model (no callbacks fire); UNets handed in by
    tests get back their own weights (on the CPU) if a loader changed or trashed them."""
    for unet, weights in _owned_unets:
        if any(parameter.is_meta for parameter in unet.parameters()):
            unet.to_empty(device=devices.cpu)
        unet.load_state_dict(weights)
    _owned_unets.clear()
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    _files.clear()
    model_data.loaded_sd_models.clear()
    model_data.was_loaded_at_least_once = False
    model_data.set_sd_model(None)
    SkipWritingToConfig.skip = False
