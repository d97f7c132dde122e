"""backend/diffusion_engine/base.py stand-in: ForgeObjects (unet, clip, vae, clipvision) with `shallow_copy()` copying the four
references (so replacing `forge_objects.unet` on the copy never touches the original), and the ForgeDiffusionEngine attributes
processing relies on (forge_objects, forge_objects_original, forge_objects_after_applying_lora, current_lora_hash, is_sd1/is_sdxl, ...)."""


class ForgeObjects:
    def __init__(self, unet, clip, vae, clipvision):
        self.unet = unet
        self.clip = clip
        self.vae = vae
        self.clipvision = clipvision

    def shallow_copy(self):
        return ForgeObjects(self.unet, self.clip, self.vae, self.clipvision)


class ForgeDiffusionEngine:
    matched_guesses = []

    def __init__(self, estimated_config=None, huggingface_components=None):
        self.model_config = estimated_config
        self.is_inpaint = False
        self.forge_objects = None
        self.forge_objects_original = None
        self.forge_objects_after_applying_lora = None
        self.current_lora_hash = str([])
        self.tiling_enabled = False
        self.first_stage_model = None
        self.cond_stage_model = None
        self.use_distilled_cfg_scale = False
        self.is_sd1 = self.is_sd2 = self.is_sdxl = self.is_sd3 = False

    def set_clip_skip(self, clip_skip):
        pass

    def get_first_stage_encoding(self, x):
        return x
