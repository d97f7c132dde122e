"""The test-side ground truth is itself right: tiny A1111-layout UNets match diffusers, the tiny weight files
have the published layouts and load where the real ones load, and the diffusers reference behaves."""
from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures import tiny_models as tm

# sgm's CrossAttention enters torch's deprecated sdp_kernel() on every call; the warning is about sgm, not us.
pytestmark = pytest.mark.filterwarnings("ignore:.*sdp_kernel.*:FutureWarning")

BATCH = 3
LATENT = 8


@pytest.fixture(scope="module", params=tm.KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def unet(kind):
    return tm.tiny_unet(kind)


@pytest.fixture(scope="module")
def files(kind, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp(kind)
    return {
        "bin": tm.write_adapter(folder / "ip-adapter.bin", kind),
        "safetensors": tm.write_adapter(folder / "ip-adapter.safetensors", kind, fmt="safetensors"),
        "identitynet_dir": folder,
        "identitynet_folder": tm.write_identitynet(folder, kind),
        "identitynet_single": tm.write_identitynet_single_file(folder / "control_instant_id.safetensors", kind),
    }


@pytest.fixture(scope="module")
def reference(kind, unet, files) -> tm.Reference:
    return tm.build_reference(kind, unet, files["identitynet_dir"], files["bin"])


def _inputs(kind: str, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    inputs = {
        "x": torch.randn(BATCH, tm.LATENT_CHANNELS, LATENT, LATENT, generator=generator),
        "t": torch.tensor([10.0, 500.0, 980.0]),
        "text_context": torch.randn(BATCH, 7, tm.CONTEXT_DIM[kind], generator=generator),
        "y": None,
    }
    if kind == "sdxl":
        pooled = torch.randn(BATCH, tm.SDXL_POOLED_DIM, generator=generator)
        time_ids = torch.tensor([[1024.0, 1024, 0, 0, 1024, 1024], [768, 1016, 8, 16, 1024, 768], [64, 64, 0, 0, 64, 64]])
        inputs["y"] = (pooled, time_ids)
    return inputs


def _keypoint_hint(size: int = LATENT * tm.HINT_SCALE) -> torch.Tensor:
    """A keypoint-like image: black, five coloured disks (the InstantID colours), [1, 3, size, size] in [0, 1]."""
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1]])
    centres = [(20, 22), (20, 42), (32, 32), (44, 24), (44, 40)]
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.zeros(3, size, size)
    for colour, (row, col) in zip(colours, centres):
        disk = (rows - row) ** 2 + (cols - col) ** 2 <= 5 ** 2
        image[:, disk] = colour[:, None]
    return image[None]


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _sgm_added_cond(y) -> dict:
    return {} if y is None else {"text_embeds": y[0], "time_ids": y[1]}


def test_tiny_unet_is_seeded_non_degenerate_and_leaves_the_global_rng_alone(kind, unet):
    rng_state = torch.random.get_rng_state()
    again, other = tm.tiny_unet(kind), tm.tiny_unet(kind, seed=1)
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    for (name, value), same, different in zip(
        unet.state_dict().items(), again.state_dict().values(), other.state_dict().values()
    ):
        assert torch.equal(value, same), name
        assert not torch.equal(value, different), name
        assert value.any(), name  # zero-initialised layers were given random values


@torch.no_grad()
def test_a1111_unet_matches_its_diffusers_conversion(kind, unet):
    diffusers_unet = tm.to_diffusers_unet(unet, kind)
    inputs = _inputs(kind)
    x, t, context, y = inputs["x"], inputs["t"], inputs["text_context"], inputs["y"]
    a1111_y = None if y is None else tm.make_sdxl_y(*y, tm.SDXL_TIME_ID_DIM)
    expected = diffusers_unet(x, t, encoder_hidden_states=context, added_cond_kwargs=_sgm_added_cond(y)).sample
    actual = unet(x, t, context, a1111_y) if kind == "sdxl" else unet(x, t, context)
    assert expected.abs().max() > 0.1
    assert _relative(actual, expected) < 1e-5


