"""modules/rng.py stand-in: ImageRNG, one seeded torch generator per image (subseeds / variation not modelled);
`next()` returns [B, *shape] noise on the CPU."""
import torch


class ImageRNG:
    def __init__(self, shape, seeds, subseeds=None, subseed_strength=0.0, seed_resize_from_h=0, seed_resize_from_w=0):
        self.shape = tuple(int(x) for x in shape)
        self.generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]

    def next(self):
        return torch.stack([torch.randn(self.shape, generator=g) for g in self.generators])
