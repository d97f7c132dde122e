"""The A1111 stand-in's low-VRAM modes, the scripts that run processing repeatedly on one p, inpaint masks, a
Kohya-Hires.fix-like block wrapper and hires sizes behave as A1111 1.10.1 does (modules/lowvram.py,
modules/img2img.py, scripts/{loopback,sd_upscale,poor_mans_outpainting,outpainting_mk_2}.py, processing.py's mask
handling and calculate_target_resolution, wcde/sd-webui-kohya-hiresfix scripts/khrfix.py).

Expected values are worked out from those rules by hand (tile positions, seeds, sizes), not read back from the
stand-in.
"""
from __future__ import annotations

import functools
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from tests.webui.harness import webui  # noqa: F401  (pytest fixture; importing it puts tests/webui on sys.path)
from tests.webui import kohya_like

from modules import devices, images, img2img, lowvram, processing, script_callbacks, scripts, shared

SIZE = dict(width=64, height=64)
CALLS: list[dict] = []


@functools.lru_cache(maxsize=None)
def unet(kind):
    from tests.fixtures.tiny_models import tiny_unet
    return tiny_unet(kind)


def no_hooks_left(module: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def noise_image(width, height, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


class Probe(scripts.Script):
    """Logs what p looks like at each process_images call (process), after init (before_process_batch) and at
    p.sample entry, together with where lowvram has put the model's parts."""

    def title(self):
        return "Jobs probe"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        CALLS.append(dict(
            init_images=list(getattr(p, "init_images", None) or []), batch_size=p.batch_size, n_iter=p.n_iter,
            seed=p.seed, size=(p.width, p.height), image_mask=getattr(p, "image_mask", None),
            latent_mask=getattr(p, "latent_mask", None), inpaint_full_res=getattr(p, "inpaint_full_res", None),
            inpainting_fill=getattr(p, "inpainting_fill", None), denoising_strength=p.denoising_strength,
            mask_blur=(getattr(p, "mask_blur_x", None), getattr(p, "mask_blur_y", None)),
            extra=dict(p.extra_generation_params), lowvram=lowvram.is_enabled(p.sd_model),
            at_process=lowvram.placement()))

    def before_process_batch(self, p, *args, **kwargs):
        CALLS[-1].update(batch_size_after_init=p.batch_size, seeds=list(kwargs["seeds"]), paste_to=p.paste_to,
                         at_batch=lowvram.placement())

    def after_extra_networks_activate(self, p, *args, **kwargs):
        CALLS[-1]["activations"] = CALLS[-1].get("activations", 0) + 1

    def process_before_every_sampling(self, p, *args, **kwargs):
        CALLS[-1].setdefault("at_sample", []).append((p.is_hr_pass, tuple(kwargs["x"].shape), lowvram.placement()))


@pytest.fixture
def standin(webui):  # noqa: F811
    """SD1.5 tiny model, the Probe loaded like an extension, UI built."""
    CALLS.clear()
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[Probe])
    yield webui


GPU, CPU = devices.STANDIN_ACCELERATOR, torch.device("cpu")


# --- low VRAM ----------------------------------------------------------------------------------------------

def test_is_needed_is_decided_per_model(webui):  # noqa: F811
    sdxl = webui.set_model(unet("sdxl"), "sdxl", name="xl.safetensors")
    webui.set_low_vram("medvram-sdxl")
    assert lowvram.is_needed(sdxl) and sdxl.lowvram is True and shared.parallel_processing_allowed is False
    sd15 = webui.set_model(unet("sd15"), "sd15", name="one-five.safetensors")
    webui.set_low_vram("medvram-sdxl")
    assert not lowvram.is_needed(sd15) and sd15.lowvram is False and lowvram.is_enabled(sd15) is False
    assert shared.parallel_processing_allowed is True
    for mode in ("medvram", "lowvram"):
        webui.set_low_vram(mode)
        assert lowvram.is_enabled(sd15) is True and shared.cmd_opts.medvram is (mode == "medvram")
    # the attribute has no default: a model that never went through apply() has none
    fresh = webui.set_model(unet("sd15"), "sd15", name="fresh.safetensors")
    with pytest.raises(AttributeError):
        lowvram.is_enabled(fresh)
    webui.set_low_vram(None)
    assert lowvram.is_enabled(fresh) is False and devices.device == GPU and devices.device != devices.cpu


@pytest.mark.parametrize("kind, text_encoder", [("sd15", "cond_stage_model"), ("sdxl", "conditioner")])
def test_setup_keeps_the_big_parts_on_the_cpu(webui, kind, text_encoder):  # noqa: F811
    model = webui.set_model(unet(kind), kind)
    shared.cmd_opts.medvram = True
    devices.use_distinct_device()
    lowvram.apply(model)
    # loaded on the CPU; everything but the VAE, the text encoder and the UNet wrapper then goes to the GPU
    assert lowvram.moves == [("sd_model", GPU)]
    assert lowvram.placement() == {"first_stage_model": CPU, text_encoder: CPU, "model": CPU}
    assert lowvram.device_of(model.model.diffusion_model.out) == CPU and lowvram.device_of(model) == GPU
    lowvram.setup_for_low_vram(model, True)  # a second setup does nothing
    assert len(lowvram.moves) == 1 and len(model.model._forward_pre_hooks) == 1


def test_distinct_device_changes_nothing_in_the_images(standin):
    init = noise_image(80, 64)
    mask = Image.new("L", (80, 64), 0)
    mask.paste(255, (20, 10, 50, 40))
    jobs = [
        lambda: standin.txt2img(prompt="a", steps=1, seed=3, enable_hr=True, hr_scale=1.5, **SIZE),
        lambda: standin.txt2img(prompt="a", steps=1, seed=3, enable_hr=True, hr_scale=1.5, hr_upscaler="ESRGAN_4x", **SIZE),
        lambda: standin.img2img(prompt="a", steps=2, seed=3, init_images=[init], mask=mask, denoising_strength=0.6, **SIZE),
    ]
    plain = [np.asarray(job().processed.images[0]) for job in jobs]
    assert devices.device is devices.cpu
    standin.set_low_vram(None)  # the distinct device only
    assert devices.device == GPU and shared.device == GPU and devices.device_esrgan == GPU
    assert devices.get_optimal_device() == GPU
    again = [np.asarray(job().processed.images[0]) for job in jobs]
    assert all(np.array_equal(a, b) for a, b in zip(plain, again))
    standin.set_low_vram("medvram")
    medvram = [np.asarray(job().processed.images[0]) for job in jobs]
    assert all(np.array_equal(a, b) for a, b in zip(plain, medvram))


def test_medvram_timeline_txt2img_with_pixel_hires(webui):  # noqa: F811
    CALLS.clear()
    webui.set_model(unet("sdxl"), "sdxl")
    webui.load_extension(extra_script_classes=[Probe])
    lv = webui.set_low_vram("medvram")
    # at load: everything but the big parts to the GPU, then the empty-prompt cond puts the text encoder there
    assert lv.moves == [("sd_model", GPU), ("conditioner", GPU)]
    seen_in_unet = []
    handle = shared.sd_model.model.diffusion_model.register_forward_pre_hook(lambda m, a: seen_in_unet.append(lv.placement()))
    try:
        webui.txt2img(prompt="a", steps=2, seed=1, enable_hr=True, hr_scale=1.5, hr_upscaler="ESRGAN_4x", **SIZE)
    finally:
        handle.remove()

    call = CALLS[0]
    assert call["lowvram"] is True
    # process / process_batch / p.sample entry: the UNet is still on the CPU
    assert call["at_process"] == {"first_stage_model": CPU, "conditioner": GPU, "model": CPU}
    first_pass, hires = call["at_sample"]
    assert first_pass[2]["model"] == CPU and hires[2]["model"] == CPU and hires[2]["first_stage_model"] == GPU
    # a hook registered later on the UNet runs after lowvram's pre-hook on the wrapper: the UNet is there
    assert seen_in_unet and all(seen == {"first_stage_model": CPU, "conditioner": CPU, "model": GPU} for seen in seen_in_unet)

    timeline = [(e.name, e.detail.get("pass")) for e in lv.events]
    assert timeline == [("text encode", None)] * 4 + [  # with lowvram the hires conds are made in setup_conds
        ("sampling start", "txt2img"), ("sampling end", "txt2img"), ("vae decode", None), ("upscale", None),
        ("vae encode", None), ("sampling start", "hires"), ("sampling end", "hires"), ("vae decode", None),
        ("send_everything_to_cpu", None)]
    at = {name: [e.placement for e in lv.events_named(name)] for name in ("vae decode", "upscale", "vae encode")}
    assert all(p == {"first_stage_model": GPU, "conditioner": CPU, "model": CPU} for ps in at.values() for p in ps)
    upscale = lv.events_named("upscale")[0]
    assert upscale.detail["upscaler"] == "ESRGAN_4x" and upscale.detail["device"] == devices.device_esrgan == GPU
    assert lv.events[-1].placement == {"first_stage_model": CPU, "conditioner": CPU, "model": CPU}
    # the single slot: every move to the GPU evicts the previous occupant first
    assert lv.moves[2:] == [("conditioner", CPU), ("model", GPU), ("model", CPU), ("first_stage_model", GPU),
                            ("first_stage_model", CPU), ("model", GPU), ("model", CPU), ("first_stage_model", GPU),
                            ("first_stage_model", CPU)]


def test_hires_conds_early_only_in_low_vram(standin):
    def order():
        timeline = [e.name for e in lowvram.events if e.name in ("text encode", "sampling start")]
        lowvram.events.clear()
        return timeline

    standin.txt2img(prompt="a", steps=1, seed=1, enable_hr=True, hr_scale=1.5, **SIZE)
    assert order() == ["text encode", "text encode", "sampling start", "text encode", "text encode", "sampling start"]
    standin.set_low_vram("medvram")
    standin.txt2img(prompt="b", negative_prompt="c", steps=1, seed=1, enable_hr=True, hr_scale=1.5, **SIZE)  # not cached
    assert order() == ["text encode"] * 4 + ["sampling start"] * 2
    # setup_conds activates the hires prompts' extra networks and then the first pass's again: two more
    # after_extra_networks_activate calls than without low VRAM (1 + 1 for the hires pass)
    assert [c["activations"] for c in CALLS] == [2, 4]


def test_lowvram_moves_each_block_on_its_own(standin):
    lv = standin.set_low_vram("lowvram")
    unet_model = shared.sd_model.model.diffusion_model
    blocks = [f"model.diffusion_model.input_blocks.{i}" for i in range(4)]
    seen = []
    handles = [block.register_forward_pre_hook(lambda m, a, i=i: seen.append((i, lv.placement())))
               for i, block in enumerate(unet_model.input_blocks)]
    try:
        standin.img2img(prompt="a", steps=2, seed=1, init_images=[noise_image(64, 64)], denoising_strength=0.5, **SIZE)
    finally:
        for handle in handles:
            handle.remove()
    assert seen
    for i, placement in seen:
        on_gpu = {name for name, device in placement.items() if device == GPU}
        assert on_gpu == {"model", blocks[i]}, (i, on_gpu)  # "model": the wrapper without the hooked blocks
    names = [name for name, _ in lv.moves]
    assert names[:2] == ["sd_model", "model"] and "model.diffusion_model.time_embed" in names
    assert "model.diffusion_model.middle_block" in names and "model.diffusion_model.output_blocks.3" in names
    assert lv.events[-1].name == "send_everything_to_cpu"
    assert all(d == CPU for name, d in lv.events[-1].placement.items() if name != "model")


def test_reset_removes_every_hook_and_wrapper(webui):  # noqa: F811
    for mode in ("lowvram", "medvram"):
        model = webui.set_model(unet("sdxl"), "sdxl")
        webui.load_extension()
        webui.set_low_vram(mode)
        assert "decode_first_stage" in vars(model) and "get_learned_conditioning" in vars(model)
        webui.txt2img(prompt="a", steps=1, seed=1, **SIZE)
        webui.reset()
        assert no_hooks_left(unet("sdxl")) and no_hooks_left(model.model)
        assert "decode_first_stage" not in vars(model) and "lowvram" not in vars(model)
        assert lowvram.moves == [] and lowvram.events == [] and lowvram.module_in_gpu is None
        assert devices.device is devices.cpu and shared.device is devices.cpu


# --- scripts that run processing repeatedly on one p ----------------------------------------------------

def test_builtin_scripts_are_loaded_like_a1111s(standin):
    runner = scripts.scripts_img2img
    assert runner.titles == ["Loopback", "Outpainting mk2", "Poor man's outpainting", "SD upscale", "X/Y/Z plot"]
    assert scripts.scripts_txt2img.titles == ["X/Y/Z plot"]
    modules = {data.script_class.__module__ for data in scripts.scripts_data}
    assert {"loopback.py", "outpainting_mk_2.py", "poor_mans_outpainting.py", "sd_upscale.py", "xyz_grid.py"} <= modules
    labels = {title: [getattr(c, "label", None) for c in runner.script(title).controls] for title in runner.titles[:4]}
    assert labels == {
        "Loopback": ["Loops", "Final denoising strength", "Denoising strength curve", "Append interrogated prompt at each iteration"],
        "Outpainting mk2": [None, "Pixels to expand", "Mask blur", "Outpainting direction", "Fall-off exponent (lower=higher detail)", "Color variation"],
        "Poor man's outpainting": ["Pixels to expand", "Mask blur", "Masked content", "Outpainting direction"],
        "SD upscale": [None, "Tile overlap", "Upscaler", "Scale Factor"],
    }
    choices = [c[0] if isinstance(c, tuple) else c for c in runner.script("SD upscale").controls[2].choices]
    assert choices == ["None", "Lanczos", "Nearest", "ESRGAN_4x"]
    assert standin.reported() == []


def test_split_grid_and_combine_grid():
    image = noise_image(192, 160)
    grid = images.split_grid(image, tile_w=64, tile_h=64, overlap=16)
    # 4 columns: ceil((192-16)/48); spacing (192-64)/3 = 42.67 -> x 0, 42, 85, 128; 3 rows: spacing 48
    assert [y for y, _, _ in grid.tiles] == [0, 48, 96]
    assert [x for x, _, _ in grid.tiles[0][2]] == [0, 42, 85, 128] and grid.tile_count == 12
    assert np.array_equal(np.asarray(grid.tiles[1][2][2][2]), np.asarray(image.crop((85, 48, 149, 112))))
    assert np.array_equal(np.asarray(images.combine_grid(grid)), np.asarray(image))  # unchanged tiles: the image back
    # a changed tile fades in over the overlap: column 42 is all old, 57 is 15/16 new
    grid.tiles[0][2][1][2] = Image.new("RGB", (64, 64), (255, 255, 255))
    combined = np.asarray(images.combine_grid(grid)).astype(int)
    original = np.asarray(image).astype(int)
    assert np.array_equal(combined[5, 42], original[5, 42])
    assert np.all(np.abs(combined[5, 57] - (original[5, 57] + (255 - original[5, 57]) * 239 / 255)) <= 1)
    assert np.all(combined[5, 58:85] == 255)


def test_sd_upscale_tiles_batches_and_seeds(standin):
    init = noise_image(96, 80)
    result = standin.img2img(prompt="a", steps=2, seed=10, init_images=[init], denoising_strength=0.3, batch_size=5,
                             n_iter=2, select="SD upscale",
                             script_args={"SD upscale": {"Tile overlap": 16, "Upscaler": 1, "Scale Factor": 2.0}}, **SIZE)
    # Lanczos x2 -> 192x160 -> 12 tiles of 64x64; batches of 5, 5, 2; seed + 1 per batch; two passes (n_iter 2)
    assert [len(c["init_images"]) for c in CALLS] == [5, 5, 2] * 2
    assert [c["seed"] for c in CALLS] == [10, 11, 12, 11, 12, 13]
    assert [c["seeds"] for c in CALLS[:3]] == [[10, 11, 12, 13, 14], [11, 12, 13, 14, 15], [12, 13]]
    assert [c["batch_size"] for c in CALLS] == [5] * 6 and [c["batch_size_after_init"] for c in CALLS[:3]] == [5, 5, 2]
    assert all(c["size"] == (64, 64) and c["n_iter"] == 1 and c["image_mask"] is None for c in CALLS)
    upscaled = init.resize((192, 160), resample=images.LANCZOS)
    expected = [tile[2] for _, _, row in images.split_grid(upscaled, 64, 64, 16).tiles for tile in row]
    given = [image for c in CALLS[:3] for image in c["init_images"]]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(given, expected))
    assert len({image.tobytes() for image in CALLS[0]["init_images"]}) == 5  # different tiles in one batch
    processed = result.processed
    assert [image.size for image in processed.images] == [(192, 160)] * 2 and processed.seed == 10
    assert CALLS[0]["extra"]["SD upscale overlap"] == 16 and CALLS[0]["extra"]["SD upscale upscaler"] == "Lanczos"


