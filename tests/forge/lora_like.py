"""A LoRA-like extra network for the Forge stand-in, behaving like Forge's built-in sd_forge_lora (networks.load_networks):
`<lora:name:multiplier>` in a prompt; on activation the set of (name, multiplier) is hashed and, when it differs from
sd_model.current_lora_hash, forge_objects.unet is reset to forge_objects_original.unet, a clone gets `add_patches(filename=name,
patches=..., strength_patch=multiplier)` per network, and forge_objects_after_applying_lora = forge_objects.shallow_copy().
The weights change only when that patcher (or a clone of it) is loaded: memory_management -> refresh_loras merges them into
the shared model in place (backups restore them when the set changes). Patches are {UNet parameter name: (diff tensor,)}
with names as in `unet.model.named_parameters()` ("diffusion_model.input_blocks...")."""
from modules import extra_networks, shared

networks: dict[str, dict] = {}  # name -> patches


class ExtraNetworkLora(extra_networks.ExtraNetwork):
    def __init__(self):
        super().__init__("lora")
        self.activations = []

    def activate(self, p, params_list):
        names = [params.positional[0] for params in params_list]
        multipliers = [float(params.positional[1]) if len(params.positional) > 1 else 1.0 for params in params_list]
        self.activations.append(list(zip(names, multipliers)))
        load_networks(names, multipliers)
        if names:
            p.extra_generation_params["Lora hashes"] = ", ".join(f"{n}: {abs(hash(n)) % 10 ** 8:08d}" for n in names)

    def deactivate(self, p):
        pass


def load_networks(names, multipliers):
    sd = shared.sd_model
    compiled = str([[name, m] for name, m in zip(names, multipliers)])
    if sd.current_lora_hash == compiled:
        return
    sd.current_lora_hash = compiled
    sd.forge_objects.unet = sd.forge_objects_original.unet
    sd.forge_objects.clip = sd.forge_objects_original.clip
    for name, multiplier in zip(names, multipliers):
        unet = sd.forge_objects.unet.clone()
        unet.add_patches(filename=name, patches=networks[name], strength_patch=multiplier, strength_model=1.0)
        sd.forge_objects.unet = unet
    sd.forge_objects_after_applying_lora = sd.forge_objects.shallow_copy()


def register():
    network = ExtraNetworkLora()
    extra_networks.register_extra_network(network)
    return network
