"""Stand-in for the WebUI's `modules` package (A1111 v1.10). See tests/webui/__init__.py."""
