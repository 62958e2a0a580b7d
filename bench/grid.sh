#!/usr/bin/env bash
# The speed grid of docs/speed.md in one command (see bench/grid.py for the parts).
#   bash bench/grid.sh OUT_FOLDER --tiny --jobs 1     # smoke test, minutes
#   bash bench/grid.sh OUT_FOLDER --quick             # the scripts' --quick settings
#   bash bench/grid.sh OUT_FOLDER --jobs 2            # the docs grid, ~15 min on 2 quiet cores
# Writes OUT_FOLDER/grid.md (every table with its command), grid.json (machine, commit, load,
# wall/CPU time per part) and one <part>.{json,md,log} per part.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export PARLAI_DATAPATH="${PARLAI_DATAPATH:-$PWD/data}"
PY="${PYTHON:-.venv/bin/python}"
exec "$PY" bench/grid.py "$@"
