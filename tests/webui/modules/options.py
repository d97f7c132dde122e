"""modules/options.py stand-in: OptionInfo and Options (values live in `opts.data`, defaults in `data_labels`)."""
from __future__ import annotations

import copy


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False, category_id=None):
        self.default, self.label = default, label
        self.component, self.component_args, self.refresh = component, component_args, refresh
        self.onchange = onchange
        self.section, self.category_id = section, category_id
        self.comment_before, self.comment_after = comment_before, comment_after  # HTML around the setting
        self.infotext = infotext  # the infotext key that carries this setting, if any
        self.restrict_api = restrict_api
        self.do_not_save = False

    # builder-style helpers that append HTML to the comments and return the option

    def _before(self, html):
        self.comment_before += html
        return self

    def _after(self, html):
        self.comment_after += html
        return self

    def link(self, label, url):
        return self._before(f"[<a href='{url}' target='_blank'>{label}</a>]")

    def js(self, label, js_func):
        return self._before(f"[<a onclick='{js_func}(); return false'>{label}</a>]")

    def info(self, info):
        return self._after(f"<span class='info'>({info})</span>")

    def html(self, html):
        return self._after(html)

    def needs_restart(self):
        return self._after(" <span class='info'>(requires restart)</span>")

    def needs_reload_ui(self):
        return self._after(" <span class='info'>(requires Reload UI)</span>")


class OptionHTML(OptionInfo):
    """Static HTML shown among the settings; it has no value to save."""

    def __init__(self, text):
        super().__init__(str(text).strip(), label='', component=lambda **kwargs: None)
        self.do_not_save = True


def options_section(section_identifier, options_dict):
    """Tags each option with its section: (id, label), or (id, label, category id)."""
    size = len(section_identifier)
    if size in (2, 3):
        for info in options_dict.values():
            info.section = section_identifier if size == 2 else section_identifier[:2]
            if size == 3:
                info.category_id = section_identifier[2]
    return options_dict


class Options:
    typemap = {int: float}

    def __init__(self, data_labels: dict[str, OptionInfo], restricted_opts=None):
        self.data_labels = data_labels
        self.data = {k: copy.deepcopy(v.default) for k, v in self.data_labels.items() if not v.do_not_save}
        self.restricted_opts = restricted_opts or set()

    def __setattr__(self, key, value):
        if key in ("data", "data_labels", "restricted_opts"):
            return super().__setattr__(key, value)
        if self.data is not None and (key in self.data or key in self.data_labels):
            self.data[key] = value
            return
        return super().__setattr__(key, value)

    def __getattr__(self, item):
        if item in ("data", "data_labels", "restricted_opts"):
            raise AttributeError(item)
        if self.data is not None and item in self.data:
            return self.data[item]
        info = self.data_labels.get(item)
        if info is not None:  # an option without a stored value reads as its default
            return info.default
        return super().__getattribute__(item)

    def set(self, key, value, is_api=False, run_callbacks=True):
        """Sets an option and calls its onchange callback; returns True if the option changed."""
        oldval = self.data.get(key, None)
        if oldval == value:
            return False
        option = self.data_labels.get(key)
        if option is not None and option.do_not_save:
            return False
        if is_api and option is not None and option.restrict_api:
            return False
        try:
            setattr(self, key, value)
        except RuntimeError:
            return False
        if run_callbacks and option is not None and option.onchange is not None:
            try:
                option.onchange()
            except Exception:
                self.data[key] = oldval
                raise
        return True

    def get_default(self, key):
        info = self.data_labels.get(key)
        return None if info is None else info.default

    def add_option(self, key, info):
        self.data_labels[key] = info
        if not info.do_not_save:
            self.data.setdefault(key, info.default)

    def onchange(self, key, func, call=True):
        item = self.data_labels.get(key)
        item.onchange = func
        if call:
            func()

    def cast_value(self, key, value):
        """A pasted or API value converted to the type of the option's default (or, lacking one, its value)."""
        if value is None:
            return None
        reference = self.data_labels[key].default
        if reference is None:
            reference = getattr(self, key, None)
        if reference is None:
            return None
        kind = type(reference)
        return False if kind == bool and value == "False" else kind(value)

    def reset(self):
        """Stand-in only: every option back to its default (tests call this between jobs)."""
        self.data = {k: copy.deepcopy(v.default) for k, v in self.data_labels.items() if not v.do_not_save}
