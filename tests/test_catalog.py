"""Installed models: found in every supported layout, described by what they are made for, chosen by name or by
fit to the loaded UNet's shapes; unreadable files listed with the real reason; nothing outside the model folders can
be named."""
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
from lib_instantid.unet_hooks import unet_architecture
from tests.fixtures import tiny_models as tm

SDXL_CONTEXT, SD15_CONTEXT = tm.CONTEXT_DIM["sdxl"], tm.CONTEXT_DIM["sd15"]


@pytest.fixture(scope="module")
def shapes() -> dict:
    """What each tiny UNet offers the weights."""
    return {kind: unet_architecture(tm.tiny_unet(kind)) for kind in tm.KINDS}


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
    found = {(e.name, e.kind, e.context_dim, e.error) for e in scan(models_root)}
    assert found == {
        ("instantid/ControlNetModel", IDENTITYNET, SDXL_CONTEXT, None),
        ("instantid/ip-adapter.bin", ADAPTER, SDXL_CONTEXT, None),
        ("ControlNet/control_instant_id_sd15.safetensors", IDENTITYNET, SD15_CONTEXT, None),
        ("ControlNet/ip-adapter_instant_id_sd15.safetensors", ADAPTER, SD15_CONTEXT, None),
    }


def test_one_folder_per_family_lists_adapters_beside_their_identitynets(tmp_path, weight_files, shapes):
    for kind in tm.KINDS:
        folder = tmp_path / "instantid" / kind
        shutil.copytree(weight_files[kind]["identitynet_folder"], folder / "ControlNetModel")
        shutil.copy(weight_files[kind]["adapter_bin"], folder / "ip-adapter.bin")
    entries = scan(tmp_path)
    assert [(e.name, e.kind) for e in entries] == [
        ("instantid/sd15/ControlNetModel", IDENTITYNET), ("instantid/sd15/ip-adapter.bin", ADAPTER),
        ("instantid/sdxl/ControlNetModel", IDENTITYNET), ("instantid/sdxl/ip-adapter.bin", ADAPTER),
    ]
    for kind in tm.KINDS:
        assert choose(entries, ADAPTER, "", shapes[kind], "adapter_model").name == f"instantid/{kind}/ip-adapter.bin"
        assert choose(entries, IDENTITYNET, "", shapes[kind], "identitynet_model").name == \
            f"instantid/{kind}/ControlNetModel"


def test_automatic_choice_takes_the_one_that_fits(models_root, shapes):
    entries = scan(models_root)
    assert choose(entries, ADAPTER, "", shapes["sdxl"], "adapter_model").name == "instantid/ip-adapter.bin"
    assert choose(entries, IDENTITYNET, "", shapes["sd15"], "identitynet_model").path.name == \
        "control_instant_id_sd15.safetensors"


def test_the_same_model_twice_is_chosen_deterministically_ours_first(models_root, shapes):
    """sd-webui-controlnet users often have the IdentityNet both in models/instantid and models/ControlNet."""
    controlnet = models_root / "ControlNet"
    shutil.copy(models_root / "instantid" / "ip-adapter.bin", controlnet / "ip-adapter_instant_id_sdxl.bin")
    shutil.copy(models_root / "instantid" / "ControlNetModel" / "diffusion_pytorch_model.safetensors",
                controlnet / "control_instant_id_sdxl.safetensors")
    shutil.copy(models_root / "instantid" / "ip-adapter.bin", models_root / "instantid" / "ip-adapter-copy.bin")
    for _ in range(2):
        entries = scan(models_root)
        assert choose(entries, ADAPTER, "", shapes["sdxl"], "adapter_model").name == "instantid/ip-adapter-copy.bin"
        assert choose(entries, IDENTITYNET, "", shapes["sdxl"], "identitynet_model").name == \
            "instantid/ControlNetModel"


def test_fitting_means_the_unets_shapes_not_only_its_family(tmp_path, shapes):
    """An adapter with the right context width but another layer layout (e.g. for another SDXL-family UNet with
    fewer transformer blocks) does not fit, and Automatic does not take it."""
    ours = tmp_path / "instantid"
    ours.mkdir()
    widths = tm.cross_attention_widths("sdxl")
    state = tm.adapter_weights(widths[:-2], SDXL_CONTEXT)
    save_file({f"{g}.{k}": v for g, d in state.items() for k, v in d.items()}, ours / "ip-adapter-short.safetensors")
    entries = scan(tmp_path)
    assert entries[0].context_dim == SDXL_CONTEXT and not entries[0].fits(shapes["sdxl"])
    with pytest.raises(ModelError, match=rf"No installed face adapter fits .*{len(widths)} cross-attention layers.*"
                                         rf"ip-adapter-short.safetensors \(.*{len(widths) - 2} cross-attention"):
        choose(entries, ADAPTER, "", shapes["sdxl"], "adapter_model")
    with pytest.raises(ModelError, match=r"The face adapter is made for .* but the loaded checkpoint is"):
        choose(entries, ADAPTER, "instantid/ip-adapter-short.safetensors", shapes["sdxl"], "adapter_model")


