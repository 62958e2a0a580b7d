"""kill -9 during saves, in a loop, and a second training on the same model file (issue #19).

A real ``parlai train_model`` saves a checkpoint after every update (and, like PLATO-2 and
PPG-RL, its dictionary with every save); it is killed at random moments, restarted, and must
resume every time. While the first run holds the model file, a second one must stop at once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

from conftest import PARLAI_BIN

AGENT_MODULE = '''
from parlai_ext.agents.unified_transformer import UnifiedTransformerAgent


class SaveDictAgent(UnifiedTransformerAgent):
    """Rewrites <model file>.dict with every save, as plato2 / ppg_rl do with --dict-file."""

    def save(self, path=None):
        path = self.opt.get('model_file') if path is None else path
        if path:
            self.dict.save(path + '.dict', sort=False)
        super().save(path)
'''
TINY = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']


def command(model_file: str, *args: str) -> list[str]:
    return [
        str(PARLAI_BIN), 'train_model', '-m', 'save_dict_agent:SaveDictAgent', '-t', 'ext_demo',
        '-mf', model_file, *TINY, '-bs', '4', '--skip-generation', 'true',
        '--save-every-n-secs', '0.000001', '--log-every-n-secs', '1000', *args,
    ]  # fmt: skip


def wait_for(predicate, proc, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, 'the training ended before it was killed'
        assert time.time() < end, 'timed out'
        time.sleep(0.02)


def checkpoint_steps(model_file: str) -> int:
    with open(model_file + '.checkpoint.trainstats') as handle:
        return json.load(handle)['train_steps']  # a cut file would raise here


def test_kill_during_saves_then_resume_every_time_and_one_writer(tmp_path):
    (tmp_path / 'save_dict_agent.py').write_text(AGENT_MODULE)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')])),
        PARLAI_DATAPATH=str(tmp_path / 'data'), OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1',
    )  # fmt: skip
    model_file = str(tmp_path / 'run' / 'model')
    rng = random.Random(0)
    steps = [0]
    for cycle in range(4):
        log = open(tmp_path / f'cycle{cycle}.log', 'w')
        proc = subprocess.Popen(
            command(model_file, '--max-train-steps', '100000'),
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        # a checkpoint of this run exists once the counter moved past the previous run's
        wait_for(
            lambda: (
                os.path.exists(model_file + '.checkpoint.trainstats')
                and checkpoint_steps(model_file) > steps[-1] + 2
            ),
            proc,
        )
        if cycle == 0:  # a second training on the same model file stops at once
            second = subprocess.run(
                command(model_file, '--max-train-steps', '5'),
                capture_output=True, text=True, env=env, timeout=300,
            )  # fmt: skip
            assert second.returncode != 0
            assert f'{model_file} is being written by another training (pid {proc.pid}' in (
                second.stdout + second.stderr
            )
            assert 'building dictionary' not in second.stdout + second.stderr
        time.sleep(rng.uniform(0.0, 0.3))  # mostly inside a save: one after every update
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
        steps.append(checkpoint_steps(model_file))
        text = open(tmp_path / f'cycle{cycle}.log').read()
        if cycle:  # the restart resumed from the checkpoint the kill left behind
            assert f'Loading existing model params from {model_file}.checkpoint' in text, text[
                -3000:
            ]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    # the last restart resumes and finishes: 5 more updates, final evaluation, the best model
    final = subprocess.run(
        command(model_file, '--max-train-steps', str(steps[-1] + 5)),
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert final.returncode == 0, final.stdout[-3000:] + final.stderr[-3000:]
    stats = json.load(open(model_file + '.trainstats'))
    assert stats['parlai_ext_finished'] and stats['train_steps'] >= steps[-1] + 5
    assert stats['final_valid_report']['exs'] > 0
    assert len(open(model_file + '.dict').read().splitlines()) > 100
    # no temporaries of the killed runs, no lock file after the clean end
    assert [n for n in os.listdir(tmp_path / 'run') if 'tmp' in n or n.endswith('.lock')] == []
