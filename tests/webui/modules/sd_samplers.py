"""modules/sd_samplers.py stand-in: the sampler table, lookup and creation.

All 20 samplers of A1111 1.10 in its order: the 15 k-diffusion ones ("DPM++ 2M" first, so it is the default of
the UI's dropdown and of find_sampler_config(None)), then DDIM, DDIM CFG++, PLMS, UniPC (sd_samplers_timesteps),
then LCM. The API's default sampler is "Euler" (its request model's sampler_index).
"""
from __future__ import annotations

import logging

from modules import sd_samplers_kdiffusion, sd_samplers_lcm, sd_samplers_timesteps, sd_schedulers, shared
from modules.sd_samplers_common import samples_to_image_grid, sample_to_image  # noqa: F401

all_samplers = [
    *sd_samplers_kdiffusion.samplers_data_k_diffusion,
    *sd_samplers_timesteps.samplers_data_timesteps,
    *sd_samplers_lcm.samplers_data_lcm,
]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers
samplers_map = {}
samplers_hidden = set()


def find_sampler_config(name):
    """None means the default (first) sampler; an unknown name gives None."""
    return all_samplers[0] if name is None else all_samplers_map.get(name)


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f'bad sampler name: {name}'
    if model.is_sdxl and config.options.get("no_sdxl", False):
        raise Exception(f"Sampler {config.name} is not supported for SDXL")
    instance = config.constructor(model)
    instance.config = config
    return instance


def set_samplers():
    """Rebuilds the name map and the hidden set (opts.hide_samplers)."""
    global samplers, samplers_for_img2img, samplers_hidden
    samplers_hidden = set(shared.opts.hide_samplers)
    samplers = samplers_for_img2img = all_samplers
    samplers_map.clear()
    for sampler in all_samplers:
        samplers_map[sampler.name.lower()] = sampler.name
        for alias in sampler.aliases:
            samplers_map[alias.lower()] = sampler.name


def visible_sampler_names():
    return [x.name for x in samplers if x.name not in samplers_hidden]


def visible_samplers():
    return [x for x in samplers if x.name not in samplers_hidden]


def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    """Resolves names the way A1111 1.10 does: an old-style combined name such as "Euler Karras" is split into
    sampler and scheduler; unknown names fall back to the first sampler / the "Automatic" scheduler; with
    convert_automatic, a scheduler equal to the sampler's own default is reported as "Automatic"."""
    fallback = samplers[0]
    chosen = sd_schedulers.schedulers_map.get(scheduler_name, sd_schedulers.schedulers[0])
    name = sampler_name or fallback.name
    for scheduler in sd_schedulers.schedulers:
        spellings = (scheduler.label, scheduler.name, *(scheduler.aliases or ()))
        suffix = next((spelling for spelling in spellings if name.endswith(" " + spelling)), None)
        if suffix is not None:
            chosen = scheduler
            name = name[:-(len(suffix) + 1)]
    sampler = all_samplers_map.get(name, fallback)
    if convert_automatic and sampler.options.get('scheduler') == chosen.name:
        chosen = sd_schedulers.schedulers[0]
    return sampler.name, chosen.label


def _names_from_infotext(params):
    return get_sampler_and_scheduler(params.get("Sampler"), params.get("Schedule type"))


def get_hr_sampler_and_scheduler(d: dict):
    """The infotext's hires sampler/scheduler, or "Use same sampler"/"Use same scheduler" if they are the first
    pass's."""
    hr_sampler = d.get("Hires sampler", "Use same sampler")
    sampler = d.get("Sampler") if hr_sampler == "Use same sampler" else hr_sampler
    hr_scheduler = d.get("Hires schedule type", "Use same scheduler")
    scheduler = d.get("Schedule type") if hr_scheduler == "Use same scheduler" else hr_scheduler
    sampler, scheduler = get_sampler_and_scheduler(sampler, scheduler)
    sampler = sampler if sampler != d.get("Sampler") else "Use same sampler"
    scheduler = scheduler if scheduler != d.get("Schedule type") else "Use same scheduler"
    return sampler, scheduler


def get_hr_sampler_from_infotext(d: dict):
    return get_hr_sampler_and_scheduler(d)[0]


def get_hr_scheduler_from_infotext(d: dict):
    return get_hr_sampler_and_scheduler(d)[1]


def get_sampler_from_infotext(d: dict):
    return _names_from_infotext(d)[0]


def get_scheduler_from_infotext(d: dict):
    return _names_from_infotext(d)[1]


def fix_p_invalid_sampler_and_scheduler(p):
    sampler, scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)
    if (sampler, scheduler) != (p.sampler_name, p.scheduler):
        logging.warning(f'Sampler Scheduler autocorrection: "{p.sampler_name}" -> "{sampler}", "{p.scheduler}" -> "{scheduler}"')
        p.sampler_name, p.scheduler = sampler, scheduler


set_samplers()