def test_sd_upscale_through_the_api_by_upscaler_name(standin):
    import base64
    import io
    buffer = io.BytesIO()
    noise_image(64, 64).save(buffer, format="PNG")
    payload = {"prompt": "a", "steps": 2, "seed": 1, "width": 64, "height": 64, "denoising_strength": 0.3,
               "init_images": [base64.b64encode(buffer.getvalue()).decode()], "script_name": "sd upscale",
               "script_args": ["", 0, "ESRGAN_4x", 1.5]}
    response = standin.api_client().post("/sdapi/v1/img2img", json=payload)
    assert response.status_code == 200, response.text
    # ESRGAN-like x1.5: (64 * 1.5) // 8 * 8 = 96 -> 2x2 tiles of 64 without overlap
    assert len(CALLS) == 4 and [c["seed"] for c in CALLS] == [1, 2, 3, 4]
    assert shared.sd_upscalers[3].scaler.calls == [((64, 64), 1.5)]


def test_loopback_repeats_process_images_on_one_p(standin):
    init = noise_image(64, 64)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    result = standin.img2img(prompt="a", steps=2, seed=7, init_images=[init], mask=mask, inpainting_fill=0,
                             inpaint_full_res=False, denoising_strength=0.8, n_iter=2, select="Loopback",
                             script_args={"Loopback": {"Loops": 3, "Final denoising strength": 0.2}}, **SIZE)
    assert len(CALLS) == 6
    assert [c["seed"] for c in CALLS] == [7, 8, 9, 10, 11, 12]
    # linear curve over 3 loops: 0.8, then halfway (0.5), then the final 0.2; every batch starts over
    assert [round(c["denoising_strength"], 6) for c in CALLS] == [0.8, 0.5, 0.2] * 2
    assert [c["inpainting_fill"] for c in CALLS] == [0, 1, 1] * 2  # "original" after the first loop of a batch
    assert CALLS[0]["init_images"][0] is init and CALLS[3]["init_images"][0] is init
    assert CALLS[1]["init_images"][0] is not init and all(c["image_mask"] is mask for c in CALLS)
    assert all(c["batch_size"] == 1 and c["n_iter"] == 1 for c in CALLS)
    # the script replaces p.extra_generation_params with its own dict
    assert set(CALLS[0]["extra"]) == {"Final denoising strength", "Denoising curve"}
    processed = result.processed
    assert len(processed.images) == 3 and processed.images[0].size == (128, 64)  # history grid + the two results
    assert processed.seed == 7 and result.p.inpainting_fill == 0


