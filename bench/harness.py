"""The one benchmark harness of parlai-ext: configurations timed side by side, interleaved.

Every speed claim in ``docs/results.md`` and ``docs/speed.md`` comes from this module. What it
gives a benchmark script in ``bench/``:

- **Workers** (:class:`Worker`): one fresh subprocess per configuration (so peak memory is its
  own), built once and kept alive; the parent asks each worker in turn for one timed chunk, so
  the configurations are *interleaved* (A B C, C B A, A B C, ...: a forward/reverse order that
  cancels a linear drift of the machine's load and gives every configuration every position)
  instead of timed one after the other (AAA BBB CCC).
- **Load records**: with each chunk, the 1-minute load average and the number of *other*
  processes that were busy on the CPU (:func:`machine_load`), so a reader can see what a number
  was measured under.
- **Statistics**: median and spread (quartiles, min, max) of every configuration
  (:func:`spread`), and every ratio computed *per round* between two configurations measured
  back to back (:func:`paired_ratios`), then summarised the same way.
- **Peaks**: the matmul FLOP/s of the machine at the same precision (fp32 and bf16), measured
  in every round next to the workers, hence model FLOP utilisation (MFU) per round.
- **Output**: JSON (every sample, the load, the machine, the command) and a markdown table,
  each written atomically (:func:`write_results`).

Built-in workloads (``kind``): ``train`` (tokens/s of ``world.parley()`` on the train datatype:
batching, forward, backward, optimizer step; tokens counted by ParlAI's own ``ctpb``/``ltpb``
metrics so every agent is counted the same way) and ``generate`` (seconds per response of
``world.parley()`` on valid with the agent's ``--inference`` settings). ``kind='factory'`` runs
any ``module:function`` that returns an object with ``run(n) -> dict`` (see :class:`Workload`).
``precision='bf16'`` runs the workload under ``torch.autocast`` (bfloat16), the weight casts
refreshed after every optimizer step (:func:`harness_workloads.recast_after_optimizer_steps`:
one context over a chunk of steps would otherwise reuse the first step's bf16 weights).

On a machine with CUDA, ParlAI puts every agent on the GPU (unless ``--no-cuda`` is in the
agent's arguments); timings then synchronise the device, the matmul peak is measured on it, and
tables are labelled as GPU numbers.

The harness is split by responsibility: ``harness_stats`` (spread, paired ratios, the
interleaved order), ``harness_machine`` (load, description, matmul peaks), ``harness_workloads``
(what a worker times, model FLOPs), ``harness_output`` (tables, atomic JSON + markdown) and this
module (workers, rounds, groups, MFU); every name is re-exported here (``from harness import``).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

# the harness's parts, re-exported: ``from harness import ...`` keeps working for every script
from harness_machine import (  # noqa: F401
    BENCH_DIR,
    PRECISIONS,
    _cpu_ticks,
    _synchronize,
    busy_pids,
    busy_processes,
    cpu_model,
    machine_description,
    machine_info,
    machine_load,
    matmul_flops_per_second,
    matmul_peaks,
    on_gpu,
)
from harness_output import default_out_stem, markdown_table, write_atomic, write_results  # noqa: F401
from harness_stats import Spread, interleaved_order, paired_ratios, spread  # noqa: F401
from harness_workloads import (  # noqa: F401
    GenerateWorkload,
    Measurement,
    TrainWorkload,
    Workload,
    _build_world,
    _child,
    count_parameters,
    estimate_training_flops,
    lookup_parameters,
    make_workload,
    measure_in_subprocess,
    recast_after_optimizer_steps,
    time_generation,
    time_training,
)

# glibc malloc settings that keep freed memory in the process (read at process start): without
# them every step's large tensors come back as fresh pages from the kernel (page faults; e.g.
# zeroing a (455, 20,687) fp32 tensor: 16.8 ms vs 5.3 ms, docs/pending_bf16.md E)
KEEP_FREED_MEMORY = {
    'MALLOC_MMAP_THRESHOLD_': '33554432',  # 32 MiB, glibc's largest; also stops its dynamic rise
    'MALLOC_TRIM_THRESHOLD_': '4294967296',  # never hand the heap's top back to the kernel
    'MALLOC_TOP_PAD_': '268435456',  # grow the heap 256 MiB at a time
}


# --- workers: one subprocess per configuration, timed in turn -----------------------------------
class Worker:
    """A configuration in its own process, built once; :meth:`measure` times one chunk.

    ``spec``: ``kind`` (``train`` | ``generate`` | ``factory``), ``agent_args`` and
    ``task_args`` (ParlAI command-line lists) or ``factory`` (``module:function``; modules in
    ``bench/`` import by name) and ``kw`` (keyword arguments of the workload), ``threads``
    (torch intra-op threads), ``precision`` (``fp32`` | ``bf16``: autocast), ``seed``,
    ``source`` (optional: a folder holding another ``parlai_ext`` package, e.g. an export of
    an older commit, imported instead of this checkout's: before/after in one run), ``env``
    (optional: environment variables set for this worker only, e.g. :data:`KEEP_FREED_MEMORY`).
    Protocol: one JSON line per message on a private pipe (the worker's stdout goes to its
    log, so ParlAI's printing cannot corrupt it).
    """

    def __init__(self, name: str, spec: dict[str, Any], log_dir: str | None = None) -> None:
        self.name = name
        self.spec = {'threads': 1, 'precision': 'fp32', 'seed': 0, **spec}
        if self.spec['precision'] not in PRECISIONS:
            raise ValueError(f'{name}: precision {self.spec["precision"]!r} not in {PRECISIONS}')
        log_dir = log_dir or tempfile.mkdtemp(prefix='bench_worker_')
        safe = ''.join(c if c.isalnum() else '_' for c in name)[:60]
        self.log_path = os.path.join(log_dir, f'{safe}.log')
        self._log = open(self.log_path, 'w')  # noqa: SIM115 (closed in close())
        env = dict(os.environ)
        env.update({key: str(value) for key, value in (self.spec.get('env') or {}).items()})
        first = [os.path.abspath(self.spec['source'])] if self.spec.get('source') else []
        if first and not os.path.isdir(os.path.join(first[0], 'parlai_ext')):
            raise ValueError(f'{name}: source {first[0]} holds no parlai_ext package')
        env['PYTHONPATH'] = os.pathsep.join(
            [*first, BENCH_DIR, os.path.dirname(BENCH_DIR), env.get('PYTHONPATH', '')]
        ).rstrip(os.pathsep)
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), '--worker'],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
        )
        self.info = self._call(self.spec)
        self.final: dict[str, Any] = {}

    def _call(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            self.process.stdin.write(json.dumps(message) + '\n')
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            self._log.flush()
            with open(self.log_path) as handle:
                tail = handle.read()[-4000:]
            raise RuntimeError(f'worker {self.name!r} died (log {self.log_path}):\n{tail}')
        reply = json.loads(line)
        if 'error' in reply:
            raise RuntimeError(f'worker {self.name!r}: {reply["error"]} (log {self.log_path})')
        return reply

    @property
    def pid(self) -> int:
        return self.process.pid

    def measure(self, units: int, warm: int = 0) -> dict[str, float]:
        """Time ``units`` units of the workload (steps, batches) in the worker, after ``warm``
        untimed ones (caches refilled after the other workers ran)."""
        return self._call({'cmd': 'run', 'n': units, 'warm': warm})

    def close(self) -> dict[str, Any]:
        """Stop the worker; returns (and keeps) its peak memory."""
        if self.process.poll() is None:
            self.final = self._call({'cmd': 'quit'})
            self.process.wait(timeout=60)
        self._log.close()
        return self.final

    def __enter__(self) -> Worker:
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            if exc[0] is None:
                self.close()
            else:
                self.process.kill()
                self.process.wait()
                self._log.close()


def _worker_main() -> None:
    """The worker process: build the workload, then answer ``run``/``quit`` requests."""
    protocol = os.fdopen(os.dup(1), 'w')
    os.dup2(2, 1)  # anything printed goes to the log, not the protocol
    sys.stdout = sys.stderr

    def reply(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + '\n')
        protocol.flush()

    spec = json.loads(sys.stdin.readline())
    try:
        torch.set_num_threads(spec['threads'])
        # the same seed everywhere: workers of one table then draw the same training batches
        # in the same rounds (ParlAI's teachers shuffle with ``random``), so ratios are paired
        random.seed(spec['seed'])
        torch.manual_seed(spec['seed'])
        with contextlib.suppress(ImportError):
            import numpy

            numpy.random.seed(spec['seed'])
        precision = spec['precision']
        device = 'cuda' if on_gpu() else 'cpu'

        def autocast():
            if precision == 'fp32':
                return contextlib.nullcontext()
            return torch.autocast(device, dtype=PRECISIONS[precision])

        if precision != 'fp32':
            recast_after_optimizer_steps()  # fresh casts after every optimizer step
        with autocast():
            workload = make_workload(spec)
        info = {'pid': os.getpid(), **workload.info}
        if 'parlai_ext' in sys.modules:  # which code was measured (see ``source``)
            info['parlai_ext'] = os.path.dirname(sys.modules['parlai_ext'].__file__)
        reply(info)
        for line in sys.stdin:
            message = json.loads(line)
            if message['cmd'] == 'quit':
                break
            with autocast():
                if message.get('warm'):
                    workload.run(message['warm'])
                cpu_start = time.process_time()
                result = workload.run(message['n'])
                # this process's CPU time (all its threads): unlike the wall time, it does not
                # grow while the process waits for a core on a loaded machine
                result.setdefault('cpu_seconds', time.process_time() - cpu_start)
                reply(result)
    except Exception as error:  # reported to the parent, which raises
        import traceback

        traceback.print_exc()
        reply({'error': f'{type(error).__name__}: {error}'})
        return
    # ru_maxrss is in KiB on Linux
    final = {'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if on_gpu():
        final['peak_gpu_mb'] = torch.cuda.max_memory_allocated() / 2**20
    reply(final)


@dataclass
class Sample:
    """One timed chunk of one configuration."""

    round: int
    position: int
    seconds: float
    units: float
    extra: dict[str, float]
    load: dict[str, float]

    @property
    def seconds_per_unit(self) -> float:
        return self.seconds / self.units


@dataclass
class Group:
    """Configurations measured together, interleaved, with the machine's peaks per round."""

    names: list[str]
    samples: dict[str, list[Sample]]
    info: dict[str, dict[str, Any]]
    final: dict[str, dict[str, Any]]
    peaks: dict[str, list[float]]  # precision -> matmul FLOP/s per round
    threads: int = 1
    clock: str = 'cpu'  # what MFU divides by: the workers' CPU time ('cpu') or wall time

    def per_unit(self, name: str) -> list[float]:
        """Seconds per unit of ``name``, one value per round."""
        return [s.seconds_per_unit for s in self.samples[name]]

    def rate(self, name: str, key: str = 'tokens') -> list[float]:
        """``key`` per second (e.g. tokens/s), one value per round."""
        return [s.extra[key] / s.seconds for s in self.samples[name]]

    def cpu_per_unit(self, name: str) -> list[float]:
        """CPU seconds (the worker process's own) per unit, one value per round: less
        sensitive to other jobs than :meth:`per_unit` when the worker runs one thread."""
        return [s.extra['cpu_seconds'] / s.units for s in self.samples[name]]

    def cpu_rate(self, name: str, key: str = 'tokens') -> list[float]:
        """``key`` per CPU second of the worker, one value per round."""
        return [s.extra[key] / s.extra['cpu_seconds'] for s in self.samples[name]]

    def mfu(self, name: str, precision: str = 'fp32') -> list[float]:
        """Estimated model FLOP/s over the matmul peak of the same round and precision.

        On the CPU both sides are measured by CPU time (the worker's CPU seconds over its
        threads; the peak likewise), so other jobs on the machine do not move it."""
        peaks = self.peaks[precision]
        values = []
        for s in self.samples[name]:
            seconds = s.seconds
            if self.clock == 'cpu' and 'cpu_seconds' in s.extra:
                seconds = s.extra['cpu_seconds'] / self.threads
            values.append(s.extra['flops'] / seconds / peaks[s.round])
        return values

    def to_json(self) -> dict[str, Any]:
        return {
            'names': self.names,
            'info': self.info,
            'final': self.final,
            'peaks': self.peaks,
            'threads': self.threads,
            'clock': self.clock,
            'samples': {n: [asdict(s) for s in self.samples[n]] for n in self.names},
        }


def run_interleaved(
    specs: dict[str, dict[str, Any]],
    rounds: int,
    units: int | dict[str, int],
    peak_precisions: Sequence[str] = (),
    threads: int = 1,
    log_dir: str | None = None,
    progress: Callable[[str], None] | None = print,
    load_window: float = 0.25,
    warm: int = 1,
) -> Group:
    """Start a worker per spec, then ``rounds`` rounds of one chunk each, interleaved
    (:func:`interleaved_order`); the load is recorded before every chunk and the matmul peak
    of ``peak_precisions`` once per round (in this process, while the workers wait). Each
    chunk follows ``warm`` untimed units in the same worker."""
    names = list(specs)
    counts = units if isinstance(units, dict) else dict.fromkeys(names, units)
    workers: dict[str, Worker] = {}
    samples: dict[str, list[Sample]] = {name: [] for name in names}
    peaks: dict[str, list[float]] = {p: [] for p in peak_precisions}
    try:
        for name in names:
            spec = {'threads': threads, **specs[name]}
            workers[name] = Worker(name, spec, log_dir)
            if progress:
                progress(f'  started {name} (pid {workers[name].pid})')
        pids = [w.pid for w in workers.values()]
        for r, order in enumerate(interleaved_order(names, rounds)):
            for precision in peak_precisions:
                peak = matmul_peaks(threads, [precision])[precision]
                peaks[precision].append(peak)
            for position, name in enumerate(order):
                load = machine_load(exclude=pids, window=load_window)
                result = workers[name].measure(counts[name], warm)
                seconds, n = result.pop('seconds'), result.pop('units')
                samples[name].append(Sample(r, position, seconds, n, result, load))
            if progress:
                progress(
                    f'  round {r + 1}/{rounds}: '
                    + ', '.join(f'{n} {samples[n][-1].seconds:.2f}s' for n in order)
                )
        final = {name: worker.close() for name, worker in workers.items()}
    except BaseException:
        for worker in workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()
        raise
    info = {name: worker.info for name, worker in workers.items()}
    return Group(names, samples, info, final, peaks, threads, 'wall' if on_gpu() else 'cpu')


def load_summary(groups: Iterable[Group]) -> dict[str, Any]:
    """The load seen over all chunks: spread of the 1-minute load and of other busy
    processes."""
    loads = [s.load for g in groups for n in g.names for s in g.samples[n]]
    if not loads:
        return {}
    return {
        'loadavg_1m': asdict(spread(x['loadavg_1m'] for x in loads)),
        'busy_processes': asdict(spread(x['busy_processes'] for x in loads)),
        'chunks': len(loads),
    }


def load_line(summary: dict[str, Any]) -> str:
    """One sentence for the markdown: the load the numbers were measured under."""
    if not summary:
        return ''
    avg, busy = summary['loadavg_1m'], summary['busy_processes']
    return (
        f'Load while measuring ({summary["chunks"]} chunks): 1-minute load average median '
        f'{avg["median"]:.2f} (min {avg["min"]:.2f}, max {avg["max"]:.2f}); other busy '
        f'processes median {busy["median"]:.0f} (max {busy["max"]:.0f}).'
    )


if __name__ == '__main__':
    if sys.argv[1:] == ['--worker']:
        _worker_main()
    else:  # the older one-configuration child (harness_workloads.measure_in_subprocess)
        _child(sys.argv[1])
