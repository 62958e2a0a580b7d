"""Growth of training cost and memory with context length and batch size, every model family.

One training step (forward, loss, backward, AdamW update) of each family's model on random
token batches, at several context lengths (batch fixed) and batch sizes (context fixed), each
point in its own fresh process (so its memory is its own), one point at a time:

- **cost**: the step's CPU time (this process's, one thread) and tokens per CPU second;
- **memory**: the process's peak resident set during the timed steps, and how far above the
  resident set before them it went (the step's activations, gradients and the optimizer's
  temporaries; the weights and the optimizer's moments exist after the warm-up step and are in
  the baseline).
  The peak is reset after the warm-up (``/proc/self/clear_refs``), so model building does not
  mask it. On a GPU: the CUDA allocator's peak (``max_memory_allocated``) instead.
- **where it stops fitting in 24 GiB**: a least-squares fit of the step memory to
  ``c + a·B·L + b·B·L²`` over the measured points (B batch, L context + response tokens; ``c``
  the size-independent part: gradients, optimizer temporaries), plus the baseline,
  solved for the largest context at the table's batch and the largest batch at its context.
  These are *extrapolations* from points that stay far below 24 GiB (a point whose predicted
  memory passes ``--max-gib``, default 4, is skipped, not measured).

Families (sizes: the benchmark dimensions of ``bench/configs.py`` for the models trained from
scratch, the paper's for the HRED family, the published checkpoints for the backbones):

=====================  ==================================================================
``unified``            ``UnifiedTransformer`` (PLATO-2 stage 1), 2 layers, d 256, 20,687 words
``plato2``             ``Plato2Generator`` (stage 2.1: recognition + generation pass, BOW)
``p2bot_transmitter``  P2Bot's ``Transmitter`` (LM + next-utterance head) on the same stack
``p2bot_receiver``     P2Bot's ``Receiver``: two ``SentenceEncoder``; context = utterances
``mr_hred``            ``HierarchicalEncoderDecoder`` HRED (hidden 500, embeddings 200)
``vhred_lgm``          the same with the LGM prior (K = 5), BoW head
``coral_generator``    ``EncoderDecoder`` 2+2 (CORAL's and PPG's generator architecture)
``coral_esim``         CORAL's ESIM reward model (embeddings 300, hidden 300)
``ppg_critic``         PPG's persona critic / CORAL's cross-encoder on MiniLM-L6 (LoRA r 16)
``smollm2``            SmolLM2-135M with LoRA r 8 (the backbone of the issue #21 systems)
=====================  ==================================================================

The transformer families' context is ``L`` tokens plus a ``--response``-token response; the
HRED family's context is ``L / 16`` utterances of 16 tokens; the receiver's ``L / 16``
utterances against 10 candidate personas of 5 sentences.

    OMP_NUM_THREADS=1 python bench/growth.py --quick --out runs/bench/growth
    python bench/growth.py --families unified,mr_hred --contexts 64,128 --batches 4,8

Writes ``<out>.json`` and ``<out>.md`` (default ``runs/bench/growth[-quick]-<time>``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_setup import write_and_print_results  # noqa: E402
from growth_families import FAMILIES, HEAVY  # noqa: E402
from harness import (  # noqa: E402
    machine_info,
    machine_load,
    markdown_table,
    on_gpu,
)

LIMIT_GIB = 24.0


# --- memory probes ------------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    with open('/proc/self/status') as handle:
        for line in handle:
            if line.startswith(field + ':'):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    """Reset this process's peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    try:
        with open('/proc/self/clear_refs', 'w') as handle:
            handle.write('5')
        return True
    except OSError:
        return False


