"""modules/ui_components.py stand-in (Forge's = A1111's): ToolButton, FormRow, FormColumn, FormGroup, FormHTML,
DropdownMulti, DropdownEditable, ResizeHandleRow, and InputAccordion -- a hidden gr.Checkbox (the value scripts receive:
True when open) driving a gr.Accordion; `with InputAccordion(False, label=...) as acc:` enters the accordion, `acc.extra()`
gives a column in its label."""
from functools import wraps

import gradio as gr

from modules import gradio_extensions  # noqa: F401  (the gradio-4 shims)


class FormComponent:
    webui_do_not_create_gradio_pyi_thank_you = True

    def get_expected_parent(self):
        return gr.components.Form


gr.Dropdown.get_expected_parent = FormComponent.get_expected_parent


class ToolButton(gr.Button, FormComponent):
    @wraps(gr.Button.__init__)
    def __init__(self, value="", *args, elem_classes=None, **kwargs):
        super().__init__(*args, elem_classes=["tool", *(elem_classes or [])], value=value, **kwargs)

    def get_block_name(self):
        return "button"


class ResizeHandleRow(gr.Row):
    webui_do_not_create_gradio_pyi_thank_you = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.elem_classes = [*(self.elem_classes or []), "resize-handle-row"]

    def get_block_name(self):
        return "row"


class FormRow(gr.Row, FormComponent):
    def get_block_name(self):
        return "row"


class FormColumn(gr.Column, FormComponent):
    def get_block_name(self):
        return "column"


class FormGroup(gr.Group, FormComponent):
    def get_block_name(self):
        return "group"


class FormHTML(gr.HTML, FormComponent):
    def get_block_name(self):
        return "html"


class DropdownMulti(gr.Dropdown, FormComponent):
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "multiselect": True})

    def get_block_name(self):
        return "dropdown"


class DropdownEditable(gr.Dropdown, FormComponent):
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "allow_custom_value": True})

    def get_block_name(self):
        return "dropdown"


class InputAccordionImpl(gr.Checkbox):
    webui_do_not_create_gradio_pyi_thank_you = True
    global_index = 0

    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:
            super().__init__(value=value, **kwargs)
            return
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1
        super().__init__(value=value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.change(fn=None, _js='function(checked){ inputAccordionChecked("' + self.accordion_id + '", checked); }', inputs=[self])
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id, "label": kwargs.get("label", "Accordion"),
                                         "elem_classes": ["input-accordion"], "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
