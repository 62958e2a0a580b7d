"""PLATO-2 through the stock ``parlai`` command: the curriculum, rerank, self_chat, interactive."""

import json
import math

import pytest
import torch
from conftest import run_parlai
from parlai.scripts.train_model import TrainModel
from parlai_inprocess import run_script

THREADS = {'OMP_NUM_THREADS': '1'}  # tiny models: threads only contend on shared cores


@pytest.fixture(scope='module')
def curriculum(tmp_path_factory):
    """Stage 1 -> 2.1 and 2.2 on the demo dialogues, a few steps each (files shared)."""
    folder = tmp_path_factory.mktemp('plato2')
    env = {'PARLAI_DATAPATH': str(folder / 'data'), **THREADS}
    files = {stage: str(folder / stage) for stage in ('stage1', 'stage21', 'stage22')}
    common = ['-t', 'ext_demo', '--dropout', '0', '-vtim', '1000', '--log-every-n-steps', '5',
              '--validation-max-exs', '32', '--short-final-eval', 'true']  # fmt: skip
    no_generation = ['--skip-generation', 'true']
    # stage 1 in this process (the unified_transformer CLI has its own tests): saves a start-up
    torch.set_num_threads(1)
    TrainModel.main(
        model='unified_transformer', task='ext_demo', model_file=files['stage1'],
        datapath=env['PARLAI_DATAPATH'], n_layers=2, embedding_size=32, n_heads=4, ffn_size=64,
        dropout=0.0, batchsize=16, learningrate=3e-3, max_train_steps=60, skip_generation=True,
        validation_every_n_secs=1000, validation_max_exs=32, short_final_eval=True,
        validation_metric='ppl', validation_metric_mode='min',
    )  # fmt: skip
    logs = {}
    logs['stage21'] = run_parlai(
        'train_model', '-m', 'plato2', '--init-model', files['stage1'], *common,
        *no_generation, '-mf', files['stage21'], '--n-latent', '4', '-bs', '16', '-lr', '1e-3',
        '--max-train-steps', '20', '--uniform-prior-ppl', 'true', '-vmt', 'uniform_z_ppl',
        '-vmm', 'min', env=env,
    )  # fmt: skip
    # stage 2.2 in this process too (one start-up less; the evaluator runs through the command
    # line in the tests below), with the arguments the command line had
    logs['stage22'] = run_script(
        TrainModel, '-m', 'plato2_evaluator', '--init-model', files['stage1'],
        *common, '--datapath', env['PARLAI_DATAPATH'], '-mf', files['stage22'], '-bs', '16',
        '-lr', '1e-3', '--max-train-steps', '20', '-vmt', 'hits@1', '-vmm', 'max',
    )  # fmt: skip
    return files, logs, env


def test_stage2_models_start_from_stage1_and_train_their_losses(curriculum):
    files, logs, _ = curriculum
    for stage in ('stage21', 'stage22'):
        output = logs[stage].stdout + logs[stage].stderr
        assert 'stage-2 parameter tensors start fresh' in output, stage
    stats = json.load(open(files['stage21'] + '.trainstats'))
    first, train = stats['train_reports'][0], stats['train_reports'][-1]
    assert {'loss', 'ppl', 'bow_loss', 'z_entropy', 'z_used'} <= set(train)
    # the BOW head starts fresh: its loss falls fast (the NLL, warm-started, moves within the
    # noise of 5-step windows here; test_plato2_overfits_a_tiny_task pins its fall)
    assert train['bow_loss'] < 0.95 * first['bow_loss'], (first, train)
    assert train['loss'] < 3.0  # warm start from stage 1: far below a fresh model's ~5.5
    assert 0 < train['z_entropy'] <= math.log(4) + 1e-6
    valid = stats['final_valid_report']
    assert 1 <= valid['z_used'] <= 4
    # the README recipe selects on uniform_z_ppl (z uniform), far below a uniform guess
    n_words = sum(1 for _ in open(files['stage1'] + '.dict'))
    assert 1 < valid['uniform_z_ppl'] < n_words / 10
    stats = json.load(open(files['stage22'] + '.trainstats'))
    first, train = stats['train_reports'][0], stats['train_reports'][-1]
    assert {'rce_loss', 'mlm_loss', 'coherence_acc'} <= set(train)
    assert train['mlm_loss'] < 0.95 * first['mlm_loss'], (first, train)
    assert abs(train['rce_loss'] - math.log(2)) < 0.2  # two classes, near chance this early
    assert 0 <= stats['final_valid_report']['hits@1'] <= 1


