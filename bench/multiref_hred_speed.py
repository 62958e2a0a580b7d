"""Training throughput of our HRED / VHRED-LGM against ParlAI's built-in ``hred``, same data.

    .venv/bin/python bench/multiref_hred_speed.py --quick      # a check, under five minutes
    .venv/bin/python bench/multiref_hred_speed.py --data-dir ../shared/data/dailydialog

Every agent gets the same examples (the first ``--batchsize x --batches`` examples of
``dailydialog_ext:no_start`` train, or of ``ext_demo`` when ``--data-dir`` is not there),
observed through its own ParlAI history (5 history turns, 40 tokens per utterance and
response), and the same dictionary (``--dict-file``, e.g. the 10k-word DailyDialog one of
projects/multiref, else one built from the benchmark examples). Each agent lives in its own
worker process (``bench/harness.py``); chunks of ``--steps`` calls of ``batch_act`` (a full
ParlAI train step: batchify, forward, backward, clip, Adam), cycling over the batches, are
timed interleaved over ``--rounds`` rounds, so every agent trains on the same batch in the
same round; the tables give median (quartiles) over rounds, ratios per round, the load.
Equal size: the same hidden and embedding sizes and one layer everywhere. The models still
differ in kind (ParlAI's ``hred``: LSTM encoder and context LSTM, no attention, untied
output; ours: bidirectional GRU utterance encoder, GRU context encoder with floor embeddings,
attention GRU decoder, tied output; VHRED-LGM adds prior/posterior networks and the BoW
head), so the parameter counts are printed too. One intra-op thread unless ``--threads``.
Writes ``runs/bench/multiref_hred_speed[-quick]-<time>.{json,md}`` (or ``--out STEM``).
``--baseline-src DIR`` (a folder holding another ``parlai_ext``, e.g. ``git archive <commit>
parlai_ext | tar -x -C DIR``) adds each of our agents as that code too ("<agent> @base"), in
the same rounds: before/after a change, side by side.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from parlai.core.agents import create_agent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from parlai.core.teachers import create_task_agent_from_taskname

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_setup import write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    load_line,
    load_summary,
    machine_info,
    markdown_table,
    paired_ratios,
    run_interleaved,
    spread,
)

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


class HredWorkload:
    """One agent with its batches (a harness worker workload): ``run(n)`` times ``n``
    ``batch_act`` train steps, cycling over the batches."""

    def __init__(
        self, args: list[str], task: list[str], n_examples: int, batchsize: int, warmup: int
    ) -> None:
        self.agent = create_agent(ParlaiParser(True, True).parse_args(args))
        opt = ParlaiParser(True, False).parse_args([*task, '-dt', 'train:ordered'])
        observations = observe_all(self.agent, examples(opt, n_examples))
        self.batches = [
            observations[i : i + batchsize]
            for i in range(0, len(observations) - batchsize + 1, batchsize)
        ]
        self.label_tokens = [
            sum(int((o['labels_vec'] != self.agent.NULL_IDX).sum()) for o in b)
            for b in self.batches
        ]
        self.batchsize = batchsize
        self.info = {'params': sum(p.numel() for p in self.agent.model.parameters())}
        self.step = 0
        self.run(warmup)

    def run(self, steps: int) -> dict[str, float]:
        """Seconds, examples and label tokens of ``steps`` train steps."""
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
        seconds = time.perf_counter() - start
        return {
            'seconds': seconds,
            'units': steps,
            'examples': steps * self.batchsize,
            'tokens': tokens,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--data-dir', default='../shared/data/dailydialog')
    parser.add_argument(
        '--dict-file', default=None, help='an existing dictionary (default: one of the examples)'
    )
    parser.add_argument('--hidden', type=int, default=128)
    parser.add_argument('--embedding', type=int, default=64)
    parser.add_argument('--latent', type=int, default=64)
    parser.add_argument('--batchsize', type=int, default=30)
    parser.add_argument('--batches', type=int, default=10)
    parser.add_argument('--quick', action='store_true', help='a check: fewer rounds and steps')
    parser.add_argument('--steps', type=int, default=None, help='timed steps per chunk')
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--rounds', type=int, default=None, help='default 4 (quick) / 10')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--agents', default=','.join(AGENTS))
    parser.add_argument('--out', default=None, help='output stem (default runs/bench/...)')
    parser.add_argument(
        '--baseline-src',
        default=None,
        help='a folder with another parlai_ext (e.g. an older commit): adds "<agent> @base"',
    )
    cli = parser.parse_args()
    rounds = cli.rounds or (4 if cli.quick else 10)
    steps = cli.steps or (3 if cli.quick else 10)
    data_dir = cli.data_dir if cli.data_dir and os.path.isdir(cli.data_dir) else None
    task = task_args(os.path.abspath(data_dir) if data_dir else None)
    n = cli.batchsize * cli.batches
    folder = tempfile.mkdtemp(prefix='bench_hred_')
    os.environ.setdefault('PARLAI_DATAPATH', os.path.join(folder, 'data'))
    dict_file = cli.dict_file or os.path.join(folder, 'bench.dict')
    if not cli.dict_file:
        build_dict(dict_file, task, n)
    common = [
        *task, '--dict-file', dict_file, '-bs', str(cli.batchsize), '--history-size', '5',
        '--label-truncate', '40', '--dict-lower', 'true',
    ]  # fmt: skip
    names = cli.agents.split(',')
    specs = {
        name: {
            'kind': 'factory',
            'factory': 'multiref_hred_speed:HredWorkload',
            'kw': {
                'args': [*AGENTS[name], *size_args(name, cli.hidden, cli.embedding, cli.latent),
                         *common],
                'task': task, 'n_examples': n, 'batchsize': cli.batchsize,
                'warmup': cli.warmup,
            },
        }
        for name in names
    }  # fmt: skip
    if cli.baseline_src:
        for name in [n for n in names if n != 'parlai hred']:
            specs[f'{name} @base'] = {**specs[name], 'source': cli.baseline_src}
        names = list(specs)
    group = run_interleaved(specs, rounds, steps, (), cli.threads, folder)
    reference = 'parlai hred' if 'parlai hred' in names else names[0]
    rows, summary = [], {}
    for name in names:
        examples_per_s = spread(group.rate(name, 'examples'))
        tokens_per_s = spread(group.rate(name, 'tokens'))
        ratio = spread(
            paired_ratios(group.rate(name, 'examples'), group.rate(reference, 'examples'))
        )
        cpu = spread(
            paired_ratios(group.cpu_rate(name, 'examples'), group.cpu_rate(reference, 'examples'))
        )
        summary[name] = {
            'vs_reference_cpu_time': cpu,
            'examples_per_s': examples_per_s,
            'label_tokens_per_s': tokens_per_s,
            'vs_reference': ratio,
            'parlai_ext': group.info[name].get('parlai_ext'),
        }
        base = f'{name} @base'
        vs_base = ''
        if base in names:
            before = spread(
                paired_ratios(group.cpu_rate(name, 'examples'), group.cpu_rate(base, 'examples'))
            )
            summary[name]['vs_base_cpu_time'] = before
            vs_base = before.format('.2f', '×')
        rows.append(
            [f'`{name}`', f'{group.info[name]["params"] / 1e6:.2f} M',
             examples_per_s.format('.1f'), tokens_per_s.format(), ratio.format('.2f', '×'),
             cpu.format('.2f', '×'), vs_base,
             f'{group.final[name]["peak_rss_mb"]:.0f} MB']
        )  # fmt: skip
    machine = machine_info(cli.threads)
    load = load_summary([group])
    markdown = '\n'.join(
        [
            f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; hidden '
            f'{cli.hidden}, embeddings {cli.embedding}, batch {cli.batchsize}; {rounds} '
            f'interleaved rounds of {steps} steps, median (quartiles) over rounds, ratios per '
            'round.',
            load_line(load) + ' Numbers measured under load are not final.\n',
            markdown_table(
                ['agent', 'parameters', 'examples/s', 'label tokens/s', f'vs {reference}',
                 'CPU time vs it', 'CPU time vs @base',
                 'peak memory'],
                rows,
            ),
        ]
    )  # fmt: skip
    data = {
        'machine': machine,
        'settings': vars(cli),
        'load': load,
        'group': group.to_json(),
        'summary': summary,
    }
    write_and_print_results(__file__, cli.out, cli.quick, data, markdown)


if __name__ == '__main__':
    main()
