#!/usr/bin/env bash
# Builds zoo:coral/dailydialog_small: the projects/coral recipe on DailyDialog, then exports the
# mix-policy CORAL generator as `model` (its R3 reward: `reward`) and the ESIM reward model as
# `reward`.
# Usage (from the repository root, venv active; the variables are those of the recipe):
#   OUT=runs/coral bash zoo/coral/make_dailydialog_small.sh
set -euo pipefail
OUT=${OUT:-runs/coral}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$OUT/mixp/model" ] || bash projects/coral/dailydialog.sh "$OUT"
python -m parlai_ext.zoo.common "$OUT/mixp/model" "$HERE/dailydialog_small" model \
  --set reward_model_file=zoo:coral/dailydialog_small/reward skip_generation=false \
  inference=greedy
python -m parlai_ext.zoo.common "$OUT/esim/model" "$HERE/dailydialog_small" reward