def test_poor_mans_outpainting_border_tiles(standin):
    init = noise_image(64, 64)
    result = standin.img2img(prompt="a", steps=1, seed=3, init_images=[init], denoising_strength=0.5,
                             select="Poor man's outpainting",
                             script_args={"Poor man's outpainting": {"Pixels to expand": 32, "Mask blur": 4, "Outpainting direction": ["left", "down"]}},
                             **SIZE)
    # 64+32 -> 128 (rounded to 64) on both axes: left 64, down 64; 64x64 tiles with overlap 32 -> 3x3, the one
    # tile inside the original (x 64, y 0) is skipped
    assert len(CALLS) == 8 and [c["seed"] for c in CALLS] == list(range(3, 11))
    assert all(c["inpaint_full_res"] is False and c["mask_blur"] == (8, 8) and c["inpainting_fill"] == 0 for c in CALLS)
    first = CALLS[0]
    assert first["image_mask"].size == (64, 64) and first["image_mask"].mode == "L" and first["latent_mask"].mode == "L"
    # tile (0, 0) is all new canvas: white mask; the mask's black box starts at x = 64 + 2*blur
    assert first["image_mask"].getextrema() == (255, 255)
    canvas_mask = Image.new("L", (128, 128), "white")
    canvas_mask.paste(0, (72, 0, 128, 57))  # ImageDraw's rectangle (72, 0, 128, 56) includes its far edges
    assert np.array_equal(np.asarray(CALLS[1]["image_mask"]), np.asarray(canvas_mask.crop((32, 0, 96, 64))))
    assert result.processed.images[0].size == (128, 128)


