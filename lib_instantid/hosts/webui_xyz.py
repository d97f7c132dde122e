"""XYZ plot axes for the two weights and the two end fractions."""
from __future__ import annotations

from modules import scripts

from ..args import specs

AXES = ("identitynet_weight", "adapter_weight", "identitynet_end", "adapter_end")


def add_axes() -> None:
    """Registered for `on_before_ui`: the XYZ script snapshots its axes when its UI is built."""
    xyz = next((d.module for d in scripts.scripts_data if d.script_class.__module__ == "xyz_grid.py"), None)
    if xyz is None:
        return
    labels = {name: spec.label for name, spec, _ in specs()}
    present = {axis.label for axis in xyz.axis_options}
    for name in AXES:
        label = f"[InstantID] {labels[name]}"
        if label not in present:
            xyz.axis_options.append(xyz.AxisOption(label, float, _setter(name)))


def _setter(name: str):
    def apply(p, value, values) -> None:
        # A fresh dict per cell: cells are shallow copies of one processing object.
        p.instantid_overrides = {**getattr(p, "instantid_overrides", {}), name: value}

    return apply
