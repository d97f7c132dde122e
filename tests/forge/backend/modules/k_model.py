"""backend/modules/k_model.py stand-in: KModel, `unet_patcher.model`: holds `diffusion_model` (the UNet) and `predictor`, and
`apply_model(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)` as Forge: input scaled by the predictor,
t -> predictor.timestep(t).float(), context and extra conds (y) cast to the computation dtype, denoised out.
`memory_required(input_shape)` is Forge's estimate (1.28 * rows*h*w * dtype size * 16384). No `get_dtype` (as in Forge)."""
import torch

from backend import memory_management
from backend.modules.k_prediction import Prediction


class KModel(torch.nn.Module):
    def __init__(self, model, diffusers_scheduler=None, k_predictor=None, config=None):
        super().__init__()
        self.config = config
        self.storage_dtype = model.storage_dtype
        self.computation_dtype = model.computation_dtype
        self.diffusion_model = model
        self.predictor = k_predictor if k_predictor is not None else Prediction()

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        sigma = t
        xc = self.predictor.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc] + [c_concat], dim=1)
        dtype = self.computation_dtype
        xc = xc.to(dtype)
        t = self.predictor.timestep(t).float()
        context = c_crossattn.to(dtype)
        extra_conds = {}
        for name, extra in kwargs.items():
            if hasattr(extra, "dtype") and extra.dtype not in (torch.int, torch.long):
                extra = extra.to(dtype)
            extra_conds[name] = extra
        model_output = self.diffusion_model(xc, t, context=context, control=control, transformer_options=transformer_options, **extra_conds).float()
        return self.predictor.calculate_denoised(sigma, model_output, x)

    def memory_required(self, input_shape):
        area = input_shape[0] * input_shape[2] * input_shape[3]
        return 1.28 * area * memory_management.dtype_size(self.computation_dtype) * 16384
