"""The extension runs on the Python the WebUIs install (3.10 on most hosts) although CI has 3.11: no newer syntax and
none of the standard library added after 3.10 in the code the WebUI loads."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted([REPO / "install.py", *(REPO / "scripts").glob("*.py"), *(REPO / "lib_instantid").rglob("*.py")])
# Standard-library names new in Python 3.11 or 3.12, as module.attribute or module.
NEWER_STDLIB = {"tomllib", "wsgiref.types", "datetime.UTC", "typing.Self", "typing.LiteralString", "typing.Never",
                "typing.assert_never", "typing.reveal_type", "typing.TypeVarTuple", "typing.Unpack", "typing.override",
                "enum.StrEnum", "enum.verify", "asyncio.TaskGroup", "asyncio.timeout", "hashlib.file_digest",
                "itertools.batched", "ExceptionGroup", "BaseExceptionGroup", "contextlib.chdir", "math.cbrt",
                "math.exp2", "operator.call"}


def _used_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            names.add(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Name):
            names.add(node.id)
    return names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_parses_as_python_3_10_and_uses_no_newer_standard_library(path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
    assert not _used_names(tree) & NEWER_STDLIB


def test_the_check_catches_newer_syntax_and_names():
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=(3, 10))
    assert _used_names(ast.parse("import tomllib\nfrom typing import Self\n")) & NEWER_STDLIB == {"tomllib", "typing.Self"}
