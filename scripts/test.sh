#!/usr/bin/env bash
# Command 2: set up .venv if needed, make sure local services run, lint, run every test.
# Arguments go to pytest (e.g. scripts/test.sh -m "not slow" -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/bootstrap.sh
scripts/services.sh
echo "==> ruff"
.venv/bin/ruff check src tests
echo "==> pytest"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
