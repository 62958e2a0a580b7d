"""Our transformer generators vs ParlAI's ``transformer/generator``, side by side.

Equal dimensions (hidden 256, 4 heads, FFN 1024), the same dictionary, data, batch and thread
count; every configuration in its own worker process, all of a table interleaved round by
round (``bench/harness.py``), every ratio taken between chunks of the same round:

1. training tokens/s at fp32 and at bf16 (``torch.autocast``), each precision its own table
   (fp32 against fp32, bf16 against bf16), with the model FLOP utilisation (MFU) against the
   matmul peak measured in the same rounds at the same precision: ``unified_transformer`` with
   2 layers (the depth of each side of ParlAI's 2+2) and 4 layers (≈ equal parameters) and
   ``encoder_decoder`` (2+2) vs ``transformer/generator`` (2+2); in the bf16 table also
   ``unified_transformer`` with ``--bf16-weights`` (bf16 parameters end to end, fp32 master
   weights; training only: no fp32 row, no generation, growth or ``@base`` rows; its
   ``CPU time vs @base`` cell holds its ratio to the same model under autocast, per round);
2. generation latency per response (batch 1, every response exactly ``--gen-length`` tokens):
   greedy and beam 20;
3. (full grid only) how training cost and memory grow with context length (64, 128, 256) and
   batch size (16, 32, 64).

Usage::

    python bench/bench_generators.py --quick       # a check, under five minutes
    python bench/bench_generators.py               # the full grid, for the docs

``--models a,b`` picks the compared models (a prefix of each name; ParlAI's is always in);
``--baseline-src DIR`` (a folder holding another ``parlai_ext``, e.g. ``git archive <commit>
parlai_ext | tar -x -C DIR``) adds each of our models as that code too ("<name> @base"), in the
same rounds: before/after a change, side by side.

Writes ``runs/bench/bench_generators[-quick]-<time>.{json,md}`` (or ``--out STEM``) and prints
the markdown. Numbers taken while other jobs run are not final: the tables say the load.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
from bench_setup import task_with_dictionary, write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    KEEP_FREED_MEMORY,
    load_line,
    load_summary,
    machine_info,
    markdown_table,
    on_gpu,
    paired_ratios,
    run_interleaved,
    spread,
)

REFERENCE = 'ParlAI transformer/generator (2+2)'
BF16_WEIGHTS = 'unified_transformer (2 layers, bf16 weights)'
AUTOCAST_TWIN = 'unified_transformer (2 layers)'  # the same model, fp32 weights under autocast
MODELS = {
    REFERENCE: configs.PARLAI_GENERATOR,
    'unified_transformer (2 layers)': configs.UNIFIED_2,
    'unified_transformer (4 layers)': configs.UNIFIED_4,
    BF16_WEIGHTS: configs.UNIFIED_2_BF16_WEIGHTS,
    'encoder_decoder (2+2 layers)': configs.ENCODER_DECODER,
}
QUICK_MODELS = [REFERENCE, 'unified_transformer (2 layers)']
BASE = ' @base'
MALLOC = ' +malloc'  # the same model with harness.KEEP_FREED_MEMORY (--malloc-variants)


DIM = 256  # set by --dim


def model_args(name: str) -> list[str]:
    return configs.with_dim(MODELS[name.removesuffix(BASE).removesuffix(MALLOC)], DIM)


def pick_models(prefixes: str) -> list[str]:
    """``--models``: the models whose names start with one of the comma-separated prefixes
    (ParlAI's reference first, always)."""
    names = [REFERENCE]
    for prefix in prefixes.split(','):
        matches = [name for name in MODELS if name.startswith(prefix.strip())]
        if not matches:
            raise SystemExit(f'--models: no model starts with {prefix!r}; models: {list(MODELS)}')
        names += [name for name in matches if name not in names]
    return names


def memory(group, name: str) -> str:
    final = group.final[name]
    if final.get('peak_gpu_mb') is not None:
        return f'{final["peak_gpu_mb"]:.0f} MB GPU'
    return f'{final["peak_rss_mb"]:.0f} MB'


def training_table(group, precision: str) -> tuple[str, dict]:
    """Markdown and JSON summary of one precision's training group."""
    reference = group.rate(REFERENCE)
    rows, summary = [], {}
    for name in group.names:
        tokens = spread(group.rate(name))
        ratio = spread(paired_ratios(group.rate(name), reference))
        mfu = spread(group.mfu(name, precision))
        cpu_ratio = spread(paired_ratios(group.cpu_rate(name), group.cpu_rate(REFERENCE)))
        summary[name] = {
            'tokens_per_s': tokens,
            'vs_reference': ratio,
            'vs_reference_cpu_time': cpu_ratio,
            'mfu': mfu,
        }
        vs_base = ''
        if name + BASE in group.names:
            before = spread(paired_ratios(group.cpu_rate(name), group.cpu_rate(name + BASE)))
            summary[name]['vs_base_cpu_time'] = before
            vs_base = before.format('.2f', '×')
        plain = name.removesuffix(MALLOC)
        if plain != name and plain in group.names:
            twin = spread(paired_ratios(group.cpu_rate(name), group.cpu_rate(plain)))
            summary[name]['vs_default_malloc_cpu_time'] = twin
            vs_base = f'{twin.format(".2f", "×")} vs default malloc'
        elif name == BF16_WEIGHTS and AUTOCAST_TWIN in group.names:
            twin = spread(paired_ratios(group.cpu_rate(name), group.cpu_rate(AUTOCAST_TWIN)))
            summary[name]['vs_autocast_cpu_time'] = twin
            vs_base = f'{twin.format(".2f", "×")} vs autocast'
        rows.append(
            [
                name,
                f'{group.info[name]["params"] / 1e6:.2f} M',
                tokens.format(),
                ratio.format('.2f', '×'),
                cpu_ratio.format('.2f', '×'),
                f'{mfu.median:.1%} ({mfu.q1:.1%}-{mfu.q3:.1%})',
                vs_base,
                memory(group, name),
            ]
        )
    headers = ['model', 'params', 'tokens/s', 'vs ParlAI (per round)', 'vs ParlAI, CPU time',
               'MFU', 'CPU time vs @base', 'peak memory']  # fmt: skip
    return markdown_table(headers, rows), summary


def generation_table(group, names: list[str], decodings) -> tuple[str, dict]:
    """Markdown and JSON summary of the generation group (per decoding, vs ParlAI's and, for
    an ``@base`` twin, vs it)."""
    rows, summary = [], {}
    for name in names:
        cells = [name]
        for decoding in decodings:
            key = f'{name} | {decoding}'
            seconds = spread(group.per_unit(key))
            ref = f'{REFERENCE} | {decoding}'
            ratio = spread(paired_ratios(group.per_unit(key), group.per_unit(ref)))
            cpu = spread(paired_ratios(group.cpu_per_unit(key), group.cpu_per_unit(ref)))
            summary[key] = {'seconds': seconds, 'vs_reference': ratio, 'vs_reference_cpu_time': cpu}
            base = f'{name}{BASE} | {decoding}'
            vs_base = ''
            if base in group.names:
                before = spread(paired_ratios(group.cpu_per_unit(key), group.cpu_per_unit(base)))
                summary[key]['vs_base_cpu_time'] = before
                vs_base = before.format('.2f', '×')
            cells += [seconds.format('.3f'), ratio.format('.2f', '×'), cpu.format('.2f', '×'),
                      vs_base]  # fmt: skip
        rows.append(cells)
    headers = ['model']
    for decoding in decodings:
        headers += [f'{decoding} s', 'vs ParlAI', 'CPU time vs ParlAI', 'CPU time vs @base']
    return markdown_table(headers, rows), summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='../shared/data/dailydialog')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--quick', action='store_true', help='a check: fewer configurations')
    parser.add_argument('--rounds', type=int, default=None, help='default 4 (quick) / 8')
    parser.add_argument('--steps', type=int, default=None, help='timed steps per chunk')
    parser.add_argument('--gen-length', type=int, default=20)
    parser.add_argument('--precisions', default='fp32,bf16')
    parser.add_argument('--out', default=None, help='output stem (default runs/bench/...)')
    parser.add_argument('--models', default=None, help='name prefixes, e.g. encoder_decoder')
    parser.add_argument(
        '--baseline-src',
        default=None,
        help='a folder with another parlai_ext (e.g. an older commit): adds "<model> @base"',
    )
    parser.add_argument('--no-generation', action='store_true', help='training tables only')
    parser.add_argument('--no-growth', action='store_true', help='no growth table (full grid)')
    parser.add_argument('--dim', type=int, default=256, help='hidden size (heads of 64, FFN 4x)')
    parser.add_argument('--batch', type=int, default=32, help='training batch')
    parser.add_argument(
        '--malloc-variants',
        action='store_true',
        help='training tables also hold each of our models as "<name> +malloc": its worker '
        'keeps freed memory (harness.KEEP_FREED_MEMORY), side by side with the default',
    )
    args = parser.parse_args()
    global DIM
    DIM = args.dim
    rounds = args.rounds or (4 if args.quick else 8)
    steps = args.steps or (2 if args.quick else 5)
    precisions = args.precisions.split(',')
    task, workdir, dict_file = task_with_dictionary(args.data, 'bench_generators_')
    where = 'GPU' if on_gpu() else 'CPU'
    machine = machine_info(args.threads)
    out = [
        f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}.',
        f'Every configuration in its own process, interleaved over {rounds} rounds '
        f'(forward/reverse order); median (quartiles) over rounds; ratios per round, of wall '
        "time and of each worker's own CPU time (one thread: less sensitive to other jobs).",
    ]
    groups, results = [], {}

    if args.models:
        names = pick_models(args.models)
    else:
        names = QUICK_MODELS if args.quick else list(MODELS)
    if args.baseline_src:
        names += [name + BASE for name in names if name not in (REFERENCE, BF16_WEIGHTS)]
    sources = {name: args.baseline_src for name in names if name.endswith(BASE)}
    trained_names = list(names)
    if args.malloc_variants:
        trained_names += [n + MALLOC for n in names if n != REFERENCE and not n.endswith(BASE)]
    for precision in precisions:
        trained = [
            name
            for name in trained_names
            if precision != 'fp32' or name.removesuffix(MALLOC) != BF16_WEIGHTS
        ]
        specs = {
            name: {
                'kind': 'train',
                'agent_args': model_args(name) + configs.train_args(dict_file, args.batch),
                'task_args': task,
                'precision': precision,
                **({'source': sources[name]} if name in sources else {}),
                **({'env': KEEP_FREED_MEMORY} if name.endswith(MALLOC) else {}),
            }
            for name in trained
        }
        print(f'training, {precision}:')
        group = run_interleaved(specs, rounds, steps, [precision], args.threads, workdir)
        groups.append(group)
        table, summary = training_table(group, precision)
        peak = spread(group.peaks[precision])
        results[f'train_{precision}'] = {'group': group.to_json(), 'summary': summary}
        out += [
            f'\n### Training throughput, {precision} ({where}; hidden {args.dim}, batch '
            f'{args.batch}, context ≤ 128, label ≤ 64 tokens, {steps} steps per chunk)\n',
            f'Matmul peak ({precision}, same rounds): {peak.median / 1e9:,.0f} GFLOP/s '
            f'({peak.q1 / 1e9:,.0f}-{peak.q3 / 1e9:,.0f}).\n',
            table,
        ]

    gen_names = [] if args.no_generation else [n for n in names if n != BF16_WEIGHTS]
    decodings = {
        'greedy': ['--inference', 'greedy'],
        'beam 20': ['--inference', 'beam', '--beam-size', '20'],
    }
    specs = {
        f'{name} | {decoding}': {
            'kind': 'generate',
            'agent_args': model_args(name)
            + configs.generate_args(dict_file, 1, args.gen_length) + flags,
            'task_args': task,
            'kw': {'warmup': 2},
            **({'source': sources[name]} if name in sources else {}),
        }
        for name in gen_names
        for decoding, flags in decodings.items()
    }  # fmt: skip
    if specs:
        print('generation:')
        group = run_interleaved(specs, rounds, 3, (), args.threads, workdir)
        groups.append(group)
        table, gen_summary = generation_table(group, gen_names, decodings)
        results['generate'] = {'group': group.to_json(), 'summary': gen_summary}
        out += [
            f'\n### Generation latency per response ({where}; batch 1, exactly '
            f'{args.gen_length} tokens, untrained weights)\n',
            table,
        ]

    if not args.quick and not args.models and not args.no_growth:
        grid = {'ctx 64': (32, 64), 'ctx 128 / batch 32': (32, 128), 'ctx 256': (32, 256),
                'batch 16': (16, 128), 'batch 64': (64, 128)}  # fmt: skip
        rows = []
        for name in [REFERENCE, 'unified_transformer (2 layers)', 'unified_transformer (4 layers)']:
            specs = {
                cell: {
                    'kind': 'train',
                    'agent_args': model_args(name) + configs.train_args(dict_file, batch, text),
                    'task_args': task,
                }
                for cell, (batch, text) in grid.items()
            }
            print(f'growth, {name}:')
            group = run_interleaved(specs, max(3, rounds // 2), steps, (), args.threads, workdir)
            groups.append(group)
            results[f'growth {name}'] = {'group': group.to_json()}
            rows.append(
                [name]
                + [f'{spread(group.rate(c)).median:,.0f} tok/s, {memory(group, c)}' for c in grid]
            )
        out += [
            f'\n### Growth with context length and batch size ({where}, fp32): tokens/s, '
            'peak memory\n',
            markdown_table(['model', *grid], rows),
        ]

    load = load_summary(groups)
    out.insert(2, load_line(load) + ' Numbers measured under load are not final.')
    markdown = '\n'.join(out)
    data = {'machine': machine, 'settings': vars(args), 'load': load, 'results': results}
    write_and_print_results(__file__, args.out, args.quick, data, markdown)


if __name__ == '__main__':
    main()
