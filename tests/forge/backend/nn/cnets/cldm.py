"""backend/nn/cnets/cldm.py stand-in: a tiny cldm-style ControlNet (the UNet encoder copy + hint block + zero convs), what a
plain "other" ControlNet unit runs in Forge. Built from a tiny A1111-layout UNet as template (deep copies of its time_embed,
label_emb, input_blocks, middle_block; the copy's blocks run their own forward WITHOUT transformer_options, as Forge's
cldm.ControlNet does, so the UNet's attention patches never reach it), plus `input_hint_block` (8x down, 3 -> model_channels)
and one 1x1 zero conv per input block and after the middle block -- randomised (seeded), not zero, so their output matters.
forward(x, hint, timesteps, context, y=None) -> [one residual per input block ..., middle residual] (backend/nn/cnets/cldm.py:244-270).
The `seen` list records (context, y) of every call, so a test can check which context a ControlNet received."""
import copy
import sys

import torch
from torch import nn


class HintBlock(nn.Sequential):
    def forward(self, x, emb=None, context=None):
        return super().forward(x)


class ControlNet(nn.Module):
    def __init__(self, template_unet: nn.Module, seed: int = 0, hint_channels: int = 3, record: bool = True):
        super().__init__()
        library = sys.modules[type(template_unet).__module__]
        self.__dict__["_timestep_embedding"] = library.timestep_embedding
        self.model_channels = template_unet.model_channels
        self.num_classes = template_unet.num_classes
        self.dtype = torch.float32
        self.time_embed = copy.deepcopy(template_unet.time_embed)
        if self.num_classes is not None:
            self.label_emb = copy.deepcopy(template_unet.label_emb)
        self.input_blocks = copy.deepcopy(template_unet.input_blocks)
        self.middle_block = copy.deepcopy(template_unet.middle_block)
        channels = self._block_channels(template_unet)
        generator = torch.Generator().manual_seed(seed)
        mc = self.model_channels
        self.input_hint_block = HintBlock(
            nn.Conv2d(hint_channels, 16, 3, padding=1), nn.SiLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.SiLU(), nn.Conv2d(32, 32, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(32, mc, 3, padding=1))
        self.zero_convs = nn.ModuleList([HintBlock(nn.Conv2d(c, c, 1)) for c in channels[:-1]])
        self.middle_block_out = HintBlock(nn.Conv2d(channels[-1], channels[-1], 1))
        with torch.no_grad():
            for module in list(self.input_hint_block) + [m[0] for m in self.zero_convs] + [self.middle_block_out[0]]:
                if isinstance(module, nn.Conv2d):
                    fan_in = module.weight[0].numel()
                    module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
                    module.bias.zero_()
        self.record = record
        self.seen = []

    def _block_channels(self, unet):
        """Output channels of every input block and of the middle block (by a dummy pass of the template)."""
        attn = next(m for name, m in unet.named_modules() if name.endswith(".attn2"))
        emb = torch.zeros(1, self.time_embed[-1].out_features)
        context = torch.zeros(1, 1, attn.to_k.in_features)
        h = torch.zeros(1, unet.in_channels, 8, 8)
        out = []
        with torch.no_grad():
            for module in unet.input_blocks:
                h = module(h, emb, context)
                out.append(h.shape[1])
            out.append(unet.middle_block(h, emb, context).shape[1])
        return out

    def forward(self, x, hint, timesteps, context, y=None, **kwargs):
        if self.record:
            self.seen.append((context.detach().clone(), None if y is None else y.detach().clone()))
        t_emb = self._timestep_embedding(timesteps, self.model_channels, repeat_only=False).to(x.dtype)
        emb = self.time_embed(t_emb)
        guided_hint = self.input_hint_block(hint, emb, context)
        if self.num_classes is not None:
            assert y.shape[0] == x.shape[0]
            emb = emb + self.label_emb(y)
        outs = []
        h = x
        for module, zero_conv in zip(self.input_blocks, self.zero_convs):
            h = module(h, emb, context)
            if guided_hint is not None:
                h = h + guided_hint
                guided_hint = None
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs
