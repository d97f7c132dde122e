"""Where InstantID's models are in every pass, with and without the WebUI's low-VRAM modes, and what is released
when InstantID stops being used or the checkpoint changes. The stand-in's GPU is a device object distinct from the
CPU (tensors stay on the CPU), so what is asked where can be seen."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    FACE, generate, models_root, pixels, positional, ui, unets, webui,
)

from lib_instantid import pipeline
from lib_instantid.hosts import a1111
from lib_instantid.models import loading
from lib_instantid.models.adapter import FaceAdapter
from lib_instantid.models.identitynet import IdentityNet
from modules import devices, lowvram, script_callbacks, shared

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

ON = positional(enabled=True, face_image=[FACE])
HIRES = dict(enable_hr=True, hr_scale=2.0, denoising_strength=0.5, hr_upscaler="ESRGAN_4x", n_iter=2)


class Timeline:
    """Every move InstantID makes of its models, every IdentityNet run, and the stand-in's events, in order."""

    def __init__(self, monkeypatch) -> None:
        self.entries: list[tuple] = []
        original_place = loading.place

        def place(model, device, dtype=None):
            self.entries.append(("place", type(model).__name__, device))
            return original_place(model, device, dtype)

        monkeypatch.setattr(loading, "place", place)
        monkeypatch.setattr(a1111, "place", place)
        original_forward = IdentityNet.forward
        monkeypatch.setattr(IdentityNet, "forward", lambda net, *a: self.entries.append(("run",)) or
                            original_forward(net, *a))
        original_record = lowvram.record
        monkeypatch.setattr(lowvram, "record", lambda name, **d: self.entries.append(("event", name)) or
                            original_record(name, **d))

    def identitynet_device_at(self, kind: str, name: str | None = None) -> list:
        """Where the IdentityNet was last placed at each entry of this kind (and event name)."""
        where, found = None, []
        for entry in self.entries:
            if entry[0] == "place" and entry[1] == "IdentityNet":
                where = entry[2]
            elif entry[0] == kind and (name is None or entry[1] == name):
                found.append(where)
        return found

    def adapter_placements(self) -> list:
        return [entry[2] for entry in self.entries if entry[0] == "place" and entry[1] == FaceAdapter.__name__]


def hook_count(module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


@pytest.fixture
def fresh_models():
    """Models loaded by the job itself (not left by an earlier test), so their first placement is seen."""
    a1111.release_models()
    yield
    a1111.release_models()


@pytest.mark.parametrize("mode", ["medvram", "medvram-sdxl", "lowvram"])
def test_low_vram_modes_have_the_identitynet_on_the_gpu_only_while_it_computes(ui, unets, monkeypatch, mode,
                                                                              fresh_models):
    ui.set_low_vram(mode)
    timeline = Timeline(monkeypatch)
    webui_hooks = hook_count(unets["sdxl"])  # the low-VRAM modes' own
    with ui.record_unet() as unet_calls:
        result = generate(ui, instantid=ON, **HIRES)
    runs = timeline.identitynet_device_at("run")
    assert len(runs) == len(unet_calls.calls)  # every UNet call of both passes of both batches
    assert all(device is devices.device for device in runs), runs  # never run from the CPU (batch 2 included)
    for event in ("vae decode", "vae encode", "upscale"):
        at = timeline.identitynet_device_at("event", event)
        assert at and all(device in (None, devices.cpu) for device in at), (event, at)
    assert all(device == torch.device("cpu") for device in timeline.adapter_placements())
    assert len(result.processed.images) == 3  # a grid and the two images
    assert hook_count(unets["sdxl"]) == webui_hooks


def test_without_low_vram_the_identitynet_stays_on_the_gpu(ui, monkeypatch, fresh_models):
    ui.set_low_vram(None)
    timeline = Timeline(monkeypatch)
    generate(ui, instantid=ON, **HIRES)
    identitynet_moves = [e[2] for e in timeline.entries if e[0] == "place" and e[1] == "IdentityNet"]
    assert identitynet_moves == [devices.device]  # placed once, when loaded
    assert all(device is devices.device for device in timeline.identitynet_device_at("run"))


def test_medvram_sdxl_does_not_apply_to_an_sd15_checkpoint(webui, models_root, unets, monkeypatch, fresh_models):
    from tests.webui_jobs import EXTENSION_SCRIPT

    webui.set_models_path(models_root)
    webui.set_model(unets["sd15"], "sd15")
    webui.load_extension(EXTENSION_SCRIPT)
    webui.set_low_vram("medvram-sdxl")
    timeline = Timeline(monkeypatch)
    generate(webui, instantid=ON)
    assert [e[2] for e in timeline.entries if e[0] == "place" and e[1] == "IdentityNet"] == [devices.device]


def test_the_same_image_in_every_mode(ui, fresh_models):
    images = []
    for mode in (None, "medvram", "lowvram"):
        ui.set_low_vram(mode)
        images.append(pixels(generate(ui, instantid=ON)))
    assert all(np.array_equal(image, images[0]) for image in images)


def test_a_job_without_instantid_sends_its_models_to_the_cpu_and_drops_tokens(ui, monkeypatch, fresh_models):
    ui.set_low_vram(None)
    generate(ui, instantid=ON)
    cached = [model for model, _ in pipeline.MODEL_CACHE._entries.values()]
    assert any(isinstance(model, IdentityNet) for model in cached)
    timeline = Timeline(monkeypatch)
    generate(ui)
    assert ("place", "IdentityNet", devices.cpu) in timeline.entries
    assert not pipeline.CONDITIONING._entries and not pipeline.CONDITIONING._hints
    timeline.entries.clear()
    generate(ui)  # already off the GPU: nothing is moved again
    assert not [e for e in timeline.entries if e[0] == "place"]


def test_a_new_checkpoint_releases_what_was_loaded_for_the_old_one(ui, unets, fresh_models):
    generate(ui, instantid=ON)
    assert pipeline.MODEL_CACHE._entries and pipeline.CONDITIONING._entries
    script_callbacks.model_loaded_callback(shared.sd_model)
    assert not pipeline.MODEL_CACHE._entries and not pipeline.CONDITIONING._entries
