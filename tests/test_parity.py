"""The hooked A1111-layout UNet equals the diffusers reference of InstantID, and the test has the power to see bugs."""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lib_instantid import conditioning
from lib_instantid.conditioning import COND, UNCOND, FaceTokens, HintFeatures, project_face
from lib_instantid.keypoints import draw_keypoints
from lib_instantid.models.loading import load_adapter, load_identitynet
from lib_instantid.session import OFF, CallInfo, Schedule
from lib_instantid.unet_hooks import InstantIDHooks
from tests.fixtures import tiny_models as tm

LATENT = 8
SIZE = LATENT * tm.HINT_SCALE
TOLERANCE = 1e-5  # max|Δ| / max|ref| in float32
# Rows of one denoiser call for 2 images: cond rows first, then uncond rows (A1111's layout).
ROWS = (COND, COND, UNCOND, UNCOND)


@dataclass
class Case:
    kind: str
    unet: torch.nn.Module
    adapter: torch.nn.Module
    identitynet: torch.nn.Module
    reference: tm.Reference
    embedding: np.ndarray
    keypoints: np.ndarray
    x: torch.Tensor
    t: torch.Tensor
    text: torch.Tensor
    y_parts: tuple | None

    @property
    def y(self):
        return None if self.y_parts is None else tm.make_sdxl_y(*self.y_parts)


@pytest.fixture(scope="module")
def case(kind, weight_files) -> Case:
    files = weight_files[kind]
    unet = tm.tiny_unet(kind)
    g = torch.Generator().manual_seed(7)
    images = torch.randn(2, 4, LATENT, LATENT, generator=g)
    cond_text, uncond_text = (torch.randn(2, 7, tm.CONTEXT_DIM[kind], generator=g) for _ in range(2))
    y_parts = None
    if kind == "sdxl":
        pooled_c, pooled_u = torch.randn(2, 2, tm.SDXL_POOLED_DIM, generator=g)
        ids = torch.tensor([[512.0, 512, 0, 0, 512, 512], [768, 640, 16, 8, 512, 512]])
        y_parts = (torch.cat([pooled_c, pooled_u]), torch.cat([ids, ids]))
    return Case(
        kind=kind,
        unet=unet,
        adapter=load_adapter(files["adapter_bin"]),
        identitynet=load_identitynet(files["identitynet_dir"]),
        reference=tm.build_reference(kind, unet, files["identitynet_dir"], files["adapter_bin"]),
        embedding=(torch.randn(512, generator=g) * 1.5).numpy(),  # raw: norm ≈ 34, as ArcFace's are
        keypoints=np.array([[20.3, 24.8], [42.6, 23.1], [31.2, 35.7], [22.9, 46.4], [41.5, 45.2]]),
        x=torch.cat([images, images]),
        t=torch.tensor([600.0, 600.0, 600.0, 600.0]),
        text=torch.cat([cond_text, uncond_text]),
        y_parts=y_parts,
    )


def hooked_eps(case: Case, adapter_weight: float, identitynet_weight: float, *, rows=ROWS, embedding=None,
               keypoints=None, identitynet=None, x_slice=slice(None), row_images=None,
               uncond_noise=0.0, region=None) -> torch.Tensor:
    """`keypoints`: one pose for every row, or with `row_images` a list of poses indexed by image."""
    tokens = project_face(case.adapter, case.embedding if embedding is None else embedding,
                          torch.device("cpu"), torch.float32, uncond_noise)
    kps = case.keypoints if keypoints is None else keypoints
    net = case.identitynet if identitynet is None else identitynet
    hooks = InstantIDHooks(
        case.unet, tokens, lambda x, context: CallInfo(tuple(rows), step=0, total_steps=1, row_images=row_images),
        adapter=case.adapter, adapter_schedule=Schedule(adapter_weight),
        identitynet=net, identitynet_schedule=Schedule(identitynet_weight),
        hint=HintFeatures(net, lambda w, h, image: kps if row_images is None else kps[image]),
        region=None if region is None else (lambda w, h, image: region),
    )
    y = case.y
    with hooks, torch.no_grad():
        return case.unet(case.x[x_slice], case.t[x_slice], case.text[x_slice],
                         None if y is None else y[x_slice])


