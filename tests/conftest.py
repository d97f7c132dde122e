"""Shared pytest fixtures."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.face_models import write_antelopev2


@pytest.fixture(scope="session")
def antelopev2_root(tmp_path_factory) -> Path:
    """Models root holding a synthetic antelopev2 pack (see tests/fixtures/face_models.py)."""
    return write_antelopev2(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def antelopev2_retry_root(tmp_path_factory) -> Path:
    """Like antelopev2_root, but its detector only fires at det sizes of 448 and below."""
    return write_antelopev2(tmp_path_factory.mktemp("models_retry"), fires_below=449)
