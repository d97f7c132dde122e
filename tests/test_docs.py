"""The README's API table is the settings dataclass: every field, its default and its range, nothing else."""
from __future__ import annotations

import re
from pathlib import Path

from lib_instantid.args import specs

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")


def api_table() -> dict[str, tuple[str, str]]:
    """field name -> (default cell, meaning cell), splitting `a` / `b` rows into both fields."""
    rows = {}
    for line in README.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        names = re.findall(r"`(\w+)`", cells[0])
        defaults = re.findall(r"`([^`]*)`", cells[1]) or [cells[1]]
        for i, name in enumerate(names):
            rows[name] = (defaults[min(i, len(defaults) - 1)], cells[2])
    return rows


def test_every_setting_is_documented_with_its_default_and_range():
    table = api_table()
    assert set(table) == {name for name, _, _ in specs()}
    for name, spec, default in specs():
        documented, meaning = table[name]
        if spec.kind in (float, int) and not isinstance(default, bool):
            assert float(documented) == default, name
            assert f"{spec.minimum:g}–{spec.maximum:g}" in meaning, name
        elif spec.kind is bool:
            assert documented == str(default).lower(), name
        elif spec.kind is str and spec.choices:
            assert documented == f'"{default}"', name
            assert all(f'"{choice}"' in meaning for choice in spec.choices), name
        elif spec.kind is str:
            assert documented == '""', name
        elif spec.kind is tuple:
            assert documented == "[" + ", ".join(f"{v:g}" for v in default) + "]", name


def test_readme_troubleshooting_is_rendered_from_the_table():
    from tests import troubleshooting

    assert troubleshooting.readme_with_table(README) == README, "run `python -m tests.troubleshooting`"


def test_every_troubleshooting_row_names_existing_tests():
    import importlib

    from tests.troubleshooting import ROWS

    for row in ROWS:
        assert row.tests, row.problem
        for reference in row.tests:
            module, _, name = reference.partition("::")
            assert hasattr(importlib.import_module(f"tests.{module}"), name), reference
