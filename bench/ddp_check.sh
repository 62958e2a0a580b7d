#!/usr/bin/env bash
# Every agent of parlai-ext under ParlAI's own multi-process loops: for each one a short
# `parlai multiprocessing_train ... --distributed-world-size 2` (torch DDP; gloo on CPU), then
# `parlai multiprocessing_eval ... --distributed-world-size 2`, on tiny fixture data generated
# here. The RL loops run too: CORAL mix-policy (nucleus negatives, a reward model), PPG's
# joint REINFORCE (PPG + DRG, frozen critic) and P2Bot self-play (frozen user and receiver).
#
#   bash bench/ddp_check.sh [WORKDIR]          # default WORKDIR: a new folder under /tmp
#   ONLY="coral ppg_rl" bash bench/ddp_check.sh # a subset (row names of the table)
#
# The prerequisite models (CORAL's reward model, the PPG / DRG / critic that ppg_rl starts
# from, P2Bot's supervised transmitter and receiver, the HRED that writes pseudo references)
# are trained first in one process. Tiny sizes (1 layer, 32-d), 4 updates per run.
#
# "workers in sync": while training, a sitecustomize hook (only active with DDP_CHECK_DIR set)
# appends a hash of the trained model's parameters after every optimizer step to
# DDP_CHECK_DIR/rank<r>.txt; the column says PASS when both workers held bit-identical
# parameters at the start and after every update, and the parameters changed.
#
# Prints a markdown table (also written to WORKDIR/table.md); exits 1 if any cell is FAIL.
# Logs: WORKDIR/runs/<row>/{train,eval}.log. One process at a time per row, one thread each
# (OMP_NUM_THREADS=1 unless set).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARLAI=${PARLAI:-$ROOT/.venv/bin/parlai}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
W=${1:-$(mktemp -d /tmp/ddp_check.XXXXXX)}
mkdir -p "$W"
W=$(cd "$W" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PARLAI_DATAPATH=${PARLAI_DATAPATH:-$W/parlai_data}
export PYTHONPATH=$W/hook${PYTHONPATH:+:$PYTHONPATH}
PRE=$W/pre
mkdir -p "$W/hook" "$PRE" "$W/runs"
echo "workdir: $W" >&2

# --- the parameter-hash hook -------------------------------------------------------------------
cat > "$W/hook/sitecustomize.py" <<'EOF'
"""bench/ddp_check.sh: with DDP_CHECK_DIR set, hash the agent's parameters around each update."""
import os

if os.environ.get('DDP_CHECK_DIR'):
    import hashlib

    from parlai.core.torch_agent import TorchAgent
    from parlai.utils.distributed import get_rank

    _original_update_params = TorchAgent.update_params

    def _digest(agent) -> str:
        model = getattr(agent.model, 'module', agent.model)  # unwrap DDP
        digest = hashlib.sha256()
        for name, parameter in sorted(model.named_parameters()):
            digest.update(name.encode())
            digest.update(parameter.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def _write(key: str, agent) -> None:
        path = os.path.join(os.environ['DDP_CHECK_DIR'], f'rank{get_rank()}.txt')
        with open(path, 'a') as handle:
            handle.write(f'{key} {_digest(agent)}\n')

    def update_params(self):
        if not getattr(self, '_ddp_check_started', False):
            self._ddp_check_started = True
            _write('init', self)
        _original_update_params(self)
        _write(str(self._number_training_updates), self)

    TorchAgent.update_params = update_params
EOF

sync_verdict() {  # sync_verdict DIR -> "PASS (n updates)" / "FAIL (...)"
    "$PYTHON" - "$1" <<'EOF'
import pathlib
import sys

folder = pathlib.Path(sys.argv[1])
logs = []
for rank in (0, 1):
    path = folder / f'rank{rank}.txt'
    if not path.exists():
        print(f'FAIL (no hashes from rank {rank})')
        sys.exit()
    logs.append(dict(line.split() for line in path.read_text().splitlines() if line.strip()))
common = [key for key in logs[0] if key in logs[1]]
updates = [key for key in common if key != 'init']
differ = [key for key in common if logs[0][key] != logs[1][key]]
if differ:
    print(f'FAIL (differ from {"start" if differ[0] == "init" else "update " + differ[0]})')
elif not updates:
    print('FAIL (no update)')
elif logs[0][updates[-1]] == logs[0].get('init'):
    print('FAIL (parameters never changed)')
else:
    print(f'PASS ({len(updates)} updates)')
EOF
}

# --- fixture data ------------------------------------------------------------------------------
# ext_demo ships with the project (synthetic dialogues); PersonaChat-style `both` file here.
BOTH=$W/both.txt
"$PYTHON" - "$BOTH" <<'EOF'
import sys

topics = [
    ('i keep bees in my garden.', 'my bees made honey again'),
    ('i play the cello.', 'i practised the cello all evening'),
    ('i drive a red tractor.', 'my tractor broke down today'),
    ('i bake bread every morning.', 'the bread came out of the oven'),
    ('i am afraid of dogs.', 'a big dog scared me again'),
    ('i work night shifts.', 'my night shift starts soon'),
    ('i love hiking in the mountains.', 'we hiked up the mountain trail'),
    ('i collect old coins.', 'i found a rare coin yesterday'),
    ('i paint with watercolours.', 'i painted the lake with watercolours'),
    ('i have three cats.', 'my cats knocked over a vase'),
    ('i surf every weekend.', 'the waves were great for surfing'),
    ('i study chemistry.', 'my chemistry exam is on monday'),
]
lines = []
for e in range(16):
    mine = [e % 12, (e + 5) % 12, (e + 7) % 12]
    theirs = [(e + 3) % 12, (e + 8) % 12, (e + 10) % 12]
    entries = [f'your persona: {topics[t][0]}' for t in mine]
    entries += [f"partner's persona: {topics[t][0]}" for t in theirs]
    for k in range(3):
        entries.append(f'{topics[theirs[k]][1]} .\t{topics[mine[k]][1]} , and you ?')
    lines += [f'{i} {entry}' for i, entry in enumerate(entries, 1)]
open(sys.argv[1], 'w').write('\n'.join(lines) + '\n')
EOF

TINY=(--n-layers 1 --embedding-size 32 --n-heads 2 --ffn-size 64)
SHORT=(-bs 4 --max-train-steps 4 -vstep -1 -vme 8 --short-final-eval true --log-every-n-steps 2)
EVAL=(-dt valid -ne 16 -bs 4)
DEMO=(-t ext_demo --dict-file "$W/demo.dict")
P2F=(--personachat-file "$BOTH" --p2bot-train-episodes 12)
PPGF=(--personachat-file "$BOTH" --ppg-valid-episodes 4)
HRED=(--embedding-size 32 --hidden-size 32 --latent-size 16 --floor-size 4 --n-components 3)

prereq() {  # prereq NAME parlai-args...: single process, once
    local name=$1
    shift
    if ! "$PARLAI" "$@" > "$PRE/$name.log" 2>&1; then
        echo "prerequisite $name failed: see $PRE/$name.log" >&2
        exit 2
    fi
}

wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

if [ ! -f "$PRE/done" ]; then
    prereq demo_dict build_dict -t ext_demo --dict-file "$W/demo.dict"
    prereq ppg_dict build_dict -t ppg_ext "${PPGF[@]}" --dict-file "$W/ppg.dict"
    prereq esim train_model -m coral_esim "${DEMO[@]}" -mf "$PRE/esim" --embedding-size 32 \
        --hidden-size 32 "${SHORT[@]}" --max-train-steps 10
    prereq hred train_model -m mr_hred "${DEMO[@]}" -mf "$PRE/hred" "${HRED[@]}" "${SHORT[@]}" \
        --skip-generation true
    prereq refs generate_pseudo_refs -mf "$PRE/hred" -t ext_demo -dt train:evalmode \
        -o "$W/hyps.jsonl" --num-hyps 2 --max-new-contexts 64 -bs 16 --progress false
    prereq tx train_model -m p2bot_transmitter -t p2bot_selfplay:supervised "${P2F[@]}" \
        "${TINY[@]}" -mf "$PRE/tx" --label-truncate 12 "${SHORT[@]}" --skip-generation true
    prereq rx train_model -m p2bot_receiver -t p2bot_selfplay:receiver "${P2F[@]}" \
        "${TINY[@]}" -mf "$PRE/rx" --tau-anneal-steps 4 "${SHORT[@]}"
    prereq ppg train_model -m ppg_persona_generator -t ppg_ext:persona "${PPGF[@]}" \
        --dict-file "$W/ppg.dict" "${TINY[@]}" -mf "$PRE/ppg" --label-truncate 24 \
        "${SHORT[@]}" --skip-generation true
    prereq drg train_model -m ppg_response_generator -t ppg_ext "${PPGF[@]}" \
        --dict-file "$W/ppg.dict" "${TINY[@]}" -mf "$PRE/drg" --label-truncate 12 \
        --partner-personas generated --ppg-model-file "$PRE/ppg" "${SHORT[@]}" \
        --skip-generation true
    prereq critic train_model -m ppg_critic -t ppg_ext:critic "${PPGF[@]}" \
        --dict-file "$W/ppg.dict" "${TINY[@]}" --n-positions 128 -mf "$PRE/critic" "${SHORT[@]}"
    touch "$PRE/done"
fi

# --- the rows ----------------------------------------------------------------------------------
ROWS=()
STATUS=0
check() {  # check ROW MODEL TASK_LABEL; arrays TRAIN (after -m MODEL) and EVALARGS (after -mf)
    local row=$1 model=$2 label=$3 dir=$W/runs/$1
    wanted "$row" || return 0
    rm -rf "$dir"
    mkdir -p "$dir/hashes"
    local start=$SECONDS train_cell eval_cell sync_cell
    echo "== $row: multiprocessing_train" >&2
    if DDP_CHECK_DIR=$dir/hashes "$PARLAI" multiprocessing_train -m "$model" "${TRAIN[@]}" \
        -mf "$dir/model" --distributed-world-size 2 > "$dir/train.log" 2>&1 &&
        [ -f "$dir/model" ]; then
        train_cell=PASS
    else
        train_cell=FAIL
    fi
    sync_cell=$(sync_verdict "$dir/hashes")
    echo "== $row: multiprocessing_eval" >&2
    if [ "$train_cell" = PASS ] && "$PARLAI" multiprocessing_eval -mf "$dir/model" \
        "${EVALARGS[@]}" --distributed-world-size 2 --report-filename "$dir/eval.json" \
        > "$dir/eval.log" 2>&1 && [ -f "$dir/eval.json" ]; then
        eval_cell=PASS
    else
        eval_cell=FAIL
    fi
    [ "$train_cell$eval_cell" = PASSPASS ] && [[ $sync_cell == PASS* ]] || STATUS=1
    ROWS+=("| \`$model\` | $label | $train_cell | $eval_cell | $sync_cell | $((SECONDS - start)) |")
    echo "${ROWS[-1]}" >&2
}

TRAIN=("${DEMO[@]}" "${TINY[@]}" "${SHORT[@]}" --skip-generation true)
EVALARGS=(-t ext_demo "${EVAL[@]}" --skip-generation false --inference greedy)
check unified_transformer unified_transformer 'ext_demo'
check encoder_decoder encoder_decoder 'ext_demo'

TRAIN=("${DEMO[@]}" --embedding-size 32 --hidden-size 32 "${SHORT[@]}")
EVALARGS=(-t ext_demo "${EVAL[@]}")
check coral_esim coral_esim 'ext_demo'
TRAIN=("${DEMO[@]}" "${TINY[@]}" --mlp-hidden-size 32 "${SHORT[@]}")
check coral_cross_encoder coral_cross_encoder 'ext_demo'

TRAIN=("${DEMO[@]}" "${TINY[@]}" "${SHORT[@]}" --reward-model-file "$PRE/esim"
    --negative-source nucleus --p-positive 0.5 --margin 0.1 --negative-max-len 8
    --skip-generation true)
EVALARGS=(-t ext_demo "${EVAL[@]}" --skip-generation false --metrics ext_coral)
check coral coral 'ext_demo, mix-policy (nucleus negatives, ESIM reward)'

TRAIN=("${DEMO[@]}" "${TINY[@]}" "${SHORT[@]}")
EVALARGS=(-t ext_demo "${EVAL[@]}")
check plato2_evaluator plato2_evaluator 'ext_demo'
TRAIN=("${DEMO[@]}" "${TINY[@]}" --n-latent 4 "${SHORT[@]}" --skip-generation true)
EVALARGS=(-t ext_demo "${EVAL[@]}" --skip-generation false --inference topk --topk 5
    --metrics ext_plato2)
if [ -f "$W/runs/plato2_evaluator/model" ]; then
    EVALARGS+=(--evaluator-model-file "$W/runs/plato2_evaluator/model")
fi
check plato2 plato2 'ext_demo, K = 4 generate-then-rank'

for m in mr_hred vhred vhred_gmm vhred_lgm; do
    TRAIN=(-t multiref_ext --multiref-file "$W/hyps.jsonl" --multiref-mode gt+hyp
        --multiref-n-hyps 2 --evaltask ext_demo --dict-file "$W/demo.dict" "${HRED[@]}"
        "${SHORT[@]}" --skip-generation true)
    EVALARGS=(-t ext_demo "${EVAL[@]}" --skip-generation false --inference greedy)
    check $m $m 'multiref_ext (gt + 2 pseudo refs)'
done

TRAIN=(-t ppg_ext:persona "${PPGF[@]}" --dict-file "$W/ppg.dict" "${TINY[@]}"
    --label-truncate 24 "${SHORT[@]}" --skip-generation true)
EVALARGS=(-t ppg_ext:persona "${PPGF[@]}" "${EVAL[@]}" --skip-generation false)
check ppg_persona_generator ppg_persona_generator 'ppg_ext:persona'
TRAIN=(-t ppg_ext "${PPGF[@]}" --dict-file "$W/ppg.dict" "${TINY[@]}" --label-truncate 12
    --partner-personas generated --ppg-model-file "$PRE/ppg" "${SHORT[@]}"
    --skip-generation true)
EVALARGS=(-t ppg_ext "${PPGF[@]}" "${EVAL[@]}" --skip-generation false)
check ppg_response_generator ppg_response_generator 'ppg_ext, generated partner personas'
TRAIN=(-t ppg_ext:critic "${PPGF[@]}" --dict-file "$W/ppg.dict" "${TINY[@]}"
    --n-positions 128 "${SHORT[@]}")
EVALARGS=(-t ppg_ext:critic "${PPGF[@]}" "${EVAL[@]}")
check ppg_critic ppg_critic 'ppg_ext:critic'
TRAIN=(-t ppg_ext "${PPGF[@]}" --dict-file "$PRE/drg.dict" --init-model "$PRE/drg"
    --ppg-model-file "$PRE/ppg" --critic-model-file "$PRE/critic" -lr 1e-3
    --rl-persona-max-len 8 --rl-response-max-len 6 "${SHORT[@]}" --skip-generation true)
EVALARGS=(-t ppg_ext "${PPGF[@]}" "${EVAL[@]}" --skip-generation false)
check ppg_rl ppg_rl 'ppg_ext, joint REINFORCE (PPG + DRG, frozen critic)'

TRAIN=(-t p2bot_selfplay:supervised "${P2F[@]}" --dict-file "$PRE/tx.dict" "${TINY[@]}"
    --label-truncate 12 "${SHORT[@]}" --skip-generation true)
EVALARGS=(-t p2bot_selfplay:supervised "${P2F[@]}" "${EVAL[@]}" --skip-generation false)
check p2bot_transmitter p2bot_transmitter 'p2bot_selfplay:supervised'
TRAIN=(-t p2bot_selfplay:receiver "${P2F[@]}" --dict-file "$PRE/rx.dict" "${TINY[@]}"
    --tau-anneal-steps 4 "${SHORT[@]}")
EVALARGS=(-t p2bot_selfplay:receiver "${P2F[@]}" "${EVAL[@]}")
check p2bot_receiver p2bot_receiver 'p2bot_selfplay:receiver'
TRAIN=(-t p2bot_selfplay "${P2F[@]}" --dict-file "$PRE/tx.dict" --init-model "$PRE/tx"
    --selfplay-receiver-model "$PRE/rx" "${SHORT[@]}" -bs 3 -lr 1e-4 --selfplay-max-len 6
    --selfplay-log-file "$W/runs/p2bot_selfplay.jsonl" --skip-generation true)
EVALARGS=(-t p2bot_selfplay "${P2F[@]}" "${EVAL[@]}" --skip-generation false)
rm -f "$W/runs/p2bot_selfplay.jsonl"
check p2bot_selfplay p2bot_transmitter 'p2bot_selfplay: self-play (frozen user + receiver)'

{
    echo '| agent (`-m`) | task / loop | multiprocessing_train | multiprocessing_eval | workers in sync | seconds |'
    echo '|---|---|---|---|---|---|'
    printf '%s\n' "${ROWS[@]}"
} | tee "$W/table.md"
exit $STATUS
