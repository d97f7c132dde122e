"""A Kohya Hires.fix / Deep Shrink-style neighbour, for interference tests (behaviour from wcde/sd-webui-kohya-hiresfix
scripts/khrfix.py, HEAD 05af987).

What it does, like Kohya Hires.fix:
  * `KohyaLikeScript` ("Kohya Hires.fix", AlwaysVisible) has khrfix's eleven controls in its order: enable,
    only_one_pass, d1, d2, s1, s2, scaler, downscale, upscale, smooth_scaling, early_out (defaults 0.15/3,
    0.3/4, bicubic, 0.5, 2.0, smooth on, early off, one pass on) and its DSHF_* infotext fields;
  * process(): disabled -> remove_current_script_callbacks() (the only time its callbacks go); enabled -> the
    pairs (s1, d1 - 1) and (s2, d2 - 1) (if s1 > s2 only the saved config's s2 changes, not the pair), step
    limit 0, the DSHF_* infotext entries, and one more on_cfg_denoiser callback (they pile up over enabled jobs);
  * the callback, keyed on params.sampling_step (the lagging sampler step, not the call number) and
    params.total_sampling_steps: nothing while sampling_step < the step limit; else for the first pair whose
    phase is on (sampling_step < total * s): `diffusion_model.input_blocks[d]` is replaced by a `Scaler(downscale)`
    around it and `output_blocks[-(d + 1)]` (`[d]` with early_out) by a `Scaler(upscale)`; if already wrapped
    and smooth scaling is on, the scales move towards 1 with the phase's progress; then it stops. A pair whose
    phase is over is unwrapped (when the two depths differ, or for the second pair). After both phases the
    step limit becomes sampling_step (only_one_pass), so later passes (hires: sampling_step restarts at 0) stay
    unwrapped until they pass that step;
  * `Scaler.forward(x, *args)`: x (the block's input: h for an input block, cat([h, skip]) for an output block)
    is interpolated by `scale` (scale_factor, the chosen mode) and the original block called with it, so hooks on
    the original block objects still fire;
  * postprocess() unwraps every Scaler; process_batch() resets the step limit. The config file is not written.
Stand-in helpers: `events` [(denoiser step, sampling_step, "wrap"/"unwrap"/"scale", depth, scale)] and `Scaler.calls`
[(block kind, index, input shape, interpolated shape)], `restore_all()` (the harness's reset calls it).
With the tiny test UNets (SDXL: 9 input/output blocks, SD1.5: 4) the default depths 3 and 4 (indices 2 and 3) exist;
latent sides must halve evenly down the UNet (the stand-in has no torch.cat hijack to reconcile skip sizes).
"""
from __future__ import annotations

import types
import weakref

import gradio as gr
import torch

from modules import scripts, script_callbacks

DEFAULTS = dict(s1=0.15, d1=3, s2=0.3, d2=4, scaler='bicubic', downscale=0.5, upscale=2.0, smooth_scaling=True,
                early_out=False, only_one_pass=True)

events: list[tuple] = []
_touched: "weakref.WeakSet[torch.nn.Module]" = weakref.WeakSet()  # diffusion models that got a Scaler


class Scaler(torch.nn.Module):
    calls: list[tuple] = []

    def __init__(self, scale, block, scaler, where=("?", -1)):
        super().__init__()
        self.scale = scale
        self.block = block
        self.scaler = scaler
        self.where = where

    def forward(self, x, *args):
        before = tuple(x.shape)
        x = torch.nn.functional.interpolate(x, scale_factor=self.scale, mode=self.scaler)
        Scaler.calls.append((*self.where, before, tuple(x.shape)))
        return self.block(x, *args)


def restore_all():
    """Unwrap every Scaler left in a diffusion model this module touched; clear the logs."""
    for unet in list(_touched):
        for blocks in (unet.input_blocks, unet.output_blocks):
            for i, block in enumerate(blocks):
                while isinstance(block, Scaler):
                    block = block.block
                blocks[i] = block
    _touched.clear()
    events.clear()
    Scaler.calls.clear()


