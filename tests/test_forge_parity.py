"""The Forge path (attn2 replace patches + the IdentityNet in Forge's ControlNet chain, rows from `cond_or_uncond`)
equals the diffusers reference of InstantID, and the test has the power to see bugs. Forge stand-in: own process,

    .venv-forge/bin/python -m pytest -q tests/test_forge*.py
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lib_instantid.conditioning import HintFeatures, project_face
from lib_instantid.keypoints import draw_keypoints
from lib_instantid.models.loading import load_adapter, load_identitynet
from lib_instantid.session import IdentityTerms, Schedule, Session
from lib_instantid.unet_hooks import cross_attention_layers
from tests.fixtures import tiny_models as tm
from tests.forge.pytest_support import forge  # noqa: F401  (fixture: installs the stand-in)

LATENT = 8
SIZE = LATENT * tm.HINT_SCALE
TOLERANCE = 1e-5  # max|Δ| / max|ref| in float32, as for the A1111 path
T = 600
CHUNKS = [1, 0]  # Forge's layout: the uncond chunk, then the cond chunk, each the whole batch of 2


@dataclass
class Case:
    kind: str
    unet: torch.nn.Module
    adapter: torch.nn.Module
    identitynet: torch.nn.Module
    reference: tm.Reference
    embedding: np.ndarray
    keypoints: np.ndarray
    images: torch.Tensor  # [2, 4, h, w]
    text: dict  # chunk kind -> [2, tokens, dim]
    pooled: dict | None
    ids: torch.Tensor | None

    def rows(self, chunks):
        x = torch.cat([self.images for _ in chunks])
        text = torch.cat([self.text[c] for c in chunks])
        y_parts = None if self.pooled is None else (torch.cat([self.pooled[c] for c in chunks]),
                                                   torch.cat([self.ids for _ in chunks]))
        return x, text, y_parts


@pytest.fixture(scope="module", params=("sdxl", "sd15"))
def case(request, weight_files) -> Case:
    kind, files = request.param, weight_files[request.param]
    unet = tm.tiny_unet(kind)
    g = torch.Generator().manual_seed(11)
    images = torch.randn(2, 4, LATENT, LATENT, generator=g)
    text = {0: torch.randn(2, 7, tm.CONTEXT_DIM[kind], generator=g), 1: torch.randn(2, 7, tm.CONTEXT_DIM[kind], generator=g)}
    pooled = ids = None
    if kind == "sdxl":
        pooled = {0: torch.randn(2, tm.SDXL_POOLED_DIM, generator=g), 1: torch.randn(2, tm.SDXL_POOLED_DIM, generator=g)}
        ids = torch.tensor([[512.0, 512, 0, 0, 512, 512], [768, 640, 16, 8, 512, 512]])
    return Case(kind, unet, load_adapter(files["adapter_bin"]), load_identitynet(files["identitynet_dir"]),
                tm.build_reference(kind, unet, files["identitynet_dir"], files["adapter_bin"]),
                (torch.randn(512, generator=g) * 1.5).numpy(),
                np.array([[20.3, 24.8], [42.6, 23.1], [31.2, 35.7], [22.9, 46.4], [41.5, 45.2]]),
                images, text, pooled, ids)


def forge_eps(case: Case, adapter_weight: float, identitynet_weight: float, calls=(CHUNKS,), region=None,
              others=()) -> torch.Tensor:
    """One denoiser step made as Forge makes it: each call in `calls` (its chunks) through the patched UnetPatcher's
    ControlNet chain and UNet forward; the rows of the calls concatenated in the order given."""
    from backend.modules.k_prediction import Prediction
    from backend.nn.unet import IntegratedUNet2DConditionModel
    from backend.patcher.unet import UnetPatcher
    from lib_instantid.hosts import forge as host

    wrapped = IntegratedUNet2DConditionModel(case.unet)
    unet_patcher = UnetPatcher.from_model(wrapped, config=wrapped.config, k_predictor=Prediction())
    tokens = project_face(case.adapter, case.embedding, torch.device("cpu"), torch.float32)
    session = Session(tokens, [a.heads for a in cross_attention_layers(wrapped)],
                      adapter=case.adapter, adapter_schedule=Schedule(adapter_weight),
                      identitynet=case.identitynet, identitynet_schedule=Schedule(identitynet_weight),
                      hint=HintFeatures(case.identitynet, lambda w, h, image: case.keypoints),
                      region=None if region is None else (lambda w, h, image: region), others=others)
    injection = host.Injection(session, host.RowSource(served=(True,), per_image=False))
    unet = host.patched(unet_patcher, injection, case.identitynet if identitynet_weight else None)
    predictor = unet.model.predictor
    sigma = predictor.sigma(torch.tensor(float(T)))
    outputs = []
    for chunks in calls:
        x, text, y_parts = case.rows(chunks)
        y = None if y_parts is None else tm.make_sdxl_y(*y_parts)
        sigmas = sigma.repeat(x.shape[0])
        options = dict(unet.model_options["transformer_options"], cond_or_uncond=list(chunks), sigmas=sigma.repeat(2))
        control = None
        if unet.controlnet_linked_list is not None:
            for cnet in unet.list_controlnets():
                cnet.transformer_options = options
                cnet.pre_run(unet.model, predictor.percent_to_sigma)
            x_noisy = x * (sigmas[:, None, None, None] ** 2 + 1) ** 0.5  # calculate_input gives x back
            cond = {"c_crossattn": text, "transformer_options": options, **({} if y is None else {"y": y})}
            control = unet.controlnet_linked_list.get_control(x_noisy, sigmas, cond, len(chunks))
        timesteps = predictor.timestep(sigmas).float()
        assert torch.equal(timesteps, torch.full_like(timesteps, T))
        with torch.no_grad():
            outputs.append(wrapped(x, timesteps, context=text, y=y, control=control, transformer_options=options))
    return torch.cat(outputs)


def reference_eps(case: Case, adapter_weight: float, identitynet_weight: float, chunks=CHUNKS, region=None
                  ) -> torch.Tensor:
    x, text, y_parts = case.rows(chunks)
    hint = torch.from_numpy(draw_keypoints(case.keypoints, (SIZE, SIZE))).permute(2, 0, 1)[None].float() / 255
    cond_rows = [chunk == 0 for chunk in chunks for _ in range(2)]
    return tm.reference_eps(case.reference, x, torch.full((x.shape[0],), float(T)), text,
                            torch.from_numpy(case.embedding), cond_rows, hint, adapter_weight, identitynet_weight,
                            y=y_parts, region=None if region is None else torch.from_numpy(region))


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("weights", [(0.8, 0.8), (0.8, 0.0), (0.0, 0.8), (1.7, 0.3)])
def test_forge_path_matches_the_diffusers_reference(forge, case, weights):
    assert relative_error(forge_eps(case, *weights), reference_eps(case, *weights)) <= TOLERANCE


def test_both_paths_move_the_output(forge, case):
    """Without this the parity above could pass with InstantID doing nothing."""
    plain = reference_eps(case, 0.0, 0.0)
    for weights in ((0.8, 0.0), (0.0, 0.8)):
        assert relative_error(forge_eps(case, *weights), plain) > 1e-2, weights


def test_cond_only_calls_and_split_calls_match_the_reference(forge, case):
    """CFG 1 (cond chunk only), and memory pressure splitting uncond and cond into calls of their own."""
    assert relative_error(forge_eps(case, 0.8, 0.8, calls=([0],)), reference_eps(case, 0.8, 0.8, [0])) <= TOLERANCE
    split = forge_eps(case, 0.8, 0.8, calls=([1], [0]))
    assert relative_error(split, reference_eps(case, 0.8, 0.8)) <= TOLERANCE


def test_face_region_on_the_forge_path_matches_the_reference(forge, case):
    region = np.zeros((SIZE, SIZE), np.float32)
    region[8:40, 16:56], region[40:48, 16:56] = 1.0, 0.5
    ours = forge_eps(case, 0.8, 0.8, region=region)
    assert relative_error(ours, reference_eps(case, 0.8, 0.8, region=region)) <= TOLERANCE
    assert relative_error(ours, reference_eps(case, 0.8, 0.8)) > 1e-3


def test_a_swapped_row_mapping_fails_the_parity_check(forge, case, monkeypatch):
    """The test sees a host that reads Forge's chunk kinds the wrong way round."""
    from lib_instantid.hosts import forge as host

    monkeypatch.setattr(host, "FORGE_UNCOND", host.FORGE_COND)
    assert relative_error(forge_eps(case, 0.8, 0.8), reference_eps(case, 0.8, 0.8)) > 1e-3


