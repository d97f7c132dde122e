"""modules/paths_internal.py stand-in. The data dir is a per-process temp folder, never the repository."""
import os
import tempfile

webui_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # tests/webui
script_path = webui_dir
modules_path = os.path.join(webui_dir, "modules")
data_path = os.path.join(tempfile.gettempdir(), f"a1111-standin-{os.getpid()}")
# user data (models, extensions, outputs) under data_path; the program's own folders under script_path
models_path, extensions_dir, default_output_dir = (os.path.join(data_path, name) for name in ("models", "extensions", "outputs"))
extensions_builtin_dir, config_states_dir = (os.path.join(script_path, name) for name in ("extensions-builtin", "config_states"))
sd_configs_path = os.path.join(script_path, "configs")
sd_default_config = os.path.join(sd_configs_path, "v1-inference.yaml")
sd_model_file = os.path.join(script_path, "model.ckpt")
default_sd_model_file = sd_model_file
