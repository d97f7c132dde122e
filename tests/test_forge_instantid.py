"""The extension end to end through the Forge stand-in (tests/forge): Forge-native injection, rows in every layout,
every job kind, neighbours (other ControlNets, Forge's built-in InstantID, LoRA), memory, errors, API and infotext.
The Forge stand-in runs in its own process:

    .venv-forge/bin/python -m pytest -q tests/test_forge*.py
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures import tiny_models as tm
from tests.fixtures.fake_hub import hub, panel_hub, published  # noqa: F401  (fixtures)
from tests.forge_jobs import (  # noqa: F401  (fixtures)
    EXTENSION_SCRIPT, api_job, b64, decode, face, forge, generate, models_root, photo, pixels, positional, ui, unets,
)

pytestmark = [pytest.mark.filterwarnings(r"ignore:\s*on_event is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Please use `import python_multipart`:PendingDeprecationWarning")]


def on(face, **values) -> list:
    return positional(enabled=True, face_image=[face], **values)


class Spy:
    """Records what InstantID's Forge glue decided per UNet call: the row kinds it read, and each IdentityNet run."""

    def __init__(self, monkeypatch):
        from lib_instantid.hosts import forge as host
        from lib_instantid.session import Session

        self.kinds: list[list[int]] = []
        self.identitynet_steps: list[int] = []
        info, residuals = host.RowSource.info, Session.identitynet_residuals

        def spy_info(source, chunks, rows):
            result = info(source, chunks, rows)
            self.kinds.append(list(result.row_kinds))
            return result

        def spy_residuals(session, x, timesteps, rows, y, acting):
            self.identitynet_steps.append(self.step())
            return residuals(session, x, timesteps, rows, y, acting)

        monkeypatch.setattr(host.RowSource, "info", spy_info)
        monkeypatch.setattr(Session, "identitynet_residuals", spy_residuals)
        self.host = host

    def step(self) -> int:
        return self.host.ACTIVE.run.rows.step


def expected_kinds(call) -> list[int]:
    from lib_instantid.conditioning import COND, UNCOND

    return [UNCOND if mark == 1 else COND for mark in call.cond_mark.tolist()]


# --- the image ----------------------------------------------------------------------------------------------------

def test_instantid_changes_the_image_and_off_is_untouched(ui, face):
    never = pixels(generate(ui))
    result = generate(ui, instantid=on(face))
    assert not ui.reported(), ui.reported()
    assert np.abs(pixels(result) - never).max() > 10
    assert np.array_equal(pixels(generate(ui)), never)  # disabled after enabled: as if never enabled
    assert np.array_equal(pixels(generate(ui, instantid=positional(enabled=False, face_image=[face]))), never)
    assert "InstantID similarity: " in result.processed.infotexts[0]  # the identity score, as on A1111
    unet = result.p.sd_model.forge_objects_after_applying_lora.unet  # what the next job starts from
    assert unet.controlnet_linked_list is None and not unet.model_options["transformer_options"].get("patches_replace")


def test_zero_weights_are_bit_identical_to_disabled(ui, face):
    never = pixels(generate(ui))
    zero = generate(ui, instantid=on(face, identitynet_weight=0.0, adapter_weight=0.0))
    assert np.array_equal(pixels(zero), never)


def test_each_path_alone_changes_the_image(ui, face):
    never = pixels(generate(ui))
    for weights in ({"identitynet_weight": 0.0}, {"adapter_weight": 0.0}):
        assert np.abs(pixels(generate(ui, instantid=on(face, **weights))) - never).max() > 3, weights


def test_a_repeated_job_gives_the_identical_image(ui, face):
    """A second identical job (cached tokens, K/V and models) gives the identical image."""
    first = pixels(generate(ui, instantid=on(face)))
    assert np.array_equal(pixels(generate(ui, instantid=on(face))), first)


# --- Forge-native injection -----------------------------------------------------------------------------------------