def test_outpainting_mk2_one_call_per_direction(standin):
    init = noise_image(64, 48)
    result = standin.img2img(prompt="a", steps=2, seed=5, init_images=[init], denoising_strength=0.8, batch_size=2,
                             select="Outpainting mk2",
                             script_args={"Outpainting mk2": {"Pixels to expand": 32, "Mask blur": 4, "Outpainting direction": ["left", "up"]}},
                             **SIZE)
    # canvas 64+32 -> 128 wide, 48+32 -> 128 high: left 64, up 80; one call per direction with the batch of 2
    assert len(CALLS) == 2 and all(len(c["init_images"]) == 2 and c["batch_size_after_init"] == 2 for c in CALLS)
    left, up = CALLS
    # left: 64+64 = 128 wide canvas, processed strip min(64, 128) x the canvas height rounded to 64
    assert left["size"] == (64, 64) and up["size"] == (128, 64)
    assert all(c["seed"] == 5 and c["inpaint_full_res"] is False and c["inpainting_fill"] == 1 for c in CALLS)
    assert left["mask_blur"] == (16, 16) and left["image_mask"].mode == "RGB" and left["latent_mask"].size == (64, 64)
    assert [image.size for image in result.processed.images] == [(256, 128), (128, 128), (128, 128)]


