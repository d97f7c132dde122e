"""modules/sd_schedulers.py stand-in: only the "Automatic" scheduler (the sampler's own sigma schedule)."""
import dataclasses


@dataclasses.dataclass
class Scheduler:
    name: str
    label: str
    function: object = None
    default_rho: float = -1
    need_inner_model: bool = False
    aliases: list = None


schedulers = [Scheduler('automatic', 'Automatic', None)]
schedulers_map = {**{x.name: x for x in schedulers}, **{x.label: x for x in schedulers}}
