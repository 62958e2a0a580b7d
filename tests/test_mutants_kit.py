"""The mutation runner (``tests/mutants/run.py``) on a tiny fake tree: it applies one mutant at a
time in a temporary copy, restores it, never touches the source tree, and counts killed /
survived / skipped correctly."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

RUN = Path(__file__).resolve().parent / 'mutants' / 'run.py'


def _load_runner():
    spec = importlib.util.spec_from_file_location('mutants_run', RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules['mutants_run'] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


run = _load_runner()

CALC = """def add(a, b):
    # adds
    return a + b


def pair():
    return [1, 1]
"""
TEST = """from parlai_ext.calc import add, pair


def test_add():
    assert add(2, 3) == 5


def test_pair():
    assert pair() == [1, 1]
"""
SPEC = """C = 'parlai_ext/calc.py'
TESTS = ['tests/test_calc.py']
MUTANTS = [
    (C, 'return a + b', 'return a - b'),  # 0: killed by test_add
    (C, '# adds', '# sums'),  # 1: survives (a comment); also fails if #0 was not restored
    (C, 'return a * b', 'return a / b'),  # 2: skipped, not found
    (C, '1', '2'),  # 3: skipped, ambiguous (two matches, no occurrence)
]
"""


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / 'root'
    (root / 'parlai_ext').mkdir(parents=True)
    (root / 'tests').mkdir()
    (root / 'parlai_ext' / '__init__.py').write_text('')
    (root / 'parlai_ext' / 'calc.py').write_text(CALC)
    (root / 'tests' / 'test_calc.py').write_text(TEST)
    spec = tmp_path / 'fake_system.py'
    spec.write_text(SPEC)
    return root, spec


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_apply_replaces_exactly_one_occurrence_or_says_why_not():
    source = 'x = 1\ny = 1\n'
    nth = run.Mutant(0, 'f.py', '1', '7', 1)
    assert run.apply_mutant(source, nth) == ('x = 1\ny = 7\n', '', 2)
    first = run.Mutant(0, 'f.py', '1', '7', 0)
    assert run.apply_mutant(source, first) == ('x = 7\ny = 1\n', '', 1)
    assert run.apply_mutant(source, run.Mutant(0, 'f.py', 'y = 1', 'y = 2'))[0] == 'x = 1\ny = 2\n'
    assert run.apply_mutant(source, run.Mutant(0, 'f.py', '1', '7'))[1].startswith(
        'pattern ambiguous'
    )
    assert run.apply_mutant(source, run.Mutant(0, 'f.py', 'z', '7'))[1] == 'pattern not found'
    beyond = run.apply_mutant(source, run.Mutant(0, 'f.py', '1', '7', 2))
    assert beyond[0] is None and 'occurrence 2' in beyond[1]


def test_runner_counts_killed_survived_skipped_and_restores(fake, tmp_path):
    root, spec_file = fake
    before = _snapshot(root)
    spec = run.load_spec(str(spec_file))
    lines = []
    report = run.run_system(spec, root, spec.mutants, timeout=120, keep=True, echo=lines.append)
    status = {o.index: o.status for o in report.outcomes}
    assert status == {0: 'killed', 1: 'survived', 2: 'skipped', 3: 'skipped'}
    killed = report.outcomes[0]
    assert killed.line == 3 and 'test_add' in killed.detail
    assert report.outcomes[2].detail == 'pattern not found'
    assert 'ambiguous' in report.outcomes[3].detail
    assert report.score == 0.5
    assert 'killed 1, survived 1, skipped 2, score 1/2 = 50.0 %' in run.summary(report)
    assert lines[0].startswith('baseline ok')
    # the source tree is untouched; the kept copy holds the restored file and no leftovers
    assert _snapshot(root) == before
    assert lines[-1].startswith('kept the copies in ')
    base = Path(lines[-1].removeprefix('kept the copies in '))
    try:
        copy = base / 'copy0' / 'parlai_ext'
        assert (copy / 'calc.py').read_text() == CALC
        assert not list(copy.glob('.*.tmp'))
    finally:
        run.shutil.rmtree(base, ignore_errors=True)


def test_failing_baseline_stops_before_any_mutant(fake):
    root, spec_file = fake
    (root / 'tests' / 'test_calc.py').write_text(TEST.replace('== 5', '== 6'))
    spec = run.load_spec(str(spec_file))
    with pytest.raises(RuntimeError, match='unmutated tests fail'):
        run.run_system(spec, root, spec.mutants, timeout=120, echo=lambda _: None)


def test_list_sample_and_bad_specs(fake, tmp_path, capsys):
    root, spec_file = fake
    assert run.main(['--system', str(spec_file), '--root', str(root), '--list']) == 0
    out = capsys.readouterr().out
    assert 'fake_system: 4 mutants, 2 skipped' in out
    assert 'parlai_ext/calc.py:3' in out
    spec = run.load_spec(str(spec_file))
    sample = run.select(spec, None, 2, seed=3)
    assert len(sample) == 2 and sample == run.select(spec, None, 2, seed=3)
    assert [m.index for m in run.select(spec, [3, 1], None, 0)] == [3, 1]
    bad = tmp_path / 'bad.py'
    bad.write_text("TESTS = ['t.py']\nMUTANTS = [\n    ('p.py', '', 'x'),\n]\n")
    with pytest.raises(run.SpecError, match=r'bad.py:\d+: mutant #0'):
        run.load_spec(str(bad))
    assert run.main(['--system', str(bad), '--list']) == 2


def test_every_shipped_spec_loads_with_tests_for_each_file_and_applies():
    """Each shipped spec loads, names existing test files, and every one of its mutants applies
    to the current code (file found, text found once or at its occurrence): a stale mutant would
    otherwise be skipped silently and leave its line unchecked."""
    names = run.system_names()
    assert {'plato2', 'transformer', 'multiref', 'coral', 'ppg', 'p2bot'} <= set(names)
    stale = []
    for name in names:
        spec = run.load_spec(name)
        assert spec.mutants, name
        for mutant in spec.mutants:
            selection = spec.tests_for(mutant.path)
            files = [arg for arg in selection if arg.endswith('.py')]
            assert files and all((run.REPO / f).is_file() for f in files), (name, selection)
        stale += [
            f'{name} #{mutant.index} {mutant.path}: {why}: {mutant.short()}'
            for mutant, why, _ in run.check(spec, run.REPO)
            if why
        ]
    assert not stale, 'mutants that no longer apply to the code:\n' + '\n'.join(stale)
