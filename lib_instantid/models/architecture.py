"""What a set of InstantID weights is made for, and what a UNet offers: enough to tell whether they fit.

Read off tensor shapes alone (file headers, memory-mapped pickles or loaded modules), so the model list can say
which installed files fit the loaded checkpoint without loading any of them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

FAMILY_BY_CONTEXT = {2048: "SDXL", 768: "SD1.5", 1024: "SD2"}


def family_name(context_dim: int | None) -> str:
    if context_dim is None:
        return "an unknown model family"
    return FAMILY_BY_CONTEXT.get(context_dim, f"a model with context width {context_dim}")


@dataclass(frozen=True)
class Architecture:
    """Shapes that must agree between the weights and the UNet. An adapter knows its context width and the inner
    width of every cross-attention layer; an IdentityNet its context width, the channels of the residuals it adds
    to the skip connections and its added-condition width; a UNet all of them."""

    context_dim: int
    attention_widths: tuple[int, ...] = ()  # one per cross-attention layer, in the adapter's order
    skip_channels: tuple[int, ...] = ()  # one per skip connection (input block), in order
    addition_dim: int | None = None  # width of the added condition (SDXL's `y`); None without one

    @property
    def family(self) -> str:
        return family_name(self.context_dim)

    def adapter_fits(self, unet: "Architecture") -> bool:
        return (self.context_dim, self.attention_widths) == (unet.context_dim, unet.attention_widths)

    def identitynet_fits(self, unet: "Architecture") -> bool:
        mine = (self.context_dim, self.skip_channels, self.addition_dim)
        return mine == (unet.context_dim, unet.skip_channels, unet.addition_dim)

    def describe_adapter(self) -> str:
        return f"{self.family} ({len(self.attention_widths)} cross-attention layers)"

    def describe_identitynet(self) -> str:
        return f"{self.family} ({len(self.skip_channels)} skip residuals, added-condition width {self.addition_dim})"

    def describe_unet(self) -> str:
        return (f"{self.family} ({len(self.attention_widths)} cross-attention layers, {len(self.skip_channels)} skip "
                f"connections, added-condition width {self.addition_dim})")


Shapes = Mapping[str, Sequence[int]]


def adapter_architecture(shapes: Shapes) -> Architecture:
    """From the flat keys of an adapter file (`ip_adapter.<2n+1>.to_k_ip.weight`: [inner width, context width])."""
    keys = sorted((int(k.split(".")[1]), k) for k in shapes if k.startswith("ip_adapter.") and k.endswith(".to_k_ip.weight"))
    if not keys:
        raise KeyError("no ip_adapter.<n>.to_k_ip.weight tensors")
    widths = tuple(int(shapes[k][0]) for _, k in keys)
    return Architecture(int(shapes[keys[0][1]][1]), attention_widths=widths)


def identitynet_architecture(shapes: Shapes) -> Architecture:
    """From the diffusers ControlNet keys of an IdentityNet file."""
    context = next((int(v[1]) for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    if context is None:
        raise KeyError("no cross-attention (attn2.to_k) tensors")
    convs = sorted((int(k.split(".")[1]), k) for k in shapes
                   if k.startswith("controlnet_down_blocks.") and k.endswith(".weight"))
    addition = shapes.get("add_embedding.linear_1.weight")
    return Architecture(context, skip_channels=tuple(int(shapes[k][0]) for _, k in convs),
                        addition_dim=None if addition is None else int(addition[1]))
