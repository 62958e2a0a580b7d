"""ParlAI workloads of the benchmark harness (``bench/harness.py``): what a worker times.

``train`` (:class:`TrainWorkload`: tokens/s of ``world.parley()`` on the train datatype, tokens
counted by ParlAI's own ``ctpb``/``ltpb`` metrics, model FLOPs by :func:`estimate_training_flops`),
``generate`` (:class:`GenerateWorkload`: seconds per response) and ``factory`` (any
``module:function`` returning a :class:`Workload`); plus the older in-process API
(:func:`time_training`, :func:`time_generation`, :func:`measure_in_subprocess`) for scripts that
time one configuration alone.
"""

from __future__ import annotations

import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from harness_machine import _synchronize, on_gpu


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


def recast_after_optimizer_steps():
    """Make one autocast context over many training steps cast like a context per step.

    Autocast caches the low-precision copy of every weight (a leaf that requires grad) until
    the outermost autocast context exits. The harness times a chunk of several steps inside
    one context, so without this every step after the first would run on the first step's
    stale bf16 weights and skip the casts (measured: a weight changed in place inside the
    context left the output unchanged). A global optimizer-step post-hook clears the cache
    after every ``step()``: each step then casts the updated weights once, as a training
    loop that enters autocast per step does. Returns the hook's handle.
    """
    from torch.optim.optimizer import register_optimizer_step_post_hook

    return register_optimizer_step_post_hook(lambda *_: torch.clear_autocast_cache())


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
    _child(sys.argv[1])