def measure_family(
    family: str,
    grid: list[list[int]],
    response: int,
    steps: int,
    threads: int,
    max_gib: float,
) -> dict[str, Any]:
    """Build one family's model once (positions for the longest point), then for each
    ``(batch, context)`` of ``grid`` (ascending size): one warm-up step at that shape, reset
    the peak, ``steps`` timed steps. Points predicted above ``max_gib`` are skipped."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = 'cuda' if on_gpu() else 'cpu'
    longest = max(c for _, c in grid)
    maker = FAMILIES[family](grid[0][0], longest, response, device)
    model = maker.build().to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    points: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for batch, context in grid:
        if len(points) >= 2:  # predicted from the points so far: stay far below 24 GiB
            fit = fit_memory(points)
            predicted = points[-1]['base_mb'] + predict_mb(fit, batch, context + response)
            if predicted > max_gib * 1024:
                skipped.append({'batch': batch, 'context': context, 'predicted_mb': predicted})
                continue
        point = FAMILIES[family](batch, context, response, device)
        point.model = model
        for attribute in ('vocab',):  # set by build() on the first instance
            if hasattr(maker, attribute):
                setattr(point, attribute, getattr(maker, attribute))

        def step() -> int:
            loss, count = point.loss()  # noqa: B023 (called in this iteration only)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return count

        load = machine_load(window=0.1)
        step()  # warm-up at this shape: gradients and optimizer moments exist afterwards
        if device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        resettable = reset_peak()
        rss_before = _status_kib('VmRSS') * 1024
        cpu, wall, tokens = time.process_time(), time.perf_counter(), 0
        for _ in range(steps):
            tokens += step()
        if device == 'cuda':
            torch.cuda.synchronize()
        result = {
            'family': family,
            'batch': batch,
            'context': context,
            'response': response,
            'steps': steps,
            'cpu_s_per_step': (time.process_time() - cpu) / steps,
            'wall_s_per_step': (time.perf_counter() - wall) / steps,
            'tokens_per_step': tokens / steps,
            'params': sum(p.numel() for p in model.parameters()),
            'trainable': sum(p.numel() for p in trainable),
            'base_mb': rss_before / 2**20,
            'peak_rss_mb': _status_kib('VmHWM') / 1024,
            'peak_reset': resettable,
            'load': load,
        }
        result['step_mb'] = max(0.0, result['peak_rss_mb'] - result['base_mb'])
        if device == 'cuda':
            result['base_mb'] = base / 2**20
            result['step_mb'] = (torch.cuda.max_memory_allocated() - base) / 2**20
            result['peak_gpu_mb'] = torch.cuda.max_memory_allocated() / 2**20
            result['gpu'] = torch.cuda.get_device_name(0)
        points.append(result)
        print(json.dumps({'progress': result}), flush=True)
    return {'points': points, 'skipped': skipped}


def run_family(spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """:func:`measure_family` in a fresh process (its memory is its own). Large blocks are
    always ``mmap``-ed (``MALLOC_MMAP_THRESHOLD_``), so what a point frees goes back to the
    system and the next point's peak above its baseline is its own."""
    command = [sys.executable, os.path.abspath(__file__), '--family-run', json.dumps(spec)]
    env = {**os.environ, 'MALLOC_MMAP_THRESHOLD_': str(128 * 1024)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith('{"points"'):
            return json.loads(line)
    raise RuntimeError(f'{spec["family"]} failed:\n{done.stderr[-3000:]}')


# --- fit and extrapolation ----------------------------------------------------------------------
def fit_memory(points: list[dict[str, Any]]) -> tuple[float, float, float] | None:
    """Least squares ``step_mb ≈ c + a·B·L + b·B·L²`` (L = context + response), every
    coefficient >= 0 (terms whose free fit is negative are dropped, then refitted). ``c``:
    what a step allocates whatever its size (gradients, the optimizer's temporaries)."""
    import numpy

    if len(points) < 2:
        return None
    lengths = numpy.array([p['context'] + p['response'] for p in points], dtype=float)
    batch = numpy.array([p['batch'] for p in points], dtype=float)
    target = numpy.array([p['step_mb'] for p in points], dtype=float)
    columns = [numpy.ones_like(target), batch * lengths, batch * lengths**2]
    keep = [0, 1, 2] if len(points) >= 3 else [1]
    while keep:
        design = numpy.stack([columns[k] for k in keep], axis=1)
        solution = numpy.linalg.lstsq(design, target, rcond=None)[0]
        if (solution >= 0).all():
            coefficients = [0.0, 0.0, 0.0]
            for k, value in zip(keep, solution):
                coefficients[k] = float(value)
            c, a, b = coefficients
            return a, b, c
        keep.remove(keep[int(numpy.argmin(solution))])
    return 0.0, 0.0, float(target.max())


def predict_mb(fit: tuple[float, float, float], batch: int, length: int) -> float:
    a, b, c = fit
    return c + a * batch * length + b * batch * length**2


def largest(fit, base_mb: float, limit_mb: float, batch=None, length=None) -> float | None:
    """The largest context length (at ``batch``) or batch (at ``length``) under ``limit_mb``."""
    a, b, c = fit
    budget = limit_mb - base_mb - c
    if budget <= 0:
        return 0.0
    if batch is not None:  # solve b·B·L² + a·B·L = budget for L
        if b > 0:
            return (-a + (a * a + 4 * b * budget / batch) ** 0.5) / (2 * b)
        return budget / (a * batch) if a > 0 else None
    per_row = a * length + b * length**2
    return budget / per_row if per_row > 0 else None


def summarise(family: str, points: list[dict[str, Any]], batch: int, context: int, response: int):
    fit = fit_memory(points)
    base = max(p['base_mb'] for p in points)
    limit = LIMIT_GIB * 1024
    out = {'fit_mb_per_token': None, 'max_context_at_batch': None, 'max_batch_at_context': None}
    if fit:
        out['fit_mb_per_token'] = fit[0]
        out['fit_mb_per_token_sq'] = fit[1]
        out['fit_mb_constant'] = fit[2]
        total_len = largest(fit, base, limit, batch=batch)
        if total_len is not None:
            out['max_context_at_batch'] = max(0.0, total_len - response)
            cap = FAMILIES[family].max_positions
            if cap is not None and out['max_context_at_batch'] > cap - response:
                out['max_context_at_batch'] = cap - response
                out['capped_by_positions'] = cap
        out['max_batch_at_context'] = largest(fit, base, limit, length=context + response)
    return out


# --- main ---------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--family-run', default=None, help=argparse.SUPPRESS)
    parser.add_argument('--families', default=','.join(FAMILIES))
    parser.add_argument('--contexts', default='64,128,256,512', help='at --batch')
    parser.add_argument('--batches', default='8,16,32', help='at --context')
    parser.add_argument('--batch', type=int, default=16)
    parser.add_argument('--context', type=int, default=128)
    parser.add_argument('--response', type=int, default=32)
    parser.add_argument('--steps', type=int, default=2, help='timed steps per point')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--max-gib', type=float, default=4.0, help='skip points predicted above')
    parser.add_argument('--timeout', type=float, default=900.0, help='seconds per family')
    parser.add_argument('--quick', action='store_true', help='2-3 points per axis, 1 step')
    parser.add_argument('--tiny', action='store_true', help='a smoke test: 2 points, 1 step')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    if args.family_run:
        print(json.dumps(measure_family(**json.loads(args.family_run))), flush=True)
        return
    if args.quick:
        args.contexts, args.batches, args.steps = '64,128,256', '8,16', 1
    if args.tiny:
        args.contexts, args.batches, args.steps = '32,64', '2', 1
        args.batch, args.context, args.response = 2, 32, 8
    families = [f.strip() for f in args.families.split(',') if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise SystemExit(f'--families: unknown {unknown}; expected some of {list(FAMILIES)}')
    contexts = [int(c) for c in args.contexts.split(',')]
    batches = [int(b) for b in args.batches.split(',')]
    machine = machine_info(args.threads)
    results: dict[str, Any] = {}
    rows = []
    started = time.perf_counter()
    for family in families:
        heavy = family in HEAVY and not args.tiny
        batch = max(1, args.batch // 8) if heavy else args.batch
        fam_contexts = [c for c in contexts if c <= 256] if heavy else contexts
        fam_batches = sorted({max(1, b // 8) for b in batches}) if heavy else batches
        grid = [(batch, c) for c in fam_contexts]
        grid += [(b, args.context) for b in fam_batches if (b, args.context) not in grid]
        grid.sort(key=lambda bc: bc[0] * (bc[1] + args.response))
        spec = dict(family=family, grid=grid, response=args.response, steps=args.steps,
                    threads=args.threads, max_gib=args.max_gib)  # fmt: skip
        measured = run_family(spec, args.timeout)
        points, skipped = measured['points'], measured['skipped']
        for point in points:
            print(
                f'{family} B={point["batch"]} L={point["context"]}: '
                f'{point["cpu_s_per_step"]:.2f} CPU s/step, '
                f'{point["tokens_per_step"] / point["cpu_s_per_step"]:,.0f} tok/CPU s, '
                f'peak {point["peak_rss_mb"]:,.0f} MB (+{point["step_mb"]:,.0f} MB), '
                f'load {point["load"]["loadavg_1m"]:.1f}',
                flush=True,
            )
        summary = summarise(family, points, batch, args.context, args.response)
        results[family] = {'points': points, 'skipped': skipped, 'batch': batch, **summary}
        rows.append(_row(family, points, batch, args.context, summary))
    markdown = _markdown(args, machine, rows, results, time.perf_counter() - started)
    data = {'machine': machine, 'settings': vars(args), 'results': results}
    data['load'] = _load(results)
    write_and_print_results(__file__, args.out, args.quick or args.tiny, data, markdown)


def _load(results: dict[str, Any]) -> dict[str, Any]:
    loads = [p['load']['loadavg_1m'] for r in results.values() for p in r['points']]
    busy = [p['load']['busy_processes'] for r in results.values() for p in r['points']]
    if not loads:
        return {}
    return {'load1_min': min(loads), 'load1_max': max(loads), 'busy_others_max': max(busy)}


def _cell(point: dict[str, Any]) -> str:
    rate = point['tokens_per_step'] / point['cpu_s_per_step']
    return f'{point["cpu_s_per_step"]:.2f} s, {rate:,.0f} tok/s, +{point["step_mb"]:,.0f} MB'


def _row(family: str, points, batch: int, context: int, summary) -> list[str]:
    by_context = [p for p in points if p['batch'] == batch]
    by_batch = [p for p in points if p['context'] == context]
    params = f'{points[0]["params"] / 1e6:.1f} M ({points[0]["trainable"] / 1e6:.2f} M trained)'
    length = ', '.join(f'L {p["context"]}: {_cell(p)}' for p in by_context)
    size = ', '.join(f'B {p["batch"]}: {_cell(p)}' for p in by_batch)
    base = max(p['base_mb'] for p in points)

    def fmt(value) -> str:
        return '—' if value is None else f'{value:,.0f}'

    cap = summary.get('capped_by_positions')
    capped = f', the {cap}-position limit' if cap else ''
    return [
        f'`{family}`', params, f'{base:,.0f} MB', f'B {batch}: {length}', f'L {context}: {size}',
        f'{fmt(summary["max_context_at_batch"])} (B {batch}{capped})',
        f'{fmt(summary["max_batch_at_context"])} (L {context})',
    ]  # fmt: skip


def _markdown(args, machine, rows, results, seconds: float) -> str:
    device = 'GPU, CUDA allocator' if on_gpu() else 'CPU, resident set'
    load = _load(results)
    skipped = [
        f'{family}: B {s["batch"]} L {s["context"]} (predicted {s["predicted_mb"]:,.0f} MB)'
        for family, r in results.items()
        for s in r['skipped']
    ]
    lines = [
        f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; '
        f'{args.threads} thread(s); one fresh process per point, {args.steps} timed step(s) '
        f'after one warm-up; response {args.response} tokens; {seconds:.0f} s in all.',
        f'Load average (1 min) {load.get("load1_min", 0):.1f}-{load.get("load1_max", 0):.1f}, '
        f'up to {load.get("busy_others_max", 0)} other busy processes. Cost = CPU seconds per '
        f'step and tokens per CPU second; memory ({device}) = how far the step rose above the '
        'resident set after warm-up (weights and AdamW moments are in the baseline column; '
        'gradients are freed between steps, so they count in the step). The last two columns are **extrapolations** to 24 GiB from a fit '
        '`c + a·B·L + b·B·L²` of the measured points (L = context + response), not '
        'measurements.\n',
        markdown_table(
            ['family', 'parameters', 'baseline memory', 'cost and step memory vs context',
             'vs batch', 'largest context in 24 GiB (extrapolated)',
             'largest batch in 24 GiB (extrapolated)'],
            rows,
        ),
    ]  # fmt: skip
    if skipped:
        lines.append('\nSkipped (predicted above --max-gib): ' + '; '.join(skipped))
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
