"""Training throughput of our HRED / VHRED-LGM against ParlAI's built-in ``hred``, same data.

    .venv/bin/python bench/multiref_hred_speed.py --hidden 128 --embedding 64 --steps 30
    .venv/bin/python bench/multiref_hred_speed.py --data-dir ../shared/data/dailydialog

Every agent gets the same examples (the first ``--batchsize x --batches`` examples of
``dailydialog_ext:no_start`` train, or of ``ext_demo`` without ``--data-dir``), observed through
its own ParlAI history (5 history turns, 40 tokens per utterance and response), and the same
dictionary (``--dict-file``, e.g. the 10k-word DailyDialog one of projects/multiref, else
one built from the benchmark examples); then ``--steps`` calls of ``batch_act`` (a full ParlAI train step: batchify, forward,
backward, clip, Adam) are timed after ``--warmup`` untimed ones, cycling over the batches,
``--repeats`` times with the agents interleaved (a shared machine's load hits all of them);
the median repeat is reported.
Equal size: the same hidden and embedding sizes and one layer everywhere. The models still
differ in kind (ParlAI's ``hred``: LSTM encoder and context LSTM, no attention, untied
output; ours: bidirectional GRU utterance encoder, GRU context encoder with floor embeddings,
attention GRU decoder, tied output; VHRED-LGM adds prior/posterior networks and the BoW
head), so the parameter counts are printed too. One intra-op thread unless ``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch
from parlai.core.agents import create_agent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from parlai.core.teachers import create_task_agent_from_taskname

AGENTS = {
    'parlai hred': [
        '-m', 'hred', '--numlayers', '1', '--dropout', '0.2', '--optimizer', 'adam',
        '-lr', '1e-3', '--gradient-clip', '1.0', '--text-truncate', '40',
    ],
    'mr_hred': ['-m', 'mr_hred'],
    'vhred_lgm': ['-m', 'vhred_lgm', '--n-components', '5'],
}  # fmt: skip


def size_args(name: str, hidden: int, embedding: int, latent: int) -> list[str]:
    if name == 'parlai hred':
        return ['--hiddensize', str(hidden), '--embeddingsize', str(embedding)]
    return [
        '--hidden-size', str(hidden), '--embedding-size', str(embedding),
        '--latent-size', str(latent),
    ]  # fmt: skip


def task_args(data_dir: str | None) -> list[str]:
    if data_dir:
        return ['-t', 'dailydialog_ext:no_start', '--dailydialog-data-dir', data_dir]
    return ['-t', 'ext_demo']


def build_dict(path: str, task: list[str], n_examples: int) -> None:
    """A dictionary of the benchmark examples (the same one for every agent)."""
    parser = ParlaiParser(True, False)
    DictionaryAgent.add_cmdline_args(parser)
    opt = parser.parse_args([*task, '-dt', 'train:ordered', '--dict-lower', 'true'])
    opt['dict_file'] = path
    dictionary = DictionaryAgent(opt)
    for message in examples(opt, n_examples):
        for text in (message['text'], message['labels'][0]):
            dictionary.add_to_dict(dictionary.tokenize(text.lower()))
    dictionary.save(path, sort=True)


def examples(opt, n: int):
    teacher_opt = dict(opt)
    teacher_opt['batchsize'] = 1
    teacher = create_task_agent_from_taskname(type(opt)(teacher_opt))[0]
    for _ in range(n):
        yield teacher.act()


def observe_all(agent, messages) -> list:
    """Vectorise every message through the agent's own history (episodes in order)."""
    observations = []
    for message in messages:
        observations.append(agent.observe(message))
        agent.self_observe({})
    return observations


