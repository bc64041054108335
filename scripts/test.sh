#!/usr/bin/env bash
# The test command: set-up (idempotent), then ruff, mypy (strict) and the whole pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${VENV:-.venv}
"$VENV/bin/ruff" check glipcore dicomnode tests bench
"$VENV/bin/ruff" format --check glipcore dicomnode tests bench
"$VENV/bin/mypy"
"$VENV/bin/python" -m pytest "$@"
