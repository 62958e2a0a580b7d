"""Where the time of a step goes: torch.profiler + cProfile of our agents and ParlAI's, same setup.

For each target (an agent and a workload of ``bench/configs.py``, equal dimensions) this
builds the ParlAI world in-process, warms it up, then measures ``--units`` units (training
steps or generation batches) three ways:

1. plain wall time per unit (no profiler);
2. ``torch.profiler`` (CPU activities): time inside torch operators per unit (the sum of
   every operator's *self* time), split into matrix products (``mm``/``addmm``/``bmm``/
   attention kernels: the model math) and all other operators (element-wise, copies,
   ``index_select``, ``cat``, masks, optimizer arithmetic); operator calls per unit; the top
   operators by self time;
3. ``cProfile``: Python time per unit by where the code lives (ParlAI, parlai_ext, torch's
   Python side, the rest) and the top Python functions by own time (torch operators excluded).

"Python & other" = plain wall time − time inside torch operators: the interpreter, ParlAI's
and our own Python code, and the dispatch between operators. The profilers add overhead of
their own, so the split is an estimate; compare targets with each other, not with the
benchmark tables.

Usage::

    python bench/profile_steps.py --quick                     # every target, few units
    python bench/profile_steps.py --targets train-unified,train-parlai --units 10

Writes ``runs/bench/profile_steps[-quick]-<time>.{json,md}`` (or ``--out STEM``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
from bench_setup import write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    _build_world,
    machine_info,
    machine_load,
    markdown_table,
    recast_after_optimizer_steps,
)

MATMUL_OPS = (
    'aten::mm', 'aten::addmm', 'aten::bmm', 'aten::baddbmm', 'aten::matmul_out',
    'aten::_scaled_dot_product_flash_attention_for_cpu',
    'aten::_scaled_dot_product_flash_attention_for_cpu_backward',
    'aten::_flash_attention_forward', 'aten::_flash_attention_backward',
    'aten::mkldnn_rnn', 'aten::_thnn_fused_gru_cell', 'aten::_thnn_fused_lstm_cell',
    'aten::mkldnn_rnn_layer', 'aten::mkldnn_rnn_layer_backward',
    'aten::_thnn_fused_gru_cell_backward', 'aten::_thnn_fused_lstm_cell_backward',
)  # fmt: skip
HRED_SIZES = ['--history-size', '5', '--label-truncate', '40', '--dict-lower', 'true']


def targets(dict_file: str, dict_lower: str, evaluator: str) -> dict[str, dict[str, Any]]:
    """Every profile target: agent arguments, datatype, no_start task or not, batch."""
    train = configs.train_args(dict_file)
    gen = configs.generate_args(dict_file, 8, 20)
    hred_common = ['--dict-file', dict_lower, '-bs', '30', *HRED_SIZES]
    return {
        'train-parlai': {'args': configs.PARLAI_GENERATOR + train, 'dt': 'train'},
        'train-unified': {'args': configs.UNIFIED_2 + train, 'dt': 'train'},
        'train-plato2': {'args': configs.PLATO2 + train, 'dt': 'train'},
        'gen-parlai-beam20': {
            'args': configs.PARLAI_GENERATOR + gen + ['--inference', 'beam', '--beam-size', '20'],
            'dt': 'valid',
            'no_start': True,
        },
        'gen-plato2-k20': {
            'args': configs.PLATO2
            + gen
            + ['--inference', 'topk', '--topk', '10', '--evaluator-model-file', evaluator],
            'dt': 'valid',
            'no_start': True,
        },  # fmt: skip
        'train-hred': {
            'args': [
                '-m',
                'hred',
                '--numlayers',
                '1',
                '--dropout',
                '0.2',
                '--optimizer',
                'adam',
                '-lr',
                '1e-3',
                '--gradient-clip',
                '1.0',
                '--text-truncate',
                '40',
                '--hiddensize',
                '128',
                '--embeddingsize',
                '64',
                *hred_common,
            ],
            'dt': 'train',
            'no_start': True,
        },  # fmt: skip
        'train-mr_hred': {
            'args': [
                '-m',
                'mr_hred',
                '--hidden-size',
                '128',
                '--embedding-size',
                '64',
                '--latent-size',
                '64',
                *hred_common,
            ],
            'dt': 'train',
            'no_start': True,
        },  # fmt: skip
        'train-vhred_lgm': {
            'args': [
                '-m',
                'vhred_lgm',
                '--n-components',
                '5',
                '--hidden-size',
                '128',
                '--embedding-size',
                '64',
                '--latent-size',
                '64',
                *hred_common,
            ],
            'dt': 'train',
            'no_start': True,
        },  # fmt: skip
    }


def area(filename: str) -> str:
    """Where a Python function lives."""
    if '/parlai_ext/' in filename:
        return 'parlai_ext'
    if '/parlai/' in filename:
        return 'parlai'
    if '/torch/' in filename:
        return 'torch (Python side)'
    if filename == '~':
        return 'builtins'
    return 'other Python'


def profile_target(name: str, target: dict[str, Any], task: list[str], units: int) -> dict:
    agent, world = _build_world(target['args'], task, target['dt'])
    for _ in range(3):
        world.parley()
    start, cpu_start = time.perf_counter(), time.process_time()
    for _ in range(units):
        world.parley()
    wall = (time.perf_counter() - start) / units
    cpu = (time.process_time() - cpu_start) / units

    activities = [torch.profiler.ProfilerActivity.CPU]
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(units):
            world.parley()
    profiled_wall = (time.perf_counter() - start) / units
    events = prof.key_averages()
    # self time of every operator; the profiler's own ProfilerStep etc. are not aten ops
    is_op = ('aten::', 'mkldnn::', 'quantized::')
    ops = [e for e in events if e.key.startswith(is_op)]
    op_time = sum(e.self_cpu_time_total for e in ops) / 1e6 / units
    matmul_time = sum(e.self_cpu_time_total for e in ops if e.key in MATMUL_OPS) / 1e6 / units
    calls = sum(e.count for e in ops) / units
    top_ops = sorted(ops, key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True) if e.key.startswith(is_op)]
    top_shapes = sorted(by_shape, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(units):
        world.parley()
    profiler.disable()
    stats = pstats.Stats(profiler)
    by_area: dict[str, float] = defaultdict(float)
    functions = []
    for (filename, line, function), (_, ncalls, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = area(filename)
        torch_op = filename == '~' and ('torch' in function or 'Tensor' in function)
        if torch_op:
            where = 'torch operators (C++)'
        by_area[where] += tottime / units
        if not torch_op:
            short = filename.split('site-packages/')[-1].split('/work/main/')[-1]
            functions.append((tottime / units, ncalls / units, f'{short}:{line}({function})'))
    functions.sort(reverse=True)
    model = getattr(agent.model, 'module', agent.model)
    return {
        'name': name,
        'args': target['args'],
        'params': sum(p.numel() for p in model.parameters()),
        'wall_per_unit': wall,
        'cpu_per_unit': cpu,
        'profiled_wall_per_unit': profiled_wall,
        'op_time_per_unit': op_time,
        'matmul_time_per_unit': matmul_time,
        'other_op_time_per_unit': op_time - matmul_time,
        'python_and_other_per_unit': max(0.0, profiled_wall - op_time),
        'op_calls_per_unit': calls,
        'top_ops_by_shape': [
            {
                'op': e.key,
                'shapes': str(e.input_shapes)[:160],
                'self_ms_per_unit': e.self_cpu_time_total / 1e3 / units,
                'calls_per_unit': e.count / units,
            }
            for e in top_shapes
        ],
        'top_ops': [
            {
                'op': e.key,
                'self_ms_per_unit': e.self_cpu_time_total / 1e3 / units,
                'calls_per_unit': e.count / units,
            }
            for e in top_ops
        ],
        'cprofile_seconds_per_unit_by_area': dict(by_area),
        'top_python_functions': [
            {'seconds_per_unit': t, 'calls_per_unit': c, 'function': f}
            for t, c, f in functions[:15]
        ],
        'load_after': machine_load(),
    }


def markdown(results: list[dict]) -> str:
    rows = []
    for r in results:
        wall = r['profiled_wall_per_unit']
        rows.append(
            [
                r['name'],
                f'{r["params"] / 1e6:.2f} M',
                f'{r["wall_per_unit"] * 1e3:,.0f}',
                f'{r["cpu_per_unit"] * 1e3:,.0f}',
                f'{r["matmul_time_per_unit"] / wall:.0%}',
                f'{r["other_op_time_per_unit"] / wall:.0%}',
                f'{r["python_and_other_per_unit"] / wall:.0%}',
                f'{r["op_calls_per_unit"]:,.0f}',
            ]
        )
    headers = ['target', 'params', 'wall ms / unit', 'CPU ms / unit', 'matmul ops', 'other ops',
               'Python & other', 'op calls / unit']  # fmt: skip
    out = [
        markdown_table(headers, rows),
        '\nShares are of the profiled wall time (the torch.profiler run); "Python & other" = '
        "that wall time minus the operators' self time.",
    ]
    for r in results:
        out.append(f'\n#### {r["name"]}: top operators (self time per unit)\n')
        out.append(
            markdown_table(
                ['operator', 'ms / unit', 'calls / unit'],
                [
                    [o['op'], f'{o["self_ms_per_unit"]:.1f}', f'{o["calls_per_unit"]:,.0f}']
                    for o in r['top_ops'][:10]
                ],
            )
        )
        out.append(f'\n#### {r["name"]}: top operators by input shape\n')
        out.append(
            markdown_table(
                ['operator', 'input shapes', 'ms / unit', 'calls / unit'],
                [
                    [
                        o['op'],
                        f'`{o["shapes"]}`',
                        f'{o["self_ms_per_unit"]:.1f}',
                        f'{o["calls_per_unit"]:,.0f}',
                    ]
                    for o in r['top_ops_by_shape'][:8]
                ],
            )  # fmt: skip
        )
        areas = sorted(r['cprofile_seconds_per_unit_by_area'].items(), key=lambda kv: -kv[1])
        out.append(
            '\ncProfile, own time per unit by area: '
            + ', '.join(f'{k} {v * 1e3:,.0f} ms' for k, v in areas)
        )
        out.append(f'\n#### {r["name"]}: top Python functions (own time per unit)\n')
        out.append(
            markdown_table(
                ['function', 'ms / unit', 'calls / unit'],
                [
                    [
                        f'`{f["function"]}`',
                        f'{f["seconds_per_unit"] * 1e3:.1f}',
                        f'{f["calls_per_unit"]:,.0f}',
                    ]
                    for f in r['top_python_functions'][:10]
                ],
            )  # fmt: skip
        )
    return '\n'.join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='../shared/data/dailydialog')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--units', type=int, default=None, help='default 3 (quick) / 10')
    parser.add_argument('--targets', default='all')
    parser.add_argument('--quick', action='store_true')
    parser.add_argument(
        '--precision', choices=['fp32', 'bf16'], default='fp32', help='bf16: torch.autocast'
    )
    parser.add_argument('--out', default=None)
    parser.add_argument(
        '--dim',
        type=int,
        default=256,
        help='hidden size of the transformer targets (heads of 64, FFN 4x)',
    )
    parser.add_argument(
        '--hred-dict', default=None, help='dictionary of the HRED targets (default: DailyDialog)'
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.precision != 'fp32':  # one autocast context per target: recast after each step
        recast_after_optimizer_steps()
    units = args.units or (3 if args.quick else 10)
    workdir = tempfile.mkdtemp(prefix='profile_steps_')
    task = configs.task_args(args.data)
    task_no_start = configs.task_args(args.data, no_start=True)
    dict_file, dict_lower = os.path.join(workdir, 'dict'), os.path.join(workdir, 'dict_lower')
    configs.build_dictionary(task, dict_file)
    configs.build_dictionary([*task_no_start, '--dict-lower', 'true'], dict_lower)
    evaluator = os.path.join(workdir, 'evaluator')
    configs.save_untrained(configs.PLATO2_EVALUATOR, task_no_start, dict_file, evaluator)
    all_targets = targets(dict_file, args.hred_dict or dict_lower, evaluator)
    names = list(all_targets) if args.targets == 'all' else args.targets.split(',')
    for target in all_targets.values():  # the transformer targets (the HRED ones have no heads)
        if '--n-heads' in target['args']:
            target['args'] = configs.with_dim(target['args'], args.dim)
    results = []
    for name in names:
        target = all_targets[name]
        print(f'profiling {name} ...', flush=True)
        autocast = (
            torch.autocast('cpu', dtype=torch.bfloat16)
            if args.precision == 'bf16'
            else contextlib.nullcontext()
        )
        with autocast:
            results.append(
                profile_target(
                    name, target, task_no_start if target.get('no_start') else task, units
                )
            )
    machine = machine_info(args.threads)
    load = machine_load()
    header = (
        f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; '
        f'{args.precision}; transformer hidden {args.dim}; '
        f'{units} units per target (training: one step of batch 32 / 30; generation: one '
        f'batch of 8 contexts, 20 tokens each); load at the end: 1-minute average '
        f'{load["loadavg_1m"]}, {load["busy_processes"]} other busy processes.\n\n'
    )
    text = header + markdown(results)
    data = {'machine': machine, 'settings': vars(args), 'results': results}
    write_and_print_results(__file__, args.out, args.quick, data, text)


if __name__ == '__main__':
    main()