def test_img2img_batch_tab(standin, tmp_path):
    folder, masks = tmp_path / "in", tmp_path / "masks"
    folder.mkdir()
    masks.mkdir()
    for i in (10, 2, 1):  # natural sort: 1, 2, 10
        noise_image(48, 40, seed=i).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    rgba = Image.new("RGBA", (48, 40), (0, 0, 0, 0))
    rgba.paste((255, 255, 255, 255), (8, 8, 24, 24))
    rgba.save(masks / "img1.png")
    rgba.save(masks / "img10.png")
    result = standin.img2img_batch(str(folder), str(masks), prompt="a", steps=2, seed=-1, batch_size=2,
                                   denoising_strength=0.5, to_scale=True, scale_by=2.0, mask_blur=0, **SIZE)
    # img2 has no mask: skipped; the seed was fixed once, so both images get the same one
    assert len(CALLS) == 2 and CALLS[0]["seed"] == CALLS[1]["seed"] != -1
    assert all(c["size"] == (96, 80) for c in CALLS)
    first = CALLS[0]
    assert len(first["init_images"]) == 2 and first["init_images"][0] is first["init_images"][1]
    assert first["image_mask"].mode == "RGBA" and first["image_mask"].size == (48, 40)  # as read, not binarized
    assert len(result.processed.images) == 2 * 3  # per image: a grid and its two results, collected
    # one mask file serves every image
    single = tmp_path / "single"
    single.mkdir()
    rgba.save(single / "anything.png")
    CALLS.clear()
    standin.img2img_batch(str(folder), str(single), prompt="a", steps=1, seed=4, denoising_strength=0.5, **SIZE)
    assert len(CALLS) == 3 and [c["seed"] for c in CALLS] == [4, 4, 4]