def test_eval_model_generate_then_rank_with_paper_metrics(curriculum, tmp_path):
    files, _, env = curriculum
    report = str(tmp_path / 'report.json')
    run_parlai(
        'eval_model', '-mf', files['stage21'], '-t', 'ext_demo', '-dt', 'valid',
        '--num-examples', '16', '--skip-generation', 'false', '--metrics', 'ext_plato2',
        '--evaluator-model-file', files['stage22'], '--report-filename', report, env=env,
    )  # fmt: skip
    values = json.load(open(report))['report']
    assert values['exs'] == 16
    assert 0 < values['ext_dist-1'] <= 1 and 0 < values['ext_dist-2'] <= 1
    assert values['gen_n_toks'] > 1


def test_self_chat_with_rerank(curriculum, tmp_path):
    files, _, env = curriculum
    out = str(tmp_path / 'selfchat')
    run_parlai(
        'self_chat', '-mf', files['stage21'], '--evaluator-model-file', files['stage22'],
        '--num-self-chats', '2', '--selfchat-max-turns', '4', '--skip-generation', 'false',
        '--outfile', out, env=env,
    )  # fmt: skip
    lines = open(out + '.jsonl').read().splitlines()
    assert len(lines) == 2
    turns = [turn for pair in json.loads(lines[0])['dialog'] for turn in pair]
    assert len(turns) >= 4 and all(turn['text'].strip() for turn in turns)
    # every reply is the best of its reranked candidates (evaluator probabilities)
    for turn in turns:
        candidates = turn['beam_texts']
        assert 1 <= len(candidates) <= 4
        assert turn['text'] == candidates[0][0]
        scores = [score for _, score in candidates]
        assert scores == sorted(scores, reverse=True)


def test_interactive_with_rerank(curriculum):
    files, _, env = curriculum
    out = run_parlai(
        'interactive', '-mf', files['stage21'], '--evaluator-model-file', files['stage22'],
        '--skip-generation', 'false', stdin='hi , how are you ?\nwhat is your name ?\n', env=env,
    )  # fmt: skip
    replies = [
        line.split(']:', 1)[1].strip() for line in out.stdout.splitlines() if '[Plato2]:' in line
    ]
    assert len(replies) == 2 and all(replies)


def test_plato2_overfits_a_tiny_task(tmp_path):
    """Stage 2.1 from scratch on four dialogues: the NLL falls to near 0, BOW to its floor."""
    data = tmp_path / 'tiny.txt'
    pairs = [('hi , how are you ?', 'i am fine , thanks .'), ('what is your name ?', 'anna .'),
             ('where do you live ?', 'i live in paris .'), ('any pets ?', 'yes , a dog .')]  # fmt: skip
    data.write_text(''.join(f'text:{c}\tlabels:{r}\tepisode_done:True\n' for c, r in pairs))
    model_file = str(tmp_path / 'tiny')
    torch.set_num_threads(1)
    TrainModel.main(
        model='plato2', task='fromfile:parlaiformat', fromfile_datapath=str(data),
        model_file=model_file, n_layers=1, embedding_size=32, n_heads=2, ffn_size=64,
        dropout=0.0, n_latent=4, batchsize=4, learningrate=1e-2, max_train_steps=40,
        log_every_n_steps=10, skip_generation=True, validation_every_n_secs=1000,
        short_final_eval=True, dict_file=model_file + '.dict',
    )  # fmt: skip
    reports = json.load(open(model_file + '.trainstats'))['train_reports']
    first, last = reports[0], reports[-1]
    assert last['loss'] < 0.2 * first['loss'], (first['loss'], last['loss'])
    # BOW's floor is the entropy of each response's own bag (about log 6 here)
    assert last['bow_loss'] < 0.7 * first['bow_loss'], (first['bow_loss'], last['bow_loss'])
    assert last['bow_loss'] > math.log(5)
    assert last['token_acc'] > 0.9
