"""The whole speed grid of the docs in one command: every benchmark, one folder of tables.

Runs, each as its own process (one torch thread per worker; ``--jobs`` parts at a time), and
writes ``<folder>/<part>.{json,md}`` for each plus ``<folder>/grid.md`` (every table, with its
command) and ``<folder>/grid.json`` (the machine, the commit, the load and wall/CPU time of
every part, each part's results):

=================  ===========================================================================
``generators``     training tokens/s of ``unified_transformer`` (2 layers) and ``encoder_decoder``
                   vs ParlAI's ``transformer/generator`` (2+2) at equal dimensions, fp32 vs fp32
                   and bf16 vs bf16, MFU against the matmul peak measured in the same rounds at
                   the same precision; greedy / beam 20 generation latency
``realistic``      the same training tables at hidden 512 (8 heads, FFN 2048): MFU at a size
                   where the matrix products dominate
``plato2``         PLATO-2 stage 1 / 2.1 training; K = 20 generate-then-rank (+ evaluator)
                   vs ParlAI's beam 20
``hred_dd``        ``mr_hred`` / ``vhred_lgm`` vs ParlAI's ``hred`` (hidden 128, embeddings 64)
                   with the DailyDialog dictionary (17,710 words, lower-cased)
``hred_small``     the same with the benchmark's own small dictionary (~1.4k words)
``hf``             SmolLM2-135M: our ``hf_generator`` agent vs a plain transformers loop
                   (fp32/bf16 × full/LoRA)
``growth``         cost and memory vs context length and batch size, every model family, and
                   where each stops fitting in 24 GiB (extrapolated; ``bench/growth.py``)
=================  ===========================================================================

Presets: ``--tiny`` (a smoke test of the machinery: synthetic data, 2 rounds of 1 step,
small sizes; minutes on a loaded machine), ``--quick`` (the scripts' ``--quick`` settings),
default (the docs grid, sized for ~15 minutes on 2 quiet cores with ``--jobs 2``).

    OMP_NUM_THREADS=1 python bench/grid.py runs/bench/grid-tiny --tiny --jobs 1
    python bench/grid.py runs/bench/grid-final --jobs 2          # on a quiet machine

``--parts a,b`` runs a subset; ``--data`` the DailyDialog folder (default
``../shared/data/dailydialog``; missing: the synthetic ``ext_demo`` task).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from harness import machine_info, machine_load, write_atomic  # noqa: E402

PARTS = ['generators', 'realistic', 'plato2', 'hred_dd', 'hred_small', 'hf', 'growth']


def part_commands(folder: str, preset: str, data: str, dd_dict: str | None) -> dict[str, list]:
    """The command of every part for a preset (``tiny``, ``quick``, ``full``)."""
    py = [sys.executable]
    out = {name: ['--out', os.path.join(folder, name)] for name in PARTS}
    tiny = preset == 'tiny'
    quick = preset == 'quick'
    data_args = ['--data', data]
    if tiny:  # synthetic data, fewest rounds and steps: checks that every part runs
        data_args = ['--data', os.path.join(folder, 'no-such-data')]
    if tiny:
        sizes = ['--rounds', '2', '--steps', '1']
    elif quick:
        sizes = ['--rounds', '3', '--steps', '2']
    else:
        sizes = ['--rounds', '4', '--steps', '2']
    hred_rounds = ['--rounds', '2', '--steps', '1'] if tiny else (
        ['--rounds', '4', '--steps', '3'] if quick else ['--rounds', '6', '--steps', '4'])  # fmt: skip
    hred_data = ['--data-dir', os.path.join(folder, 'no-such-data') if tiny else data]
    commands = {
        'generators': py + [os.path.join(BENCH, 'bench_generators.py'), *data_args, *sizes,
                            '--models', 'unified_transformer (2,encoder_decoder', '--no-growth',
                            *out['generators']],
        'realistic': py + [os.path.join(BENCH, 'bench_generators.py'), *data_args,
                           '--models', 'unified_transformer (2', '--no-generation', '--no-growth',
                           '--dim', '128' if tiny else '512',
                           *(['--rounds', '2', '--steps', '1'] if tiny
                             else ['--rounds', '3', '--steps', '1']),
                           *out['realistic']],
        'plato2': py + [os.path.join(BENCH, 'plato2_speed.py'), *data_args, *sizes,
                        '--gen-batches', '1', *(['--quick'] if tiny or quick else []),
                        *out['plato2']],
        'hred_dd': py + [os.path.join(BENCH, 'multiref_hred_speed.py'), *hred_data, *hred_rounds,
                         *(['--dict-file', dd_dict] if dd_dict else []), *out['hred_dd']],
        'hred_small': py + [os.path.join(BENCH, 'multiref_hred_speed.py'), *hred_data,
                            *hred_rounds, *out['hred_small']],
        'hf': py + [os.path.join(BENCH, 'hf_speed.py'),
                    *(['--tiny'] if tiny else ['--quick'] if quick else
                      ['--batch', '4', '--length', '64', '--rounds', '4', '--steps', '1']),
                    *out['hf']],
        'growth': py + [os.path.join(BENCH, 'growth.py'),
                        *(['--tiny'] if tiny else ['--quick'] if quick else []),
                        *out['growth']],
    }  # fmt: skip
    return commands


def build_dd_dictionary(folder: str, data: str) -> str | None:
    """The lower-cased DailyDialog dictionary of the HRED benchmarks (17,710 words)."""
    if not os.path.isdir(data):
        return None
    path = os.path.join(folder, 'dailydialog-lower.dict')
    if not os.path.exists(path):
        from parlai.scripts.build_dict import build_dict, setup_args

        opt = setup_args().parse_args(
            ['-t', 'dailydialog_ext:no_start', '--dailydialog-data-dir', os.path.abspath(data),
             '--dict-file', path, '--dict-lower', 'true']
        )  # fmt: skip
        build_dict(opt)
    return path


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_parts(commands: dict[str, list], folder: str, jobs: int) -> dict[str, dict[str, Any]]:
    """Run the parts, ``jobs`` at a time; each logs to ``<folder>/<part>.log``."""
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1'}
    env['PYTHONPATH'] = os.pathsep.join([os.path.dirname(BENCH), env.get('PYTHONPATH', '')])
    pending = list(commands)
    running: dict[str, tuple[subprocess.Popen, float, Any]] = {}
    done: dict[str, dict[str, Any]] = {}
    while pending or running:
        while pending and len(running) < jobs:
            name = pending.pop(0)
            log = open(os.path.join(folder, f'{name}.log'), 'w')  # noqa: SIM115
            load = machine_load()
            print(f'[grid] {name}: {" ".join(commands[name][1:])}', flush=True)
            process = subprocess.Popen(
                commands[name],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=os.path.dirname(BENCH),
            )
            running[name] = (process, time.perf_counter(), log, load)
        time.sleep(2)
        for name in list(running):
            process, start, log, load = running[name]
            if process.poll() is None:
                continue
            log.close()
            seconds = time.perf_counter() - start
            done[name] = {
                'command': commands[name][1:],
                'returncode': process.returncode,
                'wall_seconds': round(seconds, 1),
                'load_at_start': load,
                'log': os.path.join(folder, f'{name}.log'),
            }
            status = 'ok' if process.returncode == 0 else f'FAILED ({process.returncode})'
            print(f'[grid] {name}: {status} in {seconds:.0f} s', flush=True)
            del running[name]
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('folder', help='where the tables go (created)')
    parser.add_argument('--tiny', action='store_true', help='smoke test of every part')
    parser.add_argument('--quick', action='store_true', help="the scripts' --quick settings")
    parser.add_argument('--parts', default=','.join(PARTS))
    parser.add_argument('--jobs', type=int, default=1, help='parts at a time (2 on 2 quiet cores)')
    parser.add_argument('--data', default=os.path.join(os.path.dirname(BENCH), '..', 'shared',
                                                       'data', 'dailydialog'))  # fmt: skip
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(',') if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f'--parts: unknown {unknown}; expected some of {PARTS}')
    if args.jobs < 1:
        raise SystemExit(f'--jobs must be >= 1, got {args.jobs}')
    preset = 'tiny' if args.tiny else 'quick' if args.quick else 'full'
    folder = os.path.abspath(args.folder)
    os.makedirs(folder, exist_ok=True)
    data = os.path.abspath(args.data)
    started = time.perf_counter()
    cpu_start = _child_cpu()
    dd_dict = None
    if 'hred_dd' in parts and preset != 'tiny':
        dd_dict = build_dd_dictionary(folder, data)
    commands = {k: v for k, v in part_commands(folder, preset, data, dd_dict).items() if k in parts}
    done = run_parts(commands, folder, args.jobs)
    machine = machine_info(1)
    sections, results = [], {}
    for name in parts:
        info = done[name]
        stem = os.path.join(folder, name)
        part: dict[str, Any] = dict(info)
        if os.path.exists(stem + '.json'):
            with open(stem + '.json') as handle:
                result = json.load(handle)
            part['load'] = result.get('load')
            part['results_file'] = stem + '.json'
        with_md = os.path.exists(stem + '.md')
        markdown = open(stem + '.md').read() if with_md else f'(no tables: see {info["log"]})'
        command = ' '.join(os.path.relpath(c) if c.startswith('/') else c for c in info['command'])
        sections.append(
            f'## {name}\n\n`{command}` (exit {info["returncode"]}, {info["wall_seconds"]:.0f} s '
            f'wall)\n\n{markdown.strip()}\n'
        )
        results[name] = part
    seconds = time.perf_counter() - started
    header = (
        f'# Speed grid ({preset})\n\nMachine: {machine["description"]}; commit '
        f'{machine.get("commit", "?")}; {args.jobs} part(s) at a time; {seconds / 60:.1f} min '
        f'wall, {(_child_cpu() - cpu_start) / 60:.1f} min CPU of the parts. Each part states the '
        'load it was measured under.\n'
    )
    write_atomic(os.path.join(folder, 'grid.md'), header + '\n' + '\n'.join(sections))
    summary = {
        'preset': preset,
        'machine': machine,
        'jobs': args.jobs,
        'wall_seconds': round(seconds, 1),
        'cpu_seconds_children': round(_child_cpu() - cpu_start, 1),
        'parts': results,
    }
    write_atomic(os.path.join(folder, 'grid.json'), json.dumps(summary, indent=1) + '\n')
    failed = [n for n in parts if done[n]['returncode'] != 0]
    print(f'[grid] {seconds / 60:.1f} min; tables in {folder}/grid.md' +
          (f'; FAILED: {failed}' if failed else ''))  # fmt: skip
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
