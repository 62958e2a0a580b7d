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
``precision='bf16'`` runs the workload under ``torch.autocast`` (bfloat16).

On a machine with CUDA, ParlAI puts every agent on the GPU (unless ``--no-cuda`` is in the
agent's arguments); timings then synchronise the device, the matmul peak is measured on it, and
tables are labelled as GPU numbers.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Protocol

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16}


# --- statistics ---------------------------------------------------------------------------------
@dataclass
class Spread:
    """Median and spread of repeated measurements."""

    median: float
    q1: float
    q3: float
    min: float
    max: float
    n: int

    @property
    def iqr_relative(self) -> float:
        """Interquartile range over the median (0 when the median is 0)."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def format(self, fmt: str = ',.0f', suffix: str = '') -> str:
        """``median (q1-q3)``, e.g. ``2,829 (2,700-2,910)``."""
        if self.n < 2:
            return f'{self.median:{fmt}}{suffix}'
        return f'{self.median:{fmt}}{suffix} ({self.q1:{fmt}}-{self.q3:{fmt}})'


def spread(values: Iterable[float]) -> Spread:
    """Median, quartiles (inclusive method: interpolated between the samples), min and max."""
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError('spread() of no values')
    if len(data) == 1:
        q1 = q3 = data[0]
    else:
        q1, _, q3 = statistics.quantiles(data, n=4, method='inclusive')
    return Spread(statistics.median(data), q1, q3, data[0], data[-1], len(data))


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two configurations measured in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError(f'{len(numerator)} vs {len(denominator)} rounds: ratios need pairs')
    return [a / b for a, b in zip(numerator, denominator)]


def interleaved_order(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the chunks: every name once per round, forward then reverse.

    ``[A, B, C]`` over 4 rounds: A B C, C B A, A B C, C B A. Reversal cancels a linear trend
    of the load between any two configurations over each pair of rounds, and no configuration
    runs twice in a row except at a round boundary.
    """
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


# --- the machine --------------------------------------------------------------------------------
def _cpu_ticks() -> dict[int, int]:
    """utime + stime (clock ticks) of every process we can read."""
    ticks = {}
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/stat') as handle:
                fields = handle.read().rsplit(')', 1)[1].split()
        except OSError:
            continue
        ticks[int(entry)] = int(fields[11]) + int(fields[12])
    return ticks


def busy_pids(window: float = 0.25, exclude: Iterable[int] = (), share: float = 0.2) -> set[int]:
    """The processes (other than ``exclude`` and this one) that used more than ``share`` of a
    core during a ``window``-second look. Empty when ``/proc`` is not there (not Linux)."""
    if not os.path.isdir('/proc'):
        return set()
    skip = {os.getpid(), *exclude}
    before = _cpu_ticks()
    time.sleep(window)
    after = _cpu_ticks()
    threshold = share * window * os.sysconf('SC_CLK_TCK')
    return {
        pid
        for pid, ticks in after.items()
        if pid not in skip and pid in before and ticks - before[pid] > threshold
    }


def busy_processes(window: float = 0.25, exclude: Iterable[int] = (), share: float = 0.2) -> int:
    """How many other processes were busy on the CPU (:func:`busy_pids`)."""
    return len(busy_pids(window, exclude, share))


def machine_load(exclude: Iterable[int] = (), window: float = 0.25) -> dict[str, float]:
    """The machine's load now: load averages and the number of other busy processes."""
    one, five, fifteen = os.getloadavg() if hasattr(os, 'getloadavg') else (0.0, 0.0, 0.0)
    return {
        'loadavg_1m': round(one, 2),
        'loadavg_5m': round(five, 2),
        'loadavg_15m': round(fifteen, 2),
        'busy_processes': busy_processes(window, exclude),
        'cpu_count': os.cpu_count() or 0,
    }


def on_gpu() -> bool:
    """Whether ParlAI will place agents on a GPU here (it does whenever CUDA is available)."""
    return torch.cuda.is_available()


