#!/usr/bin/env bash
# Sets up the test environment in .venv (CPU only, no model downloads) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r tests/requirements.txt
.venv/bin/python -m pip install -q --no-deps -r tests/requirements-nodeps.txt
exec .venv/bin/python -m pytest "$@"