def test_no_fit_says_what_is_installed_and_what_is_needed(models_root, shapes):
    entries = scan(models_root)
    with pytest.raises(ModelError, match=r"No installed face adapter fits the loaded checkpoint, SD1.5 .*Installed: "
                                         r"instantid/ip-adapter.bin \(a model with context width 64") as none:
        choose([e for e in entries if e.family != "SD1.5"], ADAPTER, "", shapes["sd15"], "adapter_model")
    assert none.value.field == "adapter_model"


def test_named_choice_by_name_or_unique_file_name(models_root, shapes):
    entries = scan(models_root)
    assert choose(entries, ADAPTER, "ip-adapter.bin", shapes["sdxl"], "adapter_model").name == \
        "instantid/ip-adapter.bin"
    assert choose(entries, IDENTITYNET, "instantid/ControlNetModel", shapes["sdxl"], "identitynet_model").kind == \
        IDENTITYNET


@pytest.mark.parametrize("name", [
    "../ip-adapter.bin", "instantid/../instantid/ip-adapter.bin", "/etc/passwd", "ControlNet/control_v11p_sd15_canny.safetensors",
    "instantid/notes.txt", "ip-adapter_instant_id_sd15.safetensors/../../x",
])
def test_names_outside_the_catalogue_are_refused_without_touching_files(models_root, shapes, name, monkeypatch):
    entries = scan(models_root)
    opened = []
    monkeypatch.setattr(catalog, "read_shapes_or_error", lambda path: opened.append(path))
    with pytest.raises(ModelError, match="no installed face adapter is named"):
        choose(entries, ADAPTER, name, shapes["sdxl"], "adapter_model")
    assert not opened


def test_an_unreadable_file_is_listed_with_the_real_reason(models_root, shapes):
    path = models_root / "instantid" / "ip-adapter.bin"
    path.write_bytes(path.read_bytes()[:1000])
    entry = next(e for e in scan(models_root) if e.name == "instantid/ip-adapter.bin")
    assert entry.kind == ADAPTER and entry.architecture is None
    assert "truncated or corrupt: a zip archive without its directory" in entry.error and "(1000 bytes)" in entry.error
    with pytest.raises(ModelError, match=r"adapter_model: instantid/ip-adapter.bin cannot be used: .*truncated"):
        choose(scan(models_root), ADAPTER, "instantid/ip-adapter.bin", shapes["sdxl"], "adapter_model")
    with pytest.raises(ModelError, match=r"Installed: instantid/ip-adapter.bin \(unusable: .*truncated"):
        choose(scan(models_root), ADAPTER, "", shapes["sdxl"], "adapter_model")
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_adapter(path)


@pytest.mark.parametrize("failure", [TypeError("load() got an unexpected keyword argument 'mmap'"),
                                     OSError(19, "No such device"),
                                     ValueError("f must be a string filename in order to use mmap argument")])
def test_a_pickle_that_cannot_be_memory_mapped_is_read_whole(models_root, shapes, monkeypatch, failure):
    """Old torch, file systems without mmap: the weights-only load without mapping takes over."""
    original = torch.serialization.load
    calls = []

    def load(f, *args, mmap=None, **kwargs):
        calls.append(mmap)
        if mmap:
            raise failure
        return original(f, *args, **kwargs)

    monkeypatch.setattr(torch.serialization, "load", load)
    catalog._read_shapes_of.cache_clear()
    catalog._entry_of.cache_clear()
    entry = next(e for e in scan(models_root) if e.name == "instantid/ip-adapter.bin")
    assert entry.error is None and entry.fits(shapes["sdxl"])
    assert calls == [True, None]
    assert load_adapter(entry.path).context_dim == SDXL_CONTEXT


def test_a_file_of_another_kind_named_for_instantid_is_listed_with_what_it_is(models_root):
    save_file({"image_proj.proj.weight": torch.zeros(8, 4), "ip_adapter.1.to_k_ip.weight": torch.zeros(4, 8),
               "ip_adapter.1.to_v_ip.weight": torch.zeros(4, 8)}, models_root / "instantid" / "plain.safetensors")
    entry = next(e for e in scan(models_root) if e.name == "instantid/plain.safetensors")
    assert entry.kind == ADAPTER and "IP-Adapter of another kind" in entry.error


def test_unrelated_safetensors_in_our_folder_are_ignored(models_root):
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)},
              models_root / "instantid" / "checkpoint.safetensors")
    assert "instantid/checkpoint.safetensors" not in {e.name for e in scan(models_root)}
