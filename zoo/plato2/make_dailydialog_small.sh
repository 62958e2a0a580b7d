#!/usr/bin/env bash
# (The from-scratch entry this built was replaced in the zoo by zoo:plato2/dailydialog_smollm2,
# make_dailydialog_smollm2.sh; this script still rebuilds it into zoo/plato2/dailydialog_small/,
# which zoo/plato2/build.py no longer serves.)
# Builds zoo:plato2/dailydialog_small from DailyDialog: the projects/plato2 recipe (8K BPE
# dictionary, stage 1, stage 2.1, stage 2.2), then exports the stage-2.1 generator as `model`
# (reranking with `evaluator`) and the stage-2.2 evaluation model as `evaluator`.
# Usage (from the repository root, venv active):
#   D=../shared/data/dailydialog OUT=/tmp/plato2_dd bash zoo/plato2/make_dailydialog_small.sh
set -euo pipefail
OUT=${OUT:-/tmp/plato2_dd}
HERE=$(cd "$(dirname "$0")" && pwd)
for stage in dict stage1 stage21 stage22; do
  case $stage in
    dict) f=$OUT/dd.dict ;; stage1) f=$OUT/stage1 ;; stage21) f=$OUT/stage21 ;; stage22) f=$OUT/stage22 ;;
  esac
  [ -f "$f" ] || OUT=$OUT bash projects/plato2/dailydialog_small.sh "$stage"
done
python -m parlai_ext.zoo.common "$OUT/stage21" "$HERE/dailydialog_small" model \
  --set evaluator_model_file=zoo:plato2/dailydialog_small/evaluator skip_generation=false \
  inference=topk topk=10
python -m parlai_ext.zoo.common "$OUT/stage22" "$HERE/dailydialog_small" evaluator
