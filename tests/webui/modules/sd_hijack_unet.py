"""modules/sd_hijack_unet.py stand-in: the `torch` replacement A1111 puts into the ldm and sgm UNet modules.

A1111 sets `openaimodel.th = sd_hijack_unet.th` for ldm and sgm when it applies its optimizations at model load,
so the UNet's skip concatenation `th.cat([h, hs.pop()], dim=1)` tolerates sizes that do not halve evenly (latent
sides that are not multiples of 8, a block wrapper that rescales, ...): when the two tensors' spatial sizes differ,
the first one (h) is resized to the second's (the skip) with nearest interpolation. Everything else is torch.
`apply()` (stand-in: processing calls it when a job starts, standing for the load-time hijack) installs it in the
openaimodel modules already imported, including imaginAIry's vendored sgm used by the tiny test UNets; it is never
undone, as in A1111. The ddpm_edit and upcast patches of the real module are not modelled.
"""
from __future__ import annotations

import sys

import torch

UNET_MODULES = (
    "ldm.modules.diffusionmodules.openaimodel",
    "sgm.modules.diffusionmodules.openaimodel",
    "imaginairy.modules.sgm.diffusionmodules.openaimodel",
)


class TorchHijackForUnet:
    """torch, except that cat of two tensors resizes the first to the second's spatial size if they differ."""

    def __getattr__(self, item):
        if item == 'cat':
            return self.cat
        if hasattr(torch, item):
            return getattr(torch, item)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            first, second = tensors
            if first.shape[-2:] != second.shape[-2:]:
                first = torch.nn.functional.interpolate(first, second.shape[-2:], mode="nearest")
            tensors = (first, second)
        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()


def apply():
    for name in UNET_MODULES:
        module = sys.modules.get(name)
        if module is not None and getattr(module, "th", None) is not th:
            module.th = th
