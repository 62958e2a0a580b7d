"""P2Bot and PPG under ``multiprocessing_train`` (DDP, gloo, 2 workers): both workers hold
identical weights after every update, for the agents ParlAI does not wrap in DDP itself (the
receiver, the critic), the transmitter's MLE + NUP loss, and the two RL loops whose surrogate
is computed outside DDP's forward (P2Bot self-play, PPG); self-play workers play different
dialogues; LoRA over a Hugging Face LM (``hf_generator``), where DDP's reducer holds only the
adapters and the frozen base never moves. ``bench/ddp_check.sh`` runs every agent of the project this way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import run_parlai
from parlai.scripts.train_model import TrainModel
from test_p2bot import write_both

from parlai_ext.losses.reinforce import average_gradients

DRIVER = Path(__file__).with_name('ddp_driver.py')
GENERATORS = ('transmitter', 'selfplay', 'ppg_rl')
TINY = dict(n_layers=1, embedding_size=16, n_heads=2, ffn_size=32, batchsize=4)

CHECKSUM_AGENTS = """
import hashlib, os
from parlai.utils.distributed import get_rank
from parlai_ext.agents.p2bot import P2BotReceiverAgent, P2BotTransmitterAgent
from parlai_ext.agents.ppg import PpgCriticAgent, PpgRlAgent


def log(name, line):
    with open(os.path.join(os.environ['CHECKSUM_DIR'], f'{name}{get_rank()}.txt'), 'a') as f:
        f.write(line + '\\n')


class Checksum:
    \"\"\"Writes a hash of the trained parameters after every update, one file per worker.\"\"\"

    def update_params(self):
        super().update_params()
        model = getattr(self.model, 'module', self.model)
        weights = b''.join(p.detach().numpy().tobytes() for p in model.parameters())
        log('rank', f'{self._number_training_updates} {hashlib.sha256(weights).hexdigest()}')


class Transmitter(Checksum, P2BotTransmitterAgent):
    def generate(self, contexts, sample=False, max_len=None):
        replies = super().generate(contexts, sample, max_len)
        if sample:  # the learner's self-play turns
            log('samples', ' '.join(str(r.tolist()) for r in replies))
        return replies


class Receiver(Checksum, P2BotReceiverAgent):
    pass


class Critic(Checksum, PpgCriticAgent):
    pass


class Rl(Checksum, PpgRlAgent):
    pass
"""


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    """P2Bot transmitter + receiver and PPG persona generator + DRG + critic, a few steps each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('ddp')
    data = write_both(root, 16)
    p2bot = dict(personachat_file=str(data), p2bot_train_episodes=12)
    ppg = dict(personachat_file=str(data), ppg_valid_episodes=4)
    common = dict(max_train_steps=2, validation_every_n_steps=-1, validation_max_exs=4, **TINY)
    common['datapath'] = str(root / 'parlai_data')
    TrainModel.main(
        model='p2bot_transmitter', task='p2bot_selfplay:supervised', model_file=str(root / 'tx'),
        label_truncate=8, skip_generation=True, **p2bot, **common,
    )  # fmt: skip
    TrainModel.main(
        model='p2bot_receiver', task='p2bot_selfplay:receiver', model_file=str(root / 'rx'),
        **p2bot, **common,
    )  # fmt: skip
    TrainModel.main(
        model='ppg_persona_generator', task='ppg_ext:persona', model_file=str(root / 'ppg'),
        label_truncate=12, skip_generation=True, **ppg, **common,
    )  # fmt: skip
    TrainModel.main(
        model='ppg_response_generator', task='ppg_ext', model_file=str(root / 'drg'),
        dict_file=str(root / 'ppg.dict'), label_truncate=8, skip_generation=True, **ppg, **common,
    )  # fmt: skip
    TrainModel.main(
        model='ppg_critic', task='ppg_ext:critic', model_file=str(root / 'critic'),
        dict_file=str(root / 'ppg.dict'), **ppg, **common,
    )  # fmt: skip
    torch.set_num_threads(threads)
    (root / 'checksum_agents.py').write_text(CHECKSUM_AGENTS)
    return root, data


def _runs(root, data) -> dict[str, list[str]]:
    p2bot = ['--personachat-file', str(data), '--p2bot-train-episodes', '12']
    ppg = ['--personachat-file', str(data), '--ppg-valid-episodes', '4']
    tiny = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']
    return {
        'receiver': ['-m', 'checksum_agents:Receiver', '-t', 'p2bot_selfplay:receiver', *p2bot,
                     '--dict-file', str(root / 'rx.dict'), *tiny],
        'transmitter': ['-m', 'checksum_agents:Transmitter', '-t', 'p2bot_selfplay:supervised',
                        *p2bot, '--dict-file', str(root / 'tx.dict'), *tiny,
                        '--label-truncate', '8'],
        'selfplay': ['-m', 'checksum_agents:Transmitter', '-t', 'p2bot_selfplay', *p2bot,
                     '--dict-file', str(root / 'tx.dict'), '--init-model', str(root / 'tx'),
                     '--selfplay-receiver-model', str(root / 'rx'), '-bs', '2', '-lr', '1e-4',
                     '--selfplay-max-len', '5'],
        'critic': ['-m', 'checksum_agents:Critic', '-t', 'ppg_ext:critic', *ppg,
                   '--dict-file', str(root / 'critic.dict'), *tiny],
        'ppg_rl': ['-m', 'checksum_agents:Rl', '-t', 'ppg_ext', *ppg,
                   '--dict-file', str(root / 'drg.dict'), '--init-model', str(root / 'drg'),
                   '--ppg-model-file', str(root / 'ppg'), '--critic-model-file',
                   str(root / 'critic'), '-lr', '1e-3', '--rl-persona-max-len', '6',
                   '--rl-response-max-len', '5'],
    }  # fmt: skip


