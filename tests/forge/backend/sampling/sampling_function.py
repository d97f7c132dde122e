"""backend/sampling/sampling_function.py stand-in: how Forge 2 turns one denoiser step into UNet calls.

Modelled (backend/sampling/sampling_function.py:154-399):
  * `sampling_function(denoiser, denoiser_params, cond_scale, cond_composition)` reads the UNet patcher AT CALL TIME from
    `denoiser.inner_model.inner_model.forge_objects.unet`; compiles the text uncond/cond (one cond entry per AND group, weight as
    strength), attaches the patcher's ControlNet head to every entry, runs `conditioning_modifiers`, then
    `sampling_function_inner`: uncond dropped when cond_scale == 1 (unless disable_cfg1_optimization); pre-cfg functions; CFG
    (sampler_cfg_function, edit strength = sum of AND weights); post-cfg functions.
  * `calc_cond_uncond_batch`: to_run = cond entries (0) then uncond (1); the concatenable indices are REVERSED, so one call
    carries [uncond chunk, cond chunk(s) in reverse order]; cond_or_uncond lists the chunk kinds (0 cond, 1 uncond), each chunk
    the whole image batch. If the simulated free memory (memory_management.get_free_memory) is below the model's estimate the
    group is split: first the uncond chunk alone (the stand-in asks the simulated GPU's free memory, its tensors being on the
    CPU). Per call, transformer_options = a shallow copy of model_options'
    transformer_options plus cond_or_uncond, sigmas (one per image), cond_mark (per row, 1.0 = uncond), cond_indices,
    uncond_indices; every ControlNet in the chain gets `.transformer_options` = that dict, and
    `c['control'] = head.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))`; the model function wrapper, if any,
    gets {"input", "timestep", "c", "cond_or_uncond"}.
  * `sampling_prepare(unet, x)`: load_models_gpu([unet] + extra model patchers + the chain's models) -- extending the patcher's
    own extra list in place (Forge's `+=`) -- with the UNet estimate for 2B rows and the chain's inference memory as
    preservation; then every ControlNet's pre_run(model, percent_to_sigma). `sampling_cleanup` calls their cleanup().
Not modelled: area / mask / timestep-range conds, c_concat for inpainting models, online LoRA moves, the low-VRAM warning.
"""
import collections
import math

import torch

from backend import memory_management
from backend.sampling.condition import Condition, compile_conditions, compile_weighted_conditions

COND, UNCOND = 0, 1

cond_obj = collections.namedtuple("cond_obj", ["input_x", "mult", "conditioning", "area", "control", "patches"])


def get_area_and_mult(conds, x_in, timestep_in):
    area = (x_in.shape[2], x_in.shape[3], 0, 0)
    strength = conds.get("strength", 1.0)
    mult = torch.ones_like(x_in) * strength
    conditioning = {name: c.process_cond(batch_size=x_in.shape[0], device=x_in.device, area=area) for name, c in conds["model_conds"].items()}
    return cond_obj(x_in, mult, conditioning, area, conds.get("control"), None)


def cond_equal_size(c1, c2):
    if c1 is c2:
        return True
    if c1.keys() != c2.keys():
        return False
    return all(c1[k].can_concat(c2[k]) for k in c1)


def can_concat_cond(c1, c2):
    if c1.input_x.shape != c2.input_x.shape:
        return False
    if (c1.control is None) != (c2.control is None) or (c1.control is not None and c1.control is not c2.control):
        return False
    if (c1.patches is None) != (c2.patches is None) or (c1.patches is not None and c1.patches is not c2.patches):
        return False
    return cond_equal_size(c1.conditioning, c2.conditioning)


def cond_cat(c_list):
    grouped = {}
    for c in c_list:
        for k, v in c.items():
            grouped.setdefault(k, []).append(v)
    return {k: v[0].concat(v[1:]) for k, v in grouped.items()}


