"""modules/rng.py stand-in: per-image noise from per-seed CPU generators (A1111's "CPU" RNG source), first call
seeded, later calls continue each image's generator. Variation seeds / seed resize are not modelled."""
from __future__ import annotations

import torch

from modules import devices


def create_generator(seed):
    generator = torch.Generator(devices.cpu)
    generator.manual_seed(int(seed))
    return generator


def randn(seed, shape, generator=None):
    if generator is None:
        generator = create_generator(seed)
    return torch.randn(shape, device=devices.cpu, generator=generator).to(devices.device)


def randn_without_seed(shape, generator=None):
    return torch.randn(shape, device=devices.cpu, generator=generator).to(devices.device)


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(int(size) for size in shape)
        self.seeds, self.subseeds, self.subseed_strength = seeds, subseeds, subseed_strength
        self.seed_resize_from_h, self.seed_resize_from_w = seed_resize_from_h, seed_resize_from_w
        self.generators = list(map(create_generator, seeds))  # one generator per image
        self.is_first = True

    def first(self):
        xs = [randn(seed, self.shape, generator=generator) for seed, generator in zip(self.seeds, self.generators)]
        return torch.stack(xs).to(devices.device)

    def next(self):
        if self.is_first:
            self.is_first = False
            return self.first()
        xs = [randn_without_seed(self.shape, generator=generator) for generator in self.generators]
        return torch.stack(xs).to(devices.device)
