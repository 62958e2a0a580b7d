"""PLATO-2 through the stock ``parlai`` command: the curriculum, rerank, self_chat, interactive."""

import json

import pytest
import torch
from conftest import run_parlai
from parlai.scripts.train_model import TrainModel

THREADS = {'OMP_NUM_THREADS': '1'}  # tiny models: threads only contend on shared cores


@pytest.fixture(scope='module')
def curriculum(tmp_path_factory):
    """Stage 1 -> 2.1 and 2.2 on the demo dialogues, a few steps each (files shared)."""
    folder = tmp_path_factory.mktemp('plato2')
    env = {'PARLAI_DATAPATH': str(folder / 'data'), **THREADS}
    files = {stage: str(folder / stage) for stage in ('stage1', 'stage21', 'stage22')}
    common = ['-t', 'ext_demo', '--dropout', '0', '-vtim', '1000', '--log-every-n-steps', '10',
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
        '--max-train-steps', '20', '-vmt', 'ppl', '-vmm', 'min', env=env,
    )  # fmt: skip
    logs['stage22'] = run_parlai(
        'train_model', '-m', 'plato2_evaluator', '--init-model', files['stage1'], *common,
        '-mf', files['stage22'], '-bs', '16', '-lr', '1e-3', '--max-train-steps', '20',
        '-vmt', 'hits@1', '-vmm', 'max', env=env,
    )  # fmt: skip
    return files, logs, env


def test_stage2_models_start_from_stage1_and_train_their_losses(curriculum):
    files, logs, _ = curriculum
    for stage in ('stage21', 'stage22'):
        output = logs[stage].stdout + logs[stage].stderr
        assert 'stage-2 parameter tensors start fresh' in output, stage
    stats = json.load(open(files['stage21'] + '.trainstats'))
    train = stats['train_reports'][-1]
    assert {'loss', 'ppl', 'bow_loss', 'z_entropy', 'z_used'} <= set(train)
    assert 1 <= stats['final_valid_report']['z_used'] <= 4
    stats = json.load(open(files['stage22'] + '.trainstats'))
    assert {'rce_loss', 'mlm_loss', 'coherence_acc'} <= set(stats['train_reports'][-1])
    assert 'hits@1' in stats['final_valid_report']


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