def test_every_cross_attention_layer_gets_a_replace_patch_in_the_published_order(ui, face):
    from lib_instantid.hosts.forge import FaceAttentionPatch, attn2_keys
    from lib_instantid.unet_hooks import cross_attention_layers

    with ui.record_unet() as calls:
        generate(ui, instantid=on(face), steps=1)
    options = calls.calls[0].transformer_options
    patches = options["patches_replace"]["attn2"]
    unet = calls.model.forge_objects_original.unet.model.diffusion_model
    keys = attn2_keys(unet)
    assert list(patches) == keys and len(keys) == len(cross_attention_layers(unet))
    assert [patches[key].index for key in keys] == list(range(len(keys)))
    assert all(isinstance(p, FaceAttentionPatch) for p in patches.values())
    # the key of each layer is where Forge calls it: the layer's own block and transformer index
    for key, attn in zip(keys, cross_attention_layers(unet)):
        part, number, index = key
        blocks = {"input": unet.input_blocks, "output": unet.output_blocks, "middle": [unet.middle_block]}[part]
        transformers = [m for m in blocks[number] if hasattr(m, "transformer_blocks")]
        assert transformers[0].transformer_blocks[index].attn2 is attn


def test_a_patch_already_there_is_chained_not_replaced(ui, face):
    from lib_instantid.hosts.forge import attn2_keys

    seen = []

    def existing(q, k, v, extra_options):  # e.g. Forge's built-in IP-Adapter
        seen.append(extra_options["block"])
        from backend.attention import attention_function
        return attention_function(q, k, v, extra_options["n_heads"])

    from modules import scripts

    class NeighbourScript(scripts.Script):
        def title(self):
            return "Neighbour"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def process_before_every_sampling(self, p, *args, **kwargs):
            unet = p.sd_model.forge_objects.unet.clone()
            for block, number, index in attn2_keys(unet.model.diffusion_model)[:2]:
                unet.set_model_attn2_replace(existing, block, number)  # a 2-tuple key, as the built-in's SD1.5 ones
            p.sd_model.forge_objects.unet = unet

    ui.reload_scripts(EXTENSION_SCRIPT, builtin_classes=[NeighbourScript])
    with ui.record_unet() as calls:
        generate(ui, instantid=on(face), steps=1)
    patches = calls.calls[0].transformer_options["patches_replace"]["attn2"]
    first = attn2_keys(calls.model.forge_objects_original.unet.model.diffusion_model)[0]
    assert patches[first].previous is existing and seen  # ours ran it, then added the face term


def test_rows_follow_forge_per_call_information_in_every_layout(ui, face, monkeypatch):
    from backend import memory_management
    spy = Spy(monkeypatch)
    layouts = {
        "cfg": dict(cfg_scale=5.0),
        "cfg 1": dict(cfg_scale=1.0),
        "batch 2": dict(batch_size=2),
        "hires, hr_cfg 1": dict(enable_hr=True, hr_cfg=1.0, hr_scale=1.5),
    }
    for name, job in layouts.items():
        spy.kinds.clear()
        with ui.record_unet() as calls:
            generate(ui, instantid=on(face), steps=2, **job)
        assert spy.kinds == [expected_kinds(c) for c in calls.calls], name
    from lib_instantid.conditioning import COND

    hires = [kinds for call, kinds in zip(calls.calls, spy.kinds) if call.x_shape[-1] > 8]
    assert hires and all(set(kinds) == {COND} for kinds in hires)  # hr_cfg 1: the hires pass has no uncond rows
    # memory pressure splits uncond and cond into calls of their own
    spy.kinds.clear()
    memory_management.set_total_vram(memory_management.loaded_bytes() + 1)
    with ui.record_unet() as calls:
        generate(ui, instantid=on(face), steps=1)
    assert len(calls.calls) == 2 and spy.kinds == [expected_kinds(c) for c in calls.calls]


def test_skip_early_cfg_calls_have_cond_rows_only(ui, face, monkeypatch):
    spy = Spy(monkeypatch)
    with ui.options(skip_early_cond=0.5), ui.record_unet() as calls:
        generate(ui, instantid=on(face), steps=4)
    assert [c.cond_or_uncond for c in calls.calls][:2] == [[0], [0]]
    assert spy.kinds == [expected_kinds(c) for c in calls.calls]


