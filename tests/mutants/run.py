"""Hand-made mutation check: break the math one textual edit at a time and see whether a test fails.

Each system has a spec file next to this one (``tests/mutants/<system>.py``) with

- ``MUTANTS = [(path, old, new), (path, old, new, occurrence), ...]``: replace the exact text
  ``old`` by ``new`` in ``path`` (relative to the repository root). ``old`` must occur exactly
  once, or ``occurrence`` (0-based) says which of its non-overlapping occurrences to replace;
- ``TESTS``: the pytest arguments (test files, optionally ``-k EXPR``) that pin those files,
  either one list for every mutant or a dict ``{path: [...]}`` (key ``'*'`` for the rest).

The runner copies the tree to a temporary folder (never touching the checkout), runs each needed
test selection once unmutated (it must pass), then for each mutant: applies it to the copy, runs
``pytest -x -q -p no:cacheprovider <selection>`` there with ``PYTHONPATH`` on the copy and
``OMP_NUM_THREADS=1``, and always restores the file. A mutant is *killed* when pytest fails (or
runs past ``--timeout``), *survived* when it passes, *skipped* when its text is no longer found
(the code changed since the mutant was written) or is ambiguous. Score = killed / (killed +
survived).

Usage (from the repository root, with the project's interpreter)::

    .venv/bin/python tests/mutants/run.py --list                 # every system: counts, skipped
    .venv/bin/python tests/mutants/run.py --system coral --list  # one system, mutant by mutant
    .venv/bin/python tests/mutants/run.py --system coral         # run them all
    .venv/bin/python tests/mutants/run.py --system plato2 --only 3,17
    .venv/bin/python tests/mutants/run.py --system ppg --sample 10 --seed 1 --jobs 2
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# what the tests import or read; entries that do not exist in the root are left out
COPY = (
    'parlai_ext',
    'tasks',
    'zoo',
    'tests',
    'projects',
    '_parlai_ext_hook.py',
    'pyproject.toml',
    'setup.py',
    'README.md',
)
# setup.py installs tasks/ and zoo/ as parlai_ext.tasks / parlai_ext.zoo (package_dir): the
# editable install maps them to the checkout, so the copy links them under its own parlai_ext
SUBPACKAGES = {'tasks': 'parlai_ext/tasks', 'zoo': 'parlai_ext/zoo'}
IGNORE = shutil.ignore_patterns('__pycache__', '*.pyc', '.pytest_cache', '.ruff_cache')
PYTEST_FLAGS = ('-x', '-q', '-p', 'no:cacheprovider')


@dataclass(frozen=True)
class Mutant:
    """One textual edit: replace the ``occurrence``-th ``old`` in ``path`` by ``new``."""

    index: int
    path: str
    old: str
    new: str
    occurrence: int | None = None

    def short(self, width: int = 60) -> str:
        def clip(text: str) -> str:
            text = ' '.join(text.split())
            return text if len(text) <= width else text[: width - 3] + '...'

        return f'{clip(self.old)!r} -> {clip(self.new)!r}'


@dataclass
class Spec:
    """A system's mutants and the pytest arguments that should kill them."""

    name: str
    file: Path
    mutants: list[Mutant]
    tests: list[str] | dict[str, list[str]]

    def tests_for(self, path: str) -> tuple[str, ...]:
        if isinstance(self.tests, dict):
            return tuple(self.tests.get(path, self.tests.get('*', ())))
        return tuple(self.tests)


@dataclass
class Outcome:
    index: int
    path: str
    status: str  # killed | survived | skipped
    detail: str = ''
    line: int | None = None
    seconds: float = 0.0
    mutant: str = ''


