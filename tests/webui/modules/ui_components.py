"""modules/ui_components.py stand-in: InputAccordion (a gr.Checkbox driving a gr.Accordion), FormRow, FormGroup,
FormColumn, FormHTML, ToolButton, DropdownMulti, DropdownEditable, ResizeHandleRow."""
from functools import wraps

import gradio as gr


class FormComponent:
    """Mixin for components that gradio may place directly inside a form."""

    webui_do_not_create_gradio_pyi_thank_you = True

    def get_expected_parent(self):
        return gr.components.Form


gr.Dropdown.get_expected_parent = FormComponent.get_expected_parent


class ToolButton(gr.Button, FormComponent):
    """A compact one-symbol button that can sit in a form row."""

    @wraps(gr.Button.__init__)
    def __init__(self, value="", *args, elem_classes=None, **kwargs):
        classes = ["tool", *(elem_classes or [])]
        super().__init__(*args, elem_classes=classes, value=value, **kwargs)

    def get_block_name(self):
        return "button"


class ResizeHandleRow(gr.Row):
    webui_do_not_create_gradio_pyi_thank_you = True

    @wraps(gr.Row.__init__)
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


class FormColorPicker(gr.ColorPicker, FormComponent):
    def get_block_name(self):
        return "colorpicker"


class DropdownMulti(gr.Dropdown, FormComponent):
    @wraps(gr.Dropdown.__init__)
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, 'multiselect': True})

    def get_block_name(self):
        return "dropdown"


class DropdownEditable(gr.Dropdown, FormComponent):
    @wraps(gr.Dropdown.__init__)
    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, 'allow_custom_value': True})

    def get_block_name(self):
        return "dropdown"


class InputAccordionImpl(gr.Checkbox):
    """An accordion usable as an input: a hidden checkbox (the value; open == True) plus a gr.Accordion kept in
    sync by the WebUI's javascript."""

    webui_do_not_create_gradio_pyi_thank_you = True
    global_index = 0

    @wraps(gr.Checkbox.__init__)
    def __init__(self, value=None, setup=False, **kwargs):
        if not setup:  # gradio re-creating the component from its config: a plain checkbox
            gr.Checkbox.__init__(self, value=value, **kwargs)
            return

        accordion_id = kwargs.get('elem_id')
        if accordion_id is None:  # accordions created without an id are numbered
            accordion_id = f"input-accordion-{InputAccordionImpl.global_index}"
            InputAccordionImpl.global_index += 1
        self.accordion_id = accordion_id

        checkbox_kwargs = dict(kwargs, elem_id=f"{accordion_id}-checkbox", visible=False)
        gr.Checkbox.__init__(self, value=value, **checkbox_kwargs)
        self.change(fn=None, _js='function(checked){ inputAccordionChecked("' + accordion_id + '", checked); }', inputs=[self])

        accordion_kwargs = dict(kwargs, elem_id=accordion_id, label=kwargs.get('label', 'Accordion'),
                                elem_classes=['input-accordion'], open=value)
        self.accordion = gr.Accordion(**accordion_kwargs)

    def extra(self):
        """A column placed in the accordion's header."""
        return gr.Column(elem_id=f"{self.accordion_id}-extra", elem_classes='input-accordion-extra', min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, *exc_info):
        self.accordion.__exit__(*exc_info)

    def get_block_name(self):
        return "checkbox"


def InputAccordion(value=None, **kwargs):
    return InputAccordionImpl(value=value, setup=True, **kwargs)
