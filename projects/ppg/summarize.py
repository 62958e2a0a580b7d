"""Print the docs/results.md tables of projects/ppg/convai2_dev800.sh from its reports.

.venv/bin/python projects/ppg/summarize.py /tmp/ppg_real [--plot-dir docs/img]

``--plot-dir DIR`` also writes ``DIR/ppg_rl_rewards.png`` (matplotlib, ``parlai_ext.plots``):
the RL stage's (§3.3) mean critic reward per update and the share of samples the critic
judges consistent (p > 0.5), from ``rl.trainstats`` (or ``logs/rl.train.log`` while it runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from parlai_ext import plots

DRG_ROWS = [
    ('drg_none', 'E2E w/o partner personas'),
    ('drg_train_only', 'E2E w/ partner personas in training (BM25 top-3)'),
    ('drg_gold_top3', 'E2E w/ partner personas in training and inference (BM25 top-3)'),
    ('drg_gold_all', 'E2E w/ all gold partner personas in training and inference'),
    ('ours_no_rl', 'Ours w/o RL (generated partner personas)'),
    ('ours_rl', 'Ours w/ RL on PPG & DRG'),
]
PPG_ROWS = [('ppg', 'PPG (supervised)'), ('ppg_rl', 'PPG after RL (rl.ppg)')]


def load(out: Path, name: str) -> dict | None:
    path = out / f'{name}.report.json'
    return json.loads(path.read_text())['report'] if path.exists() else None


def cell(report: dict, key: str, scale: float = 1.0, digits: int = 4) -> str:
    value = report.get(key)
    return '-' if value is None else f'{value * scale:.{digits}g}'


def main(out: Path) -> None:
    print('| system | exs | ppl | BLEU-4 (×100) | ROUGE-L (×100) | distinct-1 | distinct-2 |')
    print('|---|---|---|---|---|---|---|')
    for name, label in DRG_ROWS + PPG_ROWS:
        r = load(out, name)
        if r is None:
            print(f'| {label} | not run | | | | | |')
            continue
        print(
            f'| {label} | {r.get("exs")} | {cell(r, "ppl")} | {cell(r, "ext_bleu-4", 100)} | '
            f'{cell(r, "ext_rouge_l", 100)} | {cell(r, "ext_dist-1")} | {cell(r, "ext_dist-2")} |'
        )
    r = load(out, 'critic')
    if r is not None:
        print(
            f'\ncritic: exs {r.get("exs")}, accuracy {cell(r, "accuracy")}, '
            f'class 1 F1 {cell(r, "class_1_f1")}, class 0 F1 {cell(r, "class_0_f1")}'
        )
    r = load(out, 'gold_personas')
    if r is not None:
        print(
            f'gold partner personas: distinct-1 {cell(r, "ext_dist-1")}, '
            f'distinct-2 {cell(r, "ext_dist-2")}'
        )


def rl_reports(out: Path) -> list[dict]:
    """Training reports of the RL run (``-mf OUT/rl``), from its .trainstats or its log."""
    for path in (out / 'rl.trainstats', out / 'logs' / 'rl.train.log'):
        if path.exists():
            reports = [r for r in plots.train_reports(path) if 'reward' in r]
            if reports:
                return reports
    return []


def reward_figure(out: Path):
    """Mean reward (top) and critic-positive share (bottom) per logged update; None without RL."""
    reports = rl_reports(out)
    if not reports:
        return None
    panels = [
        plots.Panel(
            'PPG + DRG RL (§3.3): critic reward of (p̂, r̂)',
            'mean reward',
            [plots.series(reports, 'reward', 'reward')],
        ),
        plots.Panel(
            'samples the critic judges consistent',
            'share with p > 0.5',
            [plots.series(reports, 'critic_pos', 'critic_pos')],
        ),
    ]
    return plots.curves_figure(panels)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', nargs='?', default='/tmp/ppg_real', type=Path)
    parser.add_argument('--plot-dir', type=Path, help='write ppg_rl_rewards.png here')
    args = parser.parse_args()
    main(args.out)
    if args.plot_dir:
        plots.write_plot(
            reward_figure(args.out), args.plot_dir, 'ppg_rl_rewards.png', f'no RL run in {args.out}'
        )
