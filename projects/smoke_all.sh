#!/usr/bin/env bash
# A few training steps, an evaluation with generation and each system's special loop, for every
# agent of the project, on the real data: the check that every code path runs on the device
# ParlAI picks (CUDA when there is one; the CPU otherwise). Not a result: nothing learns here.
#
#   bash projects/smoke_all.sh OUT [DD_DIR] [CONVAI2_FILE]
#
# Each system runs in its own background chain (logs in OUT/<system>.log); the script prints
# PASS/FAIL per system and exits non-zero if any failed.
set -uo pipefail
OUT=${1:?usage: smoke_all.sh OUT [DD_DIR] [CONVAI2_FILE]}
DD=${2:-../shared/data/dailydialog}
CV=${3:-../shared/data/convai2/dev800_both_original_no_cands.txt}
PARLAI=${PARLAI:-.venv/bin/parlai}
mkdir -p "$OUT"
T=(-t dailydialog_ext:no_start --dailydialog-data-dir "$DD")
SHORT=(--max-train-steps 12 -vstep -1 -vme 32 --short-final-eval true --log-every-n-steps 4)

multiref() {
    set -e
    $PARLAI build_dict "${T[@]}" --dict-file "$OUT/mr.dict" --dict-lower true \
        --dict-maxtokens 5000 --dict-tokenizer re
    for m in mr_hred vhred vhred_gmm vhred_lgm; do
        $PARLAI train_model -m $m "${T[@]}" --dict-file "$OUT/mr.dict" -mf "$OUT/$m/model" \
            --hidden-size 64 --embedding-size 32 --latent-size 16 -bs 16 "${SHORT[@]}" \
            --skip-generation true || [ -f "$OUT/$m/model" ]
    done
    $PARLAI generate_pseudo_refs -mf "$OUT/vhred_lgm/model" "${T[@]}" -dt train:evalmode \
        -o "$OUT/hyps.jsonl" --num-hyps 3 --max-new-contexts 40 -bs 16 --progress false
    $PARLAI train_model -m vhred_lgm -t multiref_ext --multiref-file "$OUT/hyps.jsonl" \
        --multiref-mode gt+hyp --multiref-n-hyps 3 --evaltask dailydialog_ext:no_start \
        --dailydialog-data-dir "$DD" --dict-file "$OUT/mr.dict" -mf "$OUT/lgm_hyp/model" \
        --hidden-size 64 --embedding-size 32 --latent-size 16 -bs 16 "${SHORT[@]}" \
        --skip-generation true || [ -f "$OUT/lgm_hyp/model" ]
    $PARLAI eval_model -mf "$OUT/vhred_lgm/model" "${T[@]}" -dt valid -ne 48 -bs 16 \
        --inference greedy --metrics ext_multiref
}

coral() {
    set -e
    $PARLAI build_dict "${T[@]}" --dict-file "$OUT/coral.dict" --dict-lower true \
        --dict-maxtokens 5000
    D=(--dict-file "$OUT/coral.dict" --dict-lower true)
    $PARLAI train_model -m coral_esim "${T[@]}" "${D[@]}" -mf "$OUT/esim/model" \
        --embedding-size 32 --hidden-size 32 -bs 16 "${SHORT[@]}" || [ -f "$OUT/esim/model" ]
    $PARLAI train_model -m coral_cross_encoder "${T[@]}" "${D[@]}" -mf "$OUT/xenc/model" \
        --n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64 -bs 16 "${SHORT[@]}" \
        || [ -f "$OUT/xenc/model" ]
    SIZE=(--n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64 --text-truncate 64
          --label-truncate 32)
    for preset in dailydialog_mixp dailydialog_offp; do
        $PARLAI train_model -o projects/coral/$preset.opt "${T[@]}" "${D[@]}" "${SIZE[@]}" \
            -mf "$OUT/$preset/model" --reward-model-file "$OUT/esim/model" \
            --maude-model-file "$OUT/xenc/model" -bs 16 "${SHORT[@]}" \
            || [ -f "$OUT/$preset/model" ]
    done
    $PARLAI eval_model -mf "$OUT/dailydialog_mixp/model" "${T[@]}" -dt valid -ne 48 -bs 16 \
        --metrics ext_coral --skip-generation false
}

