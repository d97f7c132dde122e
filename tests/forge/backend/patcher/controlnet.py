"""backend/patcher/controlnet.py stand-in: the ControlNet chain as Forge 2 runs it.

Modelled (backend/patcher/controlnet.py):
  * `ControlBase`: cond_hint_original / cond_hint, strength, timestep_percent_range, timestep_range (set by pre_run from
    percent_to_sigma, recursively down the chain), previous_controlnet / set_previous_controlnet, transformer_options (set per
    UNet call by the sampling function), cleanup / get_models / inference_memory_requirements recursing into previous,
    `control_merge(control_input, control_output, control_prev, output_dtype)`: outputs -> {'input': [], 'middle': [last],
    'output': [the rest]}, each x *= strength (in place), `compute_controlnet_weighting`, then control_prev added element-wise.
  * `ControlNet(control_model, global_average_pooling=False, device=None, load_device=None, manual_cast_dtype=None)`: wraps the
    model in a ModelPatcher (control_model_wrapped, offload = unet_offload_device()); `get_control(x_noisy, t, cond,
    batched_number)`: 1) EVERY `controlnet_conditioning_modifiers` entry of self.transformer_options runs and may replace
    (x_noisy, t, cond, batched_number) -- cond is the dict the sampling function copied once per call, so in-place changes are
    seen by everyone after; 2) previous.get_control(...) with the (modified) cond; 3) skipped when t[0] is outside
    timestep_range (returns control_prev); 4) hint resized with adaptive_resize(nearest-exact, center) to 8x the latent whenever
    sizes differ, broadcast to the rows; 5) context = cond['c_crossattn'], y = cond.get('y'), timestep = predictor.timestep(t),
    x = predictor.calculate_input(t, x); the model (or controlnet_model_function_wrapper) called with keywords x, hint,
    timesteps, context, y; 6) control_merge. `copy()` returns a plain ControlNet (a subclass must override it).
  * `apply_controlnet_advanced(unet, controlnet, image_bchw, strength, start_percent, end_percent, ...)`: copy, set_cond_hint,
    the advanced weighting attributes, then unet.clone().add_patched_controlnet(cnet).
Not modelled: ControlLora, T2IAdapter, manual-cast operations.
"""
import torch

from backend import memory_management
from backend.misc import image_resize
from backend.patcher.base import ModelPatcher


def apply_controlnet_advanced(unet, controlnet, image_bchw, strength, start_percent, end_percent,
                              positive_advanced_weighting=None, negative_advanced_weighting=None,
                              advanced_frame_weighting=None, advanced_sigma_weighting=None, advanced_mask_weighting=None):
    cnet = controlnet.copy().set_cond_hint(image_bchw, strength, (start_percent, end_percent))
    cnet.positive_advanced_weighting = positive_advanced_weighting
    cnet.negative_advanced_weighting = negative_advanced_weighting
    cnet.advanced_frame_weighting = advanced_frame_weighting
    cnet.advanced_sigma_weighting = advanced_sigma_weighting
    if advanced_mask_weighting is not None:
        assert isinstance(advanced_mask_weighting, torch.Tensor) and advanced_mask_weighting.ndim == 4 and advanced_mask_weighting.shape[1] == 1
    cnet.advanced_mask_weighting = advanced_mask_weighting
    m = unet.clone()
    m.add_patched_controlnet(cnet)
    return m


def get_at(array, index, default=None):
    return array[index] if 0 <= index < len(array) else default