@pytest.mark.parametrize("start, end, acting", [(0.0, 1.0, [0, 1, 2, 3]), (0.0, 0.5, [0, 1]), (0.5, 1.0, [2, 3])])
def test_windows_are_fractions_of_the_steps_as_on_a1111(ui, face, monkeypatch, start, end, acting):
    spy = Spy(monkeypatch)
    generate(ui, instantid=on(face, identitynet_start=start, identitynet_end=end), steps=4)
    assert spy.identitynet_steps == acting


def test_hires_fix_redraws_the_keypoints_at_the_hires_size(ui, face, monkeypatch):
    from lib_instantid.conditioning import HintFeatures

    drawn = []
    original = HintFeatures.image

    def image(hint, width, height, index=0):
        drawn.append((width, height))
        return original(hint, width, height, index)

    monkeypatch.setattr(HintFeatures, "image", image)
    result = generate(ui, instantid=on(face), enable_hr=True, hr_scale=2.0, steps=2)
    assert sorted(set(drawn)) == [(64, 64), (128, 128)]
    assert not ui.reported() and "InstantID" in result.processed.infotexts[0]


# --- job kinds ----------------------------------------------------------------------------------------------------

def test_img2img_and_inpaint_only_masked(ui, face):
    init = photo(centre=(32, 30), side=14, size=(64, 64))
    never = pixels(generate(ui, img2img=True, init_images=[init], denoising_strength=0.6))
    result = generate(ui, img2img=True, instantid=on(face), init_images=[init], denoising_strength=0.6)
    assert np.abs(pixels(result) - never).max() > 3
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    inpaint = generate(ui, img2img=True, instantid=on(face), init_images=[init], mask=mask, denoising_strength=0.6,
                       inpaint_full_res=True, inpaint_full_res_padding=8)
    assert not ui.reported(), ui.reported()
    assert "InstantID" in inpaint.processed.infotexts[0]


def test_batch_size_and_count(ui, face):
    never = generate(ui, batch_size=2, n_iter=2)
    result = generate(ui, instantid=on(face), batch_size=2, n_iter=2)
    assert len(result.processed.images) == len(never.processed.images)
    for i in range(4):
        assert np.abs(pixels(result, i) - pixels(never, i)).max() > 3, i


def test_lora_patched_weights_and_instantid_together(ui, face):
    from modules import shared

    name = "diffusion_model.out.2.weight"
    weight = dict(shared.sd_model.forge_objects_original.unet.model.named_parameters())[name]
    ui.add_lora("style", {name: torch.full_like(weight, 0.05)})
    lora_only = pixels(generate(ui, prompt="a portrait <lora:style:1>"))
    both = generate(ui, instantid=on(face), prompt="a portrait <lora:style:1>")
    assert np.abs(pixels(both) - lora_only).max() > 3 and "Lora hashes" in both.processed.infotexts[0]


# --- neighbours -----------------------------------------------------------------------------------------------------

def _with_controlnet(ui):
    from tests.forge import controlnet_like

    ui.reload_scripts(EXTENSION_SCRIPT, builtin_classes=[controlnet_like.ControlNetLikeScript])


def test_another_controlnet_is_bit_identical_with_instantid_at_weight_zero_and_keeps_its_text(ui, face):
    _with_controlnet(ui)
    other = ui.tiny_controlnet(seed=1)
    units = [{"kind": "plain", "cnet": other, "hint": torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))}]
    job = dict(prompt="a cat", negative_prompt="ugly", steps=2, seed=1, width=64, height=64)
    plain = pixels(ui.txt2img(script_args={"ControlNet": [units]}, **job))
    zero = ui.txt2img(script_args={"ControlNet": [units],
                                   "InstantID": on(face, identitynet_weight=0.0, adapter_weight=0.0)}, **job)
    assert np.array_equal(pixels(zero), plain)
    other.control_model.seen.clear()
    active = ui.txt2img(script_args={"ControlNet": [units], "InstantID": on(face)}, **job)
    assert np.abs(pixels(active) - plain).max() > 3
    model = active.p.sd_model
    assert other.control_model.seen and all(
        model.describe_context(context) == ["ugly", "a cat"] for context, _ in other.control_model.seen)


