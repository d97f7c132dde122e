"""backend/nn/unet.py stand-in: IntegratedUNet2DConditionModel, Forge's UNet forward with its patch points, driving a tiny
A1111-layout UNet (imaginAIry's sgm UNetModel for SDXL, stable-diffusion-sdkit's ldm UNetModel for SD1.5; see
tests/fixtures/tiny_models.py) whose blocks it SHARES (same parameters: the plain tiny UNet and this one compute with the same
weights; state-dict keys are the tiny UNet's: input_blocks.*, middle_block.*, output_blocks.*, time_embed.*, label_emb.*, out.*).

The forward is this stand-in's own re-implementation of Forge's composition (backend/nn/unet.py:44-52, 76-91, 183-279,
297-327, 697-762); the leaf layers (ResBlock, Downsample, Upsample, norms, linears, the attention modules in the unpatched case)
run their own forward, so without patches the output equals the plain tiny UNet's exactly. Modelled:
  * transformer_options mutated in place per call: original_shape, transformer_index (0, +1 after each SpatialTransformer),
    block ("input", i) / ("middle", 0) / ("output", i) / ("last", 0), block_index (index in the SpatialTransformer's blocks);
  * block_modifiers `fn(h, 'before'|'after', transformer_options)` around every input/middle/output/last block,
    block_inner_modifiers `fn(x, 'before'|'after', layer, layer_index, block, transformer_options)` around every layer;
    input_block_patch, input_block_patch_after_skip, output_block_patch `(h, hsp, to) -> (h, hsp)`;
  * ControlNet residuals (`control` dict): 'input' added to each input block's output, 'middle' to the middle block's output,
    'output' to the skip tensor hs.pop() before each output block's concat -- each popped from the END of its list, in place;
  * per transformer block (BasicTransformerBlock._forward): extra_options = every transformer_options key but patches /
    patches_replace, plus n_heads, dim_head; attn1: attn1_patch(n, context, value, eo) on the normed x, replace lookup
    (block[0], block[1], block_index) then (block[0], block[1]) with projected q/k/v -> patch output -> to_out, else the plain
    attention; attn1_output_patch; then middle_patch; attn2 the same with the text context: attn2_patch on the UNPROJECTED
    normed x / context / value, replace patch given to_q(n), to_k(context), to_v(value or context) [rows, tokens, heads*dim_head]
    returning the pre-to_out output, else the module's own attention (or, when a patch set a value, to_q/to_k/to_v +
    backend.attention.attention_function + to_out); attn2_output_patch on the output after to_out;
  * Upsample to the skip's size (output_shape) when 2x would not match.
Not modelled: group_norm_wrapper (stored, ignored), ff_in, gradient checkpointing, video blocks. Like Forge's class, it has no
`.dtype` attribute (UnetPatcher.add_extra_torch_module_during_sampling's default then raises AttributeError).
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

from backend import memory_management
from backend.attention import attention_function


def apply_control(h, control, name):
    if control is not None and name in control and len(control[name]) > 0:
        ctrl = control[name].pop()
        if ctrl is not None:
            try:
                h += ctrl
            except Exception:
                print("warning control could not be applied", h.shape, ctrl.shape)
    return h


def _lookup(replace, transformer_block, block):
    key = transformer_block if transformer_block in replace else block
    return replace.get(key) if key is not None else None


def _attention(attn, n, context, value, patch, extra_options):
    """One attention of a transformer block, Forge's order: replace patch on projected q/k/v, else the module."""
    if patch is not None:
        context = n if context is None else context
        value = context if value is None else value
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
        return attn.to_out(patch(q, k, v, extra_options))
    if value is not None:
        context = n if context is None else context
        q, k, v = attn.to_q(n), attn.to_k(context), attn.to_v(value)
        return attn.to_out(attention_function(q, k, v, attn.heads))
    return attn(n, context=context)


def transformer_block_forward(block, x, context, transformer_options):
    extra_options = {k: v for k, v in transformer_options.items() if k not in ("patches", "patches_replace")}
    patches = transformer_options.get("patches", {})
    replace = transformer_options.get("patches_replace", {})
    heads = block.attn2.heads
    extra_options["n_heads"] = heads
    extra_options["dim_head"] = block.attn2.to_q.out_features // heads
    block_id = transformer_options.get("block", None)
    block_index = transformer_options.get("block_index", 0)
    transformer_block = (block_id[0], block_id[1], block_index) if block_id is not None else None

    n = block.norm1(x)
    context_attn1 = context if block.disable_self_attn else None
    value_attn1 = None
    if "attn1_patch" in patches:
        if context_attn1 is None:
            context_attn1 = n
        value_attn1 = context_attn1
        for p in patches["attn1_patch"]:
            n, context_attn1, value_attn1 = p(n, context_attn1, value_attn1, extra_options)
    n = _attention(block.attn1, n, context_attn1, value_attn1, _lookup(replace.get("attn1", {}), transformer_block, block_id), extra_options)
    for p in patches.get("attn1_output_patch", []):
        n = p(n, extra_options)
    x = n + x
    for p in patches.get("middle_patch", []):
        x = p(x, extra_options)

    n = block.norm2(x)
    context_attn2, value_attn2 = context, None
    if "attn2_patch" in patches:
        value_attn2 = context_attn2
        for p in patches["attn2_patch"]:
            n, context_attn2, value_attn2 = p(n, context_attn2, value_attn2, extra_options)
    n = _attention(block.attn2, n, context_attn2, value_attn2, _lookup(replace.get("attn2", {}), transformer_block, block_id), extra_options)
    for p in patches.get("attn2_output_patch", []):
        n = p(n, extra_options)
    x = n + x
    return block.ff(block.norm3(x)) + x