def test_img2img_batch_png_info_and_output_dir(standin, tmp_path):
    from PIL import PngImagePlugin
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a red fox\nNegative prompt: blurry\nSteps: 3, Sampler: Euler, CFG scale: 5, Seed: 99, Size: 64x64")
    noise_image(64, 64).save(folder / "fox.png", pnginfo=info)
    result = standin.img2img_batch(str(folder), output_dir=str(out), prompt="base", negative_prompt="neg", steps=1,
                                   seed=4, use_png_info=True, png_info_props=["Prompt", "Seed", "Steps"],
                                   denoising_strength=0.5, **SIZE)
    p = result.p
    # only the chosen fields: the prompt is appended, seed and steps replaced; negative prompt and CFG stay
    assert (p.prompt, p.negative_prompt, p.seed, p.steps, p.cfg_scale) == ("base a red fox", "neg", 99, 3, 7.0)
    assert CALLS[0]["seed"] == 99 and p.outpath_samples == str(out)
    assert p.override_settings["samples_filename_pattern"] == "fox" and p.override_settings["save_to_dirs"] is False


def test_img2img_batch_runs_the_selected_script_per_image(standin, tmp_path):
    for i in range(2):
        noise_image(64, 64, seed=i).save(tmp_path / f"{i}.png")
    standin.img2img_batch(str(tmp_path), prompt="a", steps=1, seed=2, denoising_strength=0.5, select="Loopback",
                          script_args={"Loopback": {"Loops": 2}}, **SIZE)
    # Loopback inside the batch: two loops per image; its seed counting continues on the same p
    assert [c["seed"] for c in CALLS] == [2, 3, 4, 5]


def test_img2img_tab_modes_and_masks(standin):
    parameters = list(inspect.signature(img2img.img2img).parameters)
    assert parameters[:-1] == list(standin.IMG2IMG_TAB_DEFAULTS)
    image = noise_image(64, 64)
    sketch_mask = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    sketch_mask.paste((255, 255, 255, 200), (10, 10, 30, 30))
    result = standin.img2img_tab(mode=2, init_img_with_mask={"image": image, "mask": sketch_mask}, steps=2, width=64, height=64)
    mask = result.p.image_mask  # mode 2: binarized in the handler (alpha 200 > 128)
    assert mask.mode == "L" and mask.getextrema() == (0, 255) and mask.getbbox() == (10, 10, 30, 30)
    assert CALLS[-1]["inpaint_full_res"] == 0 and CALLS[-1]["inpainting_fill"] == 1  # the UI's defaults
    result = standin.img2img_tab(mode=4, init_img_inpaint=image, init_mask_inpaint=sketch_mask, steps=2, width=64, height=64)
    kept = result.p.image_mask  # mode 4: the upload as it is (images.fix_image may copy it)
    assert kept.mode == "RGBA" and np.array_equal(np.asarray(kept), np.asarray(sketch_mask))


# --- inpaint masks ---------------------------------------------------------------------------------------

def test_create_binary_mask():
    rgba = Image.new("RGBA", (4, 1), (255, 255, 255, 255))
    for x, alpha in enumerate((0, 128, 129, 255)):
        rgba.putpixel((x, 0), (10, 20, 30, alpha))
    assert list(processing.create_binary_mask(rgba).getdata()) == [0, 0, 255, 255]
    assert list(processing.create_binary_mask(rgba, round=False).getdata()) == [0, 128, 129, 255]
    opaque = Image.new("RGBA", (2, 1), (255, 255, 255, 255))  # fully opaque: the colour counts, not the alpha
    opaque.putpixel((0, 0), (0, 0, 0, 255))
    assert list(processing.create_binary_mask(opaque).getdata()) == [0, 255]
    assert processing.create_binary_mask(Image.new("RGB", (2, 2), (255, 255, 255))).mode == "L"


def test_image_mask_is_kept_and_the_inverted_mask_drives_the_crop(standin):
    init = noise_image(128, 96)
    mask = Image.new("RGBA", (128, 96), (0, 0, 0, 0))
    mask.paste((255, 255, 255, 255), (0, 0, 128, 96))
    mask.paste((0, 0, 0, 0), (40, 20, 72, 36))  # transparent hole: inverted, only the hole is inpainted
    result = standin.img2img(prompt="a", steps=2, seed=1, init_images=[init], mask=mask, mask_blur=0,
                             inpainting_mask_invert=1, inpaint_full_res=True, inpaint_full_res_padding=4,
                             denoising_strength=0.5, **SIZE)
    p = result.p
    assert p.image_mask is mask and p.image_mask.mode == "RGBA"  # never binarized, inverted or replaced
    # the hole (40,20)-(72,36) + 4 -> (36,16,76,40), widened to 1:1 -> 40x40 from y 8
    assert p.paste_to == (36, 8, 40, 40) and p.extra_generation_params["Mask mode"] == "Inpaint not masked"
    assert p.mask_for_overlay.mode == "L" and p.mask_for_overlay.getbbox() == (40, 20, 72, 36)
    # the blur tails count for the crop box (any pixel > 0)
    CALLS.clear()
    blurred = standin.img2img(prompt="a", steps=1, seed=1, init_images=[init], mask=mask, mask_blur=4,
                              inpainting_mask_invert=1, inpaint_full_res_padding=0, denoising_strength=0.5, **SIZE)
    x, y, w, h = blurred.p.paste_to
    assert x < 40 and x + w > 72 and w == h


