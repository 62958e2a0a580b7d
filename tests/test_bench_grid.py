"""The grid runner and the growth benchmark (bench/grid.py, bench/growth.py): the memory fit
recovers known coefficients, the 24 GiB extrapolation solves its equation, the grid gives
every part its own output stem, and one tiny growth point measures a real step."""

from __future__ import annotations

import os
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)

import grid  # noqa: E402
import growth  # noqa: E402
import growth_families  # noqa: E402


def _points(a: float, b: float, c: float, shapes):
    return [
        {'batch': batch, 'context': context, 'response': 32,
         'step_mb': c + a * batch * (context + 32) + b * batch * (context + 32) ** 2}
        for batch, context in shapes
    ]  # fmt: skip


def test_memory_fit_recovers_linear_quadratic_and_constant_terms():
    shapes = [(16, 64), (16, 128), (16, 256), (16, 512), (8, 128), (32, 128)]
    a, b, c = growth.fit_memory(_points(0.05, 2e-5, 70.0, shapes))
    assert a == pytest.approx(0.05, rel=1e-6)
    assert b == pytest.approx(2e-5, rel=1e-6)
    assert c == pytest.approx(70.0, rel=1e-6)
    # a negative free coefficient is dropped (memory never shrinks with size)
    a, b, c = growth.fit_memory(_points(0.05, 0.0, 0.0, shapes))
    assert (a, b) == (pytest.approx(0.05, rel=1e-6), pytest.approx(0.0, abs=1e-12))


def test_largest_context_and_batch_solve_the_24_gib_budget():
    fit = (0.05, 2e-5, 70.0)
    base, limit = 500.0, 24 * 1024.0
    length = growth.largest(fit, base, limit, batch=16)
    assert base + growth.predict_mb(fit, 16, length) == pytest.approx(limit, rel=1e-9)
    batch = growth.largest(fit, base, limit, length=160)
    assert base + growth.predict_mb(fit, batch, 160) == pytest.approx(limit, rel=1e-9)
    # linear only
    assert growth.largest((0.1, 0.0, 0.0), 0.0, 100.0, batch=10) == pytest.approx(100.0)
    assert growth.largest(fit, limit + 1, limit, batch=16) == 0.0  # the baseline alone is over


def test_grid_parts_each_write_their_own_tables(tmp_path):
    commands = grid.part_commands(str(tmp_path), 'tiny', '/no/data', None)
    assert sorted(commands) == sorted(grid.PARTS)
    for name, command in commands.items():
        assert command[command.index('--out') + 1] == os.path.join(str(tmp_path), name)
    # tiny never reads the real data; the docs grid measures the realistic size at hidden 512
    assert all('/no/data' not in ' '.join(c) for c in commands.values())
    full = grid.part_commands(str(tmp_path), 'full', '/data', '/d.dict')
    realistic = full['realistic']
    assert realistic[realistic.index('--dim') + 1] == '512'
    assert full['hred_dd'][full['hred_dd'].index('--dict-file') + 1] == '/d.dict'
    assert '--dict-file' not in full['hred_small']


def test_growth_point_measures_a_training_step(monkeypatch):
    monkeypatch.setattr(growth_families, 'VOCAB', 60)
    monkeypatch.setattr(
        growth_families, 'DIM', dict(dim=16, n_layers=1, n_heads=2, ffn_dim=32, dropout=0.0)
    )
    result = growth.measure_family('unified', [[2, 8], [4, 8]], 4, 1, 1, 4.0)
    points = result['points']
    assert [(p['batch'], p['context']) for p in points] == [(2, 8), (4, 8)]
    for point in points:
        assert point['cpu_s_per_step'] > 0
        assert point['peak_rss_mb'] >= point['base_mb'] > 0
        # real tokens: rows of at least half the length, at most all of it
        rows = point['batch']
        assert rows * (4 + 2) <= point['tokens_per_step'] <= rows * (8 + 4)


def test_every_plato2_speed_trainer_parses_its_training_options():
    """The full (non --quick) PLATO-2 table trains the stage-2.2 evaluator too: a ranker, which
    takes no --skip-generation (its options once stopped the grid's plato2 part)."""
    import configs
    from parlai.core.params import ParlaiParser

    import parlai_ext.compat  # noqa: F401

    train = configs.train_args('x.dict', 4, 16, 8)
    ranker = configs.without_flag(train, '--skip-generation')
    assert ranker == [a for a in train if a not in ('--skip-generation', 'true')]
    opt = ParlaiParser(True, True).parse_args(
        [*configs.PLATO2_EVALUATOR, *ranker, '-t', 'ext_demo']
    )
    assert opt['model'] == 'plato2_evaluator' and opt['batchsize'] == 4
    with pytest.raises(SystemExit):  # what the grid passed before
        ParlaiParser(True, True).parse_args([*configs.PLATO2_EVALUATOR, *train, '-t', 'ext_demo'])
