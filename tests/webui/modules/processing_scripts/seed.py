"""Built-in "Seed" script (A1111 1.10 modules/processing_scripts/seed.py), reduced: same section, control order,
setup() semantics (UI-only: sets p.seed/subseed from its controls) and so the same effect on args_from of the
scripts built after it."""
import gradio as gr

from modules import scripts


class ScriptSeed(scripts.ScriptBuiltinUI):
    section = "seed"
    create_group = False

    def __init__(self):
        self.seed = None

    def title(self):
        return "Seed"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        self.seed = gr.Number(label='Seed', value=-1, elem_id=self.elem_id("seed"), min_width=100, precision=0)
        seed_checkbox = gr.Checkbox(label='Extra', elem_id=self.elem_id("subseed_show"), value=False)
        subseed = gr.Number(label='Variation seed', value=-1, elem_id=self.elem_id("subseed"), precision=0)
        subseed_strength = gr.Slider(label='Variation strength', value=0.0, minimum=0, maximum=1, step=0.01, elem_id=self.elem_id("subseed_strength"))
        seed_resize_from_w = gr.Slider(minimum=0, maximum=2048, step=8, label="Resize seed from width", value=0, elem_id=self.elem_id("seed_resize_from_w"))
        seed_resize_from_h = gr.Slider(minimum=0, maximum=2048, step=8, label="Resize seed from height", value=0, elem_id=self.elem_id("seed_resize_from_h"))

        def extras_used(params):  # the "Extra" checkbox is ticked by a pasted variation seed or seed resize
            return "Variation seed" in params or "Seed resize from-1" in params

        extras = (subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h)
        keys = ("Variation seed", "Variation seed strength", "Seed resize from-1", "Seed resize from-2")
        self.infotext_fields = [(self.seed, "Seed"), (seed_checkbox, extras_used), *zip(extras, keys)]
        return (self.seed, seed_checkbox, *extras)

    def setup(self, p, seed, seed_checkbox, subseed, subseed_strength, seed_resize_from_w, seed_resize_from_h):
        p.seed = seed
        if not seed_checkbox:  # the extra options only count while "Extra" is ticked
            return
        if subseed_strength > 0:
            p.subseed, p.subseed_strength = subseed, subseed_strength
        if seed_resize_from_w > 0 and seed_resize_from_h > 0:
            p.seed_resize_from_w, p.seed_resize_from_h = seed_resize_from_w, seed_resize_from_h
