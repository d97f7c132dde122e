"""What a job computes once and keeps: tokens and K/V made where the UNet computes while the adapter stays on the
CPU, and a store whose keypoint features are bounded in bytes and never served to another model."""
from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from lib_instantid.conditioning import ConditioningStore, face_kv, project_face
from lib_instantid.face import DetectedFace
from lib_instantid.models import catalog
from lib_instantid.models.loading import load_adapter
from lib_instantid.pipeline import MODEL_CACHE, Identity, Person, prepare_job
from lib_instantid.args import InstantIDArgs
from tests.fixtures import tiny_models as tm

CPU = torch.device("cpu")


def test_tokens_and_kv_are_made_in_the_compute_dtype_while_the_adapter_keeps_its_own(weight_files):
    adapter = load_adapter(weight_files["sdxl"]["adapter_bin"])
    embedding = np.random.default_rng(0).normal(size=512).astype(np.float32) * 20
    exact = project_face(adapter, embedding, CPU, torch.float32)
    low = project_face(adapter, embedding, CPU, torch.bfloat16)
    assert low.both.dtype == torch.bfloat16 and {p.dtype for p in adapter.parameters()} == {torch.float32}
    assert (low.both.float() - exact.both).abs().max() <= 0.05 * exact.both.abs().max()
    kv = face_kv(adapter, low, [1] * len(adapter.layers))
    assert {layer.k.dtype for layer in kv} == {torch.bfloat16}
    reference = exact.both @ adapter.layers[0].to_k_ip.weight.T
    assert (kv[0].k.squeeze(1).float() - reference).abs().max() <= 0.05 * reference.abs().max()


def test_a_job_keeps_the_adapter_on_the_cpu_and_the_identitynet_where_asked(tmp_path, weight_files):
    ours = tmp_path / "instantid"
    shutil.copytree(weight_files["sdxl"]["identitynet_folder"], ours / "ControlNetModel")
    shutil.copy(weight_files["sdxl"]["adapter_bin"], ours / "ip-adapter.bin")
    face = DetectedFace(np.zeros(4, np.float32), np.zeros((5, 2), np.float32), np.ones(512, np.float32), 1.0, (64, 64))
    identity = Identity(np.ones(512, np.float32), face, (1,))
    args = InstantIDArgs(enabled=True)
    MODEL_CACHE.clear()
    person = Person(identity, 0, args.adapter_weight, args.identitynet_weight, lambda w, h, image: face.keypoints)
    job = prepare_job(args, [person], catalog.scan(tmp_path), tm.tiny_unet("sdxl"), CPU, torch.bfloat16)
    assert {p.dtype for p in job.adapter.parameters()} == {torch.float32}  # the file's own, on the CPU
    assert {p.dtype for p in job.identitynet.parameters()} == {torch.bfloat16}
    assert job.tokens[0].both.dtype == torch.bfloat16
    MODEL_CACHE.clear()


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


def features(megabytes: int) -> torch.Tensor:
    return torch.zeros(megabytes * 2**18)  # float32: 4 bytes each


def test_keypoint_features_are_bounded_in_bytes_least_recent_first():
    store = ConditioningStore(hint_bytes=10 * 2**20)
    model = Tiny()
    points = [np.full((5, 2), float(i)) for i in range(6)]
    for p in points:
        store.hint(model, p, (64, 64), lambda: features(3))
    assert store.hint_bytes_held <= 10 * 2**20
    computed = []
    store.hint(model, points[-1], (64, 64), lambda: computed.append(1) or features(3))
    assert not computed  # the most recent is still there
    store.hint(model, points[0], (64, 64), lambda: computed.append(1) or features(3))
    assert computed  # the oldest went


def test_a_hint_is_never_served_to_another_model_at_the_same_address():
    store = ConditioningStore()
    points = np.zeros((5, 2))
    first = Tiny()
    store.hint(first, points, (64, 64), lambda: torch.ones(1))
    del first
    gc.collect()
    second = Tiny()  # may reuse the freed object's id
    assert torch.equal(store.hint(second, points, (64, 64), lambda: torch.zeros(1)), torch.zeros(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_hint_follows_its_models_placement(dtype):
    store = ConditioningStore()
    model = Tiny()
    store.hint(model, np.zeros((5, 2)), (64, 64), lambda: torch.ones(1))
    model.to(dtype)
    made = store.hint(model, np.zeros((5, 2)), (64, 64), lambda: torch.full((1,), 2.0))
    assert made.item() == (1.0 if dtype == torch.float32 else 2.0)
