"""modules/extra_networks.py stand-in: `<name:arg1:arg2>` tags in prompts (parse_prompts strips them and groups
ExtraNetworkParams by network name), a registry of ExtraNetwork objects, and `activate(p, data)` calling activate(p,
params_list) on EVERY registered network ([] for those not mentioned, so a LoRA set that disappears from the prompt is
removed), `deactivate` likewise."""
import re
from collections import defaultdict

from modules import errors

re_extra_net = re.compile(r"<(\w+):([^>]+)>")
extra_network_registry = {}


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = [x for x in self.items if "=" not in x]
        self.named = dict(x.split("=", 1) for x in self.items if "=" in x)


class ExtraNetwork:
    def __init__(self, name):
        self.name = name

    def activate(self, p, params_list):
        raise NotImplementedError

    def deactivate(self, p):
        raise NotImplementedError


def register_extra_network(extra_network):
    extra_network_registry[extra_network.name] = extra_network


def parse_prompt(prompt):
    res = defaultdict(list)

    def found(m):
        res[m.group(1)].append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res, data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if data is None:
            data = parsed
        res.append(updated)
    return res, data


def activate(p, extra_network_data):
    activated = []
    for name, params_list in (extra_network_data or {}).items():
        network = extra_network_registry.get(name)
        if network is None:
            continue
        try:
            network.activate(p, params_list)
            activated.append(name)
        except Exception as e:
            errors.display(e, f"activating extra network {name} with arguments {params_list}")
    for name, network in extra_network_registry.items():
        if name in activated:
            continue
        try:
            network.activate(p, [])
        except Exception as e:
            errors.display(e, f"activating extra network {name}")
    if p.scripts is not None:
        p.scripts.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds,
                                                subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    for name, network in extra_network_registry.items():
        try:
            network.deactivate(p)
        except Exception as e:
            errors.display(e, f"deactivating extra network {name}")
