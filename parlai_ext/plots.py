"""Plots of the runs, written as PNG by the ``projects/*/summarize.py`` scripts.

matplotlib (the ``plots`` extra; ``make install`` installs it) with the Agg backend: no display.

What the runs write, and the readers here:

- ``train_reports(path)``: ParlAI's training reports, one per ``--log-every-n-*`` log, from a
  ``.trainstats`` file (its ``train_reports`` list, written at each validation and at the end)
  or from a ``train_model`` log while the run is going (each ``time:... total_steps:N ...``
  line, then the report as one JSON line: ParlAI prints JSON when pandas is not installed,
  as here). The x value of a report is ``train_steps`` (updates).
- ``jsonl_records(path)``: one JSON object per line, e.g. P2Bot's ``--selfplay-log-file``
  (``update rs1 rs2 rs3 reward sp_reply_len`` per self-play update).
- ``chosen_latents(path)``: the latent id of each reply in ``eval_model --world-logs`` files of
  PLATO-2 (the candidate marked ``chosen`` in the ``plato2_candidates`` field of each reply).

Figures: :func:`curves_figure` (lines, one panel per :class:`Panel`), :func:`bars_figure` (one
bar per latent value or mixture component, one panel per :class:`BarPanel`), written by
:func:`save_png` (atomically: :func:`parlai_ext.io.atomic_write`).
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parlai_ext.io import atomic_write

# the training log's line before each report: "... | time:12s total_exs:96 total_steps:3 ..."
_STEPS_LINE = re.compile(r'\btime:\S+ total_exs:\d+ total_steps:(\d+)\b')

FIGURE_SIZE = (6.4, 3.6)  # inches, per panel row; 100 dpi: 640 x 360 pixels per row
DPI = 100


class PlotInputError(ValueError):
    """A run file that cannot be read as expected (the message names ``file:line``)."""


@dataclass
class Series:
    """One line: ``y[i]`` at ``x[i]``."""

    label: str
    x: list[float]
    y: list[float]


@dataclass
class Panel:
    """One axes of a curves figure."""

    title: str
    ylabel: str
    series: list[Series]
    xlabel: str = 'updates'


@dataclass
class BarPanel:
    """One axes of a bar figure: ``values[j]`` is the height of bar ``j`` (labelled ``j``)."""

    title: str
    ylabel: str
    values: list[float]
    xlabel: str = 'latent value'
    reference: float | None = None  # a dashed horizontal line, e.g. the uniform share 1/K


# ------------------------------------------------------------------------------------- readers


def jsonl_records(path: str | Path) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file, one per non-empty line.

    A last line cut by a running writer is dropped; a bad line elsewhere is an error.
    """
    path = Path(path)
    lines = path.read_text(encoding='utf-8').splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):  # still being written
                break
            raise PlotInputError(f'{path}:{number}: {err.msg}; expected one JSON object') from err
        if not isinstance(record, dict):
            raise PlotInputError(
                f'{path}:{number}: a JSON {type(record).__name__}; expected an object'
            )
        records.append(record)
    return records


def _log_reports(path: Path) -> list[dict]:
    """The training reports of a ParlAI ``train_model`` log (``train_steps`` added to each)."""
    lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
    reports = []
    for number, line in enumerate(lines, 1):
        match = _STEPS_LINE.search(line)
        if not match:
            continue
        if number >= len(lines):  # the report line is not written yet
            break
        body = lines[number].strip()  # the next line (lines is 0-based)
        try:
            report = json.loads(body)
        except json.JSONDecodeError as err:
            if number + 1 == len(lines):  # cut by the running writer
                break
            raise PlotInputError(
                f'{path}:{number + 1}: not a JSON report ({err.msg}); expected the JSON line ParlAI '
                'prints without pandas (with pandas installed, read the .trainstats instead)'
            ) from err
        report['train_steps'] = int(match.group(1))
        reports.append(report)
    return reports


def train_reports(path: str | Path) -> list[dict]:
    """ParlAI's training reports of one run, oldest first, each with ``train_steps``.

    ``path`` is a ``.trainstats`` file or a ``train_model`` log (detected by content).
    """
    path = Path(path)
    text = path.read_text(encoding='utf-8', errors='replace')
    if text.lstrip().startswith('{'):
        try:
            stats = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlotInputError(
                f'{path}:{err.lineno}: {err.msg}; expected a ParlAI .trainstats JSON file'
            ) from err
        reports = stats.get('train_reports')
        if not isinstance(reports, list):
            raise PlotInputError(f'{path}:1: no train_reports list; expected a ParlAI .trainstats')
        return [r for r in reports if isinstance(r, dict) and 'train_steps' in r]
    return _log_reports(path)


