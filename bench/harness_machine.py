"""The machine, for the benchmark harness (``bench/harness.py``): its load (load averages and
other busy processes), its description (CPU, GPU, torch, commit) and its measured matmul peak
at each precision."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import torch

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16}


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
