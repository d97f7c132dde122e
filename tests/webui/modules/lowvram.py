"""modules/lowvram.py stand-in: is_needed/is_enabled from cmd_opts; nothing is offloaded."""
from modules import shared


def is_needed(sd_model):
    return shared.cmd_opts.lowvram or shared.cmd_opts.medvram or (shared.cmd_opts.medvram_sdxl and getattr(sd_model, "is_sdxl", False))


def is_enabled(sd_model):
    return getattr(sd_model, "lowvram", False)


def send_everything_to_cpu():
    pass


def setup_for_low_vram(sd_model, use_medvram):
    sd_model.lowvram = True