def _synchronize() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as handle:
            for line in handle:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_description(threads: int) -> str:
    cpu = (
        f'{cpu_model()}, {os.cpu_count()} cores visible, {threads} torch threads, '
        f'torch {torch.__version__}, Python {platform.python_version()}'
    )
    if on_gpu():
        return f'GPU {torch.cuda.get_device_name(0)} (TF32 off: torch default); {cpu}'
    return cpu


def machine_info(threads: int) -> dict[str, Any]:
    """What the JSON records about the machine."""
    info = {
        'description': machine_description(threads),
        'cpu': cpu_model(),
        'cpu_count': os.cpu_count(),
        'threads': threads,
        'torch': torch.__version__,
        'python': platform.python_version(),
        'gpu': torch.cuda.get_device_name(0) if on_gpu() else None,
    }
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], cwd=BENCH_DIR, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ['git', 'status', '--porcelain', '--untracked-files=no'],
            cwd=BENCH_DIR,
            capture_output=True,
            text=True,
        )
        info['commit'] = commit.stdout.strip() + ('+dirty' if dirty.stdout.strip() else '')
    return info


def matmul_flops_per_second(
    threads: int, size: int | None = None, repeats: int = 5, dtype=torch.float32
) -> float:
    """Measured peak: median FLOP/s of a ``size``×``size`` matmul (2·n³ FLOPs) at ``dtype``.

    On the device the agents run on: 1024² on the CPU (``threads`` threads), 8192² on a GPU.
    On the CPU the time is this process's CPU time divided by ``threads`` (what the product
    takes when it has its cores: other jobs on a shared machine do not lower the peak); on a
    GPU it is wall time after synchronising.
    """
    torch.set_num_threads(threads)
    device = 'cuda' if on_gpu() else 'cpu'
    size = size or (8192 if on_gpu() else 1024)
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    for _ in range(2):
        a @ b
    _synchronize()
    clock = time.perf_counter if on_gpu() else time.process_time
    scale = 1 if on_gpu() else threads
    times = []
    for _ in range(repeats):
        start = clock()
        for _ in range(4):
            a @ b
        _synchronize()
        times.append((clock() - start) / 4 / scale)
    return 2 * size**3 / statistics.median(times)


def matmul_peaks(threads: int, precisions: Iterable[str] = ('fp32', 'bf16')) -> dict[str, float]:
    """Matmul FLOP/s at each precision, the best of a few sizes (small matrices run slower on
    some backends; the peak is the best the machine does)."""
    sizes = (4096, 8192) if on_gpu() else (512, 1024, 2048)
    return {
        name: max(
            matmul_flops_per_second(threads, size, repeats=3, dtype=PRECISIONS[name])
            for size in sizes
        )
        for name in precisions
    }


# --- ParlAI workloads ---------------------------------------------------------------------------
@dataclass
class Measurement:
    """One configuration's timed runs (the in-process API; :class:`Worker` is the interleaved
    one)."""

    name: str
    agent_args: list[str]
    params: int = 0
    tokens_per_step: float = 0.0
    seconds_per_step: list[float] = field(default_factory=list)
    estimated_flops_per_step: float = 0.0
    peak_rss_mb: float | None = None
    peak_gpu_mb: float | None = None

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds_per_step)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.median_seconds

    @property
    def flops_per_second(self) -> float:
        return self.estimated_flops_per_step / self.median_seconds


def _build_world(agent_args: list[str], task_args: list[str], datatype: str):
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser
    from parlai.core.worlds import create_task

    parser = ParlaiParser(True, True)
    opt = parser.parse_args([*agent_args, *task_args, '--datatype', datatype])
    agent = create_agent(opt, requireModelExists=False)
    world = create_task(opt, agent)
    return agent, world


def count_parameters(agent) -> tuple[int, int]:
    """(all parameters, token-embedding parameters) of the agent's model."""
    total = sum(p.numel() for p in agent.model.parameters())
    embedding = 0
    for module in agent.model.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == len(agent.dict):
            embedding = max(embedding, module.weight.numel())
    return total, embedding