def test_two_people_on_the_forge_path_match_the_reference_formula(forge, case):
    """Several identities: each one's face term and IdentityNet pass masked to its half (tests/test_several_people
    has the formula's swap tests on the A1111 path)."""
    left, right = np.zeros((SIZE, SIZE), np.float32), np.zeros((SIZE, SIZE), np.float32)
    left[:, : SIZE // 2], right[:, SIZE // 2:] = 1.0, 1.0
    embedding = (np.random.default_rng(5).standard_normal(512) * 1.5).astype(np.float32)
    keypoints = case.keypoints * [0.5, 1.0] + [SIZE / 2, 0.0]
    other = IdentityTerms(project_face(case.adapter, embedding, torch.device("cpu"), torch.float32), Schedule(0.6),
                          Schedule(1.0), HintFeatures(case.identitynet, lambda w, h, image: keypoints),
                          lambda w, h, image: right)
    ours = forge_eps(case, 0.8, 0.8, region=left, others=[other])
    x, text, y_parts = case.rows(CHUNKS)

    def hint(points):
        return torch.from_numpy(draw_keypoints(points, (SIZE, SIZE))).permute(2, 0, 1)[None].float() / 255

    people = [tm.ReferencePerson(torch.from_numpy(case.embedding), hint(case.keypoints), 0.8, 0.8,
                                 torch.from_numpy(left)),
              tm.ReferencePerson(torch.from_numpy(embedding), hint(keypoints), 0.6, 1.0, torch.from_numpy(right))]
    expected = tm.reference_eps_several(case.reference, x, torch.full((x.shape[0],), float(T)), text, people,
                                        [chunk == 0 for chunk in CHUNKS for _ in range(2)], y=y_parts)
    assert relative_error(ours, expected) <= TOLERANCE
    assert relative_error(ours, reference_eps(case, 0.8, 0.8, region=left)) > 1e-3  # the second person acts
