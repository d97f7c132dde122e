"""modules/infotext_utils.py stand-in: quote / unquote of infotext values, `parse_generation_parameters(text)` (prompt, negative
prompt, "key: value" pairs incl. quoted JSON-like values, Size-1/Size-2, defaults for missing Forge keys such as
"Hires CFG Scale"), which ends by calling the on_infotext_pasted callbacks (infotext, params) as Forge does; paste-field
registration (`register_paste_params_button`, `paste_fields`) is recorded, not wired to a UI."""
import json
import re

from modules import script_callbacks

re_param_code = r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)'
re_param = re.compile(re_param_code)
re_imagesize = re.compile(r"^(\d+)x(\d+)$")
paste_fields: dict = {}
registered_param_bindings: list = []


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text):
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str, skip_fields=None):
    res = {}
    prompt, negative_prompt, done_with_prompt = "", "", False
    *lines, lastline = x.strip().split("\n")
    if len(re_param.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in re_param.findall(lastline):
        try:
            if v and v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = re_imagesize.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f"Error parsing \"{k}: {v}\"")
    res.setdefault("Clip skip", "1")
    res.setdefault("Hires resize-1", "0")
    res.setdefault("Hires resize-2", "0")
    res.setdefault("Hires CFG Scale", "1.0")
    res.setdefault("Schedule type", "Automatic")
    for key in skip_fields or []:
        res.pop(key, None)
    script_callbacks.infotext_pasted_callback(x, res)
    return res


class ParamBinding:
    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None,
                 source_tabname=None, override_settings_component=None, paste_field_names=None):
        self.paste_button, self.tabname = paste_button, tabname
        self.source_text_component, self.source_image_component = source_text_component, source_image_component
        self.source_tabname, self.override_settings_component = source_tabname, override_settings_component
        self.paste_field_names = paste_field_names or []


def register_paste_params_button(binding):
    registered_param_bindings.append(binding)


def add_paste_fields(tabname, init_img, fields, override_settings_component=None):
    paste_fields[tabname] = {"init_img": init_img, "fields": fields, "override_settings_component": override_settings_component}


def reset():
    paste_fields.clear()
    registered_param_bindings.clear()