def lookup_parameters(agent) -> int:
    """Parameters of the other lookup tables (positions, types, segments): no matmul FLOPs."""
    total, seen = 0, set()
    for module in agent.model.modules():
        if isinstance(module, torch.nn.Embedding) and module.num_embeddings != len(agent.dict):
            if id(module.weight) not in seen:
                seen.add(id(module.weight))
                total += module.weight.numel()
    return total


def estimate_training_flops(agent, context_tokens: float, label_tokens: float) -> float:
    """≈ 6 · (matmul parameters · tokens + output layer · label tokens) per step.

    The usual 6·N·T rule (forward 2·N·T, backward 4·N·T) with the tied output projection
    counted for label positions only and the lookup tables (token, position and type
    embeddings) left out of N: they cost no FLOPs. Attention score FLOPs are left out too
    (small at these lengths), so MFU is a slight underestimate.
    """
    total, embedding = count_parameters(agent)
    dense = total - embedding - lookup_parameters(agent)
    return 6.0 * (dense * (context_tokens + label_tokens) + embedding * label_tokens)


class Workload(Protocol):
    """What a worker times: ``run(n)`` does ``n`` units of work and returns at least
    ``{'seconds': s, 'units': n}`` (plus e.g. ``tokens``, ``flops``); ``info`` is static."""

    info: dict[str, Any]

    def run(self, n: int) -> dict[str, float]: ...


class TrainWorkload:
    """``world.parley()`` on the train datatype; a unit is one training step."""

    def __init__(self, agent_args, task_args, warmup: int = 5) -> None:
        self.agent, self.world = _build_world(agent_args, task_args, 'train')
        for _ in range(warmup):
            self.world.parley()
        total, embedding = count_parameters(self.agent)
        self.info = {'params': total, 'embedding_params': embedding}

    def run(self, n: int) -> dict[str, float]:
        self.world.reset_metrics()
        _synchronize()
        start = time.perf_counter()
        for _ in range(n):
            self.world.parley()
        _synchronize()
        seconds = time.perf_counter() - start
        report = self.world.report()
        context, label = float(report['ctpb']), float(report['ltpb'])
        return {
            'seconds': seconds,
            'units': n,
            'tokens': n * (context + label),
            'flops': n * estimate_training_flops(self.agent, context, label),
        }


class GenerateWorkload:
    """``world.parley()`` on valid with generation; a unit is one response."""

    def __init__(self, agent_args, task_args, warmup: int = 1) -> None:
        self.agent, self.world = _build_world(agent_args, task_args, 'valid')
        for _ in range(warmup):
            self.world.parley()
        self.batch_size = max(1, self.agent.opt.get('batchsize', 1))
        self.info = {'params': count_parameters(self.agent)[0], 'batch_size': self.batch_size}

    def run(self, n: int) -> dict[str, float]:
        """``n`` batches; seconds are per response (``units`` = responses)."""
        _synchronize()
        start = time.perf_counter()
        for _ in range(n):
            self.world.parley()
        _synchronize()
        return {'seconds': time.perf_counter() - start, 'units': n * self.batch_size}


def make_workload(spec: dict[str, Any]) -> Workload:
    """The workload a worker spec names (see :class:`Worker`)."""
    kind = spec['kind']
    if kind == 'train':
        return TrainWorkload(spec['agent_args'], spec['task_args'], **spec.get('kw', {}))
    if kind == 'generate':
        return GenerateWorkload(spec['agent_args'], spec['task_args'], **spec.get('kw', {}))
    if kind == 'factory':
        module, _, function = spec['factory'].partition(':')
        return getattr(importlib.import_module(module), function)(**spec.get('kw', {}))
    raise ValueError(f'unknown workload kind {kind!r}: expected train, generate or factory')


