"""modules/shared_cmd_options.py stand-in: `cmd_opts` is an argparse Namespace with the flags' defaults (A1111
parses sys.argv; here tests set attributes, and `reset()` puts every default back in place).

Flags that take a value: --api-auth and --gradio-auth ("user:pass[,user2:pass2]"), --gradio-auth-path,
--data-dir (default: the stand-in's temp data dir, see paths_internal) and --models-dir, --ckpt-dir,
--embeddings-dir, --precision, --device-id, --ui-settings-file, --subpath. Changing data_dir/models_dir here does
not move the paths: use the harness's set_data_dir (A1111 computes the paths once, at start-up)."""
import argparse

from modules import paths_internal

parser = argparse.ArgumentParser(add_help=False)
for flag in ("medvram", "medvram-sdxl", "lowvram", "xformers", "no-half", "no-half-vae", "upcast-sampling", "api",
             "nowebui", "disable-nan-check", "api-log", "api-server-stop", "no-prompt-history", "hide-ui-dir-config",
             "disable-safe-unpickle", "skip-version-check", "lora-dir", "listen", "share", "no-gradio-queue"):
    parser.add_argument(f"--{flag}", action="store_true")
parser.add_argument("--api-auth", type=str, default=None)
parser.add_argument("--gradio-auth", type=str, default=None)
parser.add_argument("--gradio-auth-path", type=str, default=None)
parser.add_argument("--data-dir", type=str, default=paths_internal.DEFAULT_DATA_DIR)
parser.add_argument("--models-dir", type=str, default=None)
parser.add_argument("--ckpt-dir", type=str, default=None)
parser.add_argument("--embeddings-dir", type=str, default="/nonexistent-embeddings-dir")
parser.add_argument("--precision", type=str, default="autocast")
parser.add_argument("--device-id", type=str, default=None)
parser.add_argument("--ui-settings-file", type=str, default="config.json")
parser.add_argument("--subpath", type=str, default=None)

cmd_opts = parser.parse_args([])


def reset():
    """Stand-in only: every flag back to its default, in place (modules hold references to cmd_opts)."""
    fresh = parser.parse_args([])
    cmd_opts.__dict__.clear()
    cmd_opts.__dict__.update(vars(fresh))
