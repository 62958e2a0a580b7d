"""The one benchmark harness of parlai-ext: ParlAI agents timed side by side, in-process.

Every speed claim in ``docs/results.md`` comes from this module. It measures, in the same
process and thread count, for any ParlAI agent given as command-line style arguments:

- training throughput: tokens/s of ``world.parley()`` on the training datatype (forward,
  backward, optimizer step, batching; tokens counted by ParlAI's own ``ctpb``/``ltpb``
  metrics, so every agent is counted the same way);
- generation latency: seconds per response of ``world.parley()`` on the valid datatype with
  the agent's ``--inference`` settings;
- the machine's matmul FLOP/s (torch, same threads) and each model's estimated training
  FLOP/s, hence model FLOP utilisation (MFU);
- peak resident memory, measured in a fresh subprocess per configuration (and, on a GPU,
  the peak of torch's CUDA allocator).

On a machine with CUDA, ParlAI puts every agent on the GPU (unless ``--no-cuda`` is in the
agent's arguments); timings then synchronise the device, the matmul peak is measured on it,
and every script labels its tables as GPU numbers: they are never mixed with CPU ones.

Each number is the median of ``repeats`` timed runs after a warm-up. Run scripts in
``bench/`` (e.g. ``python bench/bench_generators.py``) on a quiet machine; they print a
markdown table to paste into ``docs/results.md`` with the command and the machine.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class Measurement:
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


def on_gpu() -> bool:
    """Whether ParlAI will place agents on a GPU here (it does whenever CUDA is available)."""
    return torch.cuda.is_available()


def _synchronize() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def machine_description(threads: int) -> str:
    cpu = (
        f'{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, '
        f'{threads} torch threads, torch {torch.__version__}, Python {platform.python_version()}'
    )
    if on_gpu():
        return f'GPU {torch.cuda.get_device_name(0)} (fp32, TF32 off: torch default); {cpu}'
    return cpu


def matmul_flops_per_second(
    threads: int, size: int | None = None, repeats: int = 5, dtype=torch.float32
) -> float:
    """Measured peak: median FLOP/s of a ``size``×``size`` matmul (2·n³ FLOPs).

    On the device the agents run on: 1024² on the CPU (``threads`` threads), 8192² on a GPU.
    """
    torch.set_num_threads(threads)
    device = 'cuda' if on_gpu() else 'cpu'
    size = size or (8192 if on_gpu() else 1024)
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    _synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        _synchronize()
        times.append((time.perf_counter() - start) / 4)
    return 2 * size**3 / statistics.median(times)


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


def estimate_training_flops(agent, context_tokens: float, label_tokens: float) -> float:
    """≈ 6 · (non-embedding parameters · tokens + output layer · label tokens) per step.

    The usual 6·N·T rule (forward 2·N·T, backward 4·N·T) with the tied output projection
    counted for label positions only; attention score FLOPs are left out (small at these
    lengths), so MFU is a slight underestimate.
    """
    total, embedding = count_parameters(agent)
    return 6.0 * ((total - embedding) * (context_tokens + label_tokens) + embedding * label_tokens)


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
    agent, world = _build_world(agent_args, task_args, 'train')
    for _ in range(warmup):
        world.parley()
    world.reset_metrics()
    seconds = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            world.parley()
        _synchronize()
        seconds.append((time.perf_counter() - start) / steps)
    report = world.report()
    context = float(report['ctpb'])
    label = float(report['ltpb'])
    return Measurement(
        name=name,
        agent_args=agent_args,
        params=count_parameters(agent)[0],
        tokens_per_step=context + label,
        seconds_per_step=seconds,
        estimated_flops_per_step=estimate_training_flops(agent, context, label),
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
    agent, world = _build_world(agent_args, task_args, 'valid')
    world.parley()  # warm-up
    batch_size = max(1, agent.opt.get('batchsize', 1))
    seconds = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        for _ in range(batches):
            world.parley()
        _synchronize()
        seconds.append((time.perf_counter() - start) / (batches * batch_size))
    return Measurement(
        name=name,
        agent_args=agent_args,
        params=count_parameters(agent)[0],
        seconds_per_step=seconds,
    )


def measure_in_subprocess(kind: str, name: str, agent_args, task_args, threads: int, **kw):
    """Run one measurement in a fresh process, so peak memory belongs to it alone."""
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
    # ru_maxrss is in KiB on Linux
    measurement.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if on_gpu():
        measurement.peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(asdict(measurement)))


if __name__ == '__main__':
    _child(sys.argv[1])
