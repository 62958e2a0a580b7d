"""Faults of issue #19 (see docs/reliability.md): each test reproduces one and pins the answer.

In-process ``TrainLoop`` runs use a tiny ``unified_transformer`` on ``ext_demo``; the
subprocess tests (kill -9 during saves, two trainings on one model file) are in
``test_reliability_kill.py``.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from parlai.core.agents import create_agent
from parlai.core.dict import DictionaryAgent
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.scripts.train_model import TrainLoop, setup_args

from parlai_ext import io
from parlai_ext.compat import CorruptFileError, check_generation_options

TINY = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']


def train_opt(model_file: str, *args: str, task: str = 'ext_demo') -> Opt:
    return setup_args().parse_args(
        ['-m', 'unified_transformer', '-t', task, '-mf', model_file, *TINY, '-bs', '8',
         '--skip-generation', 'true', '--seed', '0', *args]
    )  # fmt: skip


def digest(path: str) -> str:
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


# --- atomic writes --------------------------------------------------------------------------

KILL_WRITER = textwrap.dedent(
    """
    import sys
    from parlai_ext.io import atomic_open
    path = sys.argv[1]
    n = 0
    while True:
        n += 1
        with atomic_open(path, 'w') as handle:
            for _ in range(2000):
                handle.write(f'{n:08d} ' * 8 + '\\n')
        print(n, flush=True)
    """
)


def test_atomic_open_a_kill_leaves_the_old_or_the_new_file(tmp_path):
    """kill -9 at random moments of a rewrite loop: the file is always one whole version."""
    import random
    import signal
    import time

    path = str(tmp_path / 'data.txt')
    rng = random.Random(0)
    seen = set()
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, '-c', KILL_WRITER, path], stdout=subprocess.PIPE, text=True
        )
        proc.stdout.readline()  # one version written
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        lines = open(path).read().splitlines()
        assert len(lines) == 2000 and len(set(lines)) == 1, 'a cut or mixed file'
        seen.add(lines[0])
    assert len(seen) > 1  # the versions did move on
    # the killed writers' temporaries are removed by the next write of that file
    assert io.atomic_write(path, 'new\n')
    assert os.listdir(tmp_path) == ['data.txt']


def test_atomic_write_skips_identical_content_and_keeps_old_file_on_error(tmp_path):
    path = str(tmp_path / 'f.txt')
    assert io.atomic_write(path, 'one\n')
    before = os.stat(path)
    assert not io.atomic_write(path, 'one\n')  # identical: not rewritten
    assert os.stat(path).st_ino == before.st_ino
    with pytest.raises(RuntimeError), io.atomic_open(path) as handle:
        handle.write('two\n')
        raise RuntimeError('interrupted')
    assert open(path).read() == 'one\n' and os.listdir(tmp_path) == ['f.txt']


def dictionary(dict_file: str, words: list[str]) -> DictionaryAgent:
    parser = ParlaiParser(True, True)
    DictionaryAgent.add_cmdline_args(parser)
    agent = DictionaryAgent(parser.parse_args(['--dict-file', dict_file]))
    for word in words:
        agent.add_token(word)
    return agent


def test_parlai_dictionary_save_is_atomic_and_skips_identical_files(tmp_path, monkeypatch):
    import parlai.core.dict as parlai_dict

    dict_file = str(tmp_path / 'model.dict')
    agent = dictionary(dict_file, ['hello', 'world'])
    agent.save(dict_file, sort=False)
    first = {name: os.stat(tmp_path / name) for name in ('model.dict', 'model.dict.opt')}
    agent.save(dict_file, sort=False)  # as agents do with every checkpoint
    for name, stat in first.items():
        assert os.stat(tmp_path / name).st_mtime_ns == stat.st_mtime_ns, name
    old = open(dict_file).read()
    agent.add_token('again')
    calls = []

    def failing_escape(token):  # the process dies half-way through the listing
        calls.append(token)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return token

    monkeypatch.setattr(parlai_dict, 'escape', failing_escape)
    with pytest.raises(KeyboardInterrupt):
        agent.save(dict_file, sort=False)
    assert open(dict_file).read() == old  # still the whole old dictionary
    assert sorted(os.listdir(tmp_path)) == ['model.dict', 'model.dict.opt']
    monkeypatch.undo()
    agent.save(dict_file, sort=False)
    assert 'again\t' in open(dict_file).read()


def test_corrupt_options_file_names_itself_and_the_remedy(tmp_path):
    path = tmp_path / 'model.opt'
    Opt({'model': 'unified_transformer', 'n_layers': 2}).save(str(path))
    assert Opt.load(str(path))['n_layers'] == 2
    path.write_text(path.read_text()[:20])  # cut
    with pytest.raises(CorruptFileError, match=rf'{path}: not a readable options file.*Restore'):
        Opt.load(str(path))


def test_cut_checkpoint_trainstats_names_the_file_and_the_remedy(tmp_path):
    model_file = str(tmp_path / 'model')
    open(model_file + '.checkpoint', 'wb').write(b'weights')
    open(model_file + '.checkpoint.trainstats', 'w').write('{"parleys": 12, "train_ti')
    with pytest.raises(CorruptFileError) as info:
        TrainLoop(train_opt(model_file))
    message = str(info.value)
    assert message.startswith(model_file + '.checkpoint.trainstats: cut or corrupt')
    assert 'delete it to continue from those weights' in message
    assert not os.path.exists(model_file + '.lock')  # a failed start leaves no lock file


# --- one training, the saved best model, a finished run ---------------------------------------


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
    """A short training with validation, run to its end in this process."""
    folder = tmp_path_factory.mktemp('finished')
    model_file = str(folder / 'model')
    opt = train_opt(
        model_file, '--max-train-steps', '6', '-vstep', '3', '-vme', '16', '-vmt', 'loss',
        '--datapath', str(folder / 'data'),
    )  # fmt: skip
    valid, test = TrainLoop(opt).train()
    return model_file, valid, test


def test_rerun_of_a_finished_training_keeps_the_model(finished):
    model_file, valid, _ = finished
    stats = json.load(open(model_file + '.trainstats'))
    assert stats['parlai_ext_finished'] is True
    before = {s: digest(model_file + s) for s in ('', '.trainstats', '.opt')}
    loop = TrainLoop(train_opt(model_file, '--max-train-steps', '6', '-vstep', '3', '-vmt', 'loss'))
    assert not hasattr(loop, 'agent')  # nothing built, nothing loaded
    again_valid, _ = loop.train()
    assert again_valid['ppl'] == pytest.approx(float(valid['ppl']))
    assert {s: digest(model_file + s) for s in before} == before
    # asked for: ParlAI's behaviour (continue from the model and overwrite it)
    loop = TrainLoop(train_opt(model_file, '--overwrite-finished', 'true'))
    assert hasattr(loop, 'agent')
    del loop


def test_final_evaluation_after_a_resume_uses_the_best_model(finished, tmp_path):
    """A crash left <mf>.checkpoint (other weights) beside the best <mf>: resume, finish."""
    model_file, valid, _ = finished
    run = str(tmp_path / 'model')
    for suffix in ('', '.opt', '.dict', '.dict.opt'):
        shutil.copyfile(model_file + suffix, run + suffix)
    stats = json.load(open(model_file + '.trainstats'))
    for key in ('final_valid_report', 'final_test_report', 'parlai_ext_finished'):
        stats.pop(key)
    json.dump(stats, open(run + '.trainstats', 'w'))  # the run had not finished
    json.dump(stats, open(run + '.checkpoint.trainstats', 'w'))  # 6 of 6 steps done
    states = torch.load(run, weights_only=False)
    generator = torch.Generator().manual_seed(0)
    states['model'] = {
        k: v + torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in states['model'].items()
    }
    torch.save(states, run + '.checkpoint')
    shutil.copyfile(run + '.opt', run + '.checkpoint.opt')
    best = digest(run)
    final_valid, _ = TrainLoop(
        train_opt(run, '--max-train-steps', '6', '-vstep', '3', '-vme', '16', '-vmt', 'loss')
    ).train()
    # the reloaded model is the best one (same report as the first run's final evaluation),
    # and the resumed run, which found nothing better, did not overwrite it
    assert float(final_valid['ppl']) == pytest.approx(float(valid['ppl']), rel=1e-5)
    assert digest(run) == best


def test_a_failed_start_with_another_agents_init_model_says_whose_file_and_writes_nothing(
    tmp_path,
):
    other = tmp_path / 'other' / 'model'
    other.parent.mkdir()
    torch.save({'model': {'encoder.weight': torch.zeros(2, 2)}}, other)
    Opt({'model': 'coral_esim'}).save(str(other) + '.opt')
    run = tmp_path / 'run'
    run.mkdir()
    with pytest.raises(RuntimeError) as info:
        TrainLoop(train_opt(str(run / 'model'), '--init-model', str(other)))
    message = str(info.value)
    assert "belongs to agent 'coral_esim'" in message and 'unified_transformer' in message
    assert '1 unexpected (first: encoder.weight)' in message and len(message) < 1000
    assert os.listdir(run) == []  # no stray dictionary, no lock file


def test_training_on_a_folder_without_test_split_finishes(tmp_path):
    from test_teachers_dailydialog import write_split

    for split in ('train', 'valid'):
        write_split(tmp_path / 'dd', split)
    model_file = str(tmp_path / 'model')
    valid, test = TrainLoop(
        train_opt(
            model_file, '--max-train-steps', '2', '--dailydialog-data-dir', str(tmp_path / 'dd'),
            task='dailydialog_ext',
        )
    ).train()  # fmt: skip
    assert valid['exs'] == 9 and not test  # each of the 9 utterances is a label once
    stats = json.load(open(model_file + '.trainstats'))
    assert stats['parlai_ext_finished'] and stats['final_valid_report']['exs'] == 9


# --- options and input checked up front -------------------------------------------------------


def agent_opt(*args: str) -> Opt:
    return ParlaiParser(True, True).parse_args(['-m', 'unified_transformer', *TINY, *args])


@pytest.mark.parametrize(
    'args, message',
    [
        (['--inference', 'topk', '--topk', '0'], r'--topk 0: .*expected k >= 1'),
        (['--inference', 'topk', '--topk', '5'], r'--topk 5: larger than the vocabulary \(4 '),
        (['--inference', 'nucleus', '--topp', '0'], r'--topp 0.0: .*expected 0 < p <= 1'),
        (['--inference', 'beam', '--beam-size', '0'], r'--beam-size 0: expected >= 1'),
        (['--temperature', '0'], r'--temperature 0.0: expected > 0'),
        (['-bs', '0'], r'-bs/--batchsize 0: .*expected >= 1'),
    ],
)
def test_bad_search_and_batch_options_are_rejected_when_the_agent_is_built(args, message):
    with pytest.raises(ValueError, match=message):
        create_agent(agent_opt(*args))


def test_good_search_options_pass():
    agent = create_agent(agent_opt('--inference', 'topk', '--topk', '4'))  # 4 special tokens
    assert len(agent.dict) == 4
    check_generation_options({'inference': 'nucleus', 'topp': 1.0, 'topk': 0})  # topk unused


def test_interactive_human_skips_empty_lines(monkeypatch):
    from parlai.agents.local_human.local_human import LocalHumanAgent

    human = LocalHumanAgent(ParlaiParser(True, True).parse_args(['-m', 'local_human']))
    lines = iter(['', '   ', 'hello there'])

    def fake_input(prompt=''):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, 'input', fake_input)
    assert human.act()['text'] == 'hello there'
    assert human.act() == {'episode_done': True} and human.finished  # end of piped input
