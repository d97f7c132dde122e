"""modules/script_loading.py stand-in: import a file as a module named by its basename (not put in sys.modules)."""
import importlib.util
import os

from modules import errors

loaded_scripts = {}


def load_module(path):
    spec = importlib.util.spec_from_file_location(os.path.basename(path), path)
    loaded = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loaded)
    loaded_scripts[path] = loaded
    return loaded


def preload_extensions(extensions_dir, parser, extension_list=None):
    """Runs preload(parser) of every <extension>/preload.py (errors are reported, not raised)."""
    if not os.path.isdir(extensions_dir):
        return
    candidates = (os.path.join(extensions_dir, name, "preload.py") for name in sorted(os.listdir(extensions_dir)))
    for script in filter(os.path.isfile, candidates):
        try:
            hook = getattr(load_module(script), 'preload', None)
            if hook is not None:
                hook(parser)
        except Exception:
            errors.report(f"Error running preload() for {script}", exc_info=True)