def find_reports(root: str | Path, metric: str) -> dict[str, list[dict]]:
    """The training reports of every run under ``root`` that logged ``metric``, by run name.

    Reads every ``.trainstats`` below ``root`` (not ParlAI's ``.checkpoint.trainstats``); a run
    without one (still training) is read from its ``train_model`` log, ``*.log`` with the same
    name. The name is the path relative to ``root`` without ``.trainstats`` / ``.train.log`` /
    ``.log`` and without a last ``/model``: ``offp/model.trainstats`` -> ``offp``.
    """
    root = Path(root)
    found: dict[str, list[dict]] = {}

    def name_of(path: Path, suffix: str) -> str:
        name = str(path.relative_to(root))[: -len(suffix)]
        return name[: -len('/model')] if name.endswith('/model') else name

    for path in sorted(root.rglob('*.trainstats')):
        if path.name.endswith('.checkpoint.trainstats'):
            continue
        reports = train_reports(path)
        if any(metric in r for r in reports):
            found[name_of(path, '.trainstats')] = reports
    for path in sorted(root.rglob('*.log')):
        suffix = '.train.log' if path.name.endswith('.train.log') else '.log'
        name = name_of(path, suffix)
        if name in found or Path(name).name in {Path(n).name for n in found}:
            continue
        reports = train_reports(path)
        if any(metric in r for r in reports):
            found[name] = reports
    return found


def series(reports: Iterable[dict], metric: str, label: str, x_key: str = 'train_steps') -> Series:
    """``metric`` against ``x_key`` over the reports that have both (finite values only)."""
    xs, ys = [], []
    for report in reports:
        x, y = report.get(x_key), report.get(metric)
        if isinstance(x, int | float) and isinstance(y, int | float) and y == y:  # y == y: no NaN
            xs.append(float(x))
            ys.append(float(y))
    return Series(label, xs, ys)


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving mean: entry i is the mean of ``values[max(0, i - window + 1) : i + 1]``."""
    if window < 1:
        raise ValueError(f'window {window}: expected >= 1')
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _walk(node: Any) -> Iterator[dict]:
    """Every dict inside a JSON value, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def chosen_latents(path: str | Path, field_name: str = 'plato2_candidates') -> list[int]:
    """The latent id of each reply's chosen candidate in a world-logs ``.jsonl`` file.

    Works for ParlAI's conversation format (``{"dialog": [[message, ...], ...]}`` per line)
    and for one message per line: every message with ``field_name`` counts once.
    """
    latents = []
    for record in jsonl_records(path):
        for message in _walk(record):
            candidates = message.get(field_name)
            if not isinstance(candidates, list):
                continue
            chosen = [c for c in candidates if isinstance(c, dict) and c.get('chosen')]
            if chosen and chosen[0].get('latent') is not None:
                latents.append(int(chosen[0]['latent']))
    return latents


def counts(ids: Iterable[int], k: int) -> list[int]:
    """How often each of ``0..k-1`` occurs in ``ids`` (an id outside the range is an error)."""
    out = [0] * k
    for i in ids:
        if not 0 <= i < k:
            raise ValueError(f'latent id {i}: expected 0..{k - 1}')
        out[i] += 1
    return out


# ------------------------------------------------------------------------------------- figures


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def curves_figure(panels: Sequence[Panel], title: str | None = None):
    """One row per panel, one line per series (a series without points is left out)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(
        len(panels), 1, figsize=(FIGURE_SIZE[0], FIGURE_SIZE[1] * len(panels)), dpi=DPI,
        squeeze=False, layout='constrained',
    )  # fmt: skip
    for ax, panel in zip(axes[:, 0], panels):
        for line in panel.series:
            if line.x:
                ax.plot(line.x, line.y, label=line.label, linewidth=1.4)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # updates: whole numbers
        ax.grid(alpha=0.3)
        if any(line.x for line in panel.series):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def bars_figure(panels: Sequence[BarPanel], title: str | None = None, columns: int = 1):
    """One panel per :class:`BarPanel` (``columns`` per row), one bar per value, labelled
    0..n-1; the figure stays 640 pixels wide, 360 high per row."""
    plt = _pyplot()
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(FIGURE_SIZE[0], FIGURE_SIZE[1] * rows), dpi=DPI, squeeze=False,
        layout='constrained',
    )  # fmt: skip
    for ax in axes.flat[len(panels) :]:
        fig.delaxes(ax)
    for ax, panel in zip(axes.flat, panels):
        positions = list(range(len(panel.values)))
        ax.bar(positions, panel.values, color='tab:blue')
        if panel.reference is not None:
            ax.axhline(panel.reference, color='gray', linestyle='--', linewidth=1, label='uniform')
            ax.legend(fontsize=8)
        ax.set_xticks(positions)
        ax.set_title(panel.title, fontsize=10 if columns == 1 else 9)
        ax.set_xlabel(panel.xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(axis='y', alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_png(fig, path: str | Path) -> Path:
    """Write ``fig`` as PNG at ``path`` atomically (:func:`parlai_ext.io.atomic_write`)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format='png', dpi=DPI)
    finally:
        plt.close(fig)
    atomic_write(str(path), buffer.getvalue())
    return path


def write_plot(fig, plot_dir: str | Path, name: str, missing: str) -> None:
    """The summarize scripts' ``--plot-dir``: save ``fig`` as ``plot_dir/name`` and say where,
    or, when there was nothing to draw (``fig`` is None), say ``missing``."""
    if fig is None:
        print(f'\n{missing}: no plot')
    else:
        print(f'\nwrote {save_png(fig, Path(plot_dir) / name)}')
