"""modules/paths_internal.py stand-in: where the program is (script_path) and where user data is (data_path).

As in A1111 1.10:
- `script_path` is the install dir (here tests/webui, the parent of `modules/`); `--data-dir` does not move it, and
  neither `extensions_builtin_dir`, `config_states_dir` nor the `configs` folder (all under script_path);
- `data_path` is `--data-dir`; `models_path` is `--models-dir`, else data_path/models; `extensions_dir` is
  data_path/extensions (installed extensions live in extensions_dir/<folder name>); `default_output_dir` is
  data_path/outputs.

Not as in A1111: the default data dir is a per-process temp folder instead of script_path, so nothing is ever
written into the repository, and the flags are not read from sys.argv here (tests set them with
`apply_data_dir`, which the harness's `set_data_dir` calls; A1111 parses them once at import).
"""
import os
import tempfile

webui_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/webui
cwd = os.getcwd()
modules_path = os.path.join(webui_dir, "modules")
script_path = webui_dir

sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file

DEFAULT_DATA_DIR = os.path.join(tempfile.gettempdir(), f"a1111-standin-{os.getpid()}")

extensions_builtin_dir = os.path.join(script_path, "extensions-builtin")
config_states_dir = os.path.join(script_path, "config_states")
roboto_ttf_file = os.path.join(modules_path, "Roboto-Regular.ttf")

# the user-data paths, set by apply_data_dir below
data_path = models_path = extensions_dir = default_output_dir = None

# names (in this module) that other modules copy with `from modules.paths_internal import ...`
DATA_DIR_NAMES = ("data_path", "models_path", "extensions_dir", "default_output_dir")


def data_dir_paths(data_dir=None, models_dir=None) -> dict:
    """The user-data paths for `--data-dir data_dir [--models-dir models_dir]` (None: the flag's default)."""
    data = data_dir if data_dir is not None else DEFAULT_DATA_DIR
    return {
        "data_path": data,
        "models_path": models_dir if models_dir else os.path.join(data, "models"),
        "extensions_dir": os.path.join(data, "extensions"),
        "default_output_dir": os.path.join(data, "outputs"),
    }


def apply_data_dir(data_dir=None, models_dir=None) -> dict:
    """Stand-in only: set this module's user-data paths as A1111 computes them at start-up; returns them (callers
    that hold copies, modules.paths and modules.shared, must be updated too: the harness does that)."""
    values = data_dir_paths(data_dir, models_dir)
    globals().update(values)
    return values


apply_data_dir()
