"""modules/sd_samplers.py stand-in: the sampler list (Euler a, Euler, Heun), `create_sampler(name, model)` (sets
sampler.config), `find_sampler_config`, `get_sampler_and_scheduler` (name, "Automatic"), `fix_p_invalid_sampler_and_scheduler`;
schedulers: Automatic, Uniform, Karras."""
from modules import sd_samplers_kdiffusion

all_samplers = list(sd_samplers_kdiffusion.samplers_data_k_diffusion)
all_samplers_map = {x.name: x for x in all_samplers}
samplers = all_samplers
samplers_for_img2img = all_samplers
schedulers = ["Automatic", "Uniform", "Karras"]


def find_sampler_config(name):
    if name is None:
        return all_samplers[0]
    config = all_samplers_map.get(name)
    if config is None:
        config = next((x for x in all_samplers if name in x.aliases or name.lower() == x.name.lower()), None)
    return config


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler


def get_sampler_and_scheduler(sampler_name, scheduler_name, *, convert_automatic=True):
    config = find_sampler_config(sampler_name)
    return (config.name if config is not None else sampler_name), (scheduler_name or "Automatic")


def fix_p_invalid_sampler_and_scheduler(p):
    p.sampler_name, p.scheduler = get_sampler_and_scheduler(p.sampler_name, p.scheduler)


def visible_sampler_names():
    return [x.name for x in all_samplers]