def _text(output: bytes | str | None) -> str:
    """What a timed-out subprocess had written (bytes, whatever ``text`` was)."""
    if isinstance(output, bytes):
        return output.decode(errors='replace')
    return output or ''


def _worker_env(agents_dir, checksum_dir) -> dict[str, str]:
    """Environment of the two workers: our agents importable, checksums written to one folder."""
    return {
        'PYTHONPATH': str(agents_dir),
        'CHECKSUM_DIR': str(checksum_dir),
        'OMP_NUM_THREADS': '1',
        'PARLAI_DATAPATH': str(agents_dir / 'parlai_data'),
    }


def _lines(path) -> list[str]:
    return path.read_text().splitlines()


RUNS = ['receiver', 'transmitter', 'selfplay', 'critic', 'ppg_rl']


@pytest.fixture(scope='module')
def ddp_runs(models, tmp_path_factory):
    """All five configurations under one pair of DDP workers (``tests/ddp_driver.py`` does what
    ``parlai multiprocessing_train`` does, once per configuration, without importing torch and
    ParlAI again for each: ~35 s less than five ``parlai`` runs; the stock command itself is
    run by ``test_compat.py`` and the LoRA test below). Returns each run's checksum folder."""
    root, data = models
    out = tmp_path_factory.mktemp('ddp_runs')
    configurations = []
    for run in RUNS:
        folder = out / run
        folder.mkdir()
        args = [
            *_runs(root, data)[run], '-mf', str(folder / 'model'),
            '-bs', '2' if run == 'selfplay' else '4', '--max-train-steps', '4', '-vstep', '-1',
            '-vme', '4', '--short-final-eval', 'true', '--distributed-world-size', '2',
            *(['--skip-generation', 'true'] if run in GENERATORS else []),
        ]  # fmt: skip
        configurations.append([run, str(folder), args])
    (out / 'runs.json').write_text(json.dumps(configurations))
    env = {**os.environ, **_worker_env(root, out), 'PYTHONUNBUFFERED': '1'}
    try:
        proc = subprocess.run(
            [sys.executable, str(DRIVER), str(out / 'runs.json')],
            capture_output=True, text=True, env=env, timeout=600,
        )  # fmt: skip
    except subprocess.TimeoutExpired as hung:  # a worker that died leaves the other waiting
        output = [_text(hung.stdout), _text(hung.stderr)]
        proc = subprocess.CompletedProcess(hung.cmd, 'timed out after 600 s', *output)
    started = [line[4:] for line in proc.stdout.splitlines() if line.startswith('=== ')]
    # the configuration that was running when it failed, with the output's tail
    assert proc.returncode == 0, (
        f'DDP run {started[-1] if started else "(before the first)"}: {proc.returncode}\n'
        f'{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}'
    )
    assert started == [x for run in RUNS for x in (run, f'{run} done')], started
    return {run: out / run for run in RUNS}


@pytest.mark.parametrize('run', RUNS)
def test_workers_hold_identical_weights_after_every_update(ddp_runs, run):
    folder = ddp_runs[run]
    logs = [dict(line.split() for line in _lines(folder / f'rank{r}.txt')) for r in (0, 1)]
    assert sorted(logs[0]) == sorted(logs[1]) == ['1', '2', '3', '4'], run
    assert logs[0] == logs[1], run  # the same weights on both workers after every update
    assert len(set(logs[0].values())) == 4, run  # and they changed every update
    if run == 'selfplay':  # each worker samples its own dialogues
        samples = [_lines(folder / f'samples{r}.txt') for r in (0, 1)]
        assert len(samples[0]) == len(samples[1]) == 4 * 3  # 4 updates x 3 turns
        assert samples[0] != samples[1]


