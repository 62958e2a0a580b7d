"""``make demo`` and the first start of a GGUF base (``parlai_ext.modules.hf`` progress lines)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_hf import tiny_gguf

from parlai_ext.modules import hf

ROOT = Path(__file__).resolve().parents[1]


def tiny_plato2(folder: Path, n_latent: int = 4) -> str:
    """A tiny stage-2.1 PLATO-2 on ``ext_demo`` (stage 1: 60 updates, stage 2.1: 10), trained in
    this process in a few seconds; its replies end within ParlAI's default length."""
    from parlai.scripts.train_model import TrainModel

    common = dict(
        task='ext_demo', batchsize=16, skip_generation=True, validation_every_n_secs=1000,
        validation_max_exs=16, short_final_eval=True, datapath=str(folder / 'data'),
    )  # fmt: skip
    TrainModel.main(
        **common, model='unified_transformer', model_file=str(folder / 'stage1'), n_layers=1,
        embedding_size=32, n_heads=2, ffn_size=64, dropout=0.0, learningrate=3e-3,
        max_train_steps=60,
    )  # fmt: skip
    TrainModel.main(
        **common, model='plato2', init_model=str(folder / 'stage1'),
        dict_file=str(folder / 'stage1.dict'), model_file=str(folder / 'stage21'),
        n_latent=n_latent, learningrate=1e-3, max_train_steps=10,
    )  # fmt: skip
    return str(folder / 'stage21')


def test_first_start_prints_progress_lines_then_later_starts_are_silent(tmp_path, capsys):
    path = tiny_gguf(tmp_path / 'src')
    cache = str(tmp_path / 'cache')
    capsys.readouterr()
    folder = hf.model_folder(path, cache_root=cache)
    lines = capsys.readouterr().err.splitlines()
    ours = [line for line in lines if line.startswith('[parlai-ext] ')]
    assert ours[0].startswith(f'[parlai-ext] loading {path} for the first time: dequantising')
    assert folder in ours[0]  # where the copy goes
    # one line per step, in order, with its share of the usual total and the seconds so far
    steps = [re.match(r'\[parlai-ext\] +(\d+)% (.*) \.\.\. (\d+) s$', line) for line in ours[1:]]
    assert all(steps), ours
    assert [(int(m.group(1)), m.group(2)) for m in steps] == [
        (0, 'reading the tokenizer from the GGUF file'),
        (25, 'reading and dequantising the weights'),
        (95, 'writing the dequantised copy'),
        (100, f'{path} ready'),
    ]
    assert hf.model_folder(path, cache_root=cache) == folder
    assert '[parlai-ext]' not in capsys.readouterr().err  # cached: nothing to report


def test_demo_chats_two_turns_then_shows_the_candidates_of_one(tmp_path):
    """``make demo`` with a tiny PLATO-2 (K = 4) in place of the SmolLM2 one (same commands)."""
    make = shutil.which('make')
    if make is None:
        pytest.skip('no make')
    dry = subprocess.run(
        [make, '-n', '-o', 'install', 'demo'], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    # the default model: PLATO-2 on SmolLM2, two chats (the second with --show-candidates)
    chats = re.findall(r'parlai interactive -mf (\S+)( [^\n]*)?\n', dry.replace('\\\n', ' '))
    assert [model for model, _ in chats][:2] == ['zoo:plato2/dailydialog_smollm2/model'] * 2
    assert ['--show-candidates true' in extra for _, extra in chats[:2]] == [False, True]
    model = tiny_plato2(tmp_path)
    bin_dir = os.path.dirname(sys.executable)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PARLAI_DATAPATH': str(tmp_path / 'data')}
    proc = subprocess.run(
        [make, '-s', '-o', 'install', 'demo', f'BIN={bin_dir}', f'DEMO_MODEL={model}',
         'DEMO_ARGS=--skip-generation false'],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    replies = re.findall(r'\[Plato2\]: (.*)', out)
    assert len(replies) == 3, out
    # the third reply's candidates only: one per latent value (K = 4) that ended in time
    tables = re.findall(r'\[(\d+) candidates, best first; \* = the reply\]', out)
    assert len(tables) == 1 and 1 <= int(tables[0]) <= 4, out
    rows = re.findall(r'^([* ])\s+(\d+)\s+(\d+)\s+\S+\s+\S+\s+\S+\s+\S+\s+(.*)$', out, re.M)
    assert [int(rank) for _, rank, _, _ in rows] == list(range(1, int(tables[0]) + 1))
    assert [mark for mark, *_ in rows] == ['*'] + [' '] * (len(rows) - 1)
    assert {int(z) for _, _, z, _ in rows} <= set(range(4))  # latent ids, each once
    assert len({z for _, _, z, _ in rows}) == len(rows)
    assert rows[0][3].rstrip('.') in replies[2], out  # the starred row is the reply
    assert 'You type:' in out and 'do you have any plans for the weekend ?' in out
