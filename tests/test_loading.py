"""Weight files: both published formats, architecture read off the weights, clear refusals, the model cache."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lib_instantid.errors import ModelError
from lib_instantid.models.loading import ModelCache, load_adapter, load_identitynet, read_weights
from lib_instantid.models.resampler import ResamplerConfig
from lib_instantid.unet_hooks import check_compatible, unet_architecture
from tests.fixtures import tiny_models as tm


def test_adapter_formats_load_the_same_tensors(kind, weight_files):
    from_bin = load_adapter(weight_files[kind]["adapter_bin"])
    from_safetensors = load_adapter(weight_files[kind]["adapter_safetensors"])
    a, b = from_bin.state_dict(), from_safetensors.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    published = tm.adapter_state_dict(kind)
    assert torch.equal(a["image_proj.latents"], published["image_proj"]["latents"])
    assert torch.equal(a["ip_adapter.3.to_v_ip.weight"], published["ip_adapter"]["3.to_v_ip.weight"])


def test_adapter_architecture_is_read_off_the_weights(kind, weight_files):
    adapter = load_adapter(weight_files[kind]["adapter_bin"])
    assert adapter.image_proj.config == ResamplerConfig(
        width=tm.RESAMPLER_WIDTH, depth=tm.RESAMPLER_DEPTH, num_queries=16, embedding_dim=512,
        output_dim=tm.CONTEXT_DIM[kind], ff_mult=4,
    )
    assert [kv.to_k_ip.weight.shape[0] for kv in adapter.layers] == list(tm.cross_attention_widths(kind))


def test_identitynet_folder_and_single_file_are_the_same_network(kind, weight_files):
    folder = load_identitynet(weight_files[kind]["identitynet_dir"])
    also_folder = load_identitynet(weight_files[kind]["identitynet_folder"])
    single = load_identitynet(weight_files[kind]["identitynet_single"])
    assert folder.config == also_folder.config
    # heads come from config.json for the folder and from the family rule for the single file: they must agree
    assert folder.config == single.config
    expected = tm.identitynet_config(kind)
    assert folder.config.block_out_channels == tuple(expected["block_out_channels"])
    assert folder.config.context_dim == expected["cross_attention_dim"]
    assert (folder.config.addition_dim is not None) == (kind == "sdxl")
    a, b = folder.state_dict(), single.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_identitynet_matches_diffusers_controlnet(kind, weight_files):
    reference = tm.load_identitynet(weight_files[kind]["identitynet_folder"])
    ours = load_identitynet(weight_files[kind]["identitynet_single"])
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([3.0, 700.0])
    tokens = torch.randn(2, 16, tm.CONTEXT_DIM[kind], generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    y_parts = None
    y = None
    if kind == "sdxl":
        y_parts = (torch.randn(2, tm.SDXL_POOLED_DIM, generator=g), torch.tensor([[512.0, 512, 0, 0, 512, 512]] * 2))
        y = tm.make_sdxl_y(*y_parts)
    down_ref, mid_ref = tm.identitynet_residuals(reference, x, t, tokens, hint, 1.0, y_parts)
    with torch.no_grad():
        down, mid = ours(x, t, tokens, ours.embed_hint(hint).expand(2, -1, -1, -1), y)
    assert len(down) == len(down_ref)
    for a, b in zip(down + [mid], down_ref + [mid_ref]):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_wrong_family_is_refused_against_the_unet(weight_files):
    sdxl_unet = unet_architecture(tm.tiny_unet("sdxl"))
    with pytest.raises(ModelError, match=r"adapter is made for SD1.5 .* but the loaded checkpoint is"):
        check_compatible(sdxl_unet, load_adapter(weight_files["sd15"]["adapter_bin"]), None)
    with pytest.raises(ModelError, match="IdentityNet is made for SD1.5"):
        check_compatible(sdxl_unet, None, load_identitynet(weight_files["sd15"]["identitynet_single"]))
    check_compatible(sdxl_unet, load_adapter(weight_files["sdxl"]["adapter_bin"]),
                     load_identitynet(weight_files["sdxl"]["identitynet_single"]))


def test_each_file_refused_in_the_other_slot(weight_files):
    files = weight_files["sdxl"]
    with pytest.raises(ModelError, match="face adapter, not the IdentityNet"):
        load_identitynet(files["adapter_safetensors"])
    with pytest.raises(ModelError, match="not a face adapter"):
        load_adapter(files["identitynet_single"])


def test_ordinary_webui_format_controlnet_is_refused(tmp_path):
    path = tmp_path / "control_v11p_sd15_canny.safetensors"
    save_file({"control_model.input_hint_block.0.weight": torch.zeros(16, 3, 3, 3),
               "control_model.zero_convs.0.0.weight": torch.zeros(320, 320, 1, 1)}, path)
    with pytest.raises(ModelError, match="WebUI's own format"):
        load_identitynet(path)


def test_other_ip_adapters_are_refused_by_kind(tmp_path, weight_files):
    plain = tmp_path / "ip-adapter_sdxl.safetensors"
    save_file({"image_proj.proj.weight": torch.zeros(8192, 1280), "image_proj.norm.weight": torch.zeros(2048),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(640, 2048),
               "ip_adapter.1.to_v_ip.weight": torch.zeros(640, 2048)}, plain)
    with pytest.raises(ModelError, match="IP-Adapter of another kind"):
        load_adapter(plain)
    clip_plus = tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors"
    sd = load_file(weight_files["sdxl"]["adapter_safetensors"])
    sd["image_proj.proj_in.weight"] = torch.zeros(tm.RESAMPLER_WIDTH, 1280)
    save_file(sd, clip_plus)
    with pytest.raises(ModelError, match="1280-wide image features"):
        load_adapter(clip_plus)


@pytest.mark.parametrize("name", ["adapter_safetensors", "adapter_bin", "identitynet_single"])
def test_truncated_files_are_refused(tmp_path, weight_files, name):
    source = weight_files["sdxl"][name]
    cut = tmp_path / source.name
    cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        read_weights(cut)


class _Payload:
    def __reduce__(self):
        return (os.mkdir, (str(_Payload.target),))


def test_pickle_carrying_code_is_never_executed(tmp_path):
    _Payload.target = tmp_path / "pwned"
    path = tmp_path / "ip-adapter.bin"
    torch.save({"image_proj": {"latents": torch.zeros(1)}, "evil": _Payload()}, path)
    with pytest.raises(ModelError, match="not a plain weights file"):
        read_weights(path)
    assert not _Payload.target.exists()


def test_release_style_pickle_loads_under_a_webui_that_replaced_torch_load(monkeypatch, weight_files):
    """A1111 swaps torch.load for its own checker; our loader reads through torch.serialization with weights_only."""
    monkeypatch.setattr(torch, "load", lambda *a, **k: None)  # the checker's answer for a refused file
    assert load_adapter(weight_files["sdxl"]["adapter_bin"]).context_dim == tm.CONTEXT_DIM["sdxl"]


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(ModelError, match="not found.*models.md"):
        read_weights(tmp_path / "nothing.safetensors")
    with pytest.raises(ModelError, match="No IdentityNet found"):
        load_identitynet(tmp_path)


def test_cache_reuses_until_the_file_changes(tmp_path, weight_files):
    path = tmp_path / "ip-adapter.safetensors"
    path.write_bytes(weight_files["sdxl"]["adapter_safetensors"].read_bytes())
    loads = []

    def counting_loader(p: Path):
        loads.append(p)
        return load_adapter(p)

    cache = ModelCache()
    first = cache.get(path, counting_loader, torch.device("cpu"), torch.float32)
    assert cache.get(path, counting_loader, torch.device("cpu"), torch.float32) is first
    assert len(loads) == 1
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert cache.get(path, counting_loader, torch.device("cpu"), torch.float32) is not first
    assert len(loads) == 2


def test_converting_a_mapped_file_gives_its_pages_back(weight_files):
    from lib_instantid.models import loading

    net = load_identitynet(weight_files["sdxl"]["identitynet_single"])
    mapped = [p.data_ptr() for p in net.parameters() if p.data_ptr() in loading._MAPPED]
    assert mapped, "the safetensors tensors are views of the mapped file"
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loading.place(net, torch.device("cpu"), torch.float64)
    assert not any(pointer in loading._MAPPED for pointer in mapped)  # each source released once replaced
    after = net.state_dict()
    assert all(after[k].dtype == torch.float64 and torch.equal(after[k], before[k].double()) for k in before)


def test_cache_places_models_on_the_requested_dtype(weight_files):
    cache = ModelCache()
    model = cache.get(weight_files["sdxl"]["adapter_bin"], load_adapter, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_release_pickle_has_only_entries_the_webui_checker_accepts(weight_files):
    with zipfile.ZipFile(weight_files["sd15"]["adapter_bin"]) as z:
        assert all(tm.A1111_ZIP_NAME_RE.match(n) for n in z.namelist())
