"""Installed models: found in both supported layouts, described by family, chosen by name or by fit — and nothing
outside the model folders can be named."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lib_instantid.errors import ModelError
from lib_instantid.models import catalog
from lib_instantid.models.catalog import ADAPTER, IDENTITYNET, choose, scan
from lib_instantid.models.loading import load_adapter
from tests.fixtures import tiny_models as tm

SDXL_CONTEXT, SD15_CONTEXT = tm.CONTEXT_DIM["sdxl"], tm.CONTEXT_DIM["sd15"]


@pytest.fixture
def models_root(tmp_path, weight_files) -> Path:
    """Our folder in the official layout (SDXL-like tiny) and the ControlNet folder as sd-webui-controlnet users
    have it (SD1.5-like tiny), plus files that are not ours."""
    ours = tmp_path / "instantid"
    shutil.copytree(weight_files["sdxl"]["identitynet_folder"], ours / "ControlNetModel")
    shutil.copy(weight_files["sdxl"]["adapter_bin"], ours / "ip-adapter.bin")
    (ours / "notes.txt").write_text("not a model")
    controlnet = tmp_path / "ControlNet"
    controlnet.mkdir()
    shutil.copy(weight_files["sd15"]["identitynet_single"], controlnet / "control_instant_id_sd15.safetensors")
    shutil.copy(weight_files["sd15"]["adapter_safetensors"], controlnet / "ip-adapter_instant_id_sd15.safetensors")
    shutil.copy(weight_files["sd15"]["identitynet_single"], controlnet / "control_v11p_sd15_canny.safetensors")
    return tmp_path


def test_both_layouts_are_found_with_their_family(models_root):
    found = {(e.name, e.kind, e.context_dim) for e in scan(models_root)}
    assert found == {
        ("instantid/ControlNetModel", IDENTITYNET, SDXL_CONTEXT),
        ("instantid/ip-adapter.bin", ADAPTER, SDXL_CONTEXT),
        ("ControlNet/control_instant_id_sd15.safetensors", IDENTITYNET, SD15_CONTEXT),
        ("ControlNet/ip-adapter_instant_id_sd15.safetensors", ADAPTER, SD15_CONTEXT),
    }


def test_automatic_choice_takes_the_one_that_fits(models_root):
    entries = scan(models_root)
    assert choose(entries, ADAPTER, "", SDXL_CONTEXT, "adapter_model").name == "instantid/ip-adapter.bin"
    assert choose(entries, IDENTITYNET, "", SD15_CONTEXT, "identitynet_model").path.name == \
        "control_instant_id_sd15.safetensors"


def test_automatic_choice_refuses_none_or_several(models_root):
    entries = scan(models_root)
    with pytest.raises(ModelError, match=r"No installed face adapter fits.*context width 1280") as none:
        choose(entries, ADAPTER, "", 1280, "adapter_model")
    assert none.value.field == "adapter_model"
    twin = models_root / "instantid" / "ip-adapter-copy.bin"
    shutil.copy(models_root / "instantid" / "ip-adapter.bin", twin)
    with pytest.raises(ModelError, match="Several installed face adapters fit.*Choose one in adapter_model"):
        choose(scan(models_root), ADAPTER, "", SDXL_CONTEXT, "adapter_model")


def test_named_choice_by_name_or_unique_file_name(models_root):
    entries = scan(models_root)
    assert choose(entries, ADAPTER, "ip-adapter.bin", 0, "adapter_model").name == "instantid/ip-adapter.bin"
    assert choose(entries, IDENTITYNET, "instantid/ControlNetModel", 0, "identitynet_model").kind == IDENTITYNET


@pytest.mark.parametrize("name", [
    "../ip-adapter.bin", "instantid/../instantid/ip-adapter.bin", "/etc/passwd", "ControlNet/control_v11p_sd15_canny.safetensors",
    "instantid/notes.txt", "ip-adapter_instant_id_sd15.safetensors/../../x",
])
def test_names_outside_the_catalogue_are_refused_without_touching_files(models_root, name, monkeypatch):
    entries = scan(models_root)
    opened = []
    monkeypatch.setattr(catalog, "read_shapes", lambda path: opened.append(path))
    with pytest.raises(ModelError, match="no installed face adapter is named"):
        choose(entries, ADAPTER, name, SDXL_CONTEXT, "adapter_model")
    assert not opened


def test_a_truncated_file_is_still_listed_so_choosing_it_explains(models_root):
    path = models_root / "instantid" / "ip-adapter.bin"
    path.write_bytes(path.read_bytes()[:1000])
    entry = next(e for e in scan(models_root) if e.name == "instantid/ip-adapter.bin")
    assert entry.kind == ADAPTER and entry.context_dim is None
    chosen = choose(scan(models_root), ADAPTER, "instantid/ip-adapter.bin", SDXL_CONTEXT, "adapter_model")
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_adapter(chosen.path)


def test_unrelated_safetensors_in_our_folder_are_ignored(models_root):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
              models_root / "instantid" / "checkpoint.safetensors")
    assert "instantid/checkpoint.safetensors" not in {e.name for e in scan(models_root)}
