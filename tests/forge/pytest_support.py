"""pytest support for the Forge stand-in that is safe to import in ANY test process (it imports no `modules`).

    from tests.forge.pytest_support import forge  # noqa: F401   -- the fixture: a reset harness.Forge, reset again after

The fixture SKIPS, and never installs the stand-in, when
  * the session also collected test files that are not Forge ones (names not starting with "test_forge"): the A1111
    stand-in (tests/webui) owns the top-level `modules` name too, so the two never share a process;
  * the A1111 stand-in is already installed in this process;
  * gradio is not 4.x (the Forge environment, .venv-forge from tests/requirements-forge.txt, has Forge's gradio 4.40.0).
Run the Forge tests in their own process:  .venv-forge/bin/python -m pytest -q tests/test_forge*.py
"""
import os
import sys

import pytest

FORGE_TEST_PREFIX = "test_forge"


def skip_reason(session) -> str | None:
    others = sorted({item.path.name for item in session.items if not item.path.name.startswith(FORGE_TEST_PREFIX)})
    if others:
        return f"the Forge stand-in runs in its own pytest process (this one also collected {', '.join(others[:3])}...)"
    webui_root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "webui")
    if webui_root in sys.path:
        return "the A1111 stand-in is installed in this process"
    try:
        import gradio
    except ImportError:
        return "gradio is not installed (use the Forge environment, tests/requirements-forge.txt)"
    if not gradio.__version__.startswith("4."):
        return f"gradio {gradio.__version__} is not Forge's 4.x (use the Forge environment, tests/requirements-forge.txt)"
    return None


@pytest.fixture
def forge(request):
    reason = skip_reason(request.session)
    if reason:
        pytest.skip(reason)
    import torch
    torch.set_num_threads(1)  # this process is the Forge stand-in's own; tiny models run 10x faster on a busy 2-core machine
    from tests.forge import harness
    harness.standin.reset()
    try:
        yield harness.standin
    finally:
        harness.standin.reset()
