"""modules_forge/forge_version.py stand-in: the version string Forge main shows (and writes into infotext)."""
version = "f2.0.1v1.10.1-1.10.1"
