"""A minimal always-visible script for bench/import_time.py: the baseline an extension's start-up is compared to."""
import gradio as gr

from modules import scripts
from modules.ui_components import InputAccordion


class DummyScript(scripts.Script):
    def title(self):
        return "Dummy"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        with InputAccordion(False, label="Dummy", elem_id=self.elem_id("enabled")) as enabled:
            strength = gr.Slider(0.0, 1.0, value=0.5, label="Strength", elem_id=self.elem_id("strength"))
        return [enabled, strength]
