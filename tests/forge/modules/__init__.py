"""Stand-in for Forge's `modules` package (see tests/forge/__init__.py); each module's docstring says what it models."""