class Runner:
    """One agent with its batches, ready to time ``batch_act`` train steps."""

    def __init__(self, name: str, args: list[str], messages, batchsize: int, warmup: int):
        self.name = name
        self.agent = create_agent(ParlaiParser(True, True).parse_args(args))
        observations = observe_all(self.agent, messages)
        self.batches = [
            observations[i : i + batchsize]
            for i in range(0, len(observations) - batchsize + 1, batchsize)
        ]
        self.batchsize = batchsize
        self.label_tokens = [
            sum(int((o['labels_vec'] != self.agent.NULL_IDX).sum()) for o in b)
            for b in self.batches
        ]
        self.parameters = sum(p.numel() for p in self.agent.model.parameters())
        self.step = 0
        self.run(warmup)

    def run(self, steps: int) -> tuple[float, int]:
        """Seconds and label tokens of ``steps`` train steps."""
        tokens = 0
        if torch.cuda.is_available():  # ParlAI put the agent on the GPU: time the device too
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            index = self.step % len(self.batches)
            self.agent.batch_act(self.batches[index])
            tokens += self.label_tokens[index]
            self.step += 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default=None, help='DailyDialog release folder')
    parser.add_argument(
        '--dict-file', default=None, help='an existing dictionary (default: one of the examples)'
    )
    parser.add_argument('--hidden', type=int, default=128)
    parser.add_argument('--embedding', type=int, default=64)
    parser.add_argument('--latent', type=int, default=64)
    parser.add_argument('--batchsize', type=int, default=30)
    parser.add_argument('--batches', type=int, default=10)
    parser.add_argument('--steps', type=int, default=30)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--repeats', type=int, default=3, help='interleaved timed repeats')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--agents', default=','.join(AGENTS))
    parser.add_argument('--out', default=None, help='also write the results here (json)')
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    torch.manual_seed(0)
    task = task_args(cli.data_dir)
    n = cli.batchsize * cli.batches
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault('PARLAI_DATAPATH', os.path.join(folder, 'data'))
        dict_file = cli.dict_file or os.path.join(folder, 'bench.dict')
        if not cli.dict_file:
            build_dict(dict_file, task, n)
        common = [
            *task, '--dict-file', dict_file, '-bs', str(cli.batchsize), '--history-size', '5',
            '--label-truncate', '40', '--dict-lower', 'true',
        ]  # fmt: skip
        opt = ParlaiParser(True, False).parse_args([*task, '-dt', 'train:ordered'])
        messages = list(examples(opt, n))
        runners = []
        for name in cli.agents.split(','):
            args = [*AGENTS[name], *size_args(name, cli.hidden, cli.embedding, cli.latent)]
            runners.append(Runner(name, [*args, *common], messages, cli.batchsize, cli.warmup))
        timings = {r.name: [] for r in runners}
        for _ in range(cli.repeats):  # interleaved, so that load changes hit every agent
            for runner in runners:
                seconds, tokens = runner.run(cli.steps)
                timings[runner.name].append((seconds, tokens))
        results = []
        for runner in runners:
            runs = sorted(timings[runner.name])
            seconds, tokens = runs[len(runs) // 2]  # the median repeat
            result = {
                'agent': runner.name,
                'parameters': runner.parameters,
                'steps_per_repeat': cli.steps,
                'median_seconds': round(seconds, 3),
                'examples_per_s': round(cli.steps * cli.batchsize / seconds, 2),
                'label_tokens_per_s': round(tokens / seconds, 1),
                'all_seconds': [round(t, 3) for t, _ in timings[runner.name]],
            }
            results.append(result)
            print(json.dumps(result), flush=True)
    base = next((r for r in results if r['agent'] == 'parlai hred'), None)
    if base:
        for r in results:
            ratio = r['examples_per_s'] / base['examples_per_s']
            print(f'{r["agent"]:12s} {r["examples_per_s"]:8.2f} ex/s  x{ratio:.2f} of parlai hred')
    if cli.out:
        settings = {k: v for k, v in vars(cli).items() if k != 'out'}
        with open(cli.out, 'w') as handle:
            json.dump({'settings': settings, 'results': results}, handle, indent=1)


if __name__ == '__main__':
    main()
