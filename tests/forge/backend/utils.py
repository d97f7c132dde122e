"""backend/utils.py stand-in: attribute paths on modules (get_attr / set_attr / set_attr_raw) as the patchers use them."""
import torch


def get_attr(obj, attr):
    for name in attr.split("."):
        obj = getattr(obj, name)
    return obj


def set_attr_raw(obj, attr, value):
    names = attr.split(".")
    for name in names[:-1]:
        obj = getattr(obj, name)
    prev = getattr(obj, names[-1])
    setattr(obj, names[-1], value)
    return prev


def set_attr(obj, attr, value):
    if not isinstance(value, torch.nn.Parameter):
        value = torch.nn.Parameter(value, requires_grad=False)
    return set_attr_raw(obj, attr, value)


def calculate_parameters(sd, prefix=""):
    return sum(v.nelement() for k, v in sd.items() if k.startswith(prefix))
