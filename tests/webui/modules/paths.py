"""modules/paths.py stand-in: copies of the paths_internal values, as A1111's `from modules.paths_internal import
models_path, script_path, data_path, extensions_dir, extensions_builtin_dir, cwd` (copies: changing
paths_internal later does not change these; the harness's set_data_dir updates both). The sys.path set-up for the
repositories A1111 does here is not modelled."""
from modules.paths_internal import models_path, script_path, data_path, extensions_dir, extensions_builtin_dir, cwd  # noqa: F401

paths = {}
