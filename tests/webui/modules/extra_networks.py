"""modules/extra_networks.py stand-in: `<name:args>` tags are stripped from prompts; activate() fires the
`after_extra_networks_activate` script hook like A1111. No network is actually applied."""
from __future__ import annotations

import re
from collections import defaultdict

re_extra_net = re.compile(r"<(\w+):([^>]+)>")
extra_network_registry = {}


class ExtraNetworkParams:
    """The arguments of one <name:arg1:arg2...> tag: all `items`, split into `positional` and `named` (k=v)."""

    def __init__(self, items=None):
        self.items = items or []
        self.positional, self.named = [], {}
        for item in self.items:
            if isinstance(item, str) and item.count('=') == 1:
                key, value = item.split('=')
                self.named[key] = value
            else:
                self.positional.append(item)

    def __eq__(self, other):
        return self.items == other.items


def parse_prompt(prompt):
    """-> (the prompt without its tags, {network name: [ExtraNetworkParams, ...]})."""
    found = defaultdict(list)

    def collect(match):
        found[match.group(1)].append(ExtraNetworkParams(items=match.group(2).split(":")))
        return ""  # the tag is removed from the prompt

    return re_extra_net.sub(collect, prompt), found


def parse_prompts(prompts):
    """Strips the tags from every prompt; the networks returned are those of the first prompt (as in A1111)."""
    stripped, networks = [], None
    for prompt in prompts:
        text, parsed = parse_prompt(prompt)
        stripped.append(text)
        if networks is None:
            networks = parsed
    return stripped, networks


def activate(p, extra_network_data):
    runner = p.scripts
    if runner is not None:
        runner.after_extra_networks_activate(p, batch_number=p.iteration, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds, extra_network_data=extra_network_data)


def deactivate(p, extra_network_data):
    pass
