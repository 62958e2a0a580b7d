"""PLATO-2 speed (issue #6), side by side with ParlAI's ``transformer/generator``.

One run, same dictionary, data, batch, thread count and dimensions (hidden 256, 4 heads,
FFN 1024; ParlAI's model has 2 encoder + 2 decoder layers, ours 2 unified layers, i.e. the
depth of each side: "equal dimensions" as in ``bench/bench_generators.py``):

1. training tokens/s of PLATO-2 stage 1 (``unified_transformer``) vs ParlAI's generator
   (target: >= 1.3x), with stage 2.1 (``plato2``, two passes per step) and stage 2.2
   (``plato2_evaluator``, positive + negative pairs) for reference;
2. seconds per response of K=20 generate-then-rank (``plato2``: 20 top-k candidates in one
   batch + evaluator rerank) vs ParlAI's beam search with beam 20 (target: <= 1.5x). Both
   decode exactly ``--label-truncate`` tokens (``--beam-min-length`` = that length), so the
   comparison does not depend on when untrained weights happen to stop.

Configurations alternate (ours, ParlAI, ours, ...) for ``--rounds`` rounds, each a fresh
subprocess (``bench/harness.py``); the table gives the median over rounds and every
round's ratio, so load changes on a shared machine show up as spread. Usage::

    python bench/plato2_speed.py --data ../shared/data/dailydialog --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import machine_description, measure_in_subprocess  # noqa: E402

DIMS = ['--embedding-size', '256', '--n-heads', '4', '--ffn-size', '1024', '--dropout', '0.1']
PARLAI_GENERATOR = [
    '-m', 'transformer/generator', '--n-layers', '2', '--variant', 'prelayernorm',
    '--activation', 'gelu', '--learn-positional-embeddings', 'true', '--n-positions', '512',
    *DIMS,
]  # fmt: skip
STAGE1 = ['-m', 'unified_transformer', '--n-layers', '2', *DIMS]
STAGE21 = ['-m', 'plato2', '--n-layers', '2', '--n-latent', '20', *DIMS]
STAGE22 = ['-m', 'plato2_evaluator', '--n-layers', '2', *DIMS]


def build_dictionary(task_args: list[str], dict_file: str) -> None:
    from parlai.scripts.build_dict import build_dict, setup_args

    opt = setup_args().parse_args([*task_args, '--dict-file', dict_file])
    build_dict(opt)


def save_evaluator(task_args: list[str], dict_file: str, model_file: str) -> None:
    """An (untrained) evaluator model file on the same dictionary, for the rerank step."""
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser

    opt = ParlaiParser(True, True).parse_args(
        [*STAGE22, *task_args, '--dict-file', dict_file, '-mf', model_file]
    )
    create_agent(opt, requireModelExists=False).save(model_file)


def common(dict_file: str, batch: int, text_truncate: int, label_truncate: int) -> list[str]:
    return [
        '--dict-file', dict_file, '-bs', str(batch), '--optimizer', 'adamw', '-lr', '1e-3',
        '--text-truncate', str(text_truncate), '--label-truncate', str(label_truncate),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='../shared/data/dailydialog')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--gen-batch', type=int, default=8)
    parser.add_argument('--gen-length', type=int, default=20)
    args = parser.parse_args()

    if os.path.isdir(args.data):
        task = ['-t', 'dailydialog_ext:no_start', '--dailydialog-data-dir',
                os.path.abspath(args.data)]  # fmt: skip
    else:
        print(f'({args.data} not found: using the synthetic ext_demo dialogues)')
        task = ['-t', 'ext_demo']
    workdir = tempfile.mkdtemp(prefix='bench_plato2_')
    dict_file = os.path.join(workdir, 'dict')
    build_dictionary(task, dict_file)
    evaluator = os.path.join(workdir, 'evaluator')
    save_evaluator(task, dict_file, evaluator)
    print(f'\nMachine: {machine_description(args.threads)}\n')

    train_args = common(dict_file, args.batch, 128, 64)
    no_generation = ['--skip-generation', 'true']
    trainers = {
        'ParlAI transformer/generator (2+2)': PARLAI_GENERATOR + no_generation,
        'PLATO-2 stage 1 (unified_transformer, 2)': STAGE1 + no_generation,
        'PLATO-2 stage 2.1 (plato2, 2)': STAGE21 + no_generation,
        'PLATO-2 stage 2.2 (plato2_evaluator, 2)': STAGE22,
    }
    results: dict[str, list] = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, agent in trainers.items():
            row = measure_in_subprocess(
                'train', name, agent + train_args, task, args.threads, steps=args.steps
            )
            results[name].append(row)
    reference = 'ParlAI transformer/generator (2+2)'
    print(f'### Training throughput (batch {args.batch}, context <= 128, label <= 64 tokens)\n')
    print('| model | params | tokens/s (median of rounds) | vs ParlAI (per round) |')
    print('|---|---|---|---|')
    for name, rows in results.items():
        ratios = [
            row.tokens_per_second / ref.tokens_per_second
            for row, ref in zip(rows, results[reference])
        ]
        tps = statistics.median(row.tokens_per_second for row in rows)
        print(
            f'| {name} | {rows[0].params / 1e6:.2f} M | {tps:,.0f} | '
            f'{statistics.median(ratios):.2f}x ({", ".join(f"{r:.2f}" for r in ratios)}) |'
        )

    length = args.gen_length
    gen_common = common(dict_file, args.gen_batch, 128, length) + [
        '--skip-generation', 'false', '--beam-min-length', str(length),
    ]  # fmt: skip
    generators = {
        'ParlAI transformer/generator (2+2), beam 20': PARLAI_GENERATOR
        + ['--inference', 'beam', '--beam-size', '20'],
        'PLATO-2, K=20 top-k (k=10) + evaluator rerank': STAGE21
        + ['--inference', 'topk', '--topk', '10', '--evaluator-model-file', evaluator],
        'PLATO-2, K=20 top-k (k=10), logprob rank': STAGE21
        + ['--inference', 'topk', '--topk', '10'],
    }
    latency: dict[str, list] = {name: [] for name in generators}
    for _ in range(args.rounds):
        for name, agent in generators.items():
            row = measure_in_subprocess(
                'generate', name, agent + gen_common, task, args.threads, batches=3
            )
            latency[name].append(row)
    reference = 'ParlAI transformer/generator (2+2), beam 20'
    print(
        f'\n### Generation: seconds per response (batch {args.gen_batch}, exactly {length} '
        'tokens per candidate, untrained weights)\n'
    )
    print('| decoding | s / response (median of rounds) | vs ParlAI beam 20 (per round) |')
    print('|---|---|---|')
    for name, rows in latency.items():
        ratios = [
            row.median_seconds / ref.median_seconds for row, ref in zip(rows, latency[reference])
        ]
        seconds = statistics.median(row.median_seconds for row in rows)
        print(
            f'| {name} | {seconds:.4f} | {statistics.median(ratios):.2f}x '
            f'({", ".join(f"{r:.2f}" for r in ratios)}) |'
        )


if __name__ == '__main__':
    main()