def test_blank_mask_turns_only_masked_off_for_later_calls_on_the_same_p(standin):
    init = noise_image(64, 64)
    p = standin.make_img2img(prompt="a", steps=1, seed=1, init_images=[init], mask=Image.new("L", (64, 64), 0),
                             inpaint_full_res=True, denoising_strength=0.5, **SIZE)
    first = standin.run(p)
    assert p.inpaint_full_res is False and p.paste_to is None and p.mask is None
    assert 'Unable to perform "Inpaint Only mask" because mask is blank' in first.comments
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (8, 8, 24, 24))
    p.image_mask = mask
    processing.process_images(p)  # e.g. the next image of the Batch tab: now "Whole picture"
    assert p.paste_to is None and "Inpaint area" not in p.extra_generation_params and p.nmask is not None


# --- a block-wrapping extension (Kohya Hires.fix-like) ----------------------------------------------------

@pytest.mark.parametrize("kind", ["sdxl", "sd15"])
def test_kohya_like_wraps_blocks_early_and_restores(webui, kind):  # noqa: F811
    webui.set_model(unet(kind), kind)
    webui.load_extension(extra_script_classes=[kohya_like.KohyaLikeScript])
    model = shared.sd_model.model.diffusion_model
    original_input_2 = model.input_blocks[2]
    fired = []
    handle = original_input_2.register_forward_pre_hook(lambda m, args: fired.append(tuple(args[0].shape)))
    steps = []
    script_callbacks.on_cfg_denoiser(lambda params: steps.append(params.sampling_step))
    try:
        kohya = {0: True, 4: 0.3, 5: 0.5}  # enable, s1 ("Stop at"), s2
        result = webui.txt2img(prompt="a", steps=10, seed=1, width=64, height=64, sampler_name="Euler",
                               script_args={"Kohya Hires.fix": kohya})
    finally:
        handle.remove()
    # sampling_step lags the call number: 0, 0, 1, 2, ...; phase 1 (s 0.3 of 10 = 3) covers sampling steps 0..2,
    # phase 2 (0.5 -> 5) steps 3..4; smooth scaling moves the scale towards 1 within a phase
    assert steps[:8] == [0, 0, 1, 2, 3, 4, 5, 6]
    assert [(call, kind_, depth) for call, _, kind_, depth, _ in kohya_like.events] == [
        (0, "wrap", 2), (1, "scale", 2), (2, "scale", 2), (3, "scale", 2), (4, "unwrap", 2), (4, "wrap", 3),
        (5, "scale", 3), (6, "unwrap", 3)]
    # 0.5 + 0.5 * sampling_step / (10 * s): 0/3, 1/3, 2/3 in phase 1, 4/5 in phase 2
    scales = [round(scale, 4) for _, _, kind_, _, scale in kohya_like.events if kind_ == "scale"]
    assert scales == [0.5, 0.6667, 0.8333, 0.9]
    n_out = len(model.output_blocks)
    first = [call for call in kohya_like.Scaler.calls[:2]]
    assert first[0][:2] == ("input", 2) and first[0][2][-2:] == (8, 8) and first[0][3][-2:] == (4, 4)
    # the output block mirroring input block 2 gets cat([h, skip]) (both at the reduced size) and doubles it
    assert first[1][:2] == ("output", n_out - 3) and first[1][3][-2:] == tuple(2 * side for side in first[1][2][-2:])
    # the original block's hooks still fire, with the interpolated input while wrapped
    assert fired[0][-2:] == (4, 4) and fired[-1][-2:] == (8, 8)
    assert not any(isinstance(b, kohya_like.Scaler) for b in list(model.input_blocks) + list(model.output_blocks))
    assert model.input_blocks[2] is original_input_2 and result.p.extra_generation_params["DSHF_d1"] == 3
    assert webui.reported() == []