def test_forges_builtin_instantid_units_at_the_same_time(ui, face):
    _with_controlnet(ui)
    from modules import shared

    model = shared.sd_model
    builtin = ui.tiny_controlnet(seed=2)
    g = torch.Generator().manual_seed(0)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    tokens_c, tokens_u = (torch.randn(1, 16, model.context_dim, generator=g) for _ in range(2))
    units = [{"kind": "instantid", "cnet": builtin, "hint": hint, "tokens_cond": tokens_c, "tokens_uncond": tokens_u}]
    job = dict(prompt="a cat", negative_prompt="ugly", steps=2, seed=1, width=64, height=64)
    builtin_only = pixels(ui.txt2img(script_args={"ControlNet": [units]}, **job))
    both = ui.txt2img(script_args={"ControlNet": [units], "InstantID": on(face)}, **job)
    assert not ui.reported(), ui.reported()
    assert np.abs(pixels(both) - builtin_only).max() > 3


# --- memory and dtypes --------------------------------------------------------------------------------------------

def test_models_move_with_the_unet_and_the_adapter_stays_on_the_cpu(ui, face):
    from backend import memory_management
    from lib_instantid.pipeline import MODEL_CACHE

    memory_management.events.clear()
    generate(ui, instantid=on(face))
    loaded = {type(module).__name__ for action, module, device in memory_management.events
              if action == "load" and device == memory_management.get_torch_device()}
    assert "IdentityNet" in loaded
    adapters = [m for m, _ in MODEL_CACHE._entries.values() if type(m).__name__ == "FaceAdapter"]
    assert adapters and all(p.device.type == "cpu" and p.device.index is None for p in adapters[0].parameters())


def test_nothing_heavy_is_deep_copied_with_each_clone(ui, face):
    with ui.record_unet() as calls:
        generate(ui, instantid=on(face), steps=1)
    ours = calls.calls[0].transformer_options["patches_replace"]["attn2"]
    copied = copy.deepcopy(ours)  # what UnetPatcher.clone does to model_options
    assert all(copied[key] is patch for key, patch in ours.items())


def test_a_checkpoint_change_unloads_the_identitynet_from_the_gpu(ui, face, unets):
    from backend import memory_management

    generate(ui, instantid=on(face))
    assert any(type(m.model.model).__name__ == "IdentityNet" for m in memory_management.current_loaded_models)
    ui.set_model(unets["sd15"], "sd15")
    assert not any(type(m.model.model).__name__ == "IdentityNet" for m in memory_management.current_loaded_models)


def test_sd15_checkpoint_uses_its_own_models(ui, face, unets):
    ui.set_model(unets["sd15"], "sd15")
    result = generate(ui, instantid=on(face))
    assert "ControlNet/ip-adapter_instant_id_sd15.bin" in result.processed.infotexts[0]


# --- errors reach the user ----------------------------------------------------------------------------------------

def test_no_face_stops_the_panel_job_with_the_message(ui):
    blank = Image.new("RGB", (128, 128), (90, 90, 90))
    with pytest.raises(Exception, match="No face found in the face image"):
        generate(ui, instantid=positional(enabled=True, face_image=[blank]))


def test_api_errors_are_4xx_with_the_message_and_the_server_keeps_serving(ui):
    client = ui.api_client()
    blank = Image.new("RGB", (128, 128), (90, 90, 90))
    response = api_job(client, [{"enabled": True, "face_image": b64(blank)}])
    assert response.status_code == 422 and "No face found in the face image" in response.json()["detail"]
    bad = api_job(client, [{"enabled": True, "face_image": b64(photo()), "adapter_weight": 7}])
    assert bad.status_code == 422 and "adapter_weight" in bad.json()["detail"]
    assert api_job(client, [{"enabled": True, "face_image": b64(photo())}]).status_code == 200


