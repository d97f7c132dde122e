"""modules/paths_internal.py stand-in: the folders (script_path is the stand-in root, data_path / models_path / extensions_dir
a temporary folder unless the harness sets them)."""
import os
import tempfile

script_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data_path = os.path.join(tempfile.gettempdir(), "forge-standin-data")
models_path = os.path.join(data_path, "models")
extensions_dir = os.path.join(data_path, "extensions")
extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
default_output_dir = os.path.join(data_path, "outputs")
