"""Stand-in for A1111's scripts/xyz_grid.py (X/Y/Z plot), loaded the A1111 way: module name "xyz_grid.py", found
by extensions through `next(x for x in scripts.scripts_data if x.script_class.__module__ == "xyz_grid.py").module`.

Kept: AxisOption/AxisOptionImg2Img/AxisOptionTxt2Img with A1111's constructor, the axis_options list (a few
built-in axes), apply_field/apply_override/format helpers, the UI snapshot of axis_options in ui(), and the per-cell
loop: shallow copy(p) per cell, axis.apply(pc, x, xs), process_images(pc), errors per cell logged with
errors.display and replaced by an empty Processed. One axis only (A1111 has X, Y and Z); no grid image drawing.
"""
from copy import copy
import csv
from io import StringIO

import gradio as gr

import modules.scripts as scripts
from modules import errors, processing
from modules.processing import Processed, process_images
from modules.shared import opts, state
import modules.shared as shared


def apply_field(field):
    """An axis `apply` that sets attribute `field` of p to the cell's value."""
    def apply(p, x, xs):
        setattr(p, field, x)
    return apply


def apply_prompt(p, x, xs):
    """Prompt S/R: the first value is the text searched for; each cell puts its own value in its place."""
    search = xs[0]
    if search not in p.prompt and search not in p.negative_prompt:
        raise RuntimeError(f"Prompt S/R did not find {search} in prompt or negative prompt.")
    p.prompt, p.negative_prompt = p.prompt.replace(search, x), p.negative_prompt.replace(search, x)


def apply_override(field, boolean: bool = False):
    """An axis `apply` that sets the setting `field` through p.override_settings ("true"/"false" if boolean)."""
    def apply(p, x, xs):
        p.override_settings[field] = (x.lower() == "true") if boolean else x
    return apply


def boolean_choice(reverse: bool = False):
    order = ("False", "True") if reverse else ("True", "False")
    return lambda: list(order)


def _rounded(x):
    return round(x, 8) if type(x) == float else x


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {_rounded(x)}"


def format_value(p, opt, x):
    return _rounded(x)


def format_value_join_list(p, opt, x):
    return ", ".join(x)


def do_nothing(p, x, xs):
    pass


def format_nothing(p, opt, x):
    return ""


def str_permutations(x):
    """Used as an AxisOption's type to mark an axis whose values are the permutations of a list."""
    return x


def csv_string_to_list_strip(data_str):
    rows = csv.reader(StringIO(data_str), skipinitialspace=True)
    return [item.strip() for row in rows for item in row]


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0, choices=None, prepare=None):
        self.label, self.type, self.apply, self.format_value = label, type, apply, format_value
        self.confirm, self.cost = confirm, cost
        self.choices, self.prepare = choices, prepare


class AxisOptionImg2Img(AxisOption):
    is_img2img = True  # offered on the img2img tab only


class AxisOptionTxt2Img(AxisOption):
    is_img2img = False  # offered on the txt2img tab only


def _field_axis(option_class, label, value_type, attribute):
    return option_class(label, value_type, apply_field(attribute))


axis_options = [
    AxisOption("Nothing", str, do_nothing, format_value=format_nothing),
    _field_axis(AxisOption, "Seed", int, "seed"),
    _field_axis(AxisOption, "Steps", int, "steps"),
    _field_axis(AxisOptionTxt2Img, "Hires steps", int, "hr_second_pass_steps"),
    _field_axis(AxisOption, "CFG Scale", float, "cfg_scale"),
    AxisOption("Prompt S/R", str, apply_prompt, format_value=format_value),
    _field_axis(AxisOptionImg2Img, "Denoising", float, "denoising_strength"),
]


def run_grid(p, axis: AxisOption, values, *, title="X/Y/Z plot"):
    """The cell loop of xyz's run() for one axis: returns (list of per-cell Processed, combined Processed).
    values are converted with axis.type and confirmed with axis.confirm first, like A1111."""
    processing.fix_seed(p)
    if not opts.return_grid:
        p.batch_size = 1

    xs = [axis.type(x) for x in values]
    if axis.confirm:
        axis.confirm(p, xs)

    state.job_count = len(xs) * p.n_iter
    cells = []
    infotext = None
    for ix, x in enumerate(xs):
        if shared.state.interrupted or state.stopping_generation:
            cells.append(Processed(p, [], p.seed, ""))
            continue

        pc = copy(p)
        pc.styles = pc.styles[:]
        axis.apply(pc, x, xs)
        try:
            res = process_images(pc)
        except Exception as e:
            errors.display(e, "generating image for xyz plot")
            res = Processed(p, [], p.seed, "")

        if infotext is None and ix == 0:
            pc.extra_generation_params = copy(pc.extra_generation_params)
            pc.extra_generation_params['Script'] = title
            if axis.label != 'Nothing':
                pc.extra_generation_params["X Type"] = axis.label
                pc.extra_generation_params["X Values"] = ", ".join(str(v) for v in values)
            if pc.all_prompts is not None:
                infotext = processing.create_infotext(pc, pc.all_prompts, pc.all_seeds, pc.all_subseeds)
        cells.append(res)

    combined = Processed(p, [image for cell in cells for image in cell.images], p.seed, infotext or "", infotexts=[text for cell in cells for text in cell.infotexts if text] or None)
    return cells, combined


class SharedSettingsStackHelper(object):
    def __enter__(self):
        self.stored = dict(opts.data)

    def __exit__(self, exc_type, exc_value, tb):
        opts.data.update(self.stored)


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"

    def ui(self, is_img2img):
        def offered(option):  # plain AxisOptions are on both tabs, the subclasses on one
            return type(option) == AxisOption or option.is_img2img == is_img2img

        self.current_axis_options = [option for option in axis_options if offered(option)]
        x_type = gr.Dropdown(label="X type", choices=[x.label for x in self.current_axis_options], value=self.current_axis_options[1].label, type="index", elem_id=self.elem_id("x_type"))
        x_values = gr.Textbox(label="X values", lines=1, elem_id=self.elem_id("x_values"))
        return [x_type, x_values]

    def run(self, p, x_type, x_values):
        if isinstance(x_type, str):  # API callers send the label
            x_type = [x.label for x in self.current_axis_options].index(x_type)
        axis = self.current_axis_options[x_type]
        values = axis.prepare(x_values) if axis.prepare is not None else csv_string_to_list_strip(x_values)
        with SharedSettingsStackHelper():
            _, processed = run_grid(p, axis, values, title=self.title())
        return processed
