"""modules/prompt_parser.py stand-in: the cond containers A1111 passes around, AND-composition with weights, and
the batch reconstruction used by CFGDenoiser. Prompt editing ([a:b:step]) is not parsed: every prompt has one
schedule entry ending at `steps`."""
from __future__ import annotations

import re
from collections import namedtuple

import torch

ScheduledPromptConditioning = namedtuple("ScheduledPromptConditioning", ["end_at_step", "cond"])


class SdConditioning(list):
    """A list of prompts with the image size (SDXL needs it) and whether these are negative prompts."""

    def __init__(self, prompts, is_negative_prompt=False, width=None, height=None, copy_from=None):
        super().__init__(prompts)
        source = prompts if copy_from is None else copy_from  # attributes not given are taken from here
        self.is_negative_prompt = is_negative_prompt or getattr(source, 'is_negative_prompt', False)
        self.width = width or getattr(source, 'width', None)
        self.height = height or getattr(source, 'height', None)


def get_learned_conditioning_prompt_schedules(prompts, base_steps, hires_steps=None, use_old_scheduling=False):
    steps = base_steps if hires_steps is None or use_old_scheduling else hires_steps
    return [[[steps, prompt]] for prompt in prompts]


def _row(encoded, index):
    """Row `index` of an encoder output (a tensor, or a dict of tensors for SDXL)."""
    if isinstance(encoded, dict):
        return {key: value[index] for key, value in encoded.items()}
    return encoded[index]


def get_learned_conditioning(model, prompts: SdConditioning | list[str], steps, hires_steps=None, use_old_scheduling=False):
    """-> one schedule (a list of ScheduledPromptConditioning) per prompt; repeated prompts are encoded once."""
    schedules = get_learned_conditioning_prompt_schedules(prompts, steps, hires_steps, use_old_scheduling)
    by_prompt = {}
    for prompt, schedule in zip(prompts, schedules):
        if prompt in by_prompt:
            continue
        texts = SdConditioning([text for _, text in schedule], copy_from=prompts)
        encoded = model.get_learned_conditioning(texts)
        by_prompt[prompt] = [ScheduledPromptConditioning(end_at, _row(encoded, i)) for i, (end_at, _) in enumerate(schedule)]
    return [by_prompt[prompt] for prompt in prompts]


re_AND = re.compile(r"\bAND\b")
re_weight = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts: SdConditioning | list[str]):
    """Splits each prompt on AND into (text, weight) parts. Returns (per prompt: [(index into the flat list,
    weight)], the flat list of distinct texts as an SdConditioning like `prompts`, {text: index})."""
    flat = SdConditioning(prompts)
    flat.clear()  # keeps the size / negative attributes, drops the texts
    index_of = {}
    per_prompt = []
    for prompt in prompts:
        weighted = []
        for part in re_AND.split(prompt):
            found = re_weight.search(part)
            text, weight = (part, 1.0) if found is None else found.groups()
            if text not in index_of:
                index_of[text] = len(flat)
                flat.append(text)
            weighted.append((index_of[text], 1.0 if weight is None else float(weight)))
        per_prompt.append(weighted)
    return per_prompt, flat, index_of


class ComposableScheduledPromptConditioning:
    def __init__(self, schedules, weight=1.0):
        self.schedules, self.weight = schedules, weight  # list[ScheduledPromptConditioning], float


class MulticondLearnedConditioning:
    def __init__(self, shape, batch):
        self.shape, self.batch = shape, batch  # tuple, list[list[ComposableScheduledPromptConditioning]]


def get_multicond_learned_conditioning(model, prompts, steps, hires_steps=None, use_old_scheduling=False) -> MulticondLearnedConditioning:
    """Like get_learned_conditioning, but each prompt is split on AND into weighted sub-prompts."""
    per_prompt, flat, _ = get_multicond_prompt_list(prompts)
    learned = get_learned_conditioning(model, flat, steps, hires_steps, use_old_scheduling)
    batch = [[ComposableScheduledPromptConditioning(learned[index], weight) for index, weight in weighted] for weighted in per_prompt]
    return MulticondLearnedConditioning(shape=(len(prompts),), batch=batch)


class DictWithShape(dict):
    """A dict cond (SDXL) that answers .shape like a tensor: the shape of its 'crossattn' entry."""

    def __init__(self, x, shape=None):
        super().__init__(x)

    @property
    def shape(self):
        return self["crossattn"].shape


def _active_index(schedule, current_step):
    """The entry in force at current_step: the first one that has not ended yet (else the first entry)."""
    return next((i for i, entry in enumerate(schedule) if current_step <= entry.end_at_step), 0)


def reconstruct_cond_batch(c: list[list[ScheduledPromptConditioning]], current_step):
    sample = c[0][0].cond
    rows = len(c)
    if isinstance(sample, dict):
        batch = DictWithShape({key: value.new_zeros((rows, *value.shape)) for key, value in sample.items()})
        for i, schedule in enumerate(c):
            for key, value in schedule[_active_index(schedule, current_step)].cond.items():
                batch[key][i] = value
        return batch

    batch = sample.new_zeros((rows, *sample.shape))
    for i, schedule in enumerate(c):
        batch[i] = schedule[_active_index(schedule, current_step)].cond
    return batch


def stack_conds(tensors):
    # prompts of different token lengths: pad the shorter ones with their last token
    longest = max(tensor.shape[0] for tensor in tensors)
    padded = [tensor if tensor.shape[0] == longest else torch.cat([tensor, tensor[-1:].repeat(longest - tensor.shape[0], 1)])
              for tensor in tensors]
    return torch.stack(padded)


def reconstruct_multicond_batch(c: MulticondLearnedConditioning, current_step):
    """-> (per image: [(row, weight)] of its sub-prompts, the stacked cond rows)."""
    reference = c.batch[0][0].schedules[0].cond
    rows, conds_list = [], []
    for sub_prompts in c.batch:
        placed = []
        for sub_prompt in sub_prompts:
            placed.append((len(rows), sub_prompt.weight))
            rows.append(sub_prompt.schedules[_active_index(sub_prompt.schedules, current_step)].cond)
        conds_list.append(placed)

    if isinstance(rows[0], dict):
        stacked = DictWithShape({key: stack_conds([row[key] for row in rows]) for key in rows[0]})
    else:
        stacked = stack_conds(rows).to(device=reference.device, dtype=reference.dtype)
    return conds_list, stacked
