"""CORAL through the stock ``parlai`` command: reward model -> CORAL generator from a preset ->
``eval_model`` with the shared metrics, the validation-R3 and a MAUDE-style score."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_parlai
from parlai.scripts.train_model import TrainModel
from parlai_inprocess import run_script

PRESETS = Path(__file__).resolve().parents[1] / 'projects' / 'coral'
ONE_THREAD = {'OMP_NUM_THREADS': '1'}


def test_reward_model_then_coral_generator_then_eval(tmp_path):
    esim = str(tmp_path / 'esim')
    # the reward model in this process, with the same arguments (one start-up of torch and
    # ParlAI less); the generator and the evaluation below go through the command line
    run_script(
        TrainModel, '-m', 'coral_esim', '-t', 'ext_demo', '-mf', esim,
        '--embedding-size', '24', '--hidden-size', '24', '-bs', '16', '-lr', '3e-3',
        '--max-train-steps', '30', '--short-final-eval', 'true', '--validation-max-exs', '64',
    )  # fmt: skip
    stats = json.loads(Path(esim + '.trainstats').read_text())
    assert {'auc', 'pair_acc', 'pos_score', 'neg_score'} <= set(stats['final_valid_report'])

    coral = str(tmp_path / 'coral')
    run_parlai(
        'train_model', '-o', str(PRESETS / 'dailydialog_mixp.opt'), '-t', 'ext_demo',
        '-mf', coral, '--reward-model-file', esim, '--maude-model-file', 'constant:0.5',
        '--margin', '0.1', '--n-layers', '1', '--embedding-size', '32', '--n-heads', '2',
        '--ffn-size', '64', '--n-positions', '128', '-bs', '16', '--max-train-steps', '20',
        '--negative-max-len', '10', '--short-final-eval', 'true', '--validation-max-exs', '32',
        '--skip-generation', 'false', '-vstep', '5',
        env=ONE_THREAD,
    )  # fmt: skip
    opt = json.loads(Path(coral + '.opt').read_text())
    assert opt['model'] == 'coral' and opt['negative_source'] == 'nucleus'  # from the preset
    assert opt['p_positive'] == 0.8 and opt['validation_metric'] == 'r3'
    assert opt['margin'] == 0.1  # the command line wins over the preset
    stats = json.loads(Path(coral + '.trainstats').read_text())
    valid = stats['final_valid_report']
    assert 0 < valid['r3'] < 1 and valid['maude'] == 0.5
    # mix-policy training with p+ = 0.8 still fits the ground truth: perplexity falls
    ppl = [report['ppl'] for report in stats['valid_reports']]
    assert len(ppl) >= 3 and all(b < a for a, b in zip(ppl, ppl[1:])), ppl
    assert all(0 < report['r3'] < 1 for report in stats['valid_reports'])

    report = tmp_path / 'report.json'
    run_parlai(
        'eval_model', '-mf', coral, '-t', 'ext_demo', '-dt', 'valid', '--num-examples', '24',
        '--metrics', 'ext_coral', '--skip-generation', 'false', '--report-filename', str(report),
        env=ONE_THREAD,
    )  # fmt: skip
    metrics = json.loads(report.read_text())['report']
    for name in ('ext_len', 'ext_bleu-4', 'ext_dist-1', 'ext_dist-2', 'r3', 'maude'):
        assert name in metrics, (name, sorted(metrics))
    assert metrics['exs'] == 24 and metrics['maude'] == 0.5
