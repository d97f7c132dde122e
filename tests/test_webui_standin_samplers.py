"""Self-tests of the stand-in's samplers, replacement UNets (sd_unet) and checkpoint swaps (refiner, hires
checkpoint), against A1111 1.10's observable behaviour: denoiser calls per pass and their counters, the class-level
UNet dispatch, in-place vs new-object weight loads."""
from __future__ import annotations

import functools
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.webui import harness
from tests.webui.harness import webui  # noqa: F401  (pytest fixture; importing it puts tests/webui on sys.path)

from modules import processing, script_callbacks, scripts, sd_models, sd_samplers, sd_unet, shared

SIZE = dict(width=64, height=64)

SAMPLER_NAMES = [
    "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 2S a", "DPM++ 3M SDE", "Euler a", "Euler",
    "LMS", "Heun", "DPM2", "DPM2 a", "DPM fast", "DPM adaptive", "Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC",
    "LCM",
]
ONE_CALL = ["DPM++ 2M", "DPM++ 2M SDE", "DPM++ 2M SDE Heun", "DPM++ 3M SDE", "Euler a", "Euler", "LMS", "LCM"]
SECOND_ORDER = ["DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"]


@functools.lru_cache(maxsize=None)
def unet(kind, seed=0):
    from tests.fixtures.tiny_models import tiny_unet
    return tiny_unet(kind, seed)