@torch.no_grad()
def test_make_sdxl_y_matches_diffusers_added_time_embedding():
    diffusers_unet = tm.to_diffusers_unet(tm.tiny_unet("sdxl"), "sdxl")
    pooled, time_ids = _inputs("sdxl")["y"]
    time_embeds = diffusers_unet.add_time_proj(time_ids.flatten()).reshape(BATCH, -1)
    expected = torch.cat([pooled, time_embeds], dim=1)
    actual = tm.make_sdxl_y(pooled, time_ids, tm.SDXL_TIME_ID_DIM)
    assert actual.shape == (BATCH, tm.A1111_CONFIGS["sdxl"]["adm_in_channels"])
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def _pickle_globals(data_pkl: bytes) -> set[tuple[str, str]]:
    """Every global a pickle references, found by unpickling with stand-ins (A1111 allows only a few)."""
    found: set[tuple[str, str]] = set()

    class Recorder(pickle.Unpickler):
        def find_class(self, module, name):
            found.add((module, name))
            return lambda *args, **kwargs: {}

        def persistent_load(self, pid):
            return None

    Recorder(io.BytesIO(data_pkl)).load()
    return found


def test_bin_adapter_is_shaped_like_the_2024_release(kind, files):
    path = files["bin"]
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        data_pkl = archive.read(next(name for name in names if name.endswith("/data.pkl")))
    assert all(tm.A1111_ZIP_NAME_RE.match(name) for name in names), names
    assert _pickle_globals(data_pkl) <= {
        ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage"),
    }
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == {"image_proj", "ip_adapter"}
    width, context = tm.RESAMPLER_WIDTH, tm.CONTEXT_DIM[kind]
    proj = state["image_proj"]
    assert proj["latents"].shape == (1, tm.NUM_FACE_TOKENS, width)
    assert proj["proj_in.weight"].shape == (width, tm.FACE_EMBED_DIM)
    assert proj["proj_out.weight"].shape == (context, width)
    assert proj["layers.0.0.to_kv.weight"].shape == (2 * width, width)
    assert proj["layers.0.1.3.weight"].shape == (width, 4 * width)
    layers = len(tm.cross_attention_widths(kind))
    assert sorted(state["ip_adapter"]) == sorted(
        f"{2 * n + 1}.{name}.weight" for n in range(layers) for name in ("to_k_ip", "to_v_ip")
    )


def test_safetensors_adapter_holds_the_same_tensors(files):
    from_bin = torch.load(files["bin"], map_location="cpu", weights_only=True)
    flat = load_file(str(files["safetensors"]))
    assert flat.keys() == {f"{group}.{key}" for group in from_bin for key in from_bin[group]}
    for group, tensors in from_bin.items():
        for key, value in tensors.items():
            assert torch.equal(flat[f"{group}.{key}"], value)


def test_adapter_key_order_is_input_output_middle(kind, unet):
    """Give layer k's to_k_ip the constant k, load with diffusers, and find which sgm/ldm attn2 received it.
    Layers are matched by their to_k weights, so the converter's naming is the only mapping used."""
    state = tm.adapter_state_dict(kind)
    for key in state["ip_adapter"]:
        if key.endswith("to_k_ip.weight"):
            state["ip_adapter"][key] = torch.full_like(state["ip_adapter"][key], float(key.split(".")[0]))
    diffusers_unet = tm.to_diffusers_unet(unet, kind)
    tm.load_ip_adapter_into(diffusers_unet, state)

    a1111_by_to_k = {module.to_k.weight.detach().numpy().tobytes(): name
                     for name, module in unet.named_modules() if name.endswith(".attn2")}
    received = {}
    for name, module in diffusers_unet.named_modules():
        if name.endswith(".attn2"):
            a1111_name = a1111_by_to_k[module.to_k.weight.detach().numpy().tobytes()]
            received[int(module.processor.to_k_ip[0].weight[0, 0].item())] = a1111_name
    in_key_order = [received[key] for key in sorted(received)]

    sections = [[name for name in a1111_by_to_k.values() if name.startswith(section)]
                for section in ("input_blocks", "output_blocks", "middle_block")]
    assert in_key_order == sections[0] + sections[1] + sections[2] == tm.cross_attention_names(unet)
    assert sorted(received) == list(range(1, 2 * len(received), 2))


