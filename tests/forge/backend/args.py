"""backend/args.py stand-in: the backend's command-line flags (`args`) and `dynamic_args`, as attributes tests may set.
Only the flags this stand-in reads exist: unet_in_bf16 / unet_in_fp16 (memory_management.unet_dtype), always_offload_from_vram,
disable_gpu_warning, attention_split."""
import argparse

args = argparse.Namespace(unet_in_bf16=False, unet_in_fp16=False, unet_in_fp8_e4m3fn=False, always_offload_from_vram=False,
                          disable_gpu_warning=True, attention_split=False, pin_shared_memory=False)
dynamic_args = dict(embedding_dir=None, emphasis_name="Original", online_lora=False, forge_unet_storage_dtype=None)


def reset():
    for key in ("unet_in_bf16", "unet_in_fp16", "unet_in_fp8_e4m3fn", "always_offload_from_vram", "attention_split"):
        setattr(args, key, False)
