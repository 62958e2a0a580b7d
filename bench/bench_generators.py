"""Our transformer generators vs ParlAI's ``transformer/generator``, side by side.

Same process conditions (one fresh subprocess per configuration, same thread count), same
dictionary, same data, same batch size, equal dimensions:

- training tokens/s: ``unified_transformer`` with 2 layers (equal dimensions: the depth of
  each side of ParlAI's model) and 4 layers (≈ equal parameters), and ``encoder_decoder``
  (2+2 layers) vs ``transformer/generator`` (2+2 layers, pre-norm, GELU, learned positions),
  and the model FLOP utilisation of each against measured matmul FLOP/s;
- how training cost grows with context length (64, 128, 256) and batch size (16, 32, 64);
- generation latency per response: greedy and beam 20.

Usage (on a quiet machine)::

    python bench/bench_generators.py --data ../shared/data/dailydialog --threads 2

Prints markdown tables; paste them into docs/results.md with the command and machine line.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import (  # noqa: E402
    machine_description,
    matmul_flops_per_second,
    measure_in_subprocess,
    on_gpu,
)

DIMS = ['--embedding-size', '256', '--n-heads', '4', '--ffn-size', '1024', '--dropout', '0.1']
PARLAI_GENERATOR = [
    '-m', 'transformer/generator', '--n-layers', '2', '--variant', 'prelayernorm',
    '--activation', 'gelu', '--learn-positional-embeddings', 'true', '--n-positions', '512',
    *DIMS,
]  # fmt: skip
OURS = {
    # equal dimensions: as many layers as each side of ParlAI's 2+2 (≈ half its parameters;
    # every token goes through all layers of a unified stack)
    'unified_transformer (2 layers)': ['-m', 'unified_transformer', '--n-layers', '2', *DIMS],
    # ≈ equal parameters
    'unified_transformer (4 layers)': ['-m', 'unified_transformer', '--n-layers', '4', *DIMS],
    'encoder_decoder (2+2 layers)': ['-m', 'encoder_decoder', '--n-layers', '2', *DIMS],
}


def build_dictionary(task_args: list[str], dict_file: str) -> None:
    from parlai.scripts.build_dict import build_dict, setup_args

    opt = setup_args().parse_args([*task_args, '--dict-file', dict_file])
    build_dict(opt)


def common(dict_file: str, batch: int, text_truncate: int) -> list[str]:
    return [
        '--dict-file', dict_file, '-bs', str(batch), '--optimizer', 'adamw', '-lr', '1e-3',
        '--text-truncate', str(text_truncate), '--label-truncate', '64',
        '--skip-generation', 'true',
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='../shared/data/dailydialog')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--quick', action='store_true', help='fewer configurations')
    args = parser.parse_args()

    if os.path.isdir(args.data):
        task = ['-t', 'dailydialog_ext', '--dailydialog-data-dir', os.path.abspath(args.data)]
    else:
        print(f'({args.data} not found: using the synthetic ext_demo dialogues)')
        task = ['-t', 'ext_demo']
    workdir = tempfile.mkdtemp(prefix='bench_generators_')
    dict_file = os.path.join(workdir, 'dict')
    build_dictionary(task, dict_file)
    peak = matmul_flops_per_second(args.threads)
    print(f'\nMachine: {machine_description(args.threads)}')
    where = 'GPU' if on_gpu() else 'CPU'
    print(f'Measured matmul peak ({where}, fp32): {peak / 1e9:.1f} GFLOP/s\n')

    def memory(row) -> str:  # peak memory of the configuration's own process
        if row.peak_gpu_mb is not None:
            return f'{row.peak_gpu_mb:.0f} MB GPU'
        return f'{row.peak_rss_mb:.0f} MB'

    def train(name, agent_args, batch=32, text_truncate=128):
        return measure_in_subprocess(
            'train', name, agent_args + common(dict_file, batch, text_truncate), task,
            args.threads, steps=args.steps, repeats=args.repeats,
        )  # fmt: skip

    print('### Training throughput (batch 32, context ≤ 128 tokens)\n')
    print('| model | params | tokens/s (median) | vs ParlAI | MFU | peak memory |')
    print('|---|---|---|---|---|---|')
    reference = train('ParlAI transformer/generator (2+2)', PARLAI_GENERATOR)
    rows = [reference] + [train(name, agent) for name, agent in OURS.items()]
    for row in rows:
        print(
            f'| {row.name} | {row.params / 1e6:.2f} M | {row.tokens_per_second:,.0f} | '
            f'{row.tokens_per_second / reference.tokens_per_second:.2f}× | '
            f'{row.flops_per_second / peak:.1%} | {memory(row)} |'
        )

    lengths = [64, 128] if args.quick else [64, 128, 256]
    batches = [16, 32] if args.quick else [16, 32, 64]
    configs = [('ParlAI transformer/generator', PARLAI_GENERATOR)] + [
        (name, agent) for name, agent in OURS.items() if name.startswith('unified')
    ]
    print('\n### Cost vs context length (batch 32): tokens/s, peak memory\n')
    print('| model | ' + ' | '.join(f'ctx {n}' for n in lengths) + ' |')
    print('|---|' + '---|' * len(lengths))
    for name, agent in configs:
        cells = []
        for n in lengths:
            row = train(name, agent, text_truncate=n)
            cells.append(f'{row.tokens_per_second:,.0f} tok/s, {memory(row)}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')
    print('\n### Cost vs batch size (context ≤ 128): tokens/s, peak memory\n')
    print('| model | ' + ' | '.join(f'batch {b}' for b in batches) + ' |')
    print('|---|' + '---|' * len(batches))
    for name, agent in configs:
        cells = []
        for b in batches:
            row = train(name, agent, batch=b)
            cells.append(f'{row.tokens_per_second:,.0f} tok/s, {memory(row)}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')

    print('\n### Generation latency per response (batch 1, untrained weights)\n')
    print('| model | greedy s | beam 20 s |')
    print('|---|---|---|')
    for name, agent in [('ParlAI transformer/generator (2+2)', PARLAI_GENERATOR), *OURS.items()]:
        cells = []
        for inference in (
            ['--inference', 'greedy'],
            ['--inference', 'beam', '--beam-size', '20', '--beam-min-length', '5'],
        ):
            gen_args = agent + common(dict_file, 1, 128) + inference
            gen_args[gen_args.index('--skip-generation') + 1] = 'false'
            row = measure_in_subprocess(
                'generate', name, gen_args, task, args.threads, batches=5, repeats=args.repeats
            )
            cells.append(f'{row.median_seconds:.3f}')
        print(f'| {name} | ' + ' | '.join(cells) + ' |')


if __name__ == '__main__':
    main()
