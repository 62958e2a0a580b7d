#!/usr/bin/env bash
# Builds zoo:multiref/dailydialog_small: the projects/multiref recipe on DailyDialog (the
# SmolLM2-135M + LoRA teacher, 5 pseudo references per training context, students), then
# exports the VHRED-LGM student trained on the 5 hypotheses as `model`.
# Usage (from the repository root, venv active; S = the recipe's $OUT of the `pretrained`
# run, see the model card for its exact command):
#   S=runs/multiref_smollm2 bash zoo/multiref/make_dailydialog_small.sh
set -euo pipefail
S=${S:-runs/multiref_smollm2}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$S/vhred_lgm.hyp/model" ] || { echo "train it first: projects/multiref/README.md" >&2; exit 1; }
python -m parlai_ext.zoo.common "$S/vhred_lgm.hyp/model" "$HERE/dailydialog_small" model \
  --set skip_generation=false inference=greedy
