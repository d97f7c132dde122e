"""InstantID with every built-in sampler, with a refiner or hires-fix checkpoint, with an extension that rescales
feature maps inside the UNet (Kohya Hires.fix), and refusing a replacement UNet (TensorRT)."""
from __future__ import annotations

import numpy as np
import pytest

from tests.webui_jobs import (  # noqa: F401  (fixtures; importing it puts the stand-in on sys.path)
    EXTENSION_SCRIPT, FACE, SIZE, HintSizes, generate, models_root, no_hooks_left, pixels, positional, ui, unets,
    webui,
)
from tests.webui import kohya_like

from lib_instantid.hosts import a1111
from lib_instantid.hosts import webui as webui_host
from lib_instantid.unet_hooks import InstantIDHooks
from modules import sd_samplers

pytestmark = pytest.mark.filterwarnings("ignore:`estimate` is deprecated:FutureWarning")

ON = dict(enabled=True, face_image=[FACE])


class ActiveCalls:
    """For every UNet call InstantID saw: whether the face attention and the IdentityNet acted, and on which UNet."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[bool, bool, object]] = []
        original = InstantIDHooks._before_unet

        def before(hooks, module, args, kwargs):
            original(hooks, module, args, kwargs)
            self.calls.append((bool(hooks.call.faces), hooks.call.residuals is not None, module))

        monkeypatch.setattr(InstantIDHooks, "_before_unet", before)

    @property
    def adapter(self) -> list[bool]:
        return [adapter for adapter, _, _ in self.calls]

    @property
    def identitynet(self) -> list[bool]:
        return [identitynet for _, identitynet, _ in self.calls]


SAMPLERS = [sampler.name for sampler in sd_samplers.all_samplers]


def test_the_stand_in_has_every_built_in_sampler():
    assert len(SAMPLERS) == 20 and {"DPM adaptive", "Restart", "DDIM", "PLMS", "UniPC", "LCM", "Heun"} <= set(SAMPLERS)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_with_end_1_the_identity_acts_until_sampling_ends(ui, monkeypatch, sampler):
    active = ActiveCalls(monkeypatch)
    with ui.record_unet() as unet_calls:
        generate(ui, instantid=positional(**ON), sampler_name=sampler, steps=4)
    assert len(active.calls) == len(unet_calls.calls) > 0
    assert all(active.adapter) and all(active.identitynet), sampler


@pytest.mark.parametrize("sampler", ["Euler", "Heun", "DPM adaptive", "PLMS", "UniPC", "DDIM"])
def test_a_window_ending_half_way_stops_half_way_and_never_comes_back(ui, monkeypatch, sampler):
    active = ActiveCalls(monkeypatch)
    generate(ui, instantid=positional(**ON, adapter_end=0.5, identitynet_start=0.5), sampler_name=sampler, steps=6)
    adapter, identitynet = active.adapter, active.identitynet
    first_off = adapter.index(False)
    assert first_off > 0 and not any(adapter[first_off:]), adapter  # on, then off for good
    first_on = identitynet.index(True)
    assert first_on > 0 and all(identitynet[first_on:]), identitynet  # off, then on until the end


# --- refiner and hires checkpoint ---------------------------------------------------------------------------

@pytest.fixture
def checkpoints(webui, models_root, unets):
    webui.set_models_path(models_root)
    found = webui.add_tiny_checkpoints(unets["sdxl"])
    webui.load_extension(EXTENSION_SCRIPT)
    yield found
    a1111.release_models()


def test_a_refiner_of_the_same_architecture_gets_instantid_too(webui, checkpoints, monkeypatch):
    active = ActiveCalls(monkeypatch)
    with webui.record_unet() as unet_calls:
        result = generate(webui, instantid=positional(**ON), sampler_name="Euler", steps=6,
                          refiner_checkpoint=checkpoints.same_arch.title, refiner_switch_at=0.5)
    assert "Refiner:" in result.processed.infotexts[0]  # the WebUI's own entry: it did swap
    assert len(active.calls) == len(unet_calls.calls) and all(active.adapter)
    assert "without InstantID" not in result.processed.infotexts[0]


def test_a_refiner_no_model_fits_runs_plain_and_the_infotext_says_so(webui, checkpoints, unets, monkeypatch):
    active = ActiveCalls(monkeypatch)
    result = generate(webui, instantid=positional(**ON), sampler_name="Euler", steps=6,
                      refiner_checkpoint=checkpoints.refiner.title, refiner_switch_at=0.5)
    info = result.processed.infotexts[0]
    assert 'Refiner: without InstantID (no fitting models)' in info
    assert 0 < len(active.calls) < 6 and all(active.adapter)  # the base's calls only
    assert all(module is unets["sdxl"] for _, _, module in active.calls)
    assert no_hooks_left(unets["sdxl"])


@pytest.mark.parametrize("switch_at", [None, 0.5])
def test_api_refiner_with_or_without_a_switch_point(webui, checkpoints, switch_at):
    from tests.webui_jobs import b64, photo

    body = {"prompt": "a", "steps": 4, "seed": 1, **SIZE, "refiner_checkpoint": checkpoints.refiner.title,
            "alwayson_scripts": {"InstantID": {"args": [{"enabled": True, "face_image": b64(photo())}]}}}
    if switch_at is not None:
        body["refiner_switch_at"] = switch_at
    response = webui.api_client().post("/sdapi/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    assert "without InstantID" in response.json()["info"]


def test_a_refiner_that_is_the_loaded_checkpoint_changes_nothing(webui, checkpoints):
    plain = generate(webui, instantid=positional(**ON), sampler_name="Euler")
    same = generate(webui, instantid=positional(**ON), sampler_name="Euler",
                    refiner_checkpoint=checkpoints.base.title, refiner_switch_at=0.5)
    assert np.array_equal(pixels(plain), pixels(same))


def test_a_hires_checkpoint_of_the_same_architecture_gets_instantid(webui, checkpoints, monkeypatch):
    hints = HintSizes(monkeypatch)
    result = generate(webui, instantid=positional(**ON), enable_hr=True, hr_scale=2.0, denoising_strength=0.5,
                      hr_checkpoint_name=checkpoints.same_arch.title)
    assert [size for size, _ in hints.drawn] == [(64, 64), (128, 128)]
    assert "without InstantID" not in result.processed.infotexts[0]


def test_a_hires_checkpoint_no_model_fits_runs_plain_with_a_note(webui, checkpoints):
    result = generate(webui, instantid=positional(**ON), enable_hr=True, hr_scale=2.0, denoising_strength=0.5,
                      hr_checkpoint_name=checkpoints.refiner.title)
    assert "Hires checkpoint: without InstantID (no fitting models)" in result.processed.infotexts[0]


# --- neighbours inside the UNet -----------------------------------------------------------------------------

@pytest.fixture
def with_kohya(webui, models_root, unets):
    webui.set_models_path(models_root)
    webui.set_model(unets["sdxl"], "sdxl")
    webui.load_extension(EXTENSION_SCRIPT, extra_script_classes=[kohya_like.KohyaLikeScript])
    kohya_like.Scaler.calls.clear()
    yield webui
    a1111.release_models()


def test_residuals_follow_feature_maps_that_an_extension_rescales(with_kohya, unets):
    kohya = {"Kohya Hires.fix": {0: True, 4: 0.5, 5: 0.8}}  # enabled, long phases
    job = dict(steps=6, sampler_name="Euler", width=128, height=128)
    plain = with_kohya.txt2img(script_args=kohya, prompt="a portrait", seed=1, **job)
    kohya_calls = len(kohya_like.Scaler.calls)
    result = with_kohya.txt2img(script_args={**kohya, "InstantID": positional(**ON)}, prompt="a portrait", seed=1,
                                **job)
    assert kohya_calls and len(kohya_like.Scaler.calls) > kohya_calls  # the blocks were rescaled in both jobs
    assert np.abs(pixels(result) - pixels(plain)).max() > 3
    assert no_hooks_left(unets["sdxl"])


def test_a_replacement_unet_is_refused_in_the_panel_and_the_api(ui, unets):
    from tests.webui_jobs import b64, photo

    ui.activate_unet(label="Stand-in TRT")
    with pytest.raises(webui_host.InstantID, match="replacement UNet 'Stand-in TRT'.*Set SD Unet to None"):
        generate(ui, instantid=positional(**ON))
    response = ui.api_client().post("/sdapi/v1/txt2img", json={
        "prompt": "a", "steps": 3, **SIZE,
        "alwayson_scripts": {"InstantID": {"args": [{"enabled": True, "face_image": b64(photo())}]}}})
    assert response.status_code == 422 and "replacement UNet" in response.json()["detail"]
    generate(ui)  # a plain job still runs with it
    assert no_hooks_left(unets["sdxl"])
