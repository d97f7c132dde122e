"""modules/script_loading.py stand-in: load a script file as a module named after its file name (A1111/Forge's way)."""
import importlib.util
import os


def load_module(path):
    module_spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module