def spatial_transformer_forward(layer, x, context, transformer_options):
    if not isinstance(context, list):
        context = [context] * len(layer.transformer_blocks)
    b, c, h, w = x.shape
    x_in = x
    x = layer.norm(x)
    if not layer.use_linear:
        x = layer.proj_in(x)
    x = x.permute(0, 2, 3, 1).reshape(b, h * w, -1).contiguous()
    if layer.use_linear:
        x = layer.proj_in(x)
    for i, block in enumerate(layer.transformer_blocks):
        transformer_options["block_index"] = i
        x = transformer_block_forward(block, x, context[i], transformer_options)
    if layer.use_linear:
        x = layer.proj_out(x)
    x = x.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()
    if not layer.use_linear:
        x = layer.proj_out(x)
    return x + x_in


class IntegratedUNet2DConditionModel(nn.Module):
    def __init__(self, unet: nn.Module, storage_dtype=torch.float32, computation_dtype=torch.float32):
        super().__init__()
        library = sys.modules[type(unet).__module__]
        self.__dict__["_timestep_embedding"] = library.timestep_embedding
        self.__dict__["_timestep_block"] = library.TimestepBlock
        self.__dict__["source_unet"] = unet  # the tiny UNet (not a registered child: its modules are registered below)
        self.model_channels = unet.model_channels
        self.num_classes = unet.num_classes
        self.in_channels = unet.in_channels
        self.out_channels = unet.out_channels
        self.time_embed = unet.time_embed
        if self.num_classes is not None:
            self.label_emb = unet.label_emb
        self.input_blocks = unet.input_blocks
        self.middle_block = unet.middle_block
        self.output_blocks = unet.output_blocks
        self.out = unet.out
        attn = [m for name, m in unet.named_modules() if name.endswith(".attn2")]
        self.config = dict(in_channels=self.in_channels, out_channels=self.out_channels, model_channels=self.model_channels,
                           num_classes=self.num_classes, context_dim=attn[0].to_k.in_features if attn else None,
                           adm_in_channels=self.label_emb[0][0].in_features if self.num_classes is not None else None)
        self.storage_dtype = storage_dtype
        self.computation_dtype = computation_dtype
        self.load_device = memory_management.get_torch_device()
        self.offload_device = memory_management.unet_offload_device()
        self.initial_device = memory_management.unet_inital_load_device()

    def _run(self, module, x, emb, context, transformer_options, output_shape=None):
        inner = transformer_options.get("block_inner_modifiers", [])
        for layer_index, layer in enumerate(module):
            for modifier in inner:
                x = modifier(x, "before", layer, layer_index, module, transformer_options)
            if isinstance(layer, self._timestep_block):
                x = layer(x, emb)
            elif hasattr(layer, "transformer_blocks"):
                x = spatial_transformer_forward(layer, x, context, transformer_options)
                if "transformer_index" in transformer_options:
                    transformer_options["transformer_index"] += 1
            elif type(layer).__name__ == "Upsample" and output_shape is not None and list(output_shape[2:]) != [x.shape[2] * 2, x.shape[3] * 2]:
                x = F.interpolate(x, size=list(output_shape[2:]), mode="nearest")
                x = layer.conv(x) if layer.use_conv else x
            else:
                x = layer(x)
            for modifier in inner:
                x = modifier(x, "after", layer, layer_index, module, transformer_options)
        return x

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        transformer_options["original_shape"] = list(x.shape)
        transformer_options["transformer_index"] = 0
        patches = transformer_options.get("patches", {})
        block_modifiers = transformer_options.get("block_modifiers", [])
        assert (y is not None) == (self.num_classes is not None)
        hs = []
        t_emb = self._timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype)
        emb = self.time_embed(t_emb)
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        h = x
        for index, module in enumerate(self.input_blocks):
            transformer_options["block"] = ("input", index)
            for modifier in block_modifiers:
                h = modifier(h, "before", transformer_options)
            h = self._run(module, h, emb, context, transformer_options)
            h = apply_control(h, control, "input")
            for modifier in block_modifiers:
                h = modifier(h, "after", transformer_options)
            for p in patches.get("input_block_patch", []):
                h = p(h, transformer_options)
            hs.append(h)
            for p in patches.get("input_block_patch_after_skip", []):
                h = p(h, transformer_options)
        transformer_options["block"] = ("middle", 0)
        for modifier in block_modifiers:
            h = modifier(h, "before", transformer_options)
        h = self._run(self.middle_block, h, emb, context, transformer_options)
        h = apply_control(h, control, "middle")
        for modifier in block_modifiers:
            h = modifier(h, "after", transformer_options)
        for index, module in enumerate(self.output_blocks):
            transformer_options["block"] = ("output", index)
            hsp = apply_control(hs.pop(), control, "output")
            for p in patches.get("output_block_patch", []):
                h, hsp = p(h, hsp, transformer_options)
            h = torch.cat([h, hsp], dim=1)
            output_shape = hs[-1].shape if hs else None
            for modifier in block_modifiers:
                h = modifier(h, "before", transformer_options)
            h = self._run(module, h, emb, context, transformer_options, output_shape)
            for modifier in block_modifiers:
                h = modifier(h, "after", transformer_options)
        transformer_options["block"] = ("last", 0)
        for modifier in block_modifiers:
            h = modifier(h, "before", transformer_options)
        h = self.out(h)
        for modifier in block_modifiers:
            h = modifier(h, "after", transformer_options)
        return h.type(x.dtype)
