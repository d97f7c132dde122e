"""modules/devices.py stand-in, as Forge's: everything from backend.memory_management -- `device` is the (observable) GPU
device torch.device("cpu", 0), `cpu` the CPU, dtype / dtype_unet from memory_management.unet_dtype(); torch_gc empties the
(simulated) cache; autocast and NaN checks are no-ops."""
import contextlib

import torch

from backend import memory_management

cpu = torch.device("cpu")
device = memory_management.get_torch_device()
device_gfpgan = device_esrgan = device_codeformer = device
device_interrogate = memory_management.text_encoder_device()
dtype = torch.float32 if memory_management.unet_dtype() is torch.float32 else torch.float16
dtype_vae = memory_management.vae_dtype()
dtype_unet = memory_management.unet_dtype()
dtype_inference = dtype_unet
unet_needs_upcast = False
fp8 = False


def get_optimal_device():
    return memory_management.get_torch_device()


def get_device_for(task):
    return memory_management.get_torch_device()


def torch_gc():
    memory_management.soft_empty_cache()


def cond_cast_unet(x):
    return x


def cond_cast_float(x):
    return x


@contextlib.contextmanager
def autocast(disable=False):
    yield


@contextlib.contextmanager
def without_autocast(disable=False):
    yield


def test_for_nans(x, where):
    return
