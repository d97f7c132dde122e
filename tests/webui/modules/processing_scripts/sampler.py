"""Built-in "Sampler" script (A1111 1.10 modules/processing_scripts/sampler.py), reduced: steps, sampler and
scheduler controls in section "sampler"; setup() (UI only) copies them into p."""
import gradio as gr

from modules import scripts, sd_samplers, sd_schedulers


class ScriptSampler(scripts.ScriptBuiltinUI):
    section = "sampler"
    create_group = False

    def __init__(self):
        self.steps = self.sampler_name = self.scheduler = None

    def title(self):
        return "Sampler"

    def ui(self, is_img2img):
        sampler_choices = [config.name for config in sd_samplers.visible_samplers()]
        scheduler_choices = [entry.label for entry in sd_schedulers.schedulers]
        self.sampler_name = gr.Dropdown(label='Sampling method', elem_id=self.elem_id("sampling"), choices=sampler_choices, value=sampler_choices[0])
        self.scheduler = gr.Dropdown(label='Schedule type', elem_id=self.elem_id("scheduler"), choices=scheduler_choices, value=scheduler_choices[0])
        self.steps = gr.Slider(minimum=1, maximum=150, step=1, elem_id=self.elem_id("steps"), label="Sampling steps", value=20)
        self.infotext_fields = [
            (self.steps, "Steps"),
            (self.sampler_name, sd_samplers.get_sampler_from_infotext),
            (self.scheduler, sd_samplers.get_scheduler_from_infotext),
        ]
        return self.steps, self.sampler_name, self.scheduler

    def setup(self, p, steps, sampler_name, scheduler):
        p.steps, p.sampler_name, p.scheduler = steps, sampler_name, scheduler
