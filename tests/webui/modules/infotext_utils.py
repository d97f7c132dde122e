"""modules/infotext_utils.py stand-in (alias modules.generation_parameters_copypaste): quoting, the parameter
regex, parse_generation_parameters, paste fields, `paste()` which applies infotext_fields to component values the
way connect_paste's paste_func does (incl. its casts), and the "Send to img2img/inpaint/extras" bindings.

Send to (A1111 1.10 register_paste_params_button / connect_paste_params_buttons): ui_common's output panels
register one ParamBinding per destination; connect_paste_params_buttons (called by ui.create_ui inside the demo
Blocks) wires each binding's button with gradio click events:
- a binding with source_tabname copies component values: inputs are the source tab's paste fields whose *string*
  name is in ['Prompt', 'Negative prompt', 'Steps', 'Face restoration'] (+ 'Seed' if opts.send_seed) +
  binding.paste_field_names, outputs the destination's fields with such names, paired by position (callable
  targets never match); the event is `fn=lambda *x: x`, so gradio preprocesses each input and postprocesses each
  output with the *destination* component (see harness.WebUI.send_to);
- a binding with source_text_component pastes that textbox as infotext into all of the destination's fields;
- image + size: wired when both an image source and the destination's init_img exist (the stand-in's tabs have
  no init_img, so images are not sent); params.txt (the last prompt, read when pasting an empty prompt) is not
  modelled.
"""
from __future__ import annotations

import base64
import io
import json
import re
import sys

import gradio as gr
from PIL import Image

from modules import errors, images, options, script_callbacks, shared

sys.modules['modules.generation_parameters_copypaste'] = sys.modules[__name__]  # alias for the old name

# the two "Send to" settings (A1111 registers them in shared_options.py)
for _key, _label in (("send_seed", "Send seed when sending prompt or image to other interface"),
                     ("send_size", "Send size when sending prompt or image to another interface")):
    if _key not in shared.opts.data_labels:
        shared.opts.add_option(_key, options.OptionInfo(True, _label))

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
type_of_gr_update = type(gr.update())


class ParamBinding:
    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None, source_tabname=None,
                 override_settings_component=None, paste_field_names=None):
        self.paste_button, self.tabname = paste_button, tabname
        self.source_text_component, self.source_image_component = source_text_component, source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []  # (sic) an empty list given here is replaced by a new one


class PasteField(tuple):
    """A (component, target) pair; target is an infotext key or a function(params) -> value."""

    def __new__(cls, component, target, *, api=None):
        return super().__new__(cls, (component, target))

    def __init__(self, component, target, *, api=None):
        super().__init__()
        self.component, self.api = component, api
        if isinstance(target, str):
            self.label, self.function = target, None
        else:
            self.label, self.function = None, (target if callable(target) else None)


paste_fields: dict[str, dict] = {}
registered_param_bindings: list[ParamBinding] = []


def reset():
    paste_fields.clear()
    registered_param_bindings.clear()


def quote(text):
    """JSON-quote a value only if its str() has a comma, newline or colon; otherwise return it unchanged."""
    as_text = str(text)
    if any(special in as_text for special in (',', '\n', ':')):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text):
    if not (text and text[0] == '"' and text[-1] == '"'):
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def add_paste_fields(tabname, init_img, fields, override_settings_component=None):
    if fields:  # plain (component, target) tuples become PasteFields, in place
        fields[:] = [field if isinstance(field, PasteField) else PasteField(*field) for field in fields]
    paste_fields[tabname] = dict(init_img=init_img, fields=fields, override_settings_component=override_settings_component)

    import modules.ui  # backwards compatibility: the old module-level lists
    if tabname == 'txt2img':
        modules.ui.txt2img_paste_fields = fields
    elif tabname == 'img2img':
        modules.ui.img2img_paste_fields = fields


