"""modules/devices.py stand-in: CPU, fp32, autocast is a no-op (what A1111 does with fp32 dtypes).

`device` is `cpu` itself by default. `use_distinct_device()` (stand-in only) makes `device` and the per-task
devices (`device_esrgan`, ...) the distinct object `torch.device("cpu", 0)` standing for the GPU: tensors on it
still report "cpu", but `devices.device != devices.cpu`, so code that picks a device object can be told apart,
and modules.lowvram's move log can say which of the two a module was sent to.
"""
from __future__ import annotations

import contextlib

import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = cpu
device_interrogate = device_gfpgan = device_esrgan = device_codeformer = cpu
dtype: torch.dtype = torch.float32
dtype_vae: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32
dtype_inference: torch.dtype = torch.float32
unet_needs_upcast = False
fp8: bool = False
force_fp16: bool = False
has_mps = False


def has_xpu() -> bool:
    return False


def get_optimal_device_name():
    return str(device)


def get_optimal_device():
    return device


def get_device_for(task):
    return device


STANDIN_ACCELERATOR = torch.device("cpu", 0)  # what `device` is while use_distinct_device() is on


def use_distinct_device(enabled=True):
    """Stand-in only: make `device` (and shared.device, device_esrgan, ...) the distinct "GPU" object
    torch.device("cpu", 0), or with enabled=False the plain `cpu` again (the default)."""
    global device, device_interrogate, device_gfpgan, device_esrgan, device_codeformer
    from modules import shared

    chosen = STANDIN_ACCELERATOR if enabled else cpu
    device = device_interrogate = device_gfpgan = device_esrgan = device_codeformer = chosen
    shared.device = chosen
    return chosen


def torch_gc():
    pass


def torch_npu_set_device():
    pass


def cond_cast_unet(input):
    if force_fp16:
        return input.to(torch.float16)
    if not unet_needs_upcast:
        return input
    return input.to(dtype_unet)


def cond_cast_float(input):
    return input if not unet_needs_upcast else input.float()


def randn(seed, shape):
    generator = torch.Generator(device=cpu).manual_seed(int(seed))
    return torch.randn(shape, generator=generator, device=cpu).to(device)


def autocast(disable=False):
    """A1111 returns nullcontext when disabled or when dtype/dtype_inference is fp32 (always, on this CPU stand-in)."""
    return contextlib.nullcontext()


def without_autocast(disable=False):
    return contextlib.nullcontext()


class NansException(Exception):
    pass


_NAN_SOURCES = {"unet": " in Unet", "vae": " in VAE"}


def test_for_nans(x, where):
    """Raises NansException when every element of x is NaN (unless --disable-nan-check)."""
    from modules import shared

    if shared.cmd_opts.disable_nan_check or not torch.isnan(x).all().item():
        return
    raise NansException(f"A tensor with all NaNs was produced{_NAN_SOURCES.get(where, '')}."
                        " Use --disable-nan-check commandline argument to disable this check.")


def first_time_calculation():
    pass