def compute_cond_mark(cond_or_uncond, sigmas):
    per_chunk = int(sigmas.shape[0])
    marks = []
    for kind in cond_or_uncond:
        marks += [kind] * per_chunk
    return torch.Tensor(marks).to(sigmas)


def compute_cond_indices(cond_or_uncond, sigmas):
    per_chunk = int(sigmas.shape[0])
    cond_indices, uncond_indices = [], []
    for i, kind in enumerate(cond_or_uncond):
        (cond_indices if kind == COND else uncond_indices).extend(range(i * per_chunk, (i + 1) * per_chunk))
    return cond_indices, uncond_indices


def calc_cond_uncond_batch(model, cond, uncond, x_in, timestep, model_options):
    out_cond, out_count = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    out_uncond, out_uncond_count = torch.zeros_like(x_in), torch.ones_like(x_in) * 1e-37
    to_run = [(get_area_and_mult(x, x_in, timestep), COND) for x in cond]
    if uncond is not None:
        to_run += [(get_area_and_mult(x, x_in, timestep), UNCOND) for x in uncond]

    while to_run:
        first = to_run[0]
        first_shape = first[0].input_x.shape
        to_batch_temp = [i for i in range(len(to_run)) if can_concat_cond(to_run[i][0], first[0])]
        to_batch_temp.reverse()
        to_batch = to_batch_temp[:1]
        # Forge asks x_in.device (cuda:0); the stand-in's tensors live on the plain CPU, so it asks the simulated GPU
        free_memory = memory_management.get_free_memory(memory_management.get_torch_device())
        for i in range(1, len(to_batch_temp) + 1):
            batch_amount = to_batch_temp[:len(to_batch_temp) // i]
            input_shape = [len(batch_amount) * first_shape[0]] + list(first_shape)[1:]
            if model.memory_required(input_shape) < free_memory:
                to_batch = batch_amount
                break

        input_x, mult, c, cond_or_uncond, area = [], [], [], [], []
        control = None
        for index in to_batch:
            entry, kind = to_run.pop(index)
            input_x.append(entry.input_x)
            mult.append(entry.mult)
            c.append(entry.conditioning)
            area.append(entry.area)
            cond_or_uncond.append(kind)
            control = entry.control

        batch_chunks = len(cond_or_uncond)
        input_x = torch.cat(input_x)
        c = cond_cat(c)
        timestep_ = torch.cat([timestep] * batch_chunks)

        transformer_options = model_options["transformer_options"].copy() if "transformer_options" in model_options else {}
        transformer_options["cond_or_uncond"] = cond_or_uncond[:]
        transformer_options["sigmas"] = timestep
        transformer_options["cond_mark"] = compute_cond_mark(cond_or_uncond, timestep)
        transformer_options["cond_indices"], transformer_options["uncond_indices"] = compute_cond_indices(cond_or_uncond, timestep)
        c["transformer_options"] = transformer_options

        if control is not None:
            pointer = control
            while pointer is not None:
                pointer.transformer_options = transformer_options
                pointer = pointer.previous_controlnet
            c["control"] = control.get_control(input_x, timestep_, c.copy(), len(cond_or_uncond))
            c["control_model"] = control

        if "model_function_wrapper" in model_options:
            output = model_options["model_function_wrapper"](model.apply_model, {"input": input_x, "timestep": timestep_, "c": c,
                                                                                 "cond_or_uncond": cond_or_uncond}).chunk(batch_chunks)
        else:
            output = model.apply_model(input_x, timestep_, **c).chunk(batch_chunks)

        for o in range(batch_chunks):
            if cond_or_uncond[o] == COND:
                out_cond += output[o] * mult[o]
                out_count += mult[o]
            else:
                out_uncond += output[o] * mult[o]
                out_uncond_count += mult[o]

    return out_cond / out_count, out_uncond / out_uncond_count


def sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options={}, seed=None, return_full=False):
    edit_strength = sum(item.get("strength", 1) for item in cond)
    uncond_ = None if math.isclose(cond_scale, 1.0) and not model_options.get("disable_cfg1_optimization", False) else uncond
    for fn in model_options.get("sampler_pre_cfg_function", []):
        model, cond, uncond_, x, timestep, model_options = fn(model, cond, uncond_, x, timestep, model_options)
    cond_pred, uncond_pred = calc_cond_uncond_batch(model, cond, uncond_, x, timestep, model_options)
    if "sampler_cfg_function" in model_options:
        args = {"cond": x - cond_pred, "uncond": x - uncond_pred, "cond_scale": cond_scale, "timestep": timestep, "input": x,
                "sigma": timestep, "cond_denoised": cond_pred, "uncond_denoised": uncond_pred, "model": model, "model_options": model_options}
        cfg_result = x - model_options["sampler_cfg_function"](args)
    elif not math.isclose(edit_strength, 1.0):
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale * edit_strength
    else:
        cfg_result = uncond_pred + (cond_pred - uncond_pred) * cond_scale
    for fn in model_options.get("sampler_post_cfg_function", []):
        cfg_result = fn({"denoised": cfg_result, "cond": cond, "uncond": uncond, "model": model, "uncond_denoised": uncond_pred,
                         "cond_denoised": cond_pred, "sigma": timestep, "model_options": model_options, "input": x})
    return (cfg_result, cond_pred, uncond_pred) if return_full else cfg_result