def image_from_url_text(filedata):
    """A gallery/image value -> PIL image: None, a list (its first item), a file dict {"name", "is_file"} (read
    from disk; A1111 also checks that it is one of gradio's temp files), or a base64 PNG (data URL or plain)."""
    if filedata is None:
        return None
    if isinstance(filedata, list) and filedata and isinstance(filedata[0], dict) and filedata[0].get("is_file", False):
        filedata = filedata[0]
    if isinstance(filedata, dict) and filedata.get("is_file", False):
        return images.read(filedata["name"].rsplit('?', 1)[0])
    if isinstance(filedata, list):
        if not filedata:
            return None
        filedata = filedata[0]
    if filedata.startswith("data:image/png;base64,"):
        filedata = filedata[len("data:image/png;base64,"):]
    return images.read(io.BytesIO(base64.decodebytes(filedata.encode('utf-8'))))


def create_buttons(tabs_list):
    return {tab: gr.Button(f"Send to {tab}", elem_id=f"{tab}_tab") for tab in tabs_list}


def bind_buttons(buttons, send_image, send_generate_info):
    """Old API (kept for extensions): a component as send_generate_info pastes it as infotext, a string names the
    source tab whose fields are copied."""
    for tabname, button in buttons.items():
        source_text_component = send_generate_info if isinstance(send_generate_info, gr.components.Component) else None
        source_tabname = send_generate_info if isinstance(send_generate_info, str) else None
        register_paste_params_button(ParamBinding(paste_button=button, tabname=tabname, source_text_component=source_text_component,
                                                  source_image_component=send_image, source_tabname=source_tabname))


def register_paste_params_button(binding: ParamBinding):
    registered_param_bindings.append(binding)


BASE_PASTE_FIELD_NAMES = ['Prompt', 'Negative prompt', 'Steps', 'Face restoration']


def sent_field_names(binding: ParamBinding) -> list:
    """The infotext names a source-tab binding copies (opts.send_seed read when the buttons are connected)."""
    return BASE_PASTE_FIELD_NAMES + (["Seed"] if shared.opts.send_seed else []) + binding.paste_field_names


def connect_paste_params_buttons():
    """Wire every registered binding (inside the demo's gr.Blocks, after all tabs registered their paste fields)."""
    for binding in registered_param_bindings:
        destination_image_component = paste_fields[binding.tabname]["init_img"]
        fields = paste_fields[binding.tabname]["fields"]
        override_settings_component = binding.override_settings_component or paste_fields[binding.tabname]["override_settings_component"]

        destination_width_component = next(iter([field for field, name in fields if name == "Size-1"] if fields else []), None)
        destination_height_component = next(iter([field for field, name in fields if name == "Size-2"] if fields else []), None)

        if binding.source_image_component and destination_image_component:
            need_send_dimensions = destination_width_component and binding.tabname != 'inpaint'
            if isinstance(binding.source_image_component, gr.Gallery):
                func = send_image_and_dimensions if need_send_dimensions else image_from_url_text
            else:
                func = send_image_and_dimensions if need_send_dimensions else (lambda x: x)
            outputs = [destination_image_component, destination_width_component, destination_height_component] if need_send_dimensions else [destination_image_component]
            binding.paste_button.click(fn=func, inputs=[binding.source_image_component], outputs=outputs, show_progress=False)

        if binding.source_text_component is not None and fields is not None:
            connect_paste(binding.paste_button, fields, binding.source_text_component, override_settings_component, binding.tabname)

        if binding.source_tabname is not None and fields is not None:
            names = sent_field_names(binding)
            binding.paste_button.click(
                fn=lambda *x: x,
                inputs=[field for field, name in paste_fields[binding.source_tabname]["fields"] if name in names],
                outputs=[field for field, name in fields if name in names],
                show_progress=False,
            )

        binding.paste_button.click(fn=None, _js=f"switch_to_{binding.tabname}", inputs=None, outputs=None, show_progress=False)


def send_image_and_dimensions(x):
    img = x if isinstance(x, Image.Image) else image_from_url_text(x)
    if shared.opts.send_size and isinstance(img, Image.Image):
        return img, img.width, img.height
    return img, gr.update(), gr.update()