def test_identitynet_files_load_and_hint_path_is_live(kind, files):
    folder = files["identitynet_folder"]
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    identitynet = tm.load_identitynet(folder)
    assert identitynet.config.cross_attention_dim == tm.CONTEXT_DIM[kind]
    zero_convs = [value for name, value in identitynet.named_parameters() if name.startswith("controlnet_")
                  and not name.startswith("controlnet_cond_embedding")]
    assert zero_convs and all(value.any() for value in zero_convs)
    single = load_file(str(files["identitynet_single"]))
    assert single.keys() == identitynet.state_dict().keys()
    assert all(torch.equal(single[key], value) for key, value in identitynet.state_dict().items())

    inputs = _inputs(kind)
    tokens = torch.randn(BATCH, tm.NUM_FACE_TOKENS, tm.CONTEXT_DIM[kind], generator=torch.Generator().manual_seed(2))
    hint = _keypoint_hint()

    def residuals(image: torch.Tensor) -> list[torch.Tensor]:
        down, mid = tm.identitynet_residuals(identitynet, inputs["x"], inputs["t"], tokens, image, 1.0, inputs["y"])
        return down + [mid]

    expected = residuals(hint)
    assert len(expected) == (10 if kind == "sdxl" else 5)
    for changed in (torch.roll(hint, 2, dims=-1), hint.flip(1)):
        for before, after in zip(expected, residuals(changed)):
            assert (after - before).norm() / before.norm() > 0.01


@torch.no_grad()
def test_reference_with_both_scales_zero_is_the_plain_unet(kind, unet, reference):
    inputs = _inputs(kind)
    plain = tm.to_diffusers_unet(unet, kind)(
        inputs["x"], inputs["t"], encoder_hidden_states=inputs["text_context"],
        added_cond_kwargs=_sgm_added_cond(inputs["y"]),
    ).sample
    face = torch.randn(tm.FACE_EMBED_DIM, generator=torch.Generator().manual_seed(3))
    eps = tm.reference_eps(reference, **inputs, face_embedding=face, cond_mask=[True, False, True],
                           hint=_keypoint_hint(), adapter_scale=0.0, identitynet_scale=0.0)
    assert torch.equal(eps, plain)


def test_reference_rows_follow_their_own_tokens(kind, reference):
    """Each row depends only on its own inputs and mask; uncond rows see R(0), which is not zero."""
    inputs = _inputs(kind)
    face = torch.randn(tm.FACE_EMBED_DIM, generator=torch.Generator().manual_seed(3))
    common = dict(face_embedding=face, hint=_keypoint_hint(), adapter_scale=0.8, identitynet_scale=0.8)
    mixed = tm.reference_eps(reference, **inputs, cond_mask=[True, False, True], **common)
    all_cond = tm.reference_eps(reference, **inputs, cond_mask=[True, True, True], **common)
    torch.testing.assert_close(mixed[[0, 2]], all_cond[[0, 2]], rtol=1e-5, atol=1e-6)
    assert _relative(mixed[1], all_cond[1]) > 1e-3
    tokens = reference.face_tokens(face)
    assert tokens.cond.shape == tokens.uncond.shape == (tm.NUM_FACE_TOKENS, tm.CONTEXT_DIM[kind])
    assert tokens.uncond.abs().max() > 0.1
    assert _relative(tokens.cond, tokens.uncond) > 0.1