def sampling_function(self, denoiser_params, cond_scale, cond_composition):
    unet_patcher = self.inner_model.inner_model.forge_objects.unet
    model = unet_patcher.model
    control = unet_patcher.controlnet_linked_list
    x = denoiser_params.x
    timestep = denoiser_params.sigma
    uncond = compile_conditions(denoiser_params.text_uncond)
    cond = compile_weighted_conditions(denoiser_params.text_cond, cond_composition)
    model_options = unet_patcher.model_options
    seed = self.p.seeds[0]
    image_cond_in = unet_patcher.extra_concat_condition if unet_patcher.extra_concat_condition is not None else denoiser_params.image_cond
    if isinstance(image_cond_in, torch.Tensor) and image_cond_in.shape[0] == x.shape[0] and image_cond_in.shape[2:] == x.shape[2:]:
        for entry in (uncond or []) + cond:
            entry["model_conds"]["c_concat"] = Condition(image_cond_in)
    if control is not None:
        for entry in cond + (uncond or []):
            entry["control"] = control
    for modifier in model_options.get("conditioning_modifiers", []):
        model, x, timestep, uncond, cond, cond_scale, model_options, seed = modifier(model, x, timestep, uncond, cond, cond_scale, model_options, seed)
    return sampling_function_inner(model, x, timestep, uncond, cond, cond_scale, model_options, seed, return_full=True)


def sampling_prepare(unet, x):
    B, C, H, W = x.shape
    estimate = unet.model_options.get("memory_peak_estimation_modifier", unet.memory_required)
    unet_inference_memory = estimate([B * 2, C, H, W])
    additional_inference_memory = unet.extra_preserved_memory_during_sampling
    additional_model_patchers = unet.extra_model_patchers_during_sampling
    if unet.controlnet_linked_list is not None:
        additional_inference_memory += unet.controlnet_linked_list.inference_memory_requirements(unet.model_dtype())
        additional_model_patchers += unet.controlnet_linked_list.get_models()  # in place, as Forge's `+=`
    memory_management.load_models_gpu(models=[unet] + additional_model_patchers, memory_required=unet_inference_memory,
                                      hard_memory_preservation=additional_inference_memory)
    real_model = unet.model
    for cnet in unet.list_controlnets():
        cnet.pre_run(real_model, lambda p: real_model.predictor.percent_to_sigma(p))


def sampling_cleanup(unet):
    for cnet in unet.list_controlnets():
        cnet.cleanup()