class KohyaLikeScript(scripts.Script):
    def __init__(self):
        super().__init__()
        self.config = types.SimpleNamespace(**DEFAULTS)
        self.disable = False
        self.step_limit = 0
        self.infotext_fields = []

    def title(self):
        return "Kohya Hires.fix"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        config = self.config
        with gr.Accordion(label='Kohya Hires.fix', open=False):
            with gr.Row():
                enable = gr.Checkbox(label='Enable extension', value=False)
            with gr.Row():
                s1 = gr.Slider(minimum=0, maximum=0.5, step=0.01, label="Stop at", value=config.s1)
                d1 = gr.Slider(minimum=1, maximum=10, step=1, label="Depth", value=config.d1)
            with gr.Row():
                s2 = gr.Slider(minimum=0, maximum=0.5, step=0.01, label="Stop at", value=config.s2)
                d2 = gr.Slider(minimum=1, maximum=10, step=1, label="Depth", value=config.d2)
            with gr.Row():
                scaler = gr.Dropdown(['bicubic', 'bilinear', 'nearest', 'nearest-exact'], label='Layer scaler', value=config.scaler)
                downscale = gr.Slider(minimum=0.1, maximum=1.0, step=0.05, label="Downsampling scale", value=config.downscale)
                upscale = gr.Slider(minimum=1.0, maximum=4.0, step=0.1, label="Upsampling scale", value=config.upscale)
            with gr.Row():
                smooth_scaling = gr.Checkbox(label="Smooth scaling", value=config.smooth_scaling)
                early_out = gr.Checkbox(label="Early upsampling", value=config.early_out)
                only_one_pass = gr.Checkbox(label='Disable for additional passes', value=config.only_one_pass)
        controls = [enable, only_one_pass, d1, d2, s1, s2, scaler, downscale, upscale, smooth_scaling, early_out]
        for control in controls:
            control.do_not_save_to_config = True
        named = {'DSHF_s1': s1, 'DSHF_d1': d1, 'DSHF_s2': s2, 'DSHF_d2': d2, 'DSHF_scaler': scaler,
                 'DSHF_down': downscale, 'DSHF_up': upscale, 'DSHF_smooth': smooth_scaling, 'DSHF_early': early_out,
                 'DSHF_one': only_one_pass}
        self.infotext_fields.append((enable, lambda d: d.get('DSHF_s1', False)))
        self.infotext_fields.extend((control, key) for key, control in named.items())
        return controls

    def process(self, p, enable, only_one_pass, d1, d2, s1, s2, scaler, downscale, upscale, smooth_scaling, early_out):
        self.config = types.SimpleNamespace(enable=enable, only_one_pass=only_one_pass, d1=d1, d2=d2, s1=s1, s2=s2,
                                            scaler=scaler, downscale=downscale, upscale=upscale,
                                            smooth_scaling=smooth_scaling, early_out=early_out)
        if not enable or self.disable:
            script_callbacks.remove_current_script_callbacks()
            return
        model = p.sd_model.model.diffusion_model
        if s1 > s2:
            self.config.s2 = s1  # (the pair below keeps the s2 given)
        self.p1 = (s1, d1 - 1)
        self.p2 = (s2, d2 - 1)
        self.step_limit = 0

        def denoiser_callback(params: script_callbacks.CFGDenoiserParams):
            if params.sampling_step < self.step_limit:
                return
            call = getattr(params.denoiser, "step", None)
            for s, d in [self.p1, self.p2]:
                out_d = d if self.config.early_out else -(d + 1)
                if params.sampling_step < params.total_sampling_steps * s:
                    if not isinstance(model.input_blocks[d], Scaler):
                        out_index = out_d % len(model.output_blocks)
                        model.input_blocks[d] = Scaler(self.config.downscale, model.input_blocks[d], self.config.scaler, ("input", d))
                        model.output_blocks[out_d] = Scaler(self.config.upscale, model.output_blocks[out_d], self.config.scaler, ("output", out_index))
                        _touched.add(model)
                        events.append((call, params.sampling_step, "wrap", d, self.config.downscale))
                    elif self.config.smooth_scaling:
                        ratio = params.sampling_step / (params.total_sampling_steps * s)
                        down = min((1 - self.config.downscale) * ratio + self.config.downscale, 1.0)
                        model.input_blocks[d].scale = down
                        model.output_blocks[out_d].scale = self.config.upscale * (self.config.downscale / down)
                        events.append((call, params.sampling_step, "scale", d, down))
                    return
                elif isinstance(model.input_blocks[d], Scaler) and (self.p1[1] != self.p2[1] or s == self.p2[0]):
                    model.input_blocks[d] = model.input_blocks[d].block
                    model.output_blocks[out_d] = model.output_blocks[out_d].block
                    events.append((call, params.sampling_step, "unwrap", d, None))
            self.step_limit = params.sampling_step if self.config.only_one_pass else 0

        script_callbacks.on_cfg_denoiser(denoiser_callback)

        values = {'DSHF_s1': s1, 'DSHF_d1': d1, 'DSHF_s2': s2, 'DSHF_d2': d2, 'DSHF_scaler': scaler,
                  'DSHF_down': downscale, 'DSHF_up': upscale, 'DSHF_smooth': smooth_scaling, 'DSHF_early': early_out,
                  'DSHF_one': only_one_pass}
        p.extra_generation_params.update(values)

    def postprocess(self, p, processed, *args):
        unet = p.sd_model.model.diffusion_model
        for blocks in (unet.input_blocks, unet.output_blocks):
            for i, block in enumerate(blocks):
                if isinstance(block, Scaler):
                    blocks[i] = block.block

    def process_batch(self, p, *args, **kwargs):
        self.step_limit = 0