def _average_on_worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=2)
    try:
        layer = torch.nn.Linear(2, 2)
        extra = torch.nn.Parameter(torch.zeros(3))
        unused = torch.nn.Parameter(torch.zeros(1))
        frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        with torch.no_grad():
            layer.weight.fill_(1.0)
            layer.bias.fill_(0.0)
        (layer(torch.full((1, 2), float(rank + 1))).sum()).backward()
        if rank == 1:  # a gradient that only this worker has
            extra.grad = torch.full((3,), 4.0)
        average_gradients([layer.weight, layer.bias, extra, unused, frozen])
        torch.save(
            {
                'weight': layer.weight.grad,
                'bias': layer.bias.grad,
                'extra': extra.grad,
                'unused': unused.grad,
                'frozen': frozen.grad,
            },
            f'{out_file}.{rank}',
        )
    finally:
        dist.destroy_process_group()


def test_average_gradients_is_the_mean_over_workers(tmp_path):
    out = str(tmp_path / 'grads')
    mp.spawn(_average_on_worker, args=(str(tmp_path / 'init'), out), nprocs=2)
    for rank in (0, 1):
        grads = torch.load(f'{out}.{rank}')
        # d(sum W x)/dW = x: x = 1 on worker 0, 2 on worker 1 -> mean 1.5
        assert torch.equal(grads['weight'], torch.full((2, 2), 1.5))
        assert torch.equal(grads['bias'], torch.ones(2))
        assert torch.equal(grads['extra'], torch.full((3,), 2.0))  # (0 + 4) / 2
        assert grads['unused'] is None and grads['frozen'] is None


# ============================================== LoRA over a Hugging Face LM (issue #20)

LORA_AGENT = """
import hashlib, os
import torch
from parlai.utils.distributed import get_rank
from parlai_ext.agents.hf import HfGeneratorAgent


def digest(params):
    return hashlib.sha256(b''.join(p.detach().numpy().tobytes() for p in params)).hexdigest()


class LoraGenerator(HfGeneratorAgent):
    \"\"\"After every update: hashes of the trainable and the frozen parameters, and what the
    DDP reducer holds (parameter tensors, bytes) against the trainable ones.\"\"\"

    def update_params(self):
        super().update_params()
        ddp = self.model
        model = getattr(ddp, 'module', ddp)
        trainable = [p for p in model.parameters() if p.requires_grad]
        frozen = [p for p in model.parameters() if not p.requires_grad]
        data = ddp._get_ddp_logging_data() if ddp is not model else {}
        fields = [
            str(self._number_training_updates), digest(trainable), digest(frozen),
            type(ddp).__name__, str(data.get('num_parameter_tensors')),
            str(data.get('total_parameter_size_bytes')), str(len(trainable)),
            str(sum(p.numel() * p.element_size() for p in trainable)), str(len(frozen)),
        ]
        path = os.path.join(os.environ['CHECKSUM_DIR'], f'lora{get_rank()}.txt')
        with open(path, 'a') as f:
            f.write(' '.join(fields) + '\\n')
"""


def test_lora_workers_synchronise_only_the_adapters(tmp_path):
    """``multiprocessing_train -m hf_generator --lora-rank 4``: ParlAI wraps the model in DDP,
    whose reducer holds exactly the trainable (LoRA) parameters; after every update both
    workers hold the same adapters, which moved, and the frozen base never changes."""
    pytest.importorskip('peft')
    from test_hf import tiny_checkpoint
    from test_hf_generator import write_pairs

    from parlai_ext.agents.hf import HfDictionaryAgent

    base = tiny_checkpoint(tmp_path / 'base', 'gpt2')
    dict_file = str(tmp_path / 'model.dict')
    HfDictionaryAgent({'hf_model_dir': base, 'dict_file': None}).save(dict_file)
    (tmp_path / 'lora_agents.py').write_text(LORA_AGENT)
    env = _worker_env(tmp_path, tmp_path)
    run_parlai(
        'multiprocessing_train', '-m', 'lora_agents:LoraGenerator', '-t',
        'fromfile:parlaiformat', '--fromfile-datapath', write_pairs(tmp_path / 'pairs.txt'),
        '--hf-model-dir', base, '--dict-file', dict_file, '--lora-rank', '4',
        '--lora-dropout', '0', '--bf16', 'false', '-lr', '1e-2', '-mf', str(tmp_path / 'model'),
        '-bs', '2', '--max-train-steps', '3', '-vstep', '-1', '-vme', '4',
        '--short-final-eval', 'true', '--skip-generation', 'true',
        '--distributed-world-size', '2', env=env, timeout=600,
    )  # fmt: skip
    logs = [[line.split() for line in _lines(tmp_path / f'lora{r}.txt')] for r in (0, 1)]
    assert logs[0] == logs[1]  # the same adapters (and base) on both workers, every update
    assert [row[0] for row in logs[0]] == ['1', '2', '3']
    assert len({row[1] for row in logs[0]}) == 3  # the adapters moved every update
    assert len({row[2] for row in logs[0]}) == 1  # the frozen base never did
    _, _, _, wrapper, reducer_tensors, reducer_bytes, trainable, trainable_bytes, frozen = logs[0][
        0
    ]
    assert wrapper == 'DistributedDataParallel'
    assert int(frozen) > 0
    assert (reducer_tensors, reducer_bytes) == (trainable, trainable_bytes)  # adapters only