def timesteps_length(steps):
    return len(range(0, 1000, 1000 // steps))


def lagged(calls_per_step):
    """state.sampling_step seen by each call when the step callback runs after the first call of each step."""
    seen = []
    for i, calls in enumerate(calls_per_step):
        seen.append(max(i - 1, 0))
        seen.extend([i] * (calls - 1))
    return seen


def at_end(calls_per_step):
    """... when it runs after the last call of each step (DPM adaptive's attempts)."""
    return [max(i - 1, 0) for i, calls in enumerate(calls_per_step) for _ in range(calls)]


class Calls:
    """Every CFGDenoiser.forward call as the cfg_denoiser callback sees it."""

    def __init__(self):
        self.rows = []
        script_callbacks.on_cfg_denoiser(self.record)

    def record(self, params):
        self.rows.append(dict(step=params.denoiser.step, total=params.denoiser.total_steps, sampling_step=params.sampling_step,
                              sampling_steps=params.total_sampling_steps, sigma=float(params.sigma.max()),
                              model=shared.sd_model, checkpoint=shared.sd_model.sd_checkpoint_info.name,
                              context=tuple(params.text_cond.shape), denoiser=params.denoiser,
                              hr=params.denoiser.p.is_hr_pass))

    def __len__(self):
        return len(self.rows)

    def column(self, key):
        return [row[key] for row in self.rows]

    def clear(self):
        self.rows.clear()


@pytest.fixture
def sd15(webui):  # noqa: F811
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension()
    return webui


# --- the sampler table ---------------------------------------------------------------------------------------

def test_sampler_table_matches_a1111(sd15):
    assert [config.name for config in sd_samplers.all_samplers] == SAMPLER_NAMES
    assert sd_samplers.find_sampler_config(None).name == "DPM++ 2M"
    assert sd_samplers.samplers_map["k_euler_ancestral"] == "Euler a" and sd_samplers.samplers_map["ddim_cfgpp"] == "DDIM CFG++"
    options = {config.name: config.options for config in sd_samplers.all_samplers}
    assert options["DPM++ 2M SDE Heun"] == {'scheduler': 'exponential', "brownian_noise": True, "solver_type": "heun"}
    assert options["DPM2 a"]["discard_next_to_last_sigma"] and options["Restart"]["second_order"]
    assert [name for name in SAMPLER_NAMES if options[name].get("second_order")] == ["DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"]
    assert sys.modules["modules.sd_samplers_compvis"].CompVisSampler is sys.modules["modules.sd_samplers_timesteps"].CompVisSampler
    # the UI's default is the first sampler; the API's is "Euler" (its request model's sampler_index)
    sampler_script = scripts.scripts_txt2img.script("sampler")
    assert sampler_script.sampler_name.value == "DPM++ 2M"
    from modules.api import models
    assert models.StableDiffusionTxt2ImgProcessingAPI.__fields__["sampler_index"].default == "Euler"


@pytest.mark.parametrize("steps", [3, 5])
def test_txt2img_denoiser_calls_and_counters(sd15, steps):
    calls = Calls()
    for name in SAMPLER_NAMES:
        calls.clear()
        sd15.txt2img(prompt="c", negative_prompt="u", steps=steps, seed=1, sampler_name=name, **SIZE)
        n = len(calls)
        assert calls.column("step") == list(range(n)), name  # once per call
        assert set(calls.column("sampling_steps")) == {steps}, name
        length = timesteps_length(steps)
        if name in ONE_CALL:
            expected, total, per_step = steps, steps, [1] * steps
        elif name in SECOND_ORDER:
            expected, total, per_step = 2 * steps - 1, 2 * steps, [2] * (steps - 1) + [1]
        elif name == "DPM fast":  # steps of order 3, then 2/1; the callback runs once per such step
            expected, total = steps, steps
            orders = [3] * (steps // 3 - 1) + [2, 1] if steps % 3 == 0 else [3] * (steps // 3) + [steps % 3]
            per_step = orders
        elif name == "DPM adaptive":  # 3 calls per attempt, the callback once per attempt; N is not used
            expected, total = n, steps
            assert n % 3 == 0 and n > steps
            per_step = [3] * (n // 3)
        elif name in ("DDIM", "DDIM CFG++"):
            expected, total, per_step = length - 1, steps, [1] * (length - 1)
        elif name == "PLMS":  # the first step makes two calls
            expected, total, per_step = length, steps, [2] + [1] * (length - 2)
        else:  # UniPC: the callback runs after each update, which contains the next call
            expected, total, per_step = length, steps, [2] + [1] * (length - 2)
        assert n == expected, name
        assert set(calls.column("total")) == {total}, name
        report = at_end if name == "DPM adaptive" else lagged
        assert calls.column("sampling_step") == report(per_step), name


def test_timesteps_samplers_pass_timesteps(sd15):
    calls = Calls()
    steps = 5  # timesteps 1, 201, 401, 601, 801
    sd15.txt2img(prompt="c", steps=steps, seed=1, sampler_name="DDIM", **SIZE)
    assert calls.column("sigma") == [801.0, 601.0, 401.0, 201.0]
    assert calls.rows[0]["denoiser"].mask_before_denoising and calls.rows[0]["denoiser"].cond_scale_miltiplier == 1.0
    calls.clear()
    sd15.txt2img(prompt="c", steps=steps, seed=1, sampler_name="PLMS", **SIZE)
    assert calls.column("sigma") == [801.0, 601.0, 601.0, 401.0, 201.0]
    calls.clear()
    sd15.txt2img(prompt="c", steps=steps, seed=1, sampler_name="UniPC", **SIZE)
    assert calls.column("sigma") == pytest.approx([999.0, 799.2, 599.4, 399.6, 199.8])  # continuous (t - 1/1000) * 1000
    calls.clear()
    sd15.txt2img(prompt="c", steps=steps, seed=1, sampler_name="DDIM CFG++", **SIZE)
    denoiser = calls.rows[0]["denoiser"]
    assert denoiser.cond_scale_miltiplier == 1 / 12.5 and denoiser.need_last_noise_uncond
    assert denoiser.last_noise_uncond is not None and denoiser.last_noise_uncond.shape[0] == 1
    # L can exceed the steps: 30 steps -> 31 timesteps, so PLMS reaches step 30 of total_steps 30
    calls.clear()
    sd15.txt2img(prompt="c", steps=30, seed=1, sampler_name="PLMS", **SIZE)
    assert len(calls) == 31 and calls.rows[-1]["step"] / calls.rows[-1]["total"] == 1.0


def test_unipc_needs_as_many_timesteps_as_its_order(sd15):
    with pytest.raises(AssertionError, match="UniPC order must be < sampling steps"):
        sd15.txt2img(prompt="c", steps=2, seed=1, sampler_name="UniPC", **SIZE)


def test_restart_walks_back_up(sd15):
    calls = Calls()
    sd15.txt2img(prompt="c", steps=20, seed=1, sampler_name="Restart", **SIZE)
    sigmas = calls.column("sigma")
    assert len(calls) == 39 and set(calls.column("total")) == {40}
    rises = [i for i in range(1, len(sigmas)) if sigmas[i] > sigmas[i - 1]]
    assert len(rises) == 1 and sigmas[rises[0]] > 2 > sigmas[rises[0] - 1]  # the restart segment starts near sigma 2


def test_lcm_sees_fifty_timesteps(sd15):
    seen = []
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(lambda module, args: seen.append(args[1].tolist()))
    try:
        sd15.txt2img(prompt="c", steps=4, seed=1, sampler_name="LCM", **SIZE)
    finally:
        handle.remove()
    assert len(seen) == 4 and all(t % 20 == 19 for call in seen for t in call) and seen[0][0] == 999


def test_img2img_and_hires_denoiser_calls(sd15):
    init = Image.new("RGB", (64, 64), (200, 100, 50))
    calls = Calls()
    steps, t_enc = 6, 3  # denoising 0.5: the last 3 of 6 steps, i.e. t_enc + 1 = 4 sigma intervals
    length = timesteps_length(steps)
    expected = {"Euler": (4, 4), "DPM++ 2M": (4, 4), "LCM": (4, 4), "DPM fast": (4, 4), "Heun": (7, 8), "DPM2 a": (7, 8),
                "Restart": (7, 8), "DDIM": (min(t_enc, length) - 1, 4), "PLMS": (min(t_enc, length), 4), "UniPC": (3, 4)}
    for name, (count, total) in expected.items():
        calls.clear()
        sd15.img2img(prompt="c", steps=steps, seed=1, sampler_name=name, init_images=[init], denoising_strength=0.5, **SIZE)
        assert len(calls) == count and set(calls.column("total")) == {total}, name
        assert set(calls.column("sampling_steps")) == {t_enc + 1}, name
    calls.clear()
    sd15.img2img(prompt="c", steps=steps, seed=1, sampler_name="DPM adaptive", init_images=[init], denoising_strength=0.5, **SIZE)
    assert len(calls) % 3 == 0 and set(calls.column("total")) == {t_enc + 1}

    # hires pass: steps given -> t_enc = steps - 1, so `steps` intervals; a new sampler, step back at 0
    calls.clear()
    sd15.txt2img(prompt="c", steps=3, seed=1, sampler_name="Heun", enable_hr=True, hr_scale=1.5, hr_second_pass_steps=2, **SIZE)
    first = [row for row in calls.rows if not row["hr"]]
    hires = [row for row in calls.rows if row["hr"]]
    assert [row["step"] for row in first] == list(range(5)) and [row["step"] for row in hires] == list(range(3))
    assert {row["total"] for row in hires} == {4} and {row["sampling_steps"] for row in hires} == {2}


def test_samplers_run_on_sdxl_and_batches(webui):  # noqa: F811
    webui.set_model(unet("sdxl"), "sdxl")
    webui.load_extension()
    for name in ("DPM++ 2M SDE", "DPM++ SDE", "Euler a", "UniPC", "LCM", "DDIM CFG++"):
        result = webui.txt2img(prompt="c", negative_prompt="u", steps=3, seed=1, sampler_name=name, batch_size=2, **SIZE)
        assert len(result.processed.images) == 3, name  # grid + 2
        assert result.processed.infotexts[1].count(f"Sampler: {name}") == 1


def test_ancestral_noise_comes_from_the_seed(sd15):
    """Ancestral samplers draw their noise through p.rng: the same seed gives the same image, another seed not;
    a batch image equals the single job of its seed (per-image generators)."""
    def image(seed):
        result = sd15.txt2img(prompt="c", steps=4, seed=seed, sampler_name="Euler a", **SIZE)
        return np.asarray(result.processed.images[0]).astype(int)

    assert np.array_equal(image(3), image(3)) and not np.array_equal(image(3), image(4))
    batch = sd15.txt2img(prompt="c", steps=4, seed=3, sampler_name="Euler a", batch_size=2, **SIZE).processed
    assert np.abs(np.asarray(batch.images[2]).astype(int) - image(4)).max() <= 1


# --- sd_unet ---------------------------------------------------------------------------------------------------

def _block_hooks(model, fired):
    handles = [model.input_blocks[0].register_forward_hook(lambda *a: fired.append("input")),
               model.output_blocks[-1].register_forward_hook(lambda *a: fired.append("output")),
               model.register_forward_hook(lambda *a: fired.append("unet"))]
    return handles


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_replacement_unet_dispatch(webui, kind):  # noqa: F811
    model = unet(kind)
    webui.set_model(model, kind)
    webui.load_extension()
    assert type(model).forward.standin_original_forward is sd_unet.original_forwards[type(model)]
    job = dict(prompt="c", negative_prompt="u", steps=2, seed=1, sampler_name="Euler", **SIZE)
    fired = []
    handles = _block_hooks(model, fired)
    try:
        plain = webui.txt2img(**job).processed.images[0]
        assert fired.count("input") == fired.count("output") == fired.count("unet") == 2

        fired.clear()
        zero = webui.activate_unet()
        assert sd_unet.current_unet is zero and sd_unet.current_unet_option.label == "Stand-in TRT" and zero.activated == 1
        webui.txt2img(**job)
        assert fired == ["unet", "unet"] and len(zero.calls) == 2  # the module's own hook fires, its blocks do not
        assert zero.calls[0][0][0] == 2 and (("y",) if kind == "sdxl" else ()) == zero.calls[0][3]

        # a replacement that runs another copy: that copy's blocks run, the loaded UNet's do not
        fired.clear()
        copy_fired = []
        other = unet(kind, 1)
        copy_handles = _block_hooks(other, copy_fired)
        try:
            webui.activate_unet(harness.ForwardingUnet(other), label="copy")
            assert zero.deactivated == 1
            changed = webui.txt2img(**job).processed.images[0]
        finally:
            for handle in copy_handles:
                handle.remove()
        assert fired == ["unet", "unet"] and copy_fired == ["input", "output"] * 2
        assert list(changed.getdata()) != list(plain.getdata())

        webui.deactivate_unet()
        fired.clear()
        again = webui.txt2img(**job).processed.images[0]
        assert sd_unet.current_unet is None and fired.count("input") == 2
        assert list(again.getdata()) == list(plain.getdata())
    finally:
        for handle in handles:
            handle.remove()


def test_apply_unet_automatic_and_reset(webui):  # noqa: F811
    webui.set_model(unet("sd15"), "sd15", name="mine.safetensors")
    first = webui.activate_unet(automatic=True)  # an option named after the checkpoint, picked by "Automatic"
    assert sd_unet.current_unet is first and sd_unet.current_unet_option.model_name == "mine"
    sd_unet.apply_unet()  # same option: nothing happens
    assert first.activated == 1 and first.deactivated == 0
    sd_unet.apply_unet("None")
    assert sd_unet.current_unet is None and first.deactivated == 1
    again = webui.activate_unet(label="other")
    webui.reset()
    assert sd_unet.current_unet is None and sd_unet.current_unet_option is None and not sd_unet.unet_options
    assert again.deactivated == 1


# --- checkpoints, refiner, hires checkpoint --------------------------------------------------------------------

@pytest.fixture
def sdxl(webui):  # noqa: F811
    checkpoints = webui.add_tiny_checkpoints(unet("sdxl"))
    webui.load_extension()
    loaded = []
    script_callbacks.on_model_loaded(loaded.append)
    webui.loaded = loaded
    return webui, checkpoints


MODEL_SIGMAS = ((1 - sd_models.ddpm_alphas_cumprod()) / sd_models.ddpm_alphas_cumprod()).sqrt()


def completed_ratio(sigma):
    """apply_refiner's timestep-based ratio for a k-diffusion sigma."""
    return (999 - int(torch.argmin((MODEL_SIGMAS - sigma).abs()))) / 1000


def first_refiner_call(calls, refiner):
    return next((i for i, row in enumerate(calls.rows) if row["checkpoint"] == refiner.name), None)


@pytest.mark.parametrize("switch_at", [None, 0.3, 0.5, 0.9, 1.0])
def test_refiner_switch_by_timestep(sdxl, switch_at):
    webui, ckpt = sdxl
    calls = Calls()
    result = webui.txt2img(prompt="c", negative_prompt="u", steps=6, seed=1, sampler_name="Euler",
                           refiner_checkpoint=ckpt.refiner.title, refiner_switch_at=switch_at, **SIZE)
    ratios = [completed_ratio(sigma) for sigma in calls.column("sigma")]
    expected = 0 if switch_at is None else next((i for i, ratio in enumerate(ratios) if ratio >= switch_at), None)
    assert first_refiner_call(calls, ckpt.refiner) == expected
    params = result.p.extra_generation_params
    if expected is None:  # 1.0 is never reached by the timestep ratio (at most 0.999)
        assert "Refiner" not in params and shared.sd_model.sd_checkpoint_info is ckpt.base
        return
    assert params["Refiner"] == ckpt.refiner.short_title and params["Refiner switch at"] == switch_at
    assert all(row["checkpoint"] == ckpt.refiner.name for row in calls.rows[expected:])
    assert calls.column("step") == list(range(6))  # the sampler loop goes on, its counter is not reset
    # the refiner (another architecture) is a new model object: conds were made for it (context width 48)
    assert {row["context"][-1] for row in calls.rows[:expected]} <= {64} and {row["context"][-1] for row in calls.rows[expected:]} == {48}
    assert f"Refiner: {ckpt.refiner.short_title}" in result.processed.infotexts[0]
    # the setting still names the base (SkipWritingToConfig); the next job swaps back
    assert shared.opts.sd_model_checkpoint == ckpt.base.title and shared.sd_model.sd_checkpoint_info is ckpt.refiner
    webui.txt2img(prompt="c", steps=1, seed=1, **SIZE)
    assert shared.sd_model.sd_checkpoint_info is ckpt.base


@pytest.mark.parametrize("sampler, switch_at, expected", [("Euler", 0.5, 3), ("Heun", 0.5, 6), ("Euler", 1.0, None)])
def test_refiner_switch_by_sampling_steps(sdxl, sampler, switch_at, expected):
    webui, ckpt = sdxl
    calls = Calls()
    result = webui.txt2img(prompt="c", steps=6, seed=1, sampler_name=sampler, refiner_checkpoint=ckpt.same_arch.name,
                           refiner_switch_at=switch_at, opts={"refiner_switch_by_sample_steps": True}, **SIZE)
    # step / total_steps >= switch_at: Euler 3/6; Heun 6/12 (total_steps doubled); 1.0 never (at most 5/6)
    assert first_refiner_call(calls, ckpt.same_arch) == expected
    assert result.p.extra_generation_params["Refiner switch by sampling steps"] is True


def test_refiner_switch_at_one_fires_for_dpm_adaptive_by_steps(sdxl):
    webui, ckpt = sdxl
    calls = Calls()
    webui.txt2img(prompt="c", steps=4, seed=1, sampler_name="DPM adaptive", refiner_checkpoint=ckpt.same_arch.name,
                  refiner_switch_at=1.0, opts={"refiner_switch_by_sample_steps": True}, **SIZE)
    assert len(calls) > 4 and first_refiner_call(calls, ckpt.same_arch) == 4  # step 4 of total_steps 4


def test_refiner_on_timesteps_samplers_and_lcm(sdxl):
    webui, ckpt = sdxl
    calls = Calls()
    webui.txt2img(prompt="c", steps=5, seed=1, sampler_name="DDIM", refiner_checkpoint=ckpt.same_arch.name, refiner_switch_at=0.5, **SIZE)
    # DDIM passes timesteps 801, 601, 401, 201: (999 - t) / 1000 >= 0.5 first at 401
    assert calls.column("sigma") == [801.0, 601.0, 401.0, 201.0] and first_refiner_call(calls, ckpt.same_arch) == 2
    webui.txt2img(prompt="c", steps=1, seed=1, **SIZE)  # back to the base
    calls.clear()
    # LCM's denoiser knows 50 sigmas, so the timestep index is 0..49 and the ratio >= 0.95 from the first call
    webui.txt2img(prompt="c", steps=4, seed=1, sampler_name="LCM", refiner_checkpoint=ckpt.same_arch.name, refiner_switch_at=0.9, **SIZE)
    assert first_refiner_call(calls, ckpt.same_arch) == 0


def test_refiner_equal_to_the_loaded_checkpoint_does_nothing(sdxl):
    webui, ckpt = sdxl
    model = shared.sd_model
    result = webui.txt2img(prompt="c", steps=3, seed=1, refiner_checkpoint=ckpt.base.title, refiner_switch_at=0.1, **SIZE)
    assert shared.sd_model is model and webui.loaded == [] and "Refiner" not in result.p.extra_generation_params


def test_unknown_refiner_fails_the_job(sdxl):
    webui, _ = sdxl
    with pytest.raises(Exception, match="Could not find checkpoint with name nope"):
        webui.txt2img(prompt="c", steps=1, seed=1, refiner_checkpoint="nope", refiner_switch_at=0.5, **SIZE)


def test_same_config_loads_in_place_and_swaps_back_per_iteration(sdxl):
    webui, ckpt = sdxl
    model = shared.sd_model
    diffusion_model = model.model.diffusion_model
    fired = []
    handle = diffusion_model.input_blocks[0].register_forward_hook(lambda *a: fired.append(shared.sd_model.sd_checkpoint_info.name))
    try:
        calls = Calls()
        webui.txt2img(prompt="c", steps=4, seed=1, sampler_name="Euler", n_iter=2, refiner_checkpoint=ckpt.same_arch.name,
                      refiner_switch_at=0.5, **SIZE)
    finally:
        handle.remove()
    # one model object all along: refiner weights loaded into it, the base's back at the second iteration
    assert {id(row["model"]) for row in calls.rows} == {id(model)} and shared.sd_model is model
    assert webui.loaded == [model, model, model]  # refiner, back to base (iteration 2), refiner again
    switched = first_refiner_call(calls, ckpt.same_arch)
    names = calls.column("checkpoint")
    assert names == ([ckpt.base.name] * switched + [ckpt.same_arch.name] * (4 - switched)) * 2
    assert fired == names  # hooks on the reused object keep firing, now with the other weights
    other_weight = sd_models.checkpoint_file(ckpt.same_arch).weights["input_blocks.0.0.weight"]
    assert torch.equal(diffusion_model.input_blocks[0][0].weight, other_weight)
    # reset() gives the test's UNet its own weights back
    webui.reset()
    assert torch.equal(unet("sdxl").input_blocks[0][0].weight, unet("sdxl", 0).input_blocks[0][0].weight)
    assert not torch.equal(unet("sdxl").input_blocks[0][0].weight, other_weight)


def test_other_config_builds_a_new_model_and_trashes_the_old(sdxl):
    webui, ckpt = sdxl
    model = shared.sd_model
    fired = []
    handle = model.model.diffusion_model.output_blocks[-1].register_forward_hook(lambda *a: fired.append(1))
    try:
        calls = Calls()
        webui.txt2img(prompt="c", steps=4, seed=1, sampler_name="Euler", n_iter=2, refiner_checkpoint=ckpt.refiner.name,
                      refiner_switch_at=None, **SIZE)
    finally:
        handle.remove()
    models = [row["model"] for row in calls.rows]
    assert len({id(m) for m in models}) == 2 and all(m is not model for m in models)  # refiner, then another refiner
    refiner_1, refiner_2 = models[0], models[-1]
    assert refiner_1.context_dim == 48 and refiner_1.sd_checkpoint_info is ckpt.refiner
    assert webui.loaded[0] is refiner_1 and webui.loaded[-1] is refiner_2 and len(webui.loaded) == 3  # + a new base in between
    assert webui.loaded[1].sd_checkpoint_info is ckpt.base and webui.loaded[1] is not model
    assert fired == [] and next(model.parameters()).is_meta and next(refiner_1.parameters()).is_meta
    assert not refiner_1.model.diffusion_model._forward_hooks  # a fresh UNet: none of the hooks of the original
    webui.reset()
    assert not next(unet("sdxl").parameters()).is_meta  # the test's own UNet is restored


def test_checkpoints_limit_keeps_models_loaded(sdxl):
    webui, ckpt = sdxl
    model = shared.sd_model
    calls = Calls()
    webui.txt2img(prompt="c", steps=2, seed=1, sampler_name="Euler", n_iter=2, refiner_checkpoint=ckpt.same_arch.name,
                  refiner_switch_at=None, opts={"sd_checkpoints_limit": 2}, **SIZE)
    refiner_model = calls.rows[0]["model"]
    # under the limit a second model object is loaded; afterwards both are kept and reused without on_model_loaded
    assert refiner_model is not model and calls.rows[-1]["model"] is refiner_model
    assert webui.loaded == [refiner_model] and sd_models.model_data.loaded_sd_models == [refiner_model, model]
    assert not next(model.parameters()).is_meta


@pytest.mark.parametrize("refiner_pass, first, hires", [
    ("second pass", False, True), ("first pass", True, False), ("both passes", True, True)])
def test_refiner_with_hires_fix(sdxl, refiner_pass, first, hires):
    webui, ckpt = sdxl
    calls = Calls()
    result = webui.txt2img(prompt="c", steps=2, seed=1, sampler_name="Euler", enable_hr=True, hr_scale=1.5,
                           refiner_checkpoint=ckpt.same_arch.name, refiner_switch_at=None,
                           opts={"hires_fix_refiner_pass": refiner_pass}, **SIZE)
    by_pass = {False: [], True: []}
    for row in calls.rows:
        by_pass[row["hr"]].append(row["checkpoint"])
    # the model is swapped back for the hires pass (reload_model_weights(info=None) picks the setting's checkpoint)
    assert by_pass[False] == [ckpt.same_arch.name if first else ckpt.base.name] * 2
    assert by_pass[True] == [ckpt.same_arch.name if hires else ckpt.base.name] * 2
    assert ("Hires refiner" in result.p.extra_generation_params) == (refiner_pass != "second pass")


def test_hires_checkpoint(sdxl):
    webui, ckpt = sdxl
    calls = Calls()
    result = webui.txt2img(prompt="c", steps=2, seed=1, sampler_name="Euler", enable_hr=True, hr_scale=1.5,
                           hr_checkpoint_name=ckpt.refiner.name, **SIZE)
    assert [(row["hr"], row["checkpoint"], row["context"][-1]) for row in calls.rows] == [
        (False, ckpt.base.name, 64)] * 2 + [(True, ckpt.refiner.name, 48)] * 2
    assert result.p.hr_checkpoint_info is ckpt.refiner and result.p.extra_generation_params["Hires checkpoint"] == ckpt.refiner.short_title
    assert shared.opts.sd_model_checkpoint == ckpt.base.title
    with pytest.raises(Exception, match="Could not find checkpoint with name nope"):
        webui.txt2img(prompt="c", steps=1, seed=1, enable_hr=True, hr_checkpoint_name="nope", **SIZE)


def test_refiner_accordion_and_api_fields(sdxl):
    webui, ckpt = sdxl
    runner = scripts.scripts_txt2img
    refiner, sampler, seed = (runner.script(name) for name in ("refiner", "sampler", "seed"))
    assert refiner.section == "accordions" and refiner.setup_for_ui_only
    assert sampler.args_to == refiner.args_from and refiner.args_to == seed.args_from  # built between the two
    enable, checkpoint, switch_at = refiner.controls
    choices = [choice[0] if isinstance(choice, tuple) else choice for choice in checkpoint.choices]
    assert (enable.value, checkpoint.value, switch_at.value) == (False, '', 0.8) and ckpt.refiner.title in choices
    # the UI path: a closed accordion clears what the constructor was given
    p = webui.make_txt2img(prompt="c", steps=1, script_args={"Refiner": [False, ckpt.refiner.title, 0.5]}, **SIZE)
    assert p.refiner_checkpoint is None and p.refiner_switch_at is None
    p = webui.make_txt2img(prompt="c", steps=1, refiner_checkpoint=ckpt.refiner.title, refiner_switch_at=0.4, **SIZE)
    assert (p.refiner_checkpoint, p.refiner_switch_at) == (ckpt.refiner.title, 0.4)

    # the API: only the request fields count (None defaults); the Refiner script's args are ignored
    client = webui.api_client()
    calls = Calls()
    body = {"prompt": "c", "steps": 3, "seed": 1, **SIZE}
    response = client.post("/sdapi/v1/txt2img", json={**body, "refiner_checkpoint": ckpt.same_arch.name})
    assert response.status_code == 200, response.text
    assert first_refiner_call(calls, ckpt.same_arch) == 0  # no refiner_switch_at: switch at the first call
    webui.txt2img(prompt="c", steps=1, seed=1, **SIZE)
    calls.clear()
    response = client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"Refiner": {"args": [True, ckpt.same_arch.name, 0.1]}}})
    assert response.status_code == 200 and first_refiner_call(calls, ckpt.same_arch) is None
    from modules.api import models
    fields = models.StableDiffusionTxt2ImgProcessingAPI.__fields__
    assert fields["refiner_checkpoint"].default is None and fields["refiner_switch_at"].default is None
    assert fields["hr_checkpoint_name"].default is None
