"""Self-tests of the Forge stand-in (tests/forge). They run in their own pytest process in the Forge environment:

    .venv-forge/bin/python -m pytest -q tests/test_forge_standin.py

In any other session the `forge` fixture skips them (see tests/forge/pytest_support.py). Nothing here imports `modules` or
`backend` at module level: the stand-in is installed by the fixture only.
"""
from __future__ import annotations

import types
import warnings

import pytest
import torch

from tests.forge.pytest_support import forge  # noqa: F401

KINDS = ("sdxl", "sd15")
# gradio 4.40 / fastapi 0.104 deprecation notices on every gr.Blocks (third-party noise)
pytestmark = [pytest.mark.filterwarnings(r"ignore:\s*on_event is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Please use `import python_multipart`:PendingDeprecationWarning")]


def _probe_class(name="Probe", fail_in=(), patch=None):
    """An AlwaysVisible script recording its hooks; `fail_in` hooks raise; `patch(p, unet)` runs on a clone in
    process_before_every_sampling."""
    from modules import scripts

    class Probe(scripts.Script):
        log = []

        def title(self):
            return name

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            import gradio as gr
            from modules.ui_components import InputAccordion
            with InputAccordion(False, label=name) as enabled:
                weight = gr.Slider(0, 1, value=0.5, label=f"{name} weight")
            return [enabled, weight]

        def _hook(self, hook, p, *args, **kwargs):
            type(self).log.append(types.SimpleNamespace(hook=hook, args=args, kwargs=kwargs, is_hr=p.is_hr_pass,
                                                        unet=p.sd_model.forge_objects.unet))
            if hook in fail_in:
                raise RuntimeError(f"{name} fails in {hook}")

        def process(self, p, *args):
            self._hook("process", p, *args)

        def process_batch(self, p, *args, **kwargs):
            self._hook("process_batch", p, *args, **kwargs)

        def before_hr(self, p, *args):
            self._hook("before_hr", p, *args)

        def process_before_every_sampling(self, p, *args, **kwargs):
            self._hook("process_before_every_sampling", p, *args, **kwargs)
            if patch is not None:
                unet = p.sd_model.forge_objects.unet.clone()
                patch(p, unet)
                p.sd_model.forge_objects.unet = unet

        def postprocess(self, p, processed, *args):
            self._hook("postprocess", p, *args)

    Probe.log = []
    return Probe


def _hooks(probe, name="process_before_every_sampling"):
    return [entry for entry in probe.log if entry.hook == name]


def _model(forge, kind="sdxl"):
    return forge.set_model(forge.tiny_unet(kind), kind)


