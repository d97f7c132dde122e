"""modules/paths.py stand-in: re-exports the paths_internal values (copies, as in A1111)."""
from modules.paths_internal import models_path, script_path, data_path, extensions_dir, extensions_builtin_dir  # noqa: F401

paths = {}
