#!/usr/bin/env bash
# PLATO-2's curriculum on DailyDialog with a small model that trains on CPU (docs/results.md,
# "PLATO-2"). Usage: bash projects/plato2/dailydialog_small.sh STEP [STEP...]
#   STEP = dict | stage1 | stage21 | stage22 | ppl | generate | select | all
# Environment: D (DailyDialog release folder), OUT (where models and logs go), MAX_TRAIN_TIME
# (optional cap in seconds per training stage), GEN_EXS (validation examples generated for).
# train_model ends with an evaluation on the test split, which ../shared/data lacks: it fails
# there after the final validation has saved the model, so a stage counts as done when its
# model file exists (full validation numbers come from the ppl/generate/select steps).
set -euo pipefail
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
TRAIN=(-bs 32 -vtim 1000000 --log-every-n-secs 120 --lr-scheduler invsqrt
       --validation-max-exs 1000 --short-final-eval true)
# MAX_TRAIN_TIME (seconds) caps each training stage, e.g. for a short CPU session
[ -n "${MAX_TRAIN_TIME:-}" ] && TRAIN+=(--max-train-time "$MAX_TRAIN_TIME")
GEN_EXS=${GEN_EXS:-1000}

step() {
  case "$1" in
  dict)  # 8K SentencePiece BPE, as the paper, on the training responses and contexts
    $PARLAI build_dict -m unified_transformer "${TASK[@]}" "${SPM[@]}" --spm-vocab-size 8000 \
      --spm-model-type bpe --dict-file "$OUT/dd.dict" ;;
  stage1)  # coarse-grained generation, Eq. 1
    $PARLAI train_model -m unified_transformer "${TASK[@]}" "${SPM[@]}" --dict-file "$OUT/dd.dict" \
      "${SIZE[@]}" "${TRAIN[@]}" -mf "$OUT/stage1" -lr 1e-3 --warmup-updates 500 \
      --num-epochs 1 --skip-generation true -vmt ppl -vmm min || test -f "$OUT/stage1" ;;
  stage21)  # fine-grained generation, Eq. 2-6 (sizes and dictionary from stage 1)
    $PARLAI train_model -m plato2 --init-model "$OUT/stage1" --dict-file "$OUT/stage1.dict" \
      "${TASK[@]}" "${TRAIN[@]}" \
      -mf "$OUT/stage21" --n-latent 20 -lr 5e-4 --warmup-updates 200 --num-epochs 0.5 \
      --skip-generation true --uniform-prior-ppl true -vmt uniform_z_ppl -vmm min \
      || test -f "$OUT/stage21" ;;
  stage22)  # evaluation model, Eq. 7-9 (sizes and dictionary from stage 1)
    $PARLAI train_model -m plato2_evaluator --init-model "$OUT/stage1" \
      --dict-file "$OUT/stage1.dict" "${TASK[@]}" "${TRAIN[@]}" -mf "$OUT/stage22" -lr 1e-3 --warmup-updates 200 --num-epochs 0.5 \
      -vmt hits@1 -vmm max || test -f "$OUT/stage22" ;;
  ppl)  # teacher-forced validation perplexity of both generators (stage 2.1: z from the
         # posterior, and p(r|c) = 1/K sum_z p(r|c,z) with z uniform)
    $PARLAI eval_model -mf "$OUT/stage1" "${TASK[@]}" -dt valid --skip-generation true \
      --report-filename "$OUT/ppl_stage1.json"
    $PARLAI eval_model -mf "$OUT/stage21" "${TASK[@]}" -dt valid --skip-generation true \
      --uniform-prior-ppl true --report-filename "$OUT/ppl_stage21.json" ;;
  generate)  # K=20 candidates per context, three ways of choosing one
    for ranking in evaluator logprob random; do
      $PARLAI eval_model -mf "$OUT/stage21" "${TASK[@]}" -dt valid --num-examples "$GEN_EXS" \
        --skip-generation false --inference topk --topk 10 --evaluator-model-file "$OUT/stage22" \
        --ranking-score "$ranking" --metrics ext_plato2 --report-filename "$OUT/gen_$ranking.json"
    done ;;
  select)  # Table 6: 1 true + 9 random candidates; evaluator vs forward score p(r|c)
    $PYTHON projects/plato2/response_selection.py "${TASK[@]}" -dt valid --n-random 9 \
      --outfile "$OUT/selection_valid.txt"
    SEL=(-t fromfile:parlaiformat --fromfile-datapath "$OUT/selection_valid.txt" -dt valid)
    $PARLAI eval_model -mf "$OUT/stage22" "${SEL[@]}" --eval-candidates inline \
      --metrics ext_plato2 --report-filename "$OUT/select_evaluator.json"
    $PARLAI eval_model -mf "$OUT/stage1" "${SEL[@]}" --rank-candidates true \
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