def test_kohya_like_one_pass_only_and_callbacks(webui):  # noqa: F811
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[kohya_like.KohyaLikeScript])
    enabled = {"Kohya Hires.fix": {"Enable extension": True}}

    def kohya_callbacks():
        return [c for c in script_callbacks.callback_map["callbacks_cfg_denoiser"] if c.script.endswith("kohya_like.py")]

    webui.txt2img(prompt="a", steps=6, seed=1, enable_hr=True, hr_scale=1.5, script_args=enabled, **SIZE)
    # 6 steps: phase 1 while sampling_step < 0.9, phase 2 while < 1.8; after that the step limit (the last
    # sampling_step seen, 4) keeps the hires pass (sampling_step restarting at 0) unwrapped
    assert [(call, kind, depth) for call, _, kind, depth, _ in kohya_like.events] == [
        (0, "wrap", 2), (1, "scale", 2), (2, "unwrap", 2), (2, "wrap", 3), (3, "unwrap", 3)]
    assert len(kohya_callbacks()) == 1
    assert all(shape[-2:] != (12, 12) for *_, shape, _ in kohya_like.Scaler.calls)  # never in the 96px hires pass
    webui.txt2img(prompt="a", steps=2, seed=1, script_args=enabled, **SIZE)
    assert len(kohya_callbacks()) == 2  # re-registered by every enabled job
    webui.txt2img(prompt="a", steps=2, seed=1, **SIZE)
    assert kohya_callbacks() == []  # removed only by a disabled job


# --- hires sizes --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size, resize, scale, expected", [
    ((512, 768), (1001, 1001), 0, (1001, 1501, 0, 62)),   # cover the box, crop 62 latent rows -> 1000x1000
    ((512, 768), (1024, 1024), 0, (1024, 1536, 0, 64)),
    ((768, 512), (1000, 0), 0, (1000, 666, 0, 0)),        # one side given: the other follows, no crop
    ((768, 512), (0, 1000), 0, (1500, 1000, 0, 0)),
    ((516, 520), (0, 0), 1.25, (645, 650, 0, 0)),          # scale: int(), no rounding to 8
])
def test_hires_target_resolution(size, resize, scale, expected):
    p = processing.StableDiffusionProcessingTxt2Img(width=size[0], height=size[1], enable_hr=True,
                                                    hr_resize_x=resize[0], hr_resize_y=resize[1], hr_scale=scale)
    p.calculate_target_resolution()
    assert (p.hr_upscale_to_x, p.hr_upscale_to_y, p.truncate_x, p.truncate_y) == expected


def test_old_hires_fix_width_height(webui):  # noqa: F811
    with webui.options(use_old_hires_fix_width_height=True):
        p = processing.StableDiffusionProcessingTxt2Img(width=1024, height=768, enable_hr=True)
        p.calculate_target_resolution()
    # the asked size becomes the resize target; the first pass is ~512x512 of the same aspect, sides rounded up
    # to 64 (sqrt(1/3) * 1024 / 64 = 9.24 -> 640, 6.93 -> 448); covering 1024x768 from 640x448 gives 1097x768
    assert (p.width, p.height, p.hr_resize_x, p.hr_resize_y) == (640, 448, 1024, 768)
    assert (p.hr_upscale_to_x, p.hr_upscale_to_y, p.truncate_x, p.truncate_y) == (1097, 768, 9, 0)


@pytest.mark.parametrize("upscaler", ["Latent", "Lanczos", "ESRGAN_4x"])
def test_hires_sizes_not_multiples_of_8(webui, upscaler):  # noqa: F811
    CALLS.clear()
    webui.set_model(unet("sdxl"), "sdxl")
    webui.load_extension(extra_script_classes=[Probe])
    # 64x96 resized to 125x125: up 125x187 -> latent 15x23, 7 rows cropped (3 top, 4 bottom) -> 15x16 = 120x128
    result = webui.txt2img(prompt="a", steps=1, seed=1, width=64, height=96, enable_hr=True, hr_resize_x=125,
                           hr_resize_y=125, hr_upscaler=upscaler, denoising_strength=0.5)
    (first, x1, _), (hires, x2, _) = CALLS[0]["at_sample"]
    assert (first, x1, hires, x2) == (False, (1, 4, 12, 8), True, (1, 4, 16, 15))
    assert result.processed.images[0].size == (120, 128)
    assert result.p.extra_generation_params["Hires resize"] == "125x125"


def test_first_pass_size_not_a_multiple_of_8(webui):  # noqa: F811
    CALLS.clear()
    webui.set_model(unet("sd15"), "sd15")
    webui.load_extension(extra_script_classes=[Probe])
    result = webui.txt2img(prompt="a", steps=1, seed=1, width=68, height=60, enable_hr=True, hr_scale=1.5)
    # latents floor(68/8) x floor(60/8) = 8x7; hires int(68*1.5)=102 x 90 -> 12x11 latents
    (_, x1, _), (_, x2, _) = CALLS[0]["at_sample"]
    assert x1 == (1, 4, 7, 8) and x2 == (1, 4, 11, 12)
    assert (result.p.hr_upscale_to_x, result.p.hr_upscale_to_y) == (102, 90)
    assert result.processed.images[0].size == (96, 88)
