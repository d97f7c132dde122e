"""Which host glue the extension picks: A1111 without Forge's packages, the Forge 2 glue with its backend, and a
refusal naming the fork for Forge 1 forks (Forge Classic, reForge: modules_forge without the `backend` package)."""
from __future__ import annotations

import importlib.util
import sys
import types

import pytest

from lib_instantid import hosts


def present(monkeypatch, *names: str) -> None:
    """Make find_spec report exactly these of Forge's top-level packages as installed."""
    real = importlib.util.find_spec

    def find_spec(name, *args):
        if name in ("modules_forge", "backend"):
            return importlib.machinery.ModuleSpec(name, None) if name in names else None
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def glue(monkeypatch, name: str) -> types.ModuleType:
    """A stand-in for a host's glue module (the real ones import that WebUI's `modules`)."""
    module = types.ModuleType(f"lib_instantid.hosts.{name}")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.delattr(hosts, name, raising=False)
    return module


def test_a1111_without_forges_packages(monkeypatch):
    present(monkeypatch)
    a1111 = glue(monkeypatch, "a1111")
    assert hosts.running_host() is a1111


def test_forge_2_with_its_backend(monkeypatch):
    present(monkeypatch, "modules_forge", "backend")
    forge = glue(monkeypatch, "forge")
    assert hosts.running_host() is forge


def test_forge_1_forks_are_refused_by_name(monkeypatch):
    present(monkeypatch, "modules_forge")
    version = types.ModuleType("modules_forge.forge_version")
    version.version = "f1.0.0-classic"
    package = types.ModuleType("modules_forge")
    package.forge_version = version
    monkeypatch.setitem(sys.modules, "modules_forge", package)
    monkeypatch.setitem(sys.modules, "modules_forge.forge_version", version)
    with pytest.raises(hosts.UnsupportedHost, match=r"f1\.0\.0-classic.*Forge 1 fork.*Forge Classic or reForge"):
        hosts.running_host()
