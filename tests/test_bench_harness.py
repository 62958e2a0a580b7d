"""The benchmark harness (bench/harness.py): statistics, interleaving, atomic output, workers."""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)

import harness  # noqa: E402


def test_spread_median_quartiles_min_max():
    s = harness.spread([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s.median, s.q1, s.q3, s.min, s.max, s.n) == (3.0, 2.0, 4.0, 1.0, 5.0, 5)
    even = harness.spread([1.0, 2.0, 3.0, 10.0])
    assert even.median == 2.5
    assert even.q1 == pytest.approx(1.75) and even.q3 == pytest.approx(4.75)
    assert even.iqr_relative == pytest.approx(3.0 / 2.5)
    one = harness.spread([7.0])
    assert (one.median, one.q1, one.q3) == (7.0, 7.0, 7.0)
    assert harness.spread([2000.0, 3000.0, 2500.0]).format() == '2,500 (2,250-2,750)'
    with pytest.raises(ValueError):
        harness.spread([])


def test_paired_ratios_are_per_round():
    assert harness.paired_ratios([2.0, 6.0], [1.0, 3.0]) == [2.0, 2.0]
    with pytest.raises(ValueError):
        harness.paired_ratios([1.0], [1.0, 2.0])


def test_interleaved_order_alternates_and_balances_positions():
    order = harness.interleaved_order(['A', 'B', 'C'], 4)
    assert order == [list('ABC'), list('CBA'), list('ABC'), list('CBA')]
    flat = [n for rnd in harness.interleaved_order(['A', 'B'], 4) for n in rnd]
    assert flat == list('ABBAABBA')  # never AAAA BBBB
    # every name sits at the same mean position: a linear load drift hits all alike
    positions = {n: [rnd.index(n) for rnd in order] for n in 'ABC'}
    assert {sum(p) for p in positions.values()} == {4}


def test_write_atomic_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / 'sub' / 'out.json'
    harness.write_atomic(str(path), 'old')
    harness.write_atomic(str(path), 'new')
    assert path.read_text() == 'new'
    assert os.listdir(path.parent) == ['out.json']

    # a failing write keeps the old file and removes its temporary
    with pytest.raises(TypeError):
        harness.write_atomic(str(path), 123)  # type: ignore[arg-type]
    assert path.read_text() == 'new'
    assert os.listdir(path.parent) == ['out.json']


def test_write_results_json_and_markdown(tmp_path):
    stem = str(tmp_path / 'r')
    json_path, md_path = harness.write_results(stem, {'x': 1}, harness.markdown_table(
        ['a', 'b'], [[1, 2]]))  # fmt: skip
    data = json.loads(open(json_path).read())
    assert data['x'] == 1 and 'written' in data and 'command' in data
    assert open(md_path).read() == '| a | b |\n|---|---|\n| 1 | 2 |\n'


def test_machine_load_counts_a_busy_process():
    import subprocess

    spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.2)
        busy = harness.busy_pids(window=0.3)
        without = harness.busy_pids(window=0.3, exclude=[spinner.pid])
        # a one-thread process never uses 1.5 cores (1.01 was within the clock-tick jitter)
        idle = harness.busy_pids(window=0.3, share=1.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert spinner.pid in busy and spinner.pid not in without
    assert spinner.pid not in idle
    load = harness.machine_load(window=0.01)
    assert set(load) >= {'loadavg_1m', 'busy_processes', 'cpu_count'}


class LoggingWorkload:
    """A worker workload that appends its name to a shared log on every timed run."""

    def __init__(self, name: str, log: str, seconds: float) -> None:
        self.name, self.log, self.seconds = name, log, seconds
        self.info = {'params': len(name)}

    def run(self, n: int) -> dict[str, float]:
        start = time.perf_counter()
        time.sleep(self.seconds * n)
        with open(self.log, 'a') as handle:
            handle.write(self.name)
        return {'seconds': time.perf_counter() - start, 'units': n, 'tokens': 10.0 * n}


def test_workers_run_interleaved_and_ratios_pair_rounds(tmp_path, monkeypatch):
    log = str(tmp_path / 'order.txt')
    specs = {
        name: {
            'kind': 'factory',
            'factory': 'test_bench_harness:LoggingWorkload',
            'kw': {'name': name, 'log': log, 'seconds': seconds},
        }
        for name, seconds in (('A', 0.02), ('B', 0.06))
    }
    monkeypatch.setenv('PYTHONPATH', os.path.dirname(__file__))  # the workers import this file
    group = harness.run_interleaved(
        specs, rounds=3, units=2, progress=None, load_window=0.01, warm=0
    )
    assert open(log).read() == 'ABBAAB'
    assert group.info['B']['params'] == 1
    assert [s.round for s in group.samples['A']] == [0, 1, 2]
    assert [s.position for s in group.samples['A']] == [0, 1, 0]
    assert all('busy_processes' in s.load for s in group.samples['B'])
    ratios = harness.paired_ratios(group.per_unit('B'), group.per_unit('A'))
    assert 1.5 < harness.spread(ratios).median < 4.5  # 0.06 vs 0.02 s per unit
    assert harness.spread(group.rate('A')).median == pytest.approx(10 / 0.02, rel=0.5)
    assert group.final['A']['peak_rss_mb'] > 0
    # sleeping is waiting, not computing: the worker's CPU time stays far below its wall time
    assert all(c < 0.5 * w for c, w in zip(group.cpu_per_unit('B'), group.per_unit('B')))


def test_worker_error_is_raised_with_its_message():
    with pytest.raises(RuntimeError, match='unknown workload kind'):
        harness.Worker('bad', {'kind': 'nonsense'})


def test_mfu_divides_by_cpu_time_on_the_cpu_and_by_wall_time_otherwise():
    sample = harness.Sample(0, 0, 4.0, 2, {'flops': 100.0, 'cpu_seconds': 1.0}, {})
    group = harness.Group(['A'], {'A': [sample]}, {}, {}, {'fp32': [50.0]}, threads=1)
    assert group.mfu('A') == [2.0]  # 100 FLOP in 1 CPU second against 50 FLOP/s
    assert group.cpu_per_unit('A') == [0.5] and group.per_unit('A') == [2.0]
    group.threads = 2  # two threads' CPU seconds are one second of two cores
    assert group.mfu('A') == [4.0]
    group.clock = 'wall'
    assert group.mfu('A') == [0.5]


def test_recast_after_optimizer_steps_refreshes_autocast_weights():
    """One autocast context over two optimizer steps: without the hook the second forward
    reuses the first step's bf16 weights (stale); with it, the updated ones."""
    import torch

    def second_output(hook: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        layer = torch.nn.Linear(4, 3)
        optimizer = torch.optim.SGD(layer.parameters(), lr=1.0)
        x = torch.randn(2, 4)
        handle = harness.recast_after_optimizer_steps() if hook else None
        try:
            with torch.autocast('cpu', dtype=torch.bfloat16):
                layer(x).sum().backward()
                optimizer.step()
                after = layer(x).float()
        finally:
            if handle is not None:
                handle.remove()
        with torch.autocast('cpu', dtype=torch.bfloat16):  # a fresh context: fresh casts
            fresh = layer(x).float()
        return after, fresh

    stale, fresh = second_output(hook=False)
    assert not torch.allclose(stale, fresh, atol=0.1)  # lr 1: the weights moved by ~x
    refreshed, fresh = second_output(hook=True)
    assert torch.equal(refreshed, fresh)


class TwoStepWorkload:
    """Two SGD steps of a linear layer per run; reports whether the second forward saw the
    first step's update (it must, under the worker's bf16 autocast too)."""

    def __init__(self) -> None:
        import torch

        torch.manual_seed(0)
        self.layer = torch.nn.Linear(4, 3)
        self.optimizer = torch.optim.SGD(self.layer.parameters(), lr=1.0)
        self.x = torch.randn(2, 4)
        self.info = {'params': 15}

    def run(self, n: int) -> dict[str, float]:
        import torch

        self.layer(self.x).sum().backward()
        self.optimizer.step()
        seen = self.layer(self.x).float()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=False):
            expected = torch.nn.functional.linear(
                self.x.bfloat16(), self.layer.weight.bfloat16(), self.layer.bias.bfloat16()
            ).float()
        return {'seconds': 1.0, 'units': n, 'matches': float(torch.equal(seen, expected))}


def test_bf16_worker_casts_the_updated_weights(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', os.path.dirname(__file__))
    spec = {'kind': 'factory', 'factory': 'test_bench_harness:TwoStepWorkload', 'precision': 'bf16'}
    with harness.Worker('two-step', spec) as worker:
        result = worker.measure(1)
    assert result['matches'] == 1.0


class EnvWorkload:
    """Reports the worker's glibc malloc variables (``harness.KEEP_FREED_MEMORY``'s names)."""

    def __init__(self) -> None:
        self.info = {'params': 0}

    def run(self, n: int) -> dict[str, float]:
        return {'seconds': 1.0, 'units': n,
                **{k: float(os.environ.get(k, -1)) for k in harness.KEEP_FREED_MEMORY}}  # fmt: skip


def test_worker_env_reaches_that_worker_only(monkeypatch):
    monkeypatch.setenv('PYTHONPATH', os.path.dirname(__file__))
    for name in harness.KEEP_FREED_MEMORY:
        monkeypatch.delenv(name, raising=False)
    spec = {'kind': 'factory', 'factory': 'test_bench_harness:EnvWorkload'}
    with harness.Worker('keep', {**spec, 'env': harness.KEEP_FREED_MEMORY}) as worker:
        kept = worker.measure(1)
    assert {k: kept[k] for k in harness.KEEP_FREED_MEMORY} == {
        k: float(v) for k, v in harness.KEEP_FREED_MEMORY.items()
    }
    assert all(name not in os.environ for name in harness.KEEP_FREED_MEMORY)