def test_a_model_that_does_not_fit_is_refused(ui, face):
    with pytest.raises(Exception, match="face adapter is made for .* but the loaded checkpoint"):
        generate(ui, instantid=on(face, adapter_model="ControlNet/ip-adapter_instant_id_sd15.bin"))


# --- API, infotext, routes ----------------------------------------------------------------------------------------

def test_api_named_dict_and_positional_args_give_the_same_image_as_the_panel(ui, face):
    client = ui.api_client()
    named = api_job(client, [{"enabled": True, "face_image": b64(photo()), "adapter_weight": 0.7}])
    assert named.status_code == 200, named.text
    listed = api_job(client, positional(enabled=True, face_image=[b64(photo())], adapter_weight=0.7))
    assert np.array_equal(decode(named), decode(listed))
    panel = generate(ui, instantid=on(face, adapter_weight=0.7), sampler_name="Euler")
    assert np.array_equal(decode(named), pixels(panel))
    assert "Adapter weight: 0.7" in named.json()["info"]


def test_infotext_is_written_and_pasted_back_without_turning_instantid_on(ui, face):
    from modules import infotext_utils

    result = generate(ui, instantid=on(face, adapter_weight=0.6))
    infotext = result.processed.infotexts[0]
    params = infotext_utils.parse_generation_parameters(infotext)
    assert params["InstantID Adapter weight"] in ("0.6", 0.6)
    assert "InstantID Enabled" not in params or params["InstantID Enabled"] in (False, "False")


def test_the_scores_show_under_the_panel_after_a_generation(ui, face):
    import re

    from modules import ui as built

    from tests.jobs_common import block_by_id, event_handlers

    (handler, outputs), = event_handlers(built.demo, block_by_id(built.demo, "generation_info_txt2img"))
    assert outputs == [block_by_id(built.demo, "script_txt2img_instantid_scores")._id]
    processed = generate(ui, instantid=on(face)).processed
    (recorded,) = re.findall(r"InstantID similarity: ([^,]+)", processed.infotexts[0])
    shown = handler(processed.js())
    assert shown["visible"] is True and f"Identity score: **{recorded}**" in shown["value"]
    assert handler(generate(ui).processed.js())["visible"] is False
    batch = generate(ui, instantid=on(face), batch_size=2).processed
    texts = batch.infotexts
    assert batch.index_of_first_image == 1 and "InstantID similarity" not in texts[0]  # the grid: no score
    assert all("InstantID similarity: " in text for text in texts[1:])


def test_a_face_photo_is_removed_by_choosing_its_thumbnail_on_gradio_4(ui, face, tmp_path):
    from modules import ui as built

    from tests.jobs_common import check_photo_removal

    second = tmp_path / "second.png"
    Image.new("RGB", (64, 64), "gray").save(second)
    check_photo_removal(built.demo, [str(face), str(second)])


def test_each_paths_start_and_end_act_as_one_range_on_gradio_4(ui):
    from modules import ui as built

    from tests.jobs_common import check_ranges_kept

    check_ranges_kept(built.demo)


def test_each_panel_field_keeps_its_own_ui_default_on_forge(ui):
    from modules import ui as built

    from tests.jobs_common import check_ui_default_keys_unique

    check_ui_default_keys_unique(built.demo)


