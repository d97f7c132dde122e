"""modules/infotext_utils.py stand-in (alias modules.generation_parameters_copypaste): quoting, the parameter
regex, parse_generation_parameters, paste fields, and `paste()` which applies infotext_fields to component values
the way connect_paste's paste_func does (incl. its casts)."""
from __future__ import annotations

import json
import re
import sys

import gradio as gr

from modules import errors, script_callbacks, shared

sys.modules['modules.generation_parameters_copypaste'] = sys.modules[__name__]  # alias for the old name

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
type_of_gr_update = type(gr.update())


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


def reset():
    paste_fields.clear()


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
