"""A stand-in for the AUTOMATIC1111 WebUI v1.10 API surface that sd-webui-instantid touches.

The WebUI itself is not installable in CI, so this directory holds small, faithful re-implementations of the
modules an extension imports (`modules.scripts`, `modules.processing`, `modules.shared`, ...), written from the
notes in the project's A1111 summary (no WebUI code is copied). With this directory on sys.path,
`from modules import scripts` resolves here, exactly as it resolves to the WebUI's own package when an
extension runs inside the WebUI.

Entry points:
    from tests.webui import install      # puts tests/webui on sys.path (idempotent)
    from tests.webui import harness      # installs, then gives reset/set_model/load_extension/txt2img/img2img/api

Modules that live here but are imported by their top-level names once installed: `modules.*`, and the
`scripts/xyz_grid.py` stand-in (loaded the A1111 way, as module "xyz_grid.py").
Helpers imported through this package: `tests.webui.harness`, `tests.webui.controlnet_like`,
`tests.webui.lora_like`.
"""
from __future__ import annotations

import os
import sys

WEBUI_ROOT = os.path.dirname(os.path.abspath(__file__))


def install() -> str:
    """Put the stand-in root first on sys.path so `modules` resolves here. Refuses if another `modules`
    package was imported already (that would silently shadow the stand-in)."""
    existing = sys.modules.get("modules")
    if existing is not None:
        origin = os.path.dirname(os.path.dirname(os.path.abspath(getattr(existing, "__file__", "") or "")))
        if origin != WEBUI_ROOT:
            raise RuntimeError(f"a different 'modules' package is already imported from {origin}")
    if WEBUI_ROOT not in sys.path:
        sys.path.insert(0, WEBUI_ROOT)
    return WEBUI_ROOT