def test_the_panel_paints_the_mask_with_a_brush_on_gradio_4(ui, face, tmp_path):
    """Forge's gradio 4 has no gradio-3 sketch canvas: the brush is an ImageEditor, whose layers hold the strokes."""
    from dataclasses import fields

    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    from lib_instantid.args import InstantIDArgs

    names = [f.name for f in fields(InstantIDArgs)]
    painter = ui.runner().script("InstantID").controls[names.index("face_region_mask")]
    assert isinstance(painter, gr.ImageEditor)
    strokes = np.zeros((512, 512, 4), np.uint8)
    strokes[:, :256] = (255, 255, 255, 255)  # the left half painted, transparent elsewhere
    Image.fromarray(strokes).save(tmp_path / "layer.png")
    Image.new("RGB", (512, 512), "white").save(tmp_path / "background.png")  # the canvas itself: not the mask
    mask = painter.preprocess(EditorData(background=FileData(path=str(tmp_path / "background.png")),
                                         layers=[FileData(path=str(tmp_path / "layer.png"))]))
    painted = np.asarray(mask)
    assert mask.mode == "L" and painted[:, :256].min() == 255 and painted[:, 256:].max() == 0
    assert painter.preprocess(EditorData(background=FileData(path=str(tmp_path / "background.png")))) is None
    everywhere = pixels(generate(ui, instantid=on(face)))
    left = generate(ui, instantid=on(face, face_region="mask", face_region_mask=mask))
    assert "Face region: mask" in left.processed.infotexts[0]
    assert not np.array_equal(pixels(left), everywhere)


def test_models_route_answers(ui):
    body = ui.api_client().get("/instantid/models").json()
    names = {(m["name"], m["kind"], m["context_dim"]) for m in body["models"]}
    assert ("instantid/ip-adapter.bin", "adapter", tm.CONTEXT_DIM["sdxl"]) in names
    assert body["antelopev2"]["found"] is True


