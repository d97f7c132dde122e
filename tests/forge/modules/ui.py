"""modules/ui.py stand-in: `create_ui()` builds, for txt2img then img2img, what Forge's ui.create_ui does for scripts:
scripts_current = the runner, initialize_scripts(is_img2img), inside a gr.Blocks: prepare_ui and setup_ui (the "Script"
dropdown at input 0, the AlwaysVisible scripts' controls, args_from / args_to) and the output panel's generation info
(ui_common), the script infotext fields registered as
paste fields; on_ui_settings callbacks; scripts_current = None. Returns the demo (gr.Blocks). None of the WebUI's own tabs,
settings page or gallery are built."""
import gradio as gr

from modules import gradio_extensions  # noqa: F401
from modules import infotext_utils, script_callbacks, scripts, shared, ui_common

demo = None


def create_ui():
    global demo
    with gr.Blocks(analytics_enabled=False) as blocks:
        for is_img2img, runner in ((False, scripts.scripts_txt2img), (True, scripts.scripts_img2img)):
            tabname = "img2img" if is_img2img else "txt2img"
            scripts.scripts_current = runner
            runner.initialize_scripts(is_img2img=is_img2img)
            with gr.Tab(tabname):
                runner.prepare_ui()
                runner.setup_ui()
                ui_common.create_output_panel(tabname)
            infotext_utils.add_paste_fields(tabname, None, list(runner.infotext_fields))
        scripts.scripts_current = None
    script_callbacks.ui_settings_callback()
    demo = shared.demo = blocks
    return blocks
