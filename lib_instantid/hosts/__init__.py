"""Glue for the WebUIs InstantID runs in: `webui` what A1111 and Forge share, `a1111` and `forge` how each gets
InstantID into its UNet. `running_host()` picks the one for the WebUI this process is."""
from __future__ import annotations

import importlib.util
from types import ModuleType


class UnsupportedHost(RuntimeError):
    """A WebUI fork InstantID cannot serve: raised when the extension loads, naming the fork."""


def running_host() -> ModuleType:
    """`forge` in Forge with its Forge 2 backend (lllyasviel main, Forge Neo), else `a1111`. The Forge 1 forks
    (Forge Classic, reForge: the `ldm_patched` backend) are refused."""
    if importlib.util.find_spec("modules_forge") is None:
        from . import a1111

        return a1111
    if importlib.util.find_spec("backend") is not None:
        from . import forge

        return forge
    raise UnsupportedHost(
        f"InstantID does not support {_fork_name()} (a Forge 1 fork with the ldm_patched backend, such as Forge "
        "Classic or reForge). It runs on AUTOMATIC1111 1.8 and newer, and on Forge with its Forge 2 backend "
        "(lllyasviel/stable-diffusion-webui-forge main, or Forge Neo). See the README's supported hosts.")


def _fork_name() -> str:
    try:
        from modules_forge import forge_version
    except ImportError:
        return "this Forge"
    return f"this Forge ({getattr(forge_version, 'version', 'unknown version')})"
