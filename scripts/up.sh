#!/usr/bin/env bash
# Command 1: set up .venv if needed, then run the whole pool on this machine.
# Any arguments go to `wattpool up` (try --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
exec "$ROOT/.venv/bin/wattpool" up "$@"
