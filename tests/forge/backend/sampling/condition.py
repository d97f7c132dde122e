"""backend/sampling/condition.py stand-in: the condition wrappers of one batched UNet call. `ConditionCrossAttn` concatenates
contexts of different token counts by repeating each to their least common multiple, and refuses (-> separate UNet calls)
when that is more than 4x the shorter one; `compile_conditions` turns a text cond (tensor, or dict crossattn/vector for SDXL)
into [{cross_attn, model_conds: {c_crossattn, y}}]; `compile_weighted_conditions` makes one entry per AND-subprompt group
with its weight as 'strength' (backend/sampling/condition.py)."""
import math

import torch


def repeat_to_batch_size(tensor, batch_size):
    if tensor.shape[0] > batch_size:
        return tensor[:batch_size]
    if tensor.shape[0] < batch_size:
        return tensor.repeat([math.ceil(batch_size / tensor.shape[0])] + [1] * (len(tensor.shape) - 1))[:batch_size]
    return tensor


def lcm(a, b):
    return abs(a * b) // math.gcd(a, b)


class Condition:
    def __init__(self, cond):
        self.cond = cond

    def _copy_with(self, cond):
        return self.__class__(cond)

    def process_cond(self, batch_size, device, **kwargs):
        return self._copy_with(repeat_to_batch_size(self.cond, batch_size).to(device))

    def can_concat(self, other):
        return self.cond.shape == other.cond.shape

    def concat(self, others):
        return torch.cat([self.cond] + [x.cond for x in others])


class ConditionCrossAttn(Condition):
    def can_concat(self, other):
        s1, s2 = self.cond.shape, other.cond.shape
        if s1 != s2:
            if s1[0] != s2[0] or s1[2] != s2[2]:
                return False
            if lcm(s1[1], s2[1]) // min(s1[1], s2[1]) > 4:
                return False
        return True

    def concat(self, others):
        conds = [self.cond] + [x.cond for x in others]
        length = 1
        for c in conds:
            length = lcm(length, c.shape[1])
        return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


def compile_conditions(cond):
    if cond is None:
        return None
    if isinstance(cond, torch.Tensor):
        return [dict(cross_attn=cond, model_conds=dict(c_crossattn=ConditionCrossAttn(cond)))]
    result = dict(cross_attn=cond["crossattn"], pooled_output=cond["vector"],
                  model_conds=dict(c_crossattn=ConditionCrossAttn(cond["crossattn"]), y=Condition(cond["vector"])))
    return [result]


def compile_weighted_conditions(cond, weights):
    results = []
    for group in map(list, zip(*weights)):
        indices = [i for i, _ in group]
        weight = group[-1][1]
        feed = cond.advanced_indexing(indices) if hasattr(cond, "advanced_indexing") else cond[indices]
        compiled = compile_conditions(feed)
        compiled[0]["strength"] = weight
        results += compiled
    return results