def compute_controlnet_weighting(control, cnet):
    positive = getattr(cnet, "positive_advanced_weighting", None)
    negative = getattr(cnet, "negative_advanced_weighting", None)
    frame = getattr(cnet, "advanced_frame_weighting", None)
    sigma_weighting = getattr(cnet, "advanced_sigma_weighting", None)
    mask = getattr(cnet, "advanced_mask_weighting", None)
    if positive is None and negative is None and frame is None and sigma_weighting is None and mask is None:
        return control
    to = cnet.transformer_options
    cond_or_uncond, sigmas, cond_mark = to["cond_or_uncond"], to["sigmas"], to["cond_mark"]
    if frame is not None:
        frame = torch.Tensor(frame * len(cond_or_uncond)).to(sigmas)
        assert frame.shape[0] == cond_mark.shape[0], "Frame weighting list length is different from batch size!"
    if sigma_weighting is not None:
        sigma_weighting = torch.cat([sigma_weighting(sigmas)] * len(cond_or_uncond))
    for k, signals in control.items():
        for i, signal in enumerate(signals):
            if not isinstance(signal, torch.Tensor):
                continue
            H, W = signal.shape[2:]
            positive_weight = get_at(positive.get(k, []), i, 1.0) if positive is not None else 1.0
            negative_weight = get_at(negative.get(k, []), i, 1.0) if negative is not None else 1.0
            weight = positive_weight * (1.0 - cond_mark) + negative_weight * cond_mark
            weight = weight * (sigma_weighting if sigma_weighting is not None else 1.0) * (frame if frame is not None else 1.0)
            if isinstance(mask, torch.Tensor):
                if mask.shape[0] != 1:
                    k_ = int(signal.shape[0] // mask.shape[0])
                    if signal.shape[0] == k_ * mask.shape[0]:
                        mask = mask.repeat(k_, 1, 1, 1)
                signal = signal * torch.nn.functional.interpolate(mask.to(signal), size=(H, W), mode="bilinear")
            control[k][i] = signal * weight[:, None, None, None]
    return control


def broadcast_image_to(tensor, target_batch_size, batched_number):
    if tensor.shape[0] == 1:
        return tensor
    per_batch = target_batch_size // batched_number
    tensor = tensor[:per_batch]
    if per_batch > tensor.shape[0]:
        tensor = torch.cat([tensor] * (per_batch // tensor.shape[0]) + [tensor[:(per_batch % tensor.shape[0])]], dim=0)
    if tensor.shape[0] == target_batch_size:
        return tensor
    return torch.cat([tensor] * batched_number, dim=0)


class ControlBase:
    def __init__(self, device=None):
        self.cond_hint_original = None
        self.cond_hint = None
        self.strength = 1.0
        self.timestep_percent_range = (0.0, 1.0)
        self.global_average_pooling = False
        self.timestep_range = None
        self.transformer_options = {}
        self.device = memory_management.get_torch_device() if device is None else device
        self.previous_controlnet = None

    def set_cond_hint(self, cond_hint, strength=1.0, timestep_percent_range=(0.0, 1.0)):
        self.cond_hint_original = cond_hint
        self.strength = strength
        self.timestep_percent_range = timestep_percent_range
        return self

    def pre_run(self, model, percent_to_timestep_function):
        self.timestep_range = (percent_to_timestep_function(self.timestep_percent_range[0]),
                               percent_to_timestep_function(self.timestep_percent_range[1]))
        if self.previous_controlnet is not None:
            self.previous_controlnet.pre_run(model, percent_to_timestep_function)

    def set_previous_controlnet(self, controlnet):
        self.previous_controlnet = controlnet
        return self

    def cleanup(self):
        if self.previous_controlnet is not None:
            self.previous_controlnet.cleanup()
        self.cond_hint = None
        self.timestep_range = None

    def get_models(self):
        return self.previous_controlnet.get_models() if self.previous_controlnet is not None else []

    def copy_to(self, c):
        c.cond_hint_original = self.cond_hint_original
        c.strength = self.strength
        c.timestep_percent_range = self.timestep_percent_range
        c.global_average_pooling = self.global_average_pooling

    def inference_memory_requirements(self, dtype):
        return self.previous_controlnet.inference_memory_requirements(dtype) if self.previous_controlnet is not None else 0

    def control_merge(self, control_input, control_output, control_prev, output_dtype):
        out = {"input": [], "middle": [], "output": []}
        if control_input is not None:
            for x in control_input:
                if x is not None:
                    x *= self.strength
                    if x.dtype != output_dtype:
                        x = x.to(output_dtype)
                out["input"].insert(0, x)
        if control_output is not None:
            for i, x in enumerate(control_output):
                key = "middle" if i == len(control_output) - 1 else "output"
                if x is not None:
                    if self.global_average_pooling:
                        x = torch.mean(x, dim=(2, 3), keepdim=True).repeat(1, 1, x.shape[2], x.shape[3])
                    x *= self.strength
                    if x.dtype != output_dtype:
                        x = x.to(output_dtype)
                out[key].append(x)
        out = compute_controlnet_weighting(out, self)
        if control_prev is not None:
            for key in ("input", "middle", "output"):
                o = out[key]
                for i, prev in enumerate(control_prev[key]):
                    if i >= len(o):
                        o.append(prev)
                    elif prev is not None:
                        if o[i] is None:
                            o[i] = prev
                        elif o[i].shape[0] < prev.shape[0]:
                            o[i] = prev + o[i]
                        else:
                            o[i] += prev
        return out


class ControlNet(ControlBase):
    def __init__(self, control_model, global_average_pooling=False, device=None, load_device=None, manual_cast_dtype=None):
        super().__init__(device)
        self.control_model = control_model
        self.load_device = load_device
        self.control_model_wrapped = ModelPatcher(self.control_model, load_device=load_device, offload_device=memory_management.unet_offload_device())
        self.global_average_pooling = global_average_pooling
        self.model_sampling_current = None
        self.manual_cast_dtype = manual_cast_dtype

    def get_control(self, x_noisy, t, cond, batched_number):
        to = self.transformer_options
        for modifier in to.get("controlnet_conditioning_modifiers", []):
            x_noisy, t, cond, batched_number = modifier(self, x_noisy, t, cond, batched_number)
        control_prev = None
        if self.previous_controlnet is not None:
            control_prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number)
        if self.timestep_range is not None and (t[0] > self.timestep_range[0] or t[0] < self.timestep_range[1]):
            return control_prev
        dtype = self.manual_cast_dtype if self.manual_cast_dtype is not None else self.control_model.dtype
        output_dtype = x_noisy.dtype
        if self.cond_hint is None or x_noisy.shape[2] * 8 != self.cond_hint.shape[2] or x_noisy.shape[3] * 8 != self.cond_hint.shape[3]:
            self.cond_hint = image_resize.adaptive_resize(self.cond_hint_original, x_noisy.shape[3] * 8, x_noisy.shape[2] * 8,
                                                          "nearest-exact", "center").to(dtype)
        if x_noisy.shape[0] != self.cond_hint.shape[0]:
            self.cond_hint = broadcast_image_to(self.cond_hint, x_noisy.shape[0], batched_number)
        context = cond["c_crossattn"]
        y = cond.get("y", None)
        if y is not None:
            y = y.to(dtype)
        timestep = self.model_sampling_current.timestep(t)
        x_noisy = self.model_sampling_current.calculate_input(t, x_noisy)
        wrapper = to.get("controlnet_model_function_wrapper", None)
        if wrapper is not None:
            control = wrapper(x=x_noisy.to(dtype), hint=self.cond_hint, timesteps=timestep.float(), context=context.to(dtype), y=y,
                              model=self, inner_model=self.control_model)
        else:
            control = self.control_model(x=x_noisy.to(dtype), hint=self.cond_hint.to(self.device), timesteps=timestep.float(),
                                         context=context.to(dtype), y=y)
        return self.control_merge(None, control, control_prev, output_dtype)

    def copy(self):
        c = ControlNet(self.control_model, global_average_pooling=self.global_average_pooling, load_device=self.load_device,
                       manual_cast_dtype=self.manual_cast_dtype)
        self.copy_to(c)
        return c

    def get_models(self):
        return super().get_models() + [self.control_model_wrapped]

    def pre_run(self, model, percent_to_timestep_function):
        super().pre_run(model, percent_to_timestep_function)
        self.model_sampling_current = model.predictor

    def cleanup(self):
        self.model_sampling_current = None
        super().cleanup()