def _inputs(kind, rows=2, size=8, seed=0):
    from tests.fixtures import tiny_models as tm
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, size, size, generator=g)
    t = torch.tensor([700.0, 30.0] * (rows // 2))
    context = torch.randn(rows, 77, tm.CONTEXT_DIM[kind], generator=g)
    kwargs = {"y": torch.randn(rows, tm.SDXL_POOLED_DIM + 6 * tm.SDXL_TIME_ID_DIM, generator=g)} if kind == "sdxl" else {}
    return x, t, context, kwargs


def _all_attn2_keys(unet_module):
    """(block, number, index) of every attn2 in call order, by a recording replace patch on every possible key."""
    from backend.attention import attention_function
    seen = []

    def patch(q, k, v, eo):
        seen.append((*eo["block"], eo["block_index"]))
        return attention_function(q, k, v, eo["n_heads"])

    replace = {(b, n, i): patch for b in ("input", "middle", "output") for n in range(12) for i in range(4)}
    return seen, {"patches_replace": {"attn2": replace}}


# --- the UNet forward --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_unet_without_patches_equals_the_plain_tiny_unet_exactly(forge, kind):
    from backend.nn.unet import IntegratedUNet2DConditionModel
    unet = forge.tiny_unet(kind)
    wrapped = IntegratedUNet2DConditionModel(unet)
    x, t, context, kwargs = _inputs(kind)
    with torch.no_grad():
        plain = unet(x, t, context=context, **kwargs)
        to = {}
        ours = wrapped(x, t, context=context, transformer_options=to, **kwargs)
    assert torch.equal(plain, ours)
    assert set(to) == {"original_shape", "transformer_index", "block", "block_index"} and to["block"] == ("last", 0)
    assert not hasattr(wrapped, "dtype")  # as Forge's IntegratedUNet2DConditionModel


@pytest.mark.parametrize("kind", KINDS)
def test_kmodel_apply_model_is_eps_prediction_through_the_same_unet(forge, kind):
    model = _model(forge, kind)
    kmodel = model.forge_objects.unet.model
    x, _, context, kwargs = _inputs(kind)
    sigma = torch.tensor([5.0, 0.5])
    with torch.no_grad():
        denoised = kmodel.apply_model(x, sigma, c_crossattn=context, transformer_options={}, **kwargs)
        t = kmodel.predictor.timestep(sigma).float()
        eps = model.unet(x / (sigma[:, None, None, None] ** 2 + 1) ** 0.5, t, context=context, **kwargs)
    assert torch.equal(denoised, x - eps * sigma[:, None, None, None])


def test_attn2_replace_gets_projected_qkv_with_forge_keys_and_extra_options(forge):
    from backend.attention import attention_function
    from backend.nn.unet import IntegratedUNet2DConditionModel
    unet = forge.tiny_unet("sdxl")
    wrapped = IntegratedUNet2DConditionModel(unet)
    x, t, context, kwargs = _inputs("sdxl")
    calls = []

    def patch(q, k, v, eo):
        calls.append(dict(key=(*eo["block"], eo["block_index"]), q=q.shape, k=k.shape, v=v.shape, eo=dict(eo)))
        return attention_function(q, k, v, eo["n_heads"])

    seen, to = _all_attn2_keys(unet)
    with torch.no_grad():
        wrapped(x, t, context=context, transformer_options=to, **kwargs)
    expected = [("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 7, 1), ("input", 8, 0), ("input", 8, 1),
                ("middle", 0, 0), ("middle", 0, 1), ("output", 0, 0), ("output", 0, 1), ("output", 1, 0), ("output", 1, 1),
                ("output", 2, 0), ("output", 2, 1), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0)]
    assert seen == expected
    to = {"patches_replace": {"attn2": {("input", 7, 1): patch, ("middle", 0): patch}}, "cond_or_uncond": [1, 0], "custom": 3}
    with torch.no_grad():
        wrapped(x, t, context=context, transformer_options=to, **kwargs)
    assert [c["key"] for c in calls] == [("input", 7, 1), ("middle", 0, 0), ("middle", 0, 1)]
    first = calls[0]
    assert first["q"] == (2, 4, 128) and first["k"] == (2, 77, 128) and first["v"] == (2, 77, 128)  # 2 heads x 64 at 128 ch
    assert first["eo"]["n_heads"] == 2 and first["eo"]["dim_head"] == 64
    assert set(first["eo"]) >= {"block", "block_index", "transformer_index", "original_shape", "cond_or_uncond", "custom"}
    assert "patches_replace" not in first["eo"] and first["eo"]["original_shape"] == [2, 4, 8, 8]
    assert first["eo"]["transformer_index"] == 2 and calls[1]["eo"]["transformer_index"] == 4  # one per SpatialTransformer


@pytest.mark.parametrize("kind", KINDS)
def test_chained_patches_run_in_forge_order_and_a_pass_through_patch_is_a_no_op(forge, kind):
    from backend.attention import attention_function
    from backend.nn.unet import IntegratedUNet2DConditionModel
    unet = forge.tiny_unet(kind)
    wrapped = IntegratedUNet2DConditionModel(unet)
    x, t, context, kwargs = _inputs(kind)
    order = []

    def attn2_patch(n, ctx, value, eo):
        order.append(("attn2_patch", n.shape[-1] == ctx.shape[-1], value is ctx))  # unprojected: widths differ
        return n, ctx, value

    def two(q, k, v, eo):
        order.append(("two",))
        return attention_function(q, k, v, eo["n_heads"])

    def three(q, k, v, eo):
        order.append(("three",))
        return attention_function(q, k, v, eo["n_heads"])

    def output_patch(n, eo):
        order.append(("output", n.shape[-1]))
        return n

    block = ("input", 4) if kind == "sdxl" else ("input", 1)
    to = {"patches": {"attn2_patch": [attn2_patch], "attn2_output_patch": [output_patch]},
          "patches_replace": {"attn2": {block: two, (*block, 0): three}}}
    with torch.no_grad():
        plain = unet(x, t, context=context, **kwargs)
        patched = wrapped(x, t, context=context, transformer_options=to, **kwargs)
    first = order[:3]
    assert first[0][0] == "attn2_patch" and first[0][2] is True
    assert first[1] == ("three",)  # the 3-tuple key shadows the 2-tuple one
    assert first[2][0] == "output"
    assert ("two",) not in order
    assert torch.allclose(plain, patched, atol=1e-5)


# --- patchers ----------------------------------------------------------------------------------------------------

def test_clone_deep_copies_model_options_but_shares_model_and_controlnet_list(forge):
    model = _model(forge)
    unet = model.forge_objects.unet

    class Keep(torch.nn.Module):
        def __deepcopy__(self, memo):
            return self

    module, kept = torch.nn.Linear(2, 2), Keep()
    unet.set_model_attn2_replace(module, "input", 4, 0)
    unet.set_model_attn2_replace(kept, "middle", 0)
    cnet = forge.tiny_controlnet()
    unet.add_patched_controlnet(cnet)
    clone = unet.clone()
    replace = clone.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert set(replace) == {("input", 4, 0), ("middle", 0)}
    assert replace[("input", 4, 0)] is not module and isinstance(replace[("input", 4, 0)], torch.nn.Linear)
    assert replace[("middle", 0)] is kept
    assert clone.model is unet.model and clone.controlnet_linked_list is cnet
    clone.set_model_attn2_replace(module, "output", 1, 0)
    assert ("output", 1, 0) not in unet.model_options["transformer_options"]["patches_replace"]["attn2"]
    other = forge.tiny_controlnet(seed=1)
    clone.add_patched_controlnet(other)
    assert clone.list_controlnets() == [other, cnet] and unet.list_controlnets() == [cnet] and other.previous_controlnet is cnet


def test_extra_torch_module_default_cast_raises_attribute_error_as_on_forge(forge):
    from backend import memory_management
    model = _model(forge)
    unet = model.forge_objects.unet.clone()
    with pytest.raises(AttributeError):
        unet.add_extra_torch_module_during_sampling(torch.nn.Linear(2, 2))
    patcher = unet.add_extra_torch_module_during_sampling(torch.nn.Linear(2, 2), cast_to_unet_dtype=False)
    assert patcher.load_device == memory_management.gpu and unet.extra_model_patchers_during_sampling == [patcher]


def test_percent_to_sigma_is_the_model_schedule(forge):
    predictor = _model(forge).forge_objects.unet.model.predictor
    assert predictor.percent_to_sigma(0.0) == 999999999.9 and predictor.percent_to_sigma(1.0) == 0.0
    assert predictor.percent_to_sigma(0.5) == pytest.approx(predictor.sigma(torch.tensor(499.5)).item())
    assert predictor.percent_to_sigma(0.2) > predictor.percent_to_sigma(0.8)


# --- jobs: hooks, passes, rows -------------------------------------------------------------------------------------

def test_hook_counts_and_kwargs_for_txt2img_hires_and_img2img(forge):
    from PIL import Image
    _model(forge)
    probe = _probe_class()
    forge.load_extension(extra_classes=[probe])
    forge.txt2img(prompt="a", steps=2, seed=1)
    calls = _hooks(probe)
    assert len(calls) == 1 and sorted(calls[0].kwargs) == ["c", "noise", "uc", "x"] and not calls[0].is_hr
    assert calls[0].args == (False, 0.5) and calls[0].kwargs["x"] is calls[0].kwargs["noise"]

    probe.log.clear()
    forge.txt2img(prompt="a", steps=2, seed=1, enable_hr=True, hr_cfg=1.0)
    calls = _hooks(probe)
    assert [c.is_hr for c in calls] == [False, True, True]
    assert calls[1].kwargs["x"].shape[-1] == 16 and calls[1].kwargs["uc"] is None and calls[2].kwargs["uc"] is None
    hooks = [e.hook for e in probe.log]
    assert hooks.index("before_hr") < next(i for i, e in enumerate(probe.log) if e is calls[1])

    probe.log.clear()
    forge.img2img(prompt="a", steps=2, seed=1, init_images=[Image.new("RGB", (64, 64), "gray")], denoising_strength=0.5)
    calls = _hooks(probe)
    assert len(calls) == 1 and calls[0].kwargs["x"].shape == (1, 4, 8, 8) and calls[0].kwargs["noise"] is not calls[0].kwargs["x"]


def test_forge_objects_reset_before_every_pass_so_patches_never_accumulate(forge):
    from backend.attention import attention_function
    model = _model(forge)

    def patch(p, unet):
        unet.set_model_attn2_replace(lambda q, k, v, eo: attention_function(q, k, v, eo["n_heads"]), "middle", 0, 0)
        unet.set_model_attn2_patch(lambda n, c, v, eo: (n, c, v))

    probe = _probe_class(patch=patch)
    forge.load_extension(extra_classes=[probe])
    with forge.record_unet() as rec:
        forge.txt2img(prompt="a", steps=2, seed=1, enable_hr=True, hr_cfg=3.0, batch_size=1, n_iter=2)
    seen = [entry.unet for entry in _hooks(probe)]
    original = model.forge_objects_after_applying_lora.unet
    # per batch: first pass sees the reset patcher; the first hires call still sees the first pass's patched one
    assert [u is original for u in seen] == [True, False, True] * 2
    assert all(len(call.transformer_options["patches"]["attn2_patch"]) == 1 for call in rec.calls)
    assert all(call.attn2_replace_keys == (("middle", 0, 0),) for call in rec.calls)
    assert "patches" not in original.model_options["transformer_options"]


@pytest.mark.parametrize("kind", KINDS)
def test_rows_are_uncond_then_cond_per_call(forge, kind):
    _model(forge, kind)
    forge.load_extension()
    with forge.record_unet() as rec:
        forge.txt2img(prompt="a cat", negative_prompt="ugly", steps=2, seed=1, batch_size=2)
    assert [c.cond_or_uncond for c in rec.calls] == [[1, 0], [1, 0]]
    call = rec.calls[0]
    assert call.contexts == ("ugly", "ugly", "a cat", "a cat") and call.has_y == (kind == "sdxl")
    assert call.cond_mark.tolist() == [1.0, 1.0, 0.0, 0.0] and call.cond_indices == [2, 3] and call.uncond_indices == [0, 1]
    assert call.sigmas.shape == (2,)

    with forge.record_unet() as rec:
        forge.txt2img(prompt="a cat", negative_prompt="ugly", steps=2, seed=1, cfg_scale=1.0)
    assert [c.cond_or_uncond for c in rec.calls] == [[0], [0]] and rec.calls[0].contexts == ("a cat",)

    with forge.record_unet() as rec:
        forge.txt2img(prompt="a cat AND a dog", negative_prompt="ugly", steps=2, seed=1)
    assert rec.calls[0].cond_or_uncond == [1, 0, 0] and rec.calls[0].contexts == ("ugly", "a dog", "a cat")


def test_hires_pass_has_no_uncond_rows_with_the_default_hr_cfg(forge):
    _model(forge)
    forge.load_extension()
    with forge.record_unet() as rec:
        forge.txt2img(prompt="a", negative_prompt="b", steps=2, seed=1, enable_hr=True, hr_cfg=1.0)
    assert [c.cond_or_uncond for c in rec.calls] == [[1, 0], [1, 0], [0], [0]]
    assert rec.calls[-1].x_shape == (1, 4, 16, 16)


def test_skip_early_cfg_and_memory_pressure_change_the_calls(forge):
    from backend import memory_management
    _model(forge)
    forge.load_extension()
    with forge.record_unet() as rec:
        result = forge.txt2img(prompt="a", negative_prompt="b", steps=3, seed=1, opts={"skip_early_cond": 0.4})
    assert [c.cond_or_uncond for c in rec.calls] == [[0], [0], [1, 0]]
    assert "Skip Early CFG: 0.4" in result.processed.infotexts[0]
    forge.txt2img(prompt="warm up", steps=1)  # models loaded
    one_row = _model_estimate(forge, [1, 4, 8, 8])
    memory_management.set_total_vram(memory_management.loaded_bytes() + int(1.5 * one_row))  # 1 row fits, 2 do not
    with forge.record_unet() as rec:
        forge.txt2img(prompt="a", negative_prompt="b", steps=1, seed=1)
    assert [c.cond_or_uncond for c in rec.calls] == [[1], [0]]


def _model_estimate(forge, shape):
    from modules import shared
    return shared.sd_model.forge_objects.unet.memory_required(shape)


def test_cfg_denoiser_callback_sees_forge_step_numbers(forge):
    from modules import script_callbacks
    _model(forge)
    forge.load_extension()
    steps = []
    script_callbacks.on_cfg_denoiser(lambda params: steps.append((params.sampling_step, params.total_sampling_steps)))
    forge.txt2img(prompt="a", steps=3, seed=1)
    assert steps == [(0, 3), (0, 3), (1, 3)]
    steps.clear()
    forge.txt2img(prompt="a", steps=2, seed=1, sampler_name="Heun")
    assert len(steps) == 3  # second order: 2N-1 denoiser calls


def test_script_exceptions_are_reported_and_generation_continues(forge):
    _model(forge)
    probe = _probe_class(fail_in=("process", "process_before_every_sampling", "postprocess"))
    forge.load_extension(extra_classes=[probe])
    result = forge.txt2img(prompt="a", steps=2, seed=1)
    assert len(result.processed.images) == 1
    messages = [m for m, _ in forge.reported()]
    assert any(m.startswith("Error running process:") for m in messages)
    assert any(m.startswith("Error running process_before_every_sampling:") for m in messages)
    assert any(m.startswith("Error running postprocess:") for m in messages)


def test_process_before_every_sampling_runs_for_every_alwayson_script_in_load_order(forge):
    _model(forge)
    first, second = _probe_class("First"), _probe_class("Second")
    order = []
    first.process_before_every_sampling = lambda self, p, *a, **k: order.append("first")
    second.process_before_every_sampling = lambda self, p, *a, **k: order.append("second")
    forge.load_extension(builtin_classes=[second], extra_classes=[first])
    forge.txt2img(prompt="a", steps=1)
    assert order == ["second", "first"]
    assert forge.runner().script("First").args_from == 3 and forge.runner().script("Second").args_from == 1


# --- ControlNet chain --------------------------------------------------------------------------------------------

def test_controlnet_chain_order_cond_passing_and_residuals(forge):
    from tests.forge import controlnet_like
    model = _model(forge)
    forge.load_extension()
    lower, upper = forge.tiny_controlnet(seed=1), forge.tiny_controlnet(seed=2)
    hint = torch.rand(1, 3, 64, 64)
    order = []
    for name, cnet in (("lower", lower), ("upper", upper)):
        original = cnet.control_model.forward
        cnet.control_model.forward = (lambda orig, n: lambda *a, **k: (order.append(n), orig(*a, **k))[1])(original, name)

    def patch(p, unet):
        unet2 = controlnet_like.apply_plain_unit(unet, lower, hint)
        unet2 = controlnet_like.apply_plain_unit(unet2, upper, hint, strength=0.5)
        p.sd_model.forge_objects.unet = unet2

    probe = _probe_class()
    probe.process_before_every_sampling = lambda self, p, *a, **k: patch(p, p.sd_model.forge_objects.unet.clone())
    forge.load_extension(extra_classes=[probe])
    with forge.record_unet() as rec:
        forge.txt2img(prompt="a cat", negative_prompt="ugly", steps=1, seed=1)
    head = model.forge_objects.unet.controlnet_linked_list
    assert head is not None and head.previous_controlnet is not None
    assert head.previous_controlnet.control_model is lower.control_model and head.strength == 0.5
    assert order == ["lower", "upper"]  # the head calls previous.get_control first
    for cnet in (lower, upper):
        context, y = cnet.control_model.seen[-1]
        assert model.describe_context(context) == ["ugly", "a cat"] and y is not None
    assert rec.calls[0].has_control


def test_controlnet_residuals_land_where_forge_adds_them(forge):
    """'middle' is added to the middle block's output; the LAST 'output' entry (popped first) to the skip tensor that output
    block 0 concatenates -- checked against the plain tiny UNet with the same additions made by hooks."""
    from backend.nn.unet import IntegratedUNet2DConditionModel
    unet = forge.tiny_unet("sdxl")
    wrapped = IntegratedUNet2DConditionModel(unet)
    x, t, context, kwargs = _inputs("sdxl")
    g = torch.Generator().manual_seed(3)
    mid, skip = torch.randn(2, 128, 2, 2, generator=g), torch.randn(2, 128, 2, 2, generator=g)
    n_out = len(wrapped.output_blocks)
    control = {"input": [], "middle": [mid.clone()], "output": [None] * (n_out - 1) + [skip.clone()]}

    def add_mid(module, args, output):
        return output + mid

    def add_skip(module, args):
        h = args[0].clone()
        h[:, -128:] += skip
        return (h,) + args[1:]

    with torch.no_grad():
        ours = wrapped(x, t, context=context, control=control, transformer_options={}, **kwargs)
        hooks = [unet.middle_block.register_forward_hook(add_mid), unet.output_blocks[0].register_forward_pre_hook(add_skip)]
        try:
            reference = unet(x, t, context=context, **kwargs)
        finally:
            for h in hooks:
                h.remove()
    assert torch.allclose(ours, reference, atol=1e-6) and control["middle"] == [] and control["output"] == []


def test_instantid_like_modifier_leaks_face_tokens_into_the_other_controlnet(forge):
    from tests.forge import controlnet_like
    model = _model(forge)
    other, identitynet = forge.tiny_controlnet(seed=1), forge.tiny_controlnet(seed=2)
    hint = torch.rand(1, 3, 64, 64)
    tokens_c, tokens_u = torch.randn(1, 16, model.context_dim), torch.randn(1, 16, model.context_dim)
    units = [{"kind": "plain", "cnet": other, "hint": hint},
             {"kind": "instantid", "cnet": identitynet, "hint": hint, "tokens_cond": tokens_c, "tokens_uncond": tokens_u}]
    forge.load_extension(builtin_classes=[controlnet_like.ControlNetLikeScript])
    forge.txt2img(prompt="a cat", negative_prompt="ugly", steps=1, seed=1, script_args={"ControlNet": [units]})
    context, _ = other.control_model.seen[-1]
    assert context.shape[1] == 16 and torch.equal(context[1], tokens_c[0]) and torch.equal(context[0], tokens_u[0])
    other.control_model.seen.clear()
    forge.txt2img(prompt="a cat", negative_prompt="ugly", steps=1, seed=1, script_args={"ControlNet": [units[:1]]})
    assert model.describe_context(other.control_model.seen[-1][0]) == ["ugly", "a cat"]


def test_controlnet_outside_its_percent_range_is_skipped(forge):
    from tests.forge import controlnet_like
    _model(forge)
    cnet = forge.tiny_controlnet()
    units = [{"kind": "plain", "cnet": cnet, "hint": torch.rand(1, 3, 64, 64), "start": 0.5, "end": 1.0}]
    forge.load_extension(builtin_classes=[controlnet_like.ControlNetLikeScript])
    forge.txt2img(prompt="a", steps=4, seed=1, script_args={"ControlNet": [units]})
    assert 0 < len(cnet.control_model.seen) < 4


# --- memory, LoRA, img2img ---------------------------------------------------------------------------------------

def test_memory_management_loads_unet_and_controlnet_on_the_gpu_device(forge):
    from backend import memory_management
    from tests.forge import controlnet_like
    model = _model(forge)
    cnet = forge.tiny_controlnet()
    forge.load_extension(builtin_classes=[controlnet_like.ControlNetLikeScript])
    forge.txt2img(prompt="a", steps=1, script_args={"ControlNet": [[{"cnet": cnet, "hint": torch.rand(1, 3, 64, 64)}]]})
    unet_module = model.forge_objects.unet.model
    loads = [(module, device) for action, module, device in memory_management.events if action == "load"]
    assert (unet_module, memory_management.gpu) in loads and (cnet.control_model, memory_management.gpu) in loads
    assert memory_management.gpu != memory_management.cpu
    memory_management.set_total_vram(memory_management.module_size(cnet.control_model) // 2)
    memory_management.free_memory(1, memory_management.gpu)
    assert any(action == "unload" and device == memory_management.cpu for action, _, device in memory_management.events)


def test_lora_like_patches_merge_into_the_shared_weights_and_are_restored(forge):
    model = _model(forge)
    forge.load_extension()
    key = "diffusion_model.out.2.bias"
    bias = model.unet.out[2].bias
    before = bias.detach().clone()
    forge.add_lora("shift", {key: torch.ones_like(before)})
    forge.txt2img(prompt="a <lora:shift:0.5>", steps=1)
    assert torch.allclose(bias, before + 0.5)
    assert model.forge_objects_after_applying_lora.unet is not model.forge_objects_original.unet
    forge.txt2img(prompt="a", steps=1)
    assert torch.equal(bias, before)


def test_img2img_only_masked_crops_and_pastes(forge):
    from PIL import Image, ImageDraw
    _model(forge)
    probe = _probe_class()
    forge.load_extension(extra_classes=[probe])
    image = Image.new("RGB", (128, 128), "gray")
    mask = Image.new("L", (128, 128), 0)
    ImageDraw.Draw(mask).rectangle((40, 40, 71, 71), fill=255)
    result = forge.img2img(prompt="a", steps=2, init_images=[image], mask=mask, inpaint_full_res=True,
                           inpaint_full_res_padding=8, mask_blur=0, denoising_strength=0.5)
    p = result.p
    assert p.paste_to == (32, 32, 48, 48) and p.init_latent.shape == (1, 4, 8, 8) and p.mask is not None
    assert result.processed.images[0].size == (128, 128)
    assert "Inpaint area: Only masked" in result.processed.infotexts[0]


# --- UI and API --------------------------------------------------------------------------------------------------

def test_gradio4_shims_and_input_accordion(forge):
    import gradio as gr
    from modules.gradio_extensions import GradioDeprecationWarning
    from modules.ui_components import InputAccordion, ToolButton
    with gr.Blocks():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            image = gr.Image(source="upload", tool="sketch", type="pil")
        assert image.sources == ["upload"]
        assert any(issubclass(w.category, GradioDeprecationWarning) and "tool" in str(w.message) for w in caught)
        button = ToolButton("x")
        button.click(fn=None, _js="() => 1")
        assert gr.Slider.update is gr.update and not hasattr(image, "style")
        with InputAccordion(True, label="Acc") as acc:
            gr.Slider(0, 1, value=0.3)
        assert isinstance(acc, gr.Checkbox) and acc.value is True and acc.accordion.open is True


def test_api_alwayson_scripts_and_errors(forge):
    _model(forge)
    probe = _probe_class()
    forge.load_extension(extra_classes=[probe], build_ui=False)
    client = forge.api_client()
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64,
                                                       "alwayson_scripts": {"Probe": {"args": [True, 0.25]}}})
    assert response.status_code == 200, response.text
    assert _hooks(probe)[-1].args == (True, 0.25) and len(response.json()["images"]) == 1
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "alwayson_scripts": {"Nope": {"args": []}}})
    assert response.status_code == 422 and response.json() == {"detail": "Script 'Nope' not found"}  # FastAPI's own handler
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64, "enable_hr": True})
    assert response.status_code == 500 and response.json()["error"] == "TypeError" and "NoneType" in response.json()["message"]
    response = client.post("/sdapi/v1/txt2img", json={"prompt": "a", "steps": 1, "width": 64, "height": 64, "enable_hr": True,
                                                       "hr_additional_modules": ["Use same choices"]})
    assert response.status_code == 200 and "Hires CFG Scale: 1.0" in response.json()["info"]