def test_xyz_axes_on_forge(ui, face):
    """Forge ships A1111's X/Y/Z plot unchanged: the A1111 stand-in's copy of it, loaded into Forge."""
    from pathlib import Path

    from modules import scripts

    xyz_grid = Path(__file__).parent / "webui" / "scripts" / "xyz_grid.py"
    ui.reload_scripts(str(xyz_grid), EXTENSION_SCRIPT)
    xyz = next(d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py")
    labels = {axis.label: axis for axis in xyz.axis_options}
    assert {f"[InstantID] {label}" for label in ("IdentityNet weight", "Adapter weight", "IdentityNet end",
                                                 "Adapter end")} <= set(labels)
    p = ui.make_txt2img(script_args={"InstantID": on(face)}, prompt="a", steps=2, seed=1, width=64, height=64)
    labels["[InstantID] Adapter weight"].apply(p, 0.3, [0.3])
    assert "Adapter weight: 0.3" in ui.run(p).infotexts[0]


def test_the_compute_dtype_is_the_hosts(ui, face):
    """Forge computes in a dtype of its own (storage may be fp16, bf16, fp8 or quantised): the face tokens and the
    IdentityNet are made in the UNet's computation dtype. (Prepared only: the stand-in's sgm layers run in fp32.)"""
    from lib_instantid.hosts import forge as host

    p = ui.make_txt2img(script_args={"InstantID": on(face)}, prompt="a", steps=2, seed=1, width=64, height=64)
    p.sd_model.forge_objects.unet.model.computation_dtype = torch.bfloat16
    try:
        run = host.ForgeRun(p)
        run.prepare(tuple(on(face)))
        assert run.error is None, run.error
        (_, job, _), = run.parts.values()
        assert job.tokens[0].both.dtype == torch.bfloat16
        assert next(job.identitynet.parameters()).dtype == torch.bfloat16
    finally:
        p.sd_model.forge_objects.unet.model.computation_dtype = torch.float32


def _hires_checkpoint(ui, unet):
    """A built-in script that loads another checkpoint for the hires pass, as Forge's Hires checkpoint does."""
    from modules import scripts

    class HiresCheckpoint(scripts.Script):
        def title(self):
            return "Hires checkpoint"

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def before_hr(self, p, *args):
            ui.set_model(unet, "sdxl", name="tiny-sdxl-hires.safetensors")

    ui.reload_scripts(EXTENSION_SCRIPT, builtin_classes=[HiresCheckpoint])


def patched_unets(monkeypatch) -> list:
    """The (tiny) UNet of every UNet patcher InstantID patches."""
    from lib_instantid.hosts import forge as host

    unets, patched = [], host.patched

    def recording(unet_patcher, *args):
        unets.append(unet_patcher.model.diffusion_model.source_unet)
        return patched(unet_patcher, *args)

    monkeypatch.setattr(host, "patched", recording)
    return unets


def test_a_hires_checkpoint_that_fits_gets_instantid_too(ui, face, monkeypatch):
    from modules import shared

    first_unet, hires_unet = shared.sd_model.unet, tm.tiny_unet("sdxl", seed=5)
    _hires_checkpoint(ui, hires_unet)
    patched = patched_unets(monkeypatch)
    result = generate(ui, instantid=on(face), enable_hr=True, hr_scale=2.0, steps=2)
    assert not ui.reported(), ui.reported()
    assert result.p.sd_model.unet is hires_unet
    assert patched[0] is first_unet and patched[-1] is hires_unet
    assert "without InstantID" not in result.processed.infotexts[0]


def test_a_hires_checkpoint_without_fitting_models_runs_plain_and_the_infotext_says_so(ui, face, monkeypatch):
    from lib_instantid.errors import ModelError
    from lib_instantid.hosts import forge as host

    hires_unet = tm.tiny_unet("sdxl", seed=5)
    _hires_checkpoint(ui, hires_unet)
    job_for = host.ForgeRun._job_for

    def no_models_for_the_hires_unet(run, model):
        if model.diffusion_model.source_unet is hires_unet:
            raise ModelError("no installed face adapter fits")
        return job_for(run, model)

    monkeypatch.setattr(host.ForgeRun, "_job_for", no_models_for_the_hires_unet)
    patched = patched_unets(monkeypatch)
    from modules import shared

    first_unet = shared.sd_model.unet
    result = generate(ui, instantid=on(face), enable_hr=True, hr_scale=2.0, steps=2)
    assert not ui.reported(), ui.reported()
    assert "Hires checkpoint: without InstantID (no fitting models)" in result.processed.infotexts[0]
    assert patched and all(unet is first_unet for unet in patched)  # never the hires checkpoint's


def test_a_failure_while_patching_stops_the_job_with_its_message(ui, face, monkeypatch):
    from lib_instantid.errors import ModelError
    from lib_instantid.hosts import forge as host

    def failing(*args):
        raise ModelError("the patch could not be made")

    monkeypatch.setattr(host, "patched", failing)
    with pytest.raises(Exception, match="the patch could not be made"):
        generate(ui, instantid=on(face))
    assert not ui.reported()


def test_the_identitynet_leaves_the_gpu_under_memory_pressure(ui, face):
    from backend import memory_management

    generate(ui, instantid=on(face))
    assert any(type(m.model.model).__name__ == "IdentityNet" for m in memory_management.current_loaded_models)
    from modules import shared

    unet_bytes = memory_management.module_size(shared.sd_model.forge_objects.unet.model)
    memory_management.set_total_vram(unet_bytes + memory_management.minimum_inference_memory())
    generate(ui)
    assert not any(type(m.model.model).__name__ == "IdentityNet" for m in memory_management.current_loaded_models)


def test_the_panel_offers_what_is_missing_and_downloads_it_on_forge(forge, unets, tmp_path, panel_hub, monkeypatch):
    from modules import shared

    monkeypatch.setattr(shared, "models_path", str(tmp_path))
    forge.set_model(unets["sdxl"], "sdxl")
    forge.load_extension(EXTENSION_SCRIPT)
    script = forge.runner().script("InstantID")
    download_missing = type(script).ui.__globals__["download_missing"]
    reports = []
    identitynet, adapter, notice, button = download_missing(lambda fraction, desc=None: reports.append(fraction))
    assert reports[-1] == 1.0 and notice["visible"] is False and button["visible"] is False
    assert any(c.startswith("instantid/ip-adapter.bin") for c in adapter["choices"])
    assert "InstantID:" in generate(forge, instantid=positional(enabled=True, face_image=[photo()])).processed.infotexts[0]
    from lib_instantid.hosts import forge as forge_host

    forge_host.release_models()
