#!/usr/bin/env bash
# Builds zoo:multiref/dailydialog_small: the projects/multiref recipe on DailyDialog (teacher,
# 5 pseudo references per training context, students), then exports the VHRED-LGM student
# trained on the 5 hypotheses as `model`.
# Usage (from the repository root, venv active; S = the students' folder of the recipe):
#   S=runs/multiref_dd/s300 bash zoo/multiref/make_dailydialog_small.sh
set -euo pipefail
S=${S:-runs/multiref_dd/s300}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$S/vhred_lgm.hyp/model" ] || { echo "train it first: projects/multiref/README.md" >&2; exit 1; }
python -m parlai_ext.zoo.common "$S/vhred_lgm.hyp/model" "$HERE/dailydialog_small" model \
  --set skip_generation=false inference=greedy