def keypoint_image(keypoints: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(draw_keypoints(keypoints, (SIZE, SIZE))).permute(2, 0, 1)[None].float() / 255


def reference_eps(case: Case, adapter_weight: float, identitynet_weight: float, hint=None,
                  uncond_embedding=None, region=None) -> torch.Tensor:
    """`hint`: the keypoint image of every row [B or 1, 3, H, W]; default the case's keypoints."""
    hint = keypoint_image(case.keypoints) if hint is None else hint
    return tm.reference_eps(
        case.reference, case.x, case.t, case.text, torch.from_numpy(case.embedding),
        [r == COND for r in ROWS], hint, adapter_weight, identitynet_weight, y=case.y_parts,
        uncond_embedding=uncond_embedding, region=None if region is None else torch.from_numpy(region),
    )


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("weights", [(0.8, 0.8), (0.8, 0.0), (0.0, 0.8), (1.7, 0.3)])
def test_matches_the_diffusers_reference(case, weights):
    assert relative_error(hooked_eps(case, *weights), reference_eps(case, *weights)) <= TOLERANCE


def test_uncond_noise_matches_the_reference_formula(case):
    """Anti-burn: the uncond rows of both paths get R(a·u), u uniform in [0, 1) from a generator seeded by the
    embedding's bytes (the formula, written out here independently of conditioning.uncond_embedding)."""
    amplitude = 0.4
    e = np.ascontiguousarray(case.embedding, dtype=np.float32)
    seed = int.from_bytes(hashlib.sha256(e.tobytes()).digest()[:8], "little")
    noise = torch.from_numpy(np.random.default_rng(seed).random(512, dtype=np.float32)) * amplitude
    ours = hooked_eps(case, 0.8, 0.8, uncond_noise=amplitude)
    assert relative_error(ours, reference_eps(case, 0.8, 0.8, uncond_embedding=noise)) <= TOLERANCE
    assert relative_error(ours, reference_eps(case, 0.8, 0.8)) > 1e-3  # the noise changes the uncond rows' output
    assert relative_error(hooked_eps(case, 0.8, 0.8, uncond_noise=0.0), reference_eps(case, 0.8, 0.8)) <= TOLERANCE


@pytest.mark.parametrize("weights", [(0.8, 0.8), (0.8, 0.0), (0.0, 0.8)])
def test_face_region_matches_the_reference_pipelines_region_control(case, weights):
    """face_region: the residuals and the face attention term masked as the official full pipeline masks them."""
    region = np.zeros((SIZE, SIZE), np.float32)
    region[8:40, 16:56] = 1.0
    region[40:48, 16:56] = 0.5  # a feathered edge
    ours = hooked_eps(case, *weights, region=region)
    assert relative_error(ours, reference_eps(case, *weights, region=region)) <= TOLERANCE
    assert relative_error(ours, reference_eps(case, *weights)) > 1e-3  # the region changes the output


def test_a_region_covering_everything_changes_nothing(case):
    everywhere = np.ones((SIZE, SIZE), np.float32)
    assert torch.equal(hooked_eps(case, 0.8, 0.8, region=everywhere), hooked_eps(case, 0.8, 0.8))


def test_both_paths_move_the_output(case):
    """Without this the parity above could pass with InstantID doing nothing."""
    plain = reference_eps(case, 0.0, 0.0)
    assert relative_error(hooked_eps(case, 0.8, 0.0), plain) > 0.05
    assert relative_error(hooked_eps(case, 0.0, 0.8), plain) > 0.05


def test_rows_split_across_calls_equal_the_batched_call(case):
    batched = hooked_eps(case, 0.8, 0.8)
    cond_only = hooked_eps(case, 0.8, 0.8, rows=ROWS[:2], x_slice=slice(0, 2))
    uncond_only = hooked_eps(case, 0.8, 0.8, rows=ROWS[2:], x_slice=slice(2, 4))
    mixed = hooked_eps(case, 0.8, 0.8, rows=ROWS[1:3], x_slice=slice(1, 3))
    assert relative_error(torch.cat([cond_only, uncond_only]), batched) <= TOLERANCE
    assert relative_error(mixed, batched[1:3]) <= TOLERANCE


def test_each_image_of_the_batch_gets_its_own_keypoints(case):
    """SD upscale's tiles, or several init images: rows [img0 cond, img1 cond, img0 uncond, img1 uncond]."""
    poses = [case.keypoints, case.keypoints[:, ::-1] * [1.2, 0.9] + [3.0, -2.0]]
    hint = torch.cat([keypoint_image(poses[image]) for image in (0, 1, 0, 1)])
    expected = reference_eps(case, 0.8, 0.8, hint=hint)
    assert relative_error(hooked_eps(case, 0.8, 0.8, keypoints=poses, row_images=(0, 1, 0, 1)), expected) <= TOLERANCE
    assert relative_error(hooked_eps(case, 0.8, 0.8, keypoints=poses, row_images=(0, 0, 0, 0)), expected) > 0.01


def test_rows_the_job_does_not_serve_are_left_exactly_as_without_it(case):
    """A tile without a face among tiles with one: its rows get neither the face nor the IdentityNet."""
    with torch.no_grad():
        plain = case.unet(case.x, case.t, case.text, case.y)
    served = reference_eps(case, 0.8, 0.8)
    hooked = hooked_eps(case, 0.8, 0.8, rows=(COND, OFF, UNCOND, OFF))
    assert torch.equal(hooked[[1, 3]], plain[[1, 3]])
    assert relative_error(hooked[[0, 2]], served[[0, 2]]) <= TOLERANCE
    assert torch.equal(hooked_eps(case, 0.8, 0.8, rows=(OFF,) * 4), plain)


def test_windows_hold_when_a_sampler_calls_the_model_more_often_than_its_steps():
    """DPM adaptive (and PLMS/UniPC/DDIM at some step counts) call the model beyond their nominal steps."""
    whole, first_half, second_half = Schedule(0.8), Schedule(0.8, 0.0, 0.5), Schedule(0.8, 0.5, 1.0)
    calls = range(25)  # 25 calls for 10 nominal steps
    assert all(whole.active(step, 10) for step in calls)
    assert [first_half.active(step, 10) for step in calls] == [step < 5 for step in calls]
    assert [second_half.active(step, 10) for step in calls] == [step >= 5 for step in calls]
    heun = [Schedule(0.8, 0.0, 0.5).active(step, 20) for step in range(19)]  # second order: 2N-1 calls of 2N
    assert heun == [step < 10 for step in range(19)]


def test_deliberate_bugs_fail_the_parity_check(case, monkeypatch):
    """Each bug the parity test exists to catch moves the output far beyond the tolerance."""
    expected = reference_eps(case, 0.8, 0.8)
    bugs = {
        "uncond rows given the face tokens": lambda: hooked_eps(case, 0.8, 0.8, rows=(COND,) * 4),
        "normed embedding": lambda: hooked_eps(
            case, 0.8, 0.8, embedding=case.embedding / np.linalg.norm(case.embedding)),
        "keypoints 2 px off": lambda: hooked_eps(case, 0.8, 0.8, keypoints=case.keypoints + [2.0, 0.0]),
    }
    for name, run in bugs.items():
        assert relative_error(run(), expected) > 100 * TOLERANCE, name

    with monkeypatch.context() as m:
        m.setattr(conditioning, "draw_keypoints", lambda points, size: draw_keypoints(points, size)[..., ::-1].copy())
        assert relative_error(hooked_eps(case, 0.8, 0.8), expected) > 100 * TOLERANCE, "BGR hint"
    with monkeypatch.context() as m:
        m.setattr(FaceTokens, "for_rows", lambda self, rows: case.text)
        assert relative_error(hooked_eps(case, 0.8, 0.8), expected) > 100 * TOLERANCE, "text as IdentityNet context"


def test_zero_weight_or_outside_the_window_costs_nothing(case, monkeypatch):
    calls = []
    original = type(case.identitynet).forward
    monkeypatch.setattr(type(case.identitynet), "forward", lambda self, *a: calls.append(1) or original(self, *a))
    plain = reference_eps(case, 0.0, 0.0)
    assert relative_error(hooked_eps(case, 0.0, 0.0), plain) <= TOLERANCE
    assert not calls
    tokens = project_face(case.adapter, case.embedding, torch.device("cpu"), torch.float32)
    for step, expect_run in ((0, False), (5, True), (9, False)):
        hooks = InstantIDHooks(
            case.unet, tokens, lambda x, c: CallInfo(ROWS, step=step, total_steps=10),
            identitynet=case.identitynet, identitynet_schedule=Schedule(0.8, start=0.2, end=0.7),
            hint=HintFeatures(case.identitynet, lambda w, h, image: case.keypoints),
        )
        calls.clear()
        with hooks, torch.no_grad():
            case.unet(case.x, case.t, case.text, case.y)
        assert bool(calls) == expect_run, step


def test_detach_restores_the_unet_exactly(case):
    untouched = copy.deepcopy(case.unet)
    before = {name: type(m) for name, m in case.unet.named_modules()}
    state = {k: v.clone() for k, v in case.unet.state_dict().items()}
    attrs = {name: set(vars(m)) for name, m in case.unet.named_modules()}
    hooked_eps(case, 0.8, 0.8)  # attaches, runs, detaches
    assert {name: type(m) for name, m in case.unet.named_modules()} == before
    assert all(torch.equal(state[k], v) for k, v in case.unet.state_dict().items())
    assert {name: set(vars(m)) for name, m in case.unet.named_modules()} == attrs
    for module in case.unet.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
    with torch.no_grad():
        y = case.y
        assert torch.equal(case.unet(case.x, case.t, case.text, y), untouched(case.x, case.t, case.text, y))


def test_attach_is_idempotent_and_a_second_session_is_refused(case):
    tokens = project_face(case.adapter, case.embedding, torch.device("cpu"), torch.float32)

    def session():
        return InstantIDHooks(case.unet, tokens, lambda x, c: CallInfo(ROWS, 0, 1),
                              adapter=case.adapter, adapter_schedule=Schedule(0.8))

    first = session()
    with first:
        count = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in case.unet.modules())
        first.attach()
        assert count == sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in case.unet.modules())
        with pytest.raises(RuntimeError, match="already attached"):
            session().attach()
    session().attach().detach()  # free again after the first detached


def test_a_failure_while_attaching_leaves_no_hook_behind(case, monkeypatch):
    tokens = project_face(case.adapter, case.embedding, torch.device("cpu"), torch.float32)
    hooks = InstantIDHooks(case.unet, tokens, lambda x, c: CallInfo(ROWS, 0, 1), adapter=case.adapter,
                           adapter_schedule=Schedule(0.8), identitynet=case.identitynet,
                           identitynet_schedule=Schedule(0.8),
                           hint=HintFeatures(case.identitynet, lambda w, h, image: case.keypoints))
    last = hooks.layers[-1].to_out[0]
    monkeypatch.setattr(last, "register_forward_pre_hook", lambda *a, **k: (_ for _ in ()).throw(MemoryError()))
    with pytest.raises(MemoryError):
        hooks.attach()
    assert not hooks.attached
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in case.unet.modules())
    monkeypatch.undo()
    hooks.attach().detach()  # the UNet is free for the next session


def test_a_row_count_the_caller_did_not_describe_is_an_error(case):
    with pytest.raises(RuntimeError, match="cannot tell cond from uncond"):
        hooked_eps(case, 0.8, 0.8, rows=ROWS[:3])