def test_infotext_paste_runs_the_callbacks(forge):
    from modules import infotext_utils, script_callbacks
    _model(forge)
    forge.load_extension()
    seen = []
    script_callbacks.on_infotext_pasted(lambda text, params: seen.append(dict(params)))
    result = forge.txt2img(prompt="a, b", steps=1, seed=5)
    params = infotext_utils.parse_generation_parameters(result.processed.infotexts[0])
    assert params["Seed"] == "5" and params["Prompt"] == "a, b" and seen and seen[0]["Steps"] == "1"


def test_install_refuses_next_to_another_modules_package(forge, monkeypatch):
    import sys
    from tests.forge import install
    monkeypatch.setitem(sys.modules, "modules", types.SimpleNamespace(__file__="/elsewhere/modules/__init__.py"))
    with pytest.raises(RuntimeError, match="own process"):
        install()


def test_deepcopy_of_plain_patch_objects_duplicates_tensors(forge):
    """What forge.md §5 warns about, on the stand-in: a patch object holding a tensor is copied by every clone."""
    model = _model(forge)
    unet = model.forge_objects.unet.clone()
    holder = types.SimpleNamespace(weights=torch.zeros(4))
    unet.set_model_attn2_replace(holder, "middle", 0, 0)
    clone = unet.clone()
    copied = clone.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)]
    assert copied is not holder and copied.weights.data_ptr() != holder.weights.data_ptr()
