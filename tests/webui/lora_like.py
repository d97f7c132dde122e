"""An extensions-builtin/Lora-style neighbour: a class-level patch of torch.nn.Linear.forward.

Only Linear layers given a `network_layer_name` (see `assign_names`) are affected. Two modes, chosen per call by
opts.lora_functional like A1111:
  * merged (default): the first call after the set of networks changed backs the weight up (CPU copy in
    `network_weights_backup`) and adds the deltas in place (`network_current_names` remembers what is merged);
    then the original forward runs on the merged weight;
  * functional: the backup is restored into the weight, the original forward runs, then each network's
    up(down(x)) * multiplier is added to the output.
Torch hooks on the Linear still fire around the patched forward. `uninstall()` restores the class attribute and
every touched weight.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from modules import shared


@dataclass
class Network:
    name: str
    multiplier: float = 1.0
    layers: dict = field(default_factory=dict)  # network_layer_name -> (up [out, r], down [r, in])


class LoraLike:
    def __init__(self):
        self.networks: list[Network] = []
        self.original_forward = None
        self.touched: list[torch.nn.Linear] = []

    # --- setup ---------------------------------------------------------------------------------------------

    @staticmethod
    def assign_names(model: torch.nn.Module, prefix: str = "diffusion_model"):
        for name, module in model.named_modules():
            module.network_layer_name = f"{prefix}_{name}".replace(".", "_")

    def add_network(self, name: str, model: torch.nn.Module, layer_names, rank: int = 2, multiplier: float = 1.0, seed: int = 0):
        """A random low-rank network over the Linear layers of `model` whose module names are in layer_names."""
        generator = torch.Generator().manual_seed(seed)
        layers = {}
        modules = dict(model.named_modules())
        for module_name in layer_names:
            module = modules[module_name]
            up = torch.randn(module.out_features, rank, generator=generator) * 0.1
            down = torch.randn(rank, module.in_features, generator=generator) * 0.1
            layers[module.network_layer_name] = (up, down)
        self.networks.append(Network(name, multiplier, layers))
        return self.networks[-1]

    def install(self):
        if self.original_forward is not None:
            return
        self.original_forward = torch.nn.Linear.forward
        outer = self

        def network_Linear_forward(module, input):
            if shared.opts.lora_functional:
                return outer._functional_forward(module, input)
            outer._apply_weights(module)
            return outer.original_forward(module, input)

        torch.nn.Linear.forward = network_Linear_forward

    def uninstall(self):
        if self.original_forward is None:
            return
        torch.nn.Linear.forward = self.original_forward
        self.original_forward = None
        for module in self.touched:
            self._restore_weights(module)
            module.network_current_names = ()

    # --- the two modes -------------------------------------------------------------------------------------

    def _wanted(self, module):
        layer = getattr(module, "network_layer_name", None)
        return tuple((net.name, net.multiplier) for net in self.networks if layer is not None and layer in net.layers)

    def _restore_weights(self, module):
        backup = getattr(module, "network_weights_backup", None)
        if backup is not None:
            with torch.no_grad():
                module.weight.copy_(backup)

    def _apply_weights(self, module):
        wanted = self._wanted(module)
        current = getattr(module, "network_current_names", ())
        if current == wanted:
            return
        if getattr(module, "network_weights_backup", None) is None and wanted != ():
            if current != ():
                raise RuntimeError("no backup weights found and current weights are not unchanged")
            module.network_weights_backup = module.weight.detach().to("cpu", copy=True)
            self.touched.append(module)
        self._restore_weights(module)
        layer = module.network_layer_name
        with torch.no_grad():
            for net in self.networks:
                if layer in net.layers:
                    up, down = net.layers[layer]
                    module.weight += (up @ down * net.multiplier).to(module.weight)
        module.network_current_names = wanted

    def _functional_forward(self, module, input):
        self._restore_weights(module)
        module.network_current_names = ()
        y = self.original_forward(module, input)
        layer = getattr(module, "network_layer_name", None)
        for net in self.networks:
            if layer in net.layers:
                up, down = net.layers[layer]
                y = y + (input @ down.T.to(input) @ up.T.to(input)) * net.multiplier
        return y
