"""backend/patcher/lora.py stand-in: the LoraLoader every torch model gets (`model.lora_loader`), which merges a patcher's
`lora_patches` into the model's weights IN PLACE when the patcher is loaded (memory_management.LoadedModel.model_load ->
`refresh_loras`), keeping backups so that another patch set (or none) restores the originals first, as Forge does.

Patch values understood: `(diff,)` (a weight difference, Forge's "diff" type) and `("diff", (diff,))`; each entry of a key's
list is [strength_patch, value, strength_model, offset, function]: weight = weight*strength_model + strength_patch*function(diff).
Not modelled: LoRA/LoHa/LoKr/GLoRA decompositions, online (on-the-fly) LoRA, fp8/nf4/gguf weights.
"""
import torch

from backend import utils


class LoraLoader:
    def __init__(self, model):
        self.model = model
        self.backup = {}
        self.loaded_hash = str([])

    @torch.no_grad()
    def refresh(self, lora_patches, offload_device=torch.device("cpu")):
        hashes = str(list(lora_patches.keys()))
        if hashes == self.loaded_hash:
            return
        for key, weight in self.backup.items():
            utils.get_attr(self.model, key).data.copy_(weight)
        self.backup = {}
        for identifier, patches in lora_patches.items():
            for key, entries in patches.items():
                parameter = utils.get_attr(self.model, key)
                if key not in self.backup:
                    self.backup[key] = parameter.detach().clone()
                weight = parameter.data
                for strength_patch, value, strength_model, offset, function in entries:
                    if isinstance(value, tuple) and len(value) == 2 and value[0] == "diff":
                        value = value[1]
                    diff = value[0]
                    function = function or (lambda a: a)
                    target = weight.narrow(offset[0], offset[1], offset[2]) if offset is not None else weight
                    if strength_model != 1.0:
                        target *= strength_model
                    target += strength_patch * function(diff.to(target))
        self.loaded_hash = hashes