p2bot() {
    set -e
    F=(--personachat-file "$CV" --p2bot-train-episodes 700)
    $PARLAI train_model -m p2bot_transmitter -t p2bot_selfplay:supervised "${F[@]}" \
        -mf "$OUT/tx" --n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64 \
        --text-truncate 128 -bs 8 "${SHORT[@]}" --skip-generation true || [ -f "$OUT/tx" ]
    $PARLAI train_model -m p2bot_receiver -t p2bot_selfplay:receiver "${F[@]}" -mf "$OUT/rx" \
        --n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64 --n-positions 40 -bs 8 \
        "${SHORT[@]}" || [ -f "$OUT/rx" ]
    $PARLAI eval_model -mf "$OUT/tx" -t p2bot_selfplay:supervised "${F[@]}" -dt valid -ne 24 \
        --p2bot-synth-candidates 19 --rank-candidates true --metrics ext_p2bot,ppl -bs 8
    $PARLAI p2bot_probe "${F[@]}" -dt valid --receiver-model-file "$OUT/rx" \
        --report-filename "$OUT/probe.json"
    $PARLAI train_model -m p2bot_transmitter -t p2bot_selfplay "${F[@]}" --init-model "$OUT/tx" \
        -mf "$OUT/sp" --selfplay-receiver-model "$OUT/rx" -bs 4 -lr 1e-6 --max-train-steps 3 \
        --selfplay-log-file "$OUT/sp.jsonl" --log-every-n-steps 1 --skip-generation true \
        -vstep -1 -vme 16 --short-final-eval true || [ -f "$OUT/sp" ]
    $PARLAI self_chat -mf "$OUT/sp" -t p2bot_selfplay "${F[@]}" --num-self-chats 2 \
        --selfchat-max-turns 4 --outfile "$OUT/chats"
}

ppg() {
    set -e
    D=(--personachat-file "$CV" --ppg-valid-episodes 100 --dict-file "$OUT/ppg.dict")
    G=(--n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64 -bs 8 "${SHORT[@]}")
    $PARLAI build_dict -t ppg_ext "${D[@]}" --dict-minfreq 2
    $PARLAI train_model -m ppg_persona_generator -t ppg_ext:persona "${D[@]}" "${G[@]}" \
        --label-truncate 96 -mf "$OUT/ppg" || [ -f "$OUT/ppg" ]
    $PARLAI train_model -m ppg_response_generator -t ppg_ext "${D[@]}" "${G[@]}" \
        --partner-personas gold -mf "$OUT/drg" || [ -f "$OUT/drg" ]
    $PARLAI train_model -m ppg_critic -t ppg_ext:critic "${D[@]}" "${G[@]}" \
        --n-positions 256 -mf "$OUT/critic" || [ -f "$OUT/critic" ]
    $PARLAI train_model -m ppg_rl -t ppg_ext "${D[@]}" -mf "$OUT/rl" --init-model "$OUT/drg" \
        --ppg-model-file "$OUT/ppg" --critic-model-file "$OUT/critic" -bs 4 -lr 5e-6 \
        --max-train-steps 3 -vstep -1 -vme 8 --short-final-eval true \
        --rl-persona-max-len 24 --rl-response-max-len 12 || [ -f "$OUT/rl" ]
    $PARLAI eval_model -mf "$OUT/drg" -t ppg_ext "${D[@]}" -dt valid -ne 24 -bs 8 \
        --partner-personas generated --ppg-model-file "$OUT/ppg" --metrics default,ext_ppg
}

plato2() {
    set -e
    P=(--n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64
       --dict-file "$OUT/plato2.dict" --dict-lower true --dict-maxtokens 5000 -bs 16)
    $PARLAI train_model -m unified_transformer "${T[@]}" "${P[@]}" -mf "$OUT/p1" "${SHORT[@]}" \
        --skip-generation true || [ -f "$OUT/p1" ]
    $PARLAI train_model -m plato2 "${T[@]}" --init-model "$OUT/p1" --dict-file "$OUT/p1.dict" \
        --n-latent 4 -bs 16 -mf "$OUT/p21" "${SHORT[@]}" \
        --skip-generation true || [ -f "$OUT/p21" ]
    $PARLAI train_model -m plato2_evaluator "${T[@]}" --init-model "$OUT/p1" \
        --dict-file "$OUT/p1.dict" -bs 16 -mf "$OUT/pev" \
        "${SHORT[@]}" || [ -f "$OUT/pev" ]
    $PARLAI eval_model -mf "$OUT/p21" "${T[@]}" -dt valid -ne 32 -bs 8 \
        --evaluator-model-file "$OUT/pev" --skip-generation false --inference topk --topk 10 \
        --metrics ext_plato2
}

status=0
for system in multiref coral p2bot ppg plato2; do
    ( $system ) > "$OUT/$system.log" 2>&1 &
    eval "pid_$system=$!"
done
for system in multiref coral p2bot ppg plato2; do
    pid_var=pid_$system
    if wait "${!pid_var}"; then echo "PASS $system"; else echo "FAIL $system"; status=1; fi
done
exit $status
