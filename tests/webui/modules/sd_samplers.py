"""modules/sd_samplers.py stand-in: the sampler table ("Euler" first, then "Heun"), lookup and creation."""
from __future__ import annotations

import logging

from modules import sd_samplers_kdiffusion, sd_schedulers
from modules.sd_samplers_common import samples_to_image_grid, sample_to_image  # noqa: F401

all_samplers = [*sd_samplers_kdiffusion.samplers_data_k_diffusion]
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers
samplers_map = {}
for _sampler in all_samplers:
    samplers_map[_sampler.name.lower()] = _sampler.name
    for _alias in _sampler.aliases:
        samplers_map[_alias.lower()] = _sampler.name


def find_sampler_config(name):
    """None means the default (first) sampler; an unknown name gives None."""
    return all_samplers[0] if name is None else all_samplers_map.get(name)


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f'bad sampler name: {name}'
    instance = config.constructor(model)
    instance.config = config
    return instance


def visible_samplers():
    return all_samplers


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


def get_sampler_from_infotext(d: dict):
    return _names_from_infotext(d)[0]


def get_scheduler_from_infotext(d: dict):
    return _names_from_infotext(d)[1]


def fix_p_invalid_sampler_and_scheduler(p):
    sampler, scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler, convert_automatic=False)
    if (sampler, scheduler) != (p.sampler_name, p.scheduler):
        logging.warning(f'Sampler Scheduler autocorrection: "{p.sampler_name}" -> "{sampler}", "{p.scheduler}" -> "{scheduler}"')
        p.sampler_name, p.scheduler = sampler, scheduler
