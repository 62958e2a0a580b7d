#!/usr/bin/env bash
# The real-data runs of docs/results.md that were made on one lent GPU machine (one H100, 16
# CPU cores), in two calls of at most 10 minutes each: each call runs several recipes side by
# side (one process per training, one CPU thread each, all sharing the GPU), every training
# capped in wall time so the call ends in time. The recipes are the projects' own scripts; on
# a CPU machine they run unchanged (slower: use their CPU defaults there).
#
#   bash projects/gpu_runs.sh phase1 OUT DATA     # multiref teacher + pseudo refs + GT students,
#                                                 # P2Bot (all), PPG (all)
#   bash projects/gpu_runs.sh phase2 OUT DATA HYPS_GZ DICT   # multiref hyp / GT+hyp students,
#                                                            # CORAL (all)
# DATA holds dailydialog/ and convai2/ (the layout of ../shared/data).
set -uo pipefail
phase=$1 OUT=$2 DATA=$3
export PARLAI=${PARLAI:-parlai} OMP_NUM_THREADS=1
mkdir -p "$OUT"
# multiref at the paper's sizes (Appendix B.1: 500 hidden, 200 embedding, 200 latent), batch 30
MR=(env OUT="$OUT/multiref" DATA_DIR="$DATA/dailydialog" HIDDEN=500 EMB=200 LATENT=200 K=5
    BS=30 STEPS=${MR_STEPS:-4000} NHYP=5 MAX_TRAIN_TIME=${MR_TIME:-270}
    bash projects/multiref/dailydialog.sh)
CV=$DATA/convai2/dev800_both_original_no_cands.txt

case $phase in
phase1)
    (
        "${MR[@]}" dict
        for model in mr_hred vhred vhred_gmm vhred_lgm; do "${MR[@]}" train $model gt & done
        wait
        "${MR[@]}" hyps &
        for model in mr_hred vhred vhred_gmm vhred_lgm; do "${MR[@]}" eval $model gt & done
        wait
    ) > "$OUT/multiref.log" 2>&1 &
    P2BOT_DATA=$CV EPOCHS_TX=${TX_EPOCHS:-10} EPOCHS_RX=${RX_EPOCHS:-10} \
        SP_STEPS=${SP_STEPS:-500} MAX_TRAIN_TIME=${P2_TIME:-200} \
        bash projects/p2bot/convai2_dev800.sh "$OUT/p2bot" > "$OUT/p2bot.log" 2>&1 &
    PPG_DATA=$CV MAX_TRAIN_TIME=${PPG_TIME:-150} \
        bash projects/ppg/convai2_dev800.sh "$OUT/ppg" > "$OUT/ppg.log" 2>&1 &
    wait
    ;;
phase2)
    HYPS_GZ=$4 DICT=$5
    mkdir -p "$OUT/multiref"
    cp "$DICT" "$OUT/multiref/dd.dict"
    gunzip -c "$HYPS_GZ" > "$OUT/multiref/hyps.jsonl"
    (
        for data in hyp gt+hyp; do
            for model in mr_hred vhred vhred_gmm vhred_lgm; do
                { "${MR[@]}" train $model $data && "${MR[@]}" eval $model $data; } &
            done
        done
        wait
    ) > "$OUT/multiref.log" 2>&1 &
    DATA_DIR=$DATA/dailydialog GEN_STEPS=${GEN_STEPS:-6000} XENC=${XENC:-scratch} \
        MAX_TRAIN_TIME=${CORAL_TIME:-240} \
        bash projects/coral/dailydialog.sh "$OUT/coral" > "$OUT/coral.log" 2>&1 &
    wait
    ;;
*)
    echo "usage: $0 phase1|phase2 OUT DATA [HYPS_GZ DICT]" >&2
    exit 2
    ;;
esac
