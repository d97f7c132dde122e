"""pytest hooks for tests placed under tests/forge/ (none are, today): the `forge` fixture of pytest_support."""
from tests.forge.pytest_support import forge  # noqa: F401