@dataclass
class Report:
    system: str
    outcomes: list[Outcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    @property
    def score(self) -> float | None:
        tried = self.count('killed') + self.count('survived')
        return self.count('killed') / tried if tried else None


def read(file: Path) -> str:
    with open(file, encoding='utf-8', newline='') as handle:
        return handle.read()


def write(file: Path, text: str) -> None:
    """Replace a file of the temporary copy atomically (exact line endings)."""
    temporary = file.with_name(f'.{file.name}.mutant.tmp')
    with open(temporary, 'w', encoding='utf-8', newline='') as handle:
        handle.write(text)
    os.replace(temporary, file)


class SpecError(ValueError):
    """A spec file that does not follow the format (file:line, what is wrong, what is expected)."""


def locate(source: str, old: str, occurrence: int | None) -> tuple[int | None, str]:
    """Offset of the mutated text in ``source``, or None and why it cannot be applied."""
    count = source.count(old)
    if count == 0:
        return None, 'pattern not found'
    if occurrence is None and count > 1:
        return None, f'pattern ambiguous ({count} matches, no occurrence given)'
    which = occurrence or 0
    if which >= count:
        return None, f'occurrence {which} not found ({count} matches)'
    start = source.index(old)
    for _ in range(which):
        start = source.index(old, start + len(old))
    return start, ''


def apply_mutant(source: str, mutant: Mutant) -> tuple[str | None, str, int | None]:
    """(mutated source, '' , line) or (None, why it was skipped, None)."""
    start, why = locate(source, mutant.old, mutant.occurrence)
    if start is None:
        return None, why, None
    mutated = source[:start] + mutant.new + source[start + len(mutant.old) :]
    return mutated, '', source.count('\n', 0, start) + 1


def _spec_line(file: Path, needle: str) -> int:
    for number, text in enumerate(file.read_text().splitlines(), 1):
        if needle in text:
            return number
    return 1


def load_spec(name_or_path: str) -> Spec:
    """Load ``tests/mutants/<name>.py`` (or a given .py file) and check its format up front."""
    file = Path(name_or_path)
    if file.suffix != '.py':
        file = HERE / f'{name_or_path}.py'
    if not file.is_file():
        known = ', '.join(system_names())
        raise SpecError(f'{file}: no such spec; expected one of: {known}, or a path to a .py file')
    module_spec = importlib.util.spec_from_file_location(f'_mutants_{file.stem}', file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    raw, tests = getattr(module, 'MUTANTS', None), getattr(module, 'TESTS', None)
    if not isinstance(raw, list):
        raise SpecError(f'{file}:1: no MUTANTS list; expected MUTANTS = [(path, old, new), ...]')
    if not isinstance(tests, list | dict) or not tests:
        raise SpecError(
            f'{file}:1: no TESTS; expected a list of pytest arguments or {{path: [...]}}'
        )
    mutants = []
    for index, item in enumerate(raw):
        ok = (
            isinstance(item, tuple)
            and len(item) in (3, 4)
            and all(isinstance(part, str) for part in item[:3])
            and item[1]
            and (len(item) == 3 or (isinstance(item[3], int) and item[3] >= 0))
        )
        if not ok:
            line = (
                _spec_line(file, repr(item[1])[:40])
                if isinstance(item, tuple) and len(item) > 1
                else 1
            )
            raise SpecError(
                f'{file}:{line}: mutant #{index} is {item!r:.80}; expected (path, old, new) or '
                '(path, old, new, occurrence) with non-empty old and occurrence >= 0'
            )
        mutants.append(Mutant(index, *item))
    spec = Spec(file.stem, file, mutants, tests)
    for mutant in mutants:
        if not spec.tests_for(mutant.path):
            raise SpecError(
                f'{file}:1: no TESTS for {mutant.path} (mutant #{mutant.index}); expected a '
                f"TESTS entry for it or a '*' entry"
            )
    return spec


def system_names() -> list[str]:
    return sorted(
        p.stem for p in HERE.glob('*.py') if p.stem != 'run' and not p.stem.startswith('_')
    )


def copy_tree(root: Path, target: Path) -> None:
    """Copy what the tests need from ``root`` into ``target`` (an empty or missing folder)."""
    target.mkdir(parents=True, exist_ok=True)
    for name in COPY:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=IGNORE, symlinks=True)
        elif source.is_file():
            shutil.copy2(source, target / name)
    for name, link in SUBPACKAGES.items():
        if (target / name).is_dir() and (target / link).parent.is_dir():
            if not (target / link).exists():
                os.symlink(os.path.relpath(target / name, (target / link).parent), target / link)


class Runner:
    """Runs pytest selections in copies of the tree; one copy per parallel job."""

    def __init__(self, root: Path, jobs: int, timeout: float, python: str, keep: bool):
        self.root, self.timeout, self.python, self.keep = root, timeout, python, keep
        self.base = Path(tempfile.mkdtemp(prefix='mutants_'))
        self.copies: queue.Queue[Path] = queue.Queue()
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        try:
            for job in range(jobs):
                copy = self.base / f'copy{job}'
                copy_tree(root, copy)
                self.copies.put(copy)
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise

    def env(self, copy: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PYTHONPATH=str(copy),
            OMP_NUM_THREADS='1',
            MKL_NUM_THREADS='1',
            PYTHONDONTWRITEBYTECODE='1',
        )
        return env

    def pytest(self, copy: Path, selection: Sequence[str]) -> tuple[int, str]:
        """(return code, output); 124 when it ran past the timeout."""
        command = [self.python, '-m', 'pytest', *PYTEST_FLAGS, *selection]
        process = subprocess.Popen(
            command,
            cwd=copy,
            env=self.env(copy),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        with self.lock:
            self.running.add(process)
        try:
            output, _ = process.communicate(timeout=self.timeout)
            return process.returncode, output
        except subprocess.TimeoutExpired:
            self._kill(process)
            output, _ = process.communicate()
            return 124, output
        except BaseException:  # interrupted: leave no pytest behind
            self._kill(process)
            raise
        finally:
            with self.lock:
                self.running.discard(process)

    @staticmethod
    def _kill(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        with self.lock:
            for process in list(self.running):
                self._kill(process)

    def close(self) -> None:
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)

    def baseline(self, selection: Sequence[str]) -> tuple[bool, str, float]:
        copy = self.copies.get()
        start = time.time()
        try:
            code, output = self.pytest(copy, selection)
        finally:
            self.copies.put(copy)
        return code == 0, output, time.time() - start

    def mutate(self, spec: Spec, mutant: Mutant) -> Outcome:
        """Apply the mutant in a free copy, run its tests, ALWAYS restore the file."""
        copy = self.copies.get()
        try:
            target = copy / mutant.path
            if not target.is_file():
                return Outcome(
                    mutant.index, mutant.path, 'skipped', 'file not found', mutant=mutant.short()
                )
            original = read(target)
            mutated, why, line = apply_mutant(original, mutant)
            if mutated is None:
                return Outcome(mutant.index, mutant.path, 'skipped', why, mutant=mutant.short())
            start = time.time()
            try:
                write(target, mutated)
                code, output = self.pytest(copy, spec.tests_for(mutant.path))
            finally:
                write(target, original)
            seconds = time.time() - start
            if code == 0:
                return Outcome(
                    mutant.index, mutant.path, 'survived', '', line, seconds, mutant.short()
                )
            detail = 'timeout' if code == 124 else first_failure(output) or f'pytest exit {code}'
            return Outcome(
                mutant.index, mutant.path, 'killed', detail, line, seconds, mutant.short()
            )
        finally:
            self.copies.put(copy)


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(('FAILED', 'ERROR')):
            return line[:160]
    return ''


def select(spec: Spec, only: Sequence[int] | None, sample: int | None, seed: int) -> list[Mutant]:
    chosen = spec.mutants
    if only:
        wrong = [i for i in only if not 0 <= i < len(spec.mutants)]
        if wrong:
            raise SpecError(f'--only {wrong}: {spec.name} has mutants 0..{len(spec.mutants) - 1}')
        chosen = [spec.mutants[i] for i in only]
    if sample is not None and sample < len(chosen):
        chosen = sorted(random.Random(seed).sample(chosen, sample), key=lambda m: m.index)
    return chosen


def check(spec: Spec, root: Path) -> list[tuple[Mutant, str, int | None]]:
    """Each mutant with '' (applicable) or why it would be skipped, against ``root``."""
    cache: dict[str, str | None] = {}
    rows = []
    for mutant in spec.mutants:
        if mutant.path not in cache:
            file = root / mutant.path
            cache[mutant.path] = read(file) if file.is_file() else None
        source = cache[mutant.path]
        if source is None:
            rows.append((mutant, 'file not found', None))
            continue
        _, why, line = apply_mutant(source, mutant)
        rows.append((mutant, why, line))
    return rows


def list_systems(names: Sequence[str], root: Path, verbose: bool) -> None:
    total = skipped_total = 0
    for name in names:
        spec = load_spec(name)
        rows = check(spec, root)
        skipped = [(m, why) for m, why, _ in rows if why]
        total += len(rows)
        skipped_total += len(skipped)
        if verbose:
            for mutant, why, line in rows:
                where = f'{mutant.path}:{line}' if line else mutant.path
                state = f'SKIP ({why})' if why else 'ok'
                occurrence = (
                    '' if mutant.occurrence is None else f' [occurrence {mutant.occurrence}]'
                )
                print(f'#{mutant.index:<4} {state:<10} {where}{occurrence}  {mutant.short()}')
            selections = sorted({spec.tests_for(m.path) for m in spec.mutants})
            for selection in selections:
                print(f'tests: {" ".join(selection)}')
        print(
            f'{spec.name}: {len(rows)} mutants, {len(skipped)} skipped (pattern not found/ambiguous)'
        )
    if len(names) > 1:
        print(f'all: {total} mutants, {skipped_total} skipped')


def run_system(
    spec: Spec,
    root: Path,
    chosen: Sequence[Mutant],
    *,
    jobs: int = 1,
    timeout: float = 900.0,
    python: str = sys.executable,
    keep: bool = False,
    baseline: bool = True,
    echo=print,
) -> Report:
    """Baseline each test selection, then run every chosen mutant; returns the report."""
    report = Report(spec.name)
    previous = signal.getsignal(signal.SIGTERM)
    in_main = threading.current_thread() is threading.main_thread()

    def on_term(signum, frame):
        raise KeyboardInterrupt

    if in_main:  # SIGTERM unwinds like Ctrl-C: files restored, pytest killed, copies removed
        signal.signal(signal.SIGTERM, on_term)
    try:
        runner = Runner(root, max(1, jobs), timeout, python, keep)
    except BaseException:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
        raise
    try:
        applicable = [m for m, why, _ in check(spec, root) if not why]
        wanted = {m.index for m in chosen}
        if baseline:
            selections = sorted({spec.tests_for(m.path) for m in applicable if m.index in wanted})
            for selection in selections:
                ok, output, seconds = runner.baseline(selection)
                echo(f'baseline {"ok" if ok else "FAILS"} {seconds:.0f}s: {" ".join(selection)}')
                if not ok:
                    raise RuntimeError(
                        f'the unmutated tests fail, so no mutant can be judged: '
                        f'{" ".join(selection)}\n{output[-3000:]}'
                    )
        done = 0
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(runner.mutate, spec, mutant) for mutant in chosen]
            try:
                for future in futures:
                    outcome = future.result()
                    done += 1
                    report.outcomes.append(outcome)
                    where = f'{outcome.path}:{outcome.line}' if outcome.line else outcome.path
                    echo(
                        f'[{done}/{len(chosen)}] #{outcome.index} {outcome.status.upper()} '
                        f'{outcome.seconds:.0f}s {where} {outcome.mutant} {outcome.detail}'.rstrip()
                    )
            except KeyboardInterrupt:
                for future in futures:
                    future.cancel()
                runner.stop()
                raise
    finally:
        runner.stop()
        runner.close()
        if keep:
            echo(f'kept the copies in {runner.base}')
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return report


def summary(report: Report) -> str:
    killed, survived, skipped = (report.count(s) for s in ('killed', 'survived', 'skipped'))
    lines = [f'{report.system}: killed {killed}, survived {survived}, skipped {skipped}']
    score = report.score
    lines[0] += (
        f', score {killed}/{killed + survived} = {100 * score:.1f} %' if score is not None else ''
    )
    for outcome in report.outcomes:
        if outcome.status == 'survived':
            lines.append(
                f'  survived #{outcome.index} {outcome.path}:{outcome.line} {outcome.mutant}'
            )
    for outcome in report.outcomes:
        if outcome.status == 'skipped':
            lines.append(
                f'  skipped  #{outcome.index} {outcome.path}: {outcome.detail}: {outcome.mutant}'
            )
    return '\n'.join(lines)


def parse_indices(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'{text!r}: expected comma-separated indices, e.g. 3,17'
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--system', help='comma-separated spec names (see --list) or .py paths')
    parser.add_argument(
        '--list', action='store_true', help='list mutants and skipped counts, run nothing'
    )
    parser.add_argument('--only', type=parse_indices, help='mutant indices, e.g. 3,17')
    parser.add_argument('--sample', type=int, help='run a random subset of N mutants')
    parser.add_argument('--seed', type=int, default=0, help='seed of --sample (default 0)')
    parser.add_argument('--jobs', type=int, default=1, help='parallel copies (default 1)')
    parser.add_argument(
        '--timeout', type=float, default=900.0, help='seconds per pytest run; past it = killed'
    )
    parser.add_argument(
        '--root', type=Path, default=REPO, help='the tree to copy (default: this repository)'
    )
    parser.add_argument('--python', default=sys.executable, help='interpreter that runs pytest')
    parser.add_argument('--no-baseline', action='store_true', help='skip the unmutated run')
    parser.add_argument('--keep', action='store_true', help='keep the temporary copies')
    parser.add_argument('--json', type=Path, help='write the outcomes to this file')
    parser.add_argument(
        '--fail-under', type=float, help='exit 1 when a score (in %%) is below this'
    )
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error(f'--sample {args.sample}: expected a positive number of mutants')
    if args.jobs < 1:
        parser.error(f'--jobs {args.jobs}: expected at least 1')
    if args.timeout <= 0:
        parser.error(f'--timeout {args.timeout}: expected a positive number of seconds')
    root = args.root.resolve()
    if not root.is_dir():
        parser.error(f'--root {root}: not a folder')
    names = args.system.split(',') if args.system else []
    try:
        if args.list:
            list_systems(names or system_names(), root, verbose=bool(names))
            return 0
        if not names:
            parser.error('--system is required to run mutants (or use --list)')
        if args.only and len(names) > 1:
            parser.error('--only refers to one system; give a single --system')
        specs = [load_spec(name) for name in names]
        reports = []
        for spec in specs:
            chosen = select(spec, args.only, args.sample, args.seed)
            print(f'{spec.name}: {len(chosen)} of {len(spec.mutants)} mutants', flush=True)
            report = run_system(
                spec,
                root,
                chosen,
                jobs=args.jobs,
                timeout=args.timeout,
                python=args.python,
                keep=args.keep,
                baseline=not args.no_baseline,
                echo=lambda text: print(text, flush=True),
            )
            reports.append(report)
            print(summary(report), flush=True)
    except SpecError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            'interrupted; the checkout was never touched and the copies are removed',
            file=sys.stderr,
        )
        return 130
    if args.json:
        data = {r.system: [asdict(o) for o in r.outcomes] for r in reports}
        temporary = args.json.with_name(args.json.name + '.tmp')
        temporary.write_text(json.dumps(data, indent=1))
        os.replace(temporary, args.json)
    if args.fail_under is not None:
        low = [r for r in reports if r.score is not None and 100 * r.score < args.fail_under]
        return 1 if low else 0
    return 0


if __name__ == '__main__':
    sys.exit(main())
