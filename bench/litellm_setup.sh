#!/usr/bin/env bash
# Installs the LiteLLM proxy into its own virtualenv (bench/out/litellm-venv by default), for
# bench/overhead.py's side-by-side run. LiteLLM is a peer we measure, never a dependency of
# wattpool: nothing here touches the project's .venv.
#
#   bench/litellm_setup.sh [VENV_DIR]        # prints the installed version on success
#
# LITELLM_SPEC overrides what pip installs (default: the newest "litellm[proxy]").
set -euo pipefail

venv="${1:-$(dirname "$0")/out/litellm-venv}"
spec="${LITELLM_SPEC:-litellm[proxy]}"
python="${PYTHON:-python3}"

if [[ ! -x "$venv/bin/litellm" ]]; then
    mkdir -p "$(dirname "$venv")"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet "$spec"
fi
"$venv/bin/python" -c "import importlib.metadata as m; print(m.version('litellm'))"
