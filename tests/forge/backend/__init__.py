"""Stand-in for Forge 2's `backend` package (see tests/forge/__init__.py); each module's docstring says what it models."""