# Keys an infotext written before the corresponding feature existed lacks, with the value that reproduces the old
# behaviour; filled in (in this order) after parsing.
_MISSING_KEY_DEFAULTS = (
    ("Clip skip", "1"),
    ("Hires resize-1", 0), ("Hires resize-2", 0),
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", 'original'),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)


def parse_generation_parameters(x: str, skip_fields: list[str] | None = None):
    """Infotext -> dict of strings. The last line holds the parameters only if the regex finds >= 3 pairs there;
    quoted values are unquoted; values like 512x768 become "<key>-1"/"<key>-2"; then A1111's defaults."""
    if skip_fields is None:
        skip_fields = shared.opts.infotext_skip_pasting

    *text_lines, parameter_line = x.strip().split("\n")
    if len(re_param.findall(parameter_line)) < 3:  # too few pairs: that line still belongs to the prompt
        text_lines.append(parameter_line)
        parameter_line = ''

    prompt_lines, negative_lines = [], []
    collecting = prompt_lines
    marker = "Negative prompt:"
    for line in text_lines:
        line = line.strip()
        if line.startswith(marker):  # everything from here on is the negative prompt
            collecting = negative_lines
            line = line[len(marker):].strip()
        collecting.append(line)

    res = {}
    for key, value in re_param.findall(parameter_line):
        try:
            if value[0] == '"' == value[-1]:
                value = unquote(value)
            size = re_imagesize.match(value)
            if size is None:
                res[key] = value
            else:  # WxH values are split in two
                res[f"{key}-1"], res[f"{key}-2"] = size.group(1), size.group(2)
        except Exception:
            print(f"Error parsing \"{key}: {value}\"")

    res["Prompt"] = "\n".join(prompt_lines)
    res["Negative prompt"] = "\n".join(negative_lines)

    if res.get("Hypernet") is not None:  # old infotexts named a hypernetwork; it becomes a prompt tag
        res["Prompt"] += f"<hypernet:{res['Hypernet']}:{res.get('Hypernet strength', '1.0')}>"
    for key, default in _MISSING_KEY_DEFAULTS:
        res.setdefault(key, default)
    if res["FP8 weight"] != "Disable":
        res.setdefault("Cache FP16 weight for LoRA", False)
    res.setdefault("Refiner switch by sampling steps", False)

    for key in skip_fields:
        res.pop(key, None)
    return res


def get_override_settings(params, *, skip_fields=None):
    """(infotext key, setting name, value) for settings that declare an infotext name and differ from opts."""
    found = []
    for setting_name, info in shared.opts.data_labels.items():
        key = getattr(info, "infotext", None)
        if not key or (skip_fields and key in skip_fields):
            continue
        raw = params.get(key)
        if raw is None:
            continue
        if setting_name == "sd_model_checkpoint" and shared.opts.disable_weights_auto_swap:
            continue
        value = shared.opts.cast_value(setting_name, raw)
        if value != getattr(shared.opts, setting_name, None):
            found.append((key, setting_name, value))
    return found


def _cast_like(component, value):
    """A pasted string converted to the type of the component's current value."""
    kind = type(component.value)
    if kind == bool and value == "False":
        return False
    if kind == int:
        return float(value)
    return kind(value)


def connect_paste(button, paste_fields, input_comp, override_settings_component, tabname):
    """The ↙ / PNG-info paste: one click event, input_comp's text -> paste() -> every field's component (the
    override-settings dropdown is not modelled)."""
    button.click(fn=lambda prompt: paste(prompt, paste_fields), inputs=[input_comp], outputs=[x[0] for x in paste_fields], show_progress=False)
    button.click(fn=None, _js=f"recalculate_prompts_{tabname}", inputs=[], outputs=[], show_progress=False)


def paste(prompt: str, fields) -> list:
    """What clicking a paste button produces for `fields` (a list of (component, key or callable)): parse,
    on_infotext_pasted, then one gr.update per field, cast by the type of the component's current value
    (bool: v == "False" -> False, any other string -> True; int components get float(v); failed casts and missing
    keys give an empty gr.update())."""
    params = parse_generation_parameters(prompt)
    script_callbacks.infotext_pasted_callback(prompt, params)
    updates = []
    for component, key in fields:
        if callable(key):
            try:
                value = key(params)
            except Exception:
                errors.report(f"Error executing {key}", exc_info=True)
                value = None
        else:
            value = params.get(key)

        if value is None:
            updates.append(gr.update())
        elif isinstance(value, type_of_gr_update):
            updates.append(value)
        else:
            try:
                updates.append(gr.update(value=_cast_like(component, value)))
            except Exception:
                updates.append(gr.update())
    return updates
