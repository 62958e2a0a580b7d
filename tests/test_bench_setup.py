"""The benchmarks' shared set-up and output (bench/bench_setup.py) and the teacher-forced step
the growth families share (bench/growth_families.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)

import bench_setup  # noqa: E402
import growth_families  # noqa: E402
from growth_families import PAD, START  # noqa: E402


def test_task_with_dictionary_builds_one_dictionary_of_the_task_in_a_new_folder(tmp_path):
    task, workdir, dict_file = bench_setup.task_with_dictionary(
        str(tmp_path / 'no_such_data'), 'bench_setup_test_'
    )
    assert task == ['-t', 'ext_demo']  # no DailyDialog there: the synthetic dialogues
    assert os.path.basename(workdir).startswith('bench_setup_test_')
    assert dict_file == os.path.join(workdir, 'dict')
    with open(dict_file, encoding='utf-8') as handle:
        words = {line.split('\t')[0] for line in handle}
    assert len(words) > 10 and '__null__' in words
    shutil.rmtree(workdir)


def test_task_with_dictionary_passes_no_start_to_the_task(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(bench_setup.configs, 'build_dictionary', lambda *a: built.append(a))
    task, workdir, dict_file = bench_setup.task_with_dictionary(str(tmp_path), 'x_', True)
    assert task[:2] == ['-t', 'dailydialog_ext:no_start']
    assert built == [(task, dict_file)]


def test_write_and_print_results_writes_both_files_and_says_where(tmp_path, capsys, monkeypatch):
    stem = str(tmp_path / 'out')
    paths = bench_setup.write_and_print_results(__file__, stem, False, {'a': 1}, '| x |')
    assert paths == (stem + '.json', stem + '.md')
    with open(paths[0]) as handle:
        assert json.load(handle)['a'] == 1
    with open(paths[1]) as handle:
        assert handle.read() == '| x |\n'
    assert capsys.readouterr().out == f'\n| x |\n\n(written {paths[0]} and {paths[1]})\n'
    # no --out: the default stem of this script, -quick when quick
    asked = []
    monkeypatch.setattr(
        bench_setup, 'default_out_stem', lambda s, q: asked.append((s, q)) or stem + '2'
    )
    bench_setup.write_and_print_results('bench/x.py', None, True, {}, 'y')
    assert asked == [('bench/x.py', True)] and os.path.isfile(stem + '2.md')


def test_decoder_input_is_the_target_shifted_right_after_start():
    target = torch.tensor([[7, 8, 9], [5, PAD, PAD]])
    expected = torch.tensor([[START, 7, 8], [START, 5, PAD]])
    assert torch.equal(growth_families._decoder_input(target), expected)


def test_teacher_forced_loss_is_the_mean_cross_entropy_of_the_real_target_tokens(monkeypatch):
    monkeypatch.setattr(growth_families, 'VOCAB', 12)

    class Echo(torch.nn.Module):
        """``hidden`` = one-hot of the decoder input (so the loss depends on the shift)."""

        def forward(self, context, decoder_input):
            self.seen = (context, decoder_input)
            return F.one_hot(decoder_input, 12).float() * 3.0, None

    family = growth_families.Family(2, 6, 5, 'cpu')
    family.model = Echo()
    logits_of = torch.nn.Linear(12, 12)
    loss, count = family.teacher_forced_loss(logits_of)
    context, decoder_input = family.model.seen
    # the same draws again: context first, then the target
    generator = torch.Generator().manual_seed(0)
    again = growth_families._tokens(2, 6, 12, generator)
    target = growth_families._tokens(2, 5, 12, generator)
    assert torch.equal(context, again)
    assert (
        torch.equal(decoder_input[:, 1:], target[:, :-1]) and (decoder_input[:, 0] == START).all()
    )
    real = target != PAD
    hidden = F.one_hot(decoder_input, 12).float() * 3.0
    expected = F.cross_entropy(logits_of(hidden[real]), target[real])
    assert loss.item() == pytest.approx(expected.item())
    assert count == int((context != PAD).sum() + real.sum())
