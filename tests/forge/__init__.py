"""A stand-in for Forge (lllyasviel/stable-diffusion-webui-forge main, "Forge 2", commit dfdcbab6) as far as an
InstantID extension touches it: the WebUI side (`modules.*`: scripts, processing, callbacks, shared, UI shims, API)
and the backend (`backend.*`: UnetPatcher, ControlNet chain, memory management, the sampling function, a UNet forward
with Forge's patch points). Written from the notes in shared/forge.md and from reading Forge's source; no Forge or
ComfyUI code is copied. With this directory on sys.path, `from modules import scripts` and
`from backend.patcher.unet import UnetPatcher` resolve here, as they resolve to Forge's own packages in Forge.

Entry points:
    from tests.forge import install      # puts tests/forge on sys.path (idempotent; refuses next to the A1111 stand-in)
    from tests.forge import harness      # installs, then reset/set_model/load_extension/txt2img/img2img/api_client

The A1111 stand-in (tests/webui) and this one both provide a top-level `modules` package: they never share a process.
Tests of this stand-in run in their own pytest process in the Forge environment (.venv-forge, tests/requirements-forge.txt):
    .venv-forge/bin/python -m pytest -q tests/test_forge_standin.py
In a session that collects other tests too, the `forge` fixture (tests/forge/harness.py) skips them.
"""
from __future__ import annotations

import os
import sys

FORGE_ROOT = os.path.dirname(os.path.abspath(__file__))
TOP_LEVEL = ("modules", "modules_forge", "backend")


def _origin(module) -> str:
    path = getattr(module, "__file__", None) or next(iter(getattr(module, "__path__", []) or []), "")
    return os.path.dirname(os.path.dirname(os.path.abspath(path))) if path else ""


def install() -> str:
    """Put the stand-in root first on sys.path so `modules` and `backend` resolve here. Refuses if a `modules` or
    `backend` package from elsewhere (e.g. the A1111 stand-in, tests/webui) is imported already or if the A1111 stand-in
    is on sys.path: both stand-ins own the name `modules`, so they cannot share a process."""
    for name in TOP_LEVEL:
        existing = sys.modules.get(name)
        if existing is not None and _origin(existing) != FORGE_ROOT:
            raise RuntimeError(f"a different {name!r} package is already imported from {_origin(existing)}; "
                               "the Forge stand-in runs in its own process")
    webui_root = os.path.join(os.path.dirname(FORGE_ROOT), "webui")
    if webui_root in sys.path:
        raise RuntimeError("the A1111 stand-in (tests/webui) is installed in this process; the Forge stand-in runs in its own process")
    if FORGE_ROOT not in sys.path:
        sys.path.insert(0, FORGE_ROOT)
    return FORGE_ROOT
