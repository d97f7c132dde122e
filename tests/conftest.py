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


@pytest.fixture(scope="session", params=("sdxl", "sd15"))
def kind(request) -> str:
    """The two model families every engine test runs on."""
    return request.param


@pytest.fixture(scope="session")
def weight_files(tmp_path_factory):
    """Tiny weight files in the published formats, written once per family: kind -> {name: path}."""
    from tests.fixtures import tiny_models as tm

    files = {}
    for family in tm.KINDS:
        folder = tmp_path_factory.mktemp(f"weights_{family}")
        files[family] = {
            "adapter_bin": tm.write_adapter(folder / "ip-adapter.bin", family),
            "adapter_safetensors": tm.write_adapter(folder / "ip-adapter.safetensors", family, fmt="safetensors"),
            "identitynet_dir": folder,
            "identitynet_folder": tm.write_identitynet(folder, family),
            "identitynet_single": tm.write_identitynet_single_file(folder / "control_instant_id.safetensors", family),
        }
    return files
