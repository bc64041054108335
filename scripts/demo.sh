#!/usr/bin/env bash
# The main job: set-up (idempotent), then the end-to-end demo on the embedded defaults
# (SQLite and archive under ./var, the shipped phantom model, a local PACS).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${VENV:-.venv}/bin/dicomnode" demo "$@"