# --- workers: one subprocess per configuration, timed in turn -----------------------------------
class Worker:
    """A configuration in its own process, built once; :meth:`measure` times one chunk.

    ``spec``: ``kind`` (``train`` | ``generate`` | ``factory``), ``agent_args`` and
    ``task_args`` (ParlAI command-line lists) or ``factory`` (``module:function``; modules in
    ``bench/`` import by name) and ``kw`` (keyword arguments of the workload), ``threads``
    (torch intra-op threads), ``precision`` (``fp32`` | ``bf16``: autocast), ``seed``,
    ``source`` (optional: a folder holding another ``parlai_ext`` package, e.g. an export of
    an older commit, imported instead of this checkout's: before/after in one run).
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


# --- output -------------------------------------------------------------------------------------
def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder + ``os.replace``:
    a reader never sees half a file, and a crash leaves the old file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix='.' + os.path.basename(path))
    try:
        with os.fdopen(handle, 'w') as stream:
            stream.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_results(stem: str, data: dict[str, Any], markdown: str) -> tuple[str, str]:
    """``stem.json`` (``data`` plus when and how it ran) and ``stem.md``, both atomic."""
    data = {
        'written': datetime.datetime.now().isoformat(timespec='seconds'),
        'command': [os.path.basename(sys.argv[0]), *sys.argv[1:]],
        **data,
    }

    def encode(value: Any) -> Any:  # Spread, Sample, ... as their fields
        return asdict(value) if is_dataclass(value) else str(value)

    write_atomic(stem + '.json', json.dumps(data, indent=1, default=encode) + '\n')
    write_atomic(stem + '.md', markdown.rstrip() + '\n')
    return stem + '.json', stem + '.md'


def default_out_stem(script: str, quick: bool) -> str:
    """``runs/bench/<script>[-quick]-<timestamp>`` under the repository (``runs/`` is ignored)."""
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    base = os.path.splitext(os.path.basename(script))[0]
    return os.path.join(
        os.path.dirname(BENCH_DIR), 'runs', 'bench', f'{base}{"-quick" if quick else ""}-{stamp}'
    )


# --- the previous in-process API (kept for scripts that time one configuration alone) -----------
def time_training(
    name: str,
    agent_args: list[str],
    task_args: list[str],
    threads: int,
    steps: int = 20,
    warmup: int = 5,
    repeats: int = 3,
) -> Measurement:
    """Median seconds per training step (``world.parley()``) and tokens per step."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    workload = TrainWorkload(agent_args, task_args, warmup)
    runs = [workload.run(steps) for _ in range(repeats)]
    return Measurement(
        name=name,
        agent_args=agent_args,
        params=workload.info['params'],
        tokens_per_step=statistics.median(r['tokens'] / steps for r in runs),
        seconds_per_step=[r['seconds'] / steps for r in runs],
        estimated_flops_per_step=statistics.median(r['flops'] / steps for r in runs),
    )


def time_generation(
    name: str,
    agent_args: list[str],
    task_args: list[str],
    threads: int,
    batches: int = 5,
    repeats: int = 3,
) -> Measurement:
    """Median seconds per response (``world.parley()`` on valid, generation on)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    workload = GenerateWorkload(agent_args, task_args)
    runs = [workload.run(batches) for _ in range(repeats)]
    return Measurement(
        name=name,
        agent_args=agent_args,
        params=workload.info['params'],
        seconds_per_step=[r['seconds'] / r['units'] for r in runs],
    )


def measure_in_subprocess(kind: str, name: str, agent_args, task_args, threads: int, **kw):
    """One configuration alone in a fresh process (``time_training``/``time_generation``)."""
    payload = json.dumps(
        dict(kind=kind, name=name, agent_args=agent_args, task_args=task_args,
             threads=threads, kw=kw)
    )  # fmt: skip
    proc = subprocess.run(
        [sys.executable, __file__, payload], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f'{name} failed:\n{proc.stderr[-4000:]}')
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(**data)


def _child(payload: str) -> None:
    spec = json.loads(payload)
    function = {'train': time_training, 'generate': time_generation}[spec['kind']]
    measurement = function(
        spec['name'], spec['agent_args'], spec['task_args'], spec['threads'], **spec['kw']
    )
    measurement.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if on_gpu():
        measurement.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(asdict(measurement)))


if __name__ == '__main__':
    if sys.argv[1:] == ['--worker']:
        _worker_main()
    else:
        _child(sys.argv[1])
