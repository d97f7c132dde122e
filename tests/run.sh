#!/usr/bin/env bash
# Sets up the test environments and runs the whole suite in each (CPU only, no model downloads):
#   newest  .venv        the newest torch (2.13, CPU build) with diffusers 0.42 as the reference
#   a1111   .venv-a1111  what A1111 1.8-1.10 installs: torch 2.1.2, numpy 1.26.2, gradio 3.41.2, pydantic 1
#   forge   .venv-forge  what Forge (main) installs: torch 2.3.1, gradio 4.40.0, pydantic 2.8.2; runs the Forge tests
#                        (tests/test_forge*.py: the Forge stand-in owns the `modules` name, so it has its own process)
# Arguments are passed to pytest in every environment. TEST_ENVS="newest" (or "a1111", "forge") runs only those.
set -uo pipefail
cd "$(dirname "$0")/.."

# This machine's pip configuration names local package folders that may be absent; pip warns for each, every run.
quiet_pip() { "$@" 2> >(grep -v "^WARNING: Location 'file:" >&2); }

setup() {  # setup VENV REQUIREMENTS: create or update the environment, skipped when its requirements are unchanged
  local venv=$1 requirements=$2 stamp
  stamp=$(cat "$requirements" tests/requirements-common.txt tests/requirements-nodeps.txt | sha256sum | cut -c1-16)
  [ -f "$venv/.requirements" ] && [ "$(cat "$venv/.requirements")" = "$stamp" ] && return 0
  echo "== setting up $venv from $requirements"
  python3 -m venv "$venv" &&
    quiet_pip "$venv/bin/python" -m pip install -q --upgrade pip &&
    quiet_pip "$venv/bin/python" -m pip install -q -r "$requirements" &&
    quiet_pip "$venv/bin/python" -m pip install -q --no-deps -r tests/requirements-nodeps.txt &&
    echo "$stamp" > "$venv/.requirements"
}

status=0
summaries=()
for env in ${TEST_ENVS:-newest a1111 forge}; do
  venv=.venv
  [ "$env" = newest ] || venv=.venv-$env
  if ! setup "$venv" "tests/requirements-$env.txt"; then
    echo "== could not set up the $env environment" >&2
    exit 2
  fi
  echo "== $env: $("$venv/bin/python" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")')"
  log=$(mktemp)
  if [ "$env" = forge ]; then
    tests=(tests/test_forge*.py)
  else
    tests=(--ignore-glob='tests/test_forge*')
  fi
  "$venv/bin/python" -m pytest "${tests[@]}" "$@" | tee "$log"
  result=${PIPESTATUS[0]}
  summaries+=("$env: $(tail -n 1 "$log")")
  rm -f "$log"
  [ "$result" -eq 0 ] || status=$result
done
printf '== %s\n' "${summaries[@]}"
exit "$status"
