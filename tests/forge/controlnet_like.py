"""Neighbours of the extension on Forge, for tests: a plain "other" ControlNet and Forge's built-in InstantID as far as
shared/forge.md §3.4 describes it (its modifier leak), plus an AlwaysVisible script applying them the built-in way.

* `tiny_controlnet(template_unet, seed)`: a backend ControlNet (patcher level) around a tiny cldm model
  (backend.nn.cnets.cldm.ControlNet, which records the (context, y) of every call in `.control_model.seen`).
* `apply_plain_unit(unet, cnet, hint, strength, start, end)`: apply_controlnet_advanced, as the built-in ControlNet extension
  does for a unit (returns the new patcher).
* `apply_instantid_like(unet, cnet, hint, tokens_cond, tokens_uncond, strength)`: the built-in InstantID pair of units in
  miniature: a clone with a controlnet conditioning modifier that sets cond['c_crossattn'] = T_c*(1-cond_mark) + T_u*cond_mark
  on the SHARED cond dict for EVERY ControlNet that runs it (IPAdapterPlus.py:734-741), then the IdentityNet-like ControlNet
  added on top -- so every ControlNet below it in the chain (and any added later above it) sees the face tokens instead of the
  text: the leak. No attention patches (the IP-Adapter half) are modelled.
* `ControlNetLikeScript`: title "ControlNet", AlwaysVisible, one argument: a list of unit dicts
  {"kind": "plain"|"instantid", "cnet", "hint", "strength", "start", "end", "tokens_cond", "tokens_uncond"} applied in
  process_before_every_sampling (hint: the pass's own when "hint_hr" is given and p.is_hr_pass). Load it as a built-in
  (harness.load_extension(..., builtin_classes=[ControlNetLikeScript])) so it runs before the extension, as in Forge.
"""
import gradio as gr

from backend import memory_management
from backend.nn.cnets.cldm import ControlNet as TinyCldm
from backend.patcher.controlnet import ControlNet, apply_controlnet_advanced
from modules import scripts


def tiny_controlnet(template_unet, seed=0):
    model = TinyCldm(template_unet, seed=seed)
    return ControlNet(model, load_device=memory_management.get_torch_device(), manual_cast_dtype=None)


def apply_plain_unit(unet, cnet, hint, strength=1.0, start=0.0, end=1.0):
    return apply_controlnet_advanced(unet=unet, controlnet=cnet, image_bchw=hint, strength=strength, start_percent=start, end_percent=end)


def apply_instantid_like(unet, cnet, hint, tokens_cond, tokens_uncond, strength=1.0, start=0.0, end=1.0):
    work_model = unet.clone()

    def modifier(cnet_, x_noisy, t, cond, batched_number):
        cond_mark = cond["transformer_options"]["cond_mark"][:, None, None].to(cond["c_crossattn"])
        cond["c_crossattn"] = tokens_cond * (1.0 - cond_mark) + tokens_uncond * cond_mark
        return x_noisy, t, cond, batched_number

    work_model.add_controlnet_conditioning_modifier(modifier)
    return apply_controlnet_advanced(unet=work_model, controlnet=cnet, image_bchw=hint, strength=strength, start_percent=start, end_percent=end)


class ControlNetLikeScript(scripts.Script):
    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        return [gr.State(value=[])]

    def process_before_every_sampling(self, p, units=None, *args, **kwargs):
        if not units:
            return
        unet = p.sd_model.forge_objects.unet.clone()
        for unit in units:
            hint = unit["hint_hr"] if p.is_hr_pass and unit.get("hint_hr") is not None else unit["hint"]
            if unit.get("kind", "plain") == "instantid":
                unet = apply_instantid_like(unet, unit["cnet"], hint, unit["tokens_cond"], unit["tokens_uncond"],
                                            unit.get("strength", 1.0), unit.get("start", 0.0), unit.get("end", 1.0))
            else:
                unet = apply_plain_unit(unet, unit["cnet"], hint, unit.get("strength", 1.0), unit.get("start", 0.0), unit.get("end", 1.0))
        p.sd_model.forge_objects.unet = unet
