"""modules/prompt_parser.py stand-in: AND composition ("a AND b:0.5": one subprompt per part, weight after a colon, default 1)
and the learned-conditioning containers processing and the denoiser use. No prompt editing/alternation schedules: every
cond has one schedule entry (end_at_step = steps). SDXL conds are DictWithShape {crossattn, vector} with `advanced_indexing`."""
import re
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])
ComposableScheduledPromptConditioning = namedtuple("ComposableScheduledPromptConditioning", ["schedules", "weight"])
re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


class SdConditioning(list):
    """A list of prompts with the size and negative flag the SDXL conditioning reads."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None, distilled_cfg_scale=None):
        super().__init__()
        self.extend(prompts)
        copy_from = copy_from if copy_from is not None else prompts
        self.is_negative_prompt = is_negative_prompt or getattr(copy_from, "is_negative_prompt", False)
        self.width = width or getattr(copy_from, "width", None)
        self.height = height or getattr(copy_from, "height", None)
        self.distilled_cfg_scale = distilled_cfg_scale


class DictWithShape(dict):
    def __init__(self, x):
        super().__init__()
        self.update(x)

    @property
    def shape(self):
        return self["crossattn"].shape

    def to(self, *args, **kwargs):
        return DictWithShape({k: v.to(*args, **kwargs) for k, v in self.items()})

    def advanced_indexing(self, item):
        return DictWithShape({k: v[item] for k, v in self.items()})


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape = shape
        self.batch = batch


def get_multicond_prompt_list(prompts):
    res_indexes, prompt_flat_list = [], SdConditioning([], copy_from=prompts)
    for prompt in prompts:
        indexes = []
        for subprompt in re_AND.split(prompt):
            text, weight = re_weight.search(subprompt).groups()
            weight = float(weight) if weight is not None else 1.0
            indexes.append((len(prompt_flat_list), weight))
            prompt_flat_list.append(text)
        res_indexes.append(indexes)
    return res_indexes, prompt_flat_list


def get_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    conds = model.get_learned_conditioning(prompts)
    if isinstance(conds, dict):
        return [[ScheduledPromptConditioning(steps, {k: v[i] for k, v in conds.items()})] for i in range(len(prompts))]
    return [[ScheduledPromptConditioning(steps, conds[i])] for i in range(len(prompts))]


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False):
    res_indexes, flat = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[i], weight) for i, weight in indexes] for indexes in res_indexes]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


def _stack(items):
    if isinstance(items[0], dict):
        return DictWithShape({k: torch.stack([x[k] for x in items]) for k in items[0]})
    return torch.stack(items)


def _at_step(schedules, step):
    return next((s.cond for s in schedules if step <= s.end_at_step), schedules[-1].cond)


def reconstruct_cond_batch(c, current_step):
    return _stack([_at_step(schedules, current_step) for schedules in c])


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    conds_list, tensors = [], []
    for composable_prompts in c.batch:
        conds = []
        for composable in composable_prompts:
            conds.append((len(tensors), composable.weight))
            tensors.append(_at_step(composable.schedules, current_step))
        conds_list.append(conds)
    return conds_list, _stack(tensors)
