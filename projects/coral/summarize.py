"""Print the docs/results.md tables of ``projects/coral/dailydialog.sh`` from its reports.

    .venv/bin/python projects/coral/summarize.py runs/coral

Reward models: validation pair accuracy and AUC with random negatives (``<rm>.valid.json``).
Generators: ``<name>.valid.json`` of the final evaluation (greedy decoding): R3 of the ESIM
reward used in training, the MAUDE-style score of the independent cross-encoder, BLEU-4,
distinct-1/2, average length, perplexity; updates from ``<name>/model.trainstats``.

``--plot-dir DIR`` also writes ``DIR/coral_rewards.png`` (matplotlib, ``parlai_ext.plots``):
per CORAL variant, the mean reward R3 (of the training reward model: ESIM, or the
cross-encoder ``xenc`` with ``REWARD_RM=xenc``, read from the run's options) of the responses
trained on and that of its negatives (random or sampled from the model), per logged update,
from ``<name>/model.trainstats`` (or ``logs/<name>.train.log`` while it runs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from parlai_ext import plots

REWARD_MODELS = [
    ('esim', 'ESIM (training reward R3)'),
    ('xenc', 'cross-encoder (MAUDE-style; R3 with REWARD_RM=xenc)'),
    ('xind', 'cross-encoder, independent scorer (REWARD_RM=xenc)'),
]
GENERATORS = [
    ('ce', 'cross-entropy'),
    ('offp', 'CORAL off-policy (random negatives)'),
    ('offp_gt', 'CORAL off-policy (ground truth only, p+ = 1)'),
    ('mixp', 'CORAL mix-policy (nucleus negatives)'),
]
GEN_COLUMNS = [('r3', 'R3 (training reward: ESIM; xenc if REWARD_RM=xenc)'),
               ('maude', 'independent scorer (xenc; xind if REWARD_RM=xenc)'), ('ext_bleu-4', 'BLEU-4'),
               ('ext_dist-1', 'dist-1'), ('ext_dist-2', 'dist-2'), ('ext_len', 'avg len'),
               ('ppl', 'ppl'), ('exs', 'exs')]  # fmt: skip


def report(out: Path, name: str) -> dict | None:
    path = out / f'{name}.valid.json'
    return json.loads(path.read_text())['report'] if path.exists() else None


def steps(out: Path, name: str) -> int | None:
    path = out / name / 'model.trainstats'
    return json.loads(path.read_text()).get('train_steps') if path.exists() else None


def cell(value) -> str:
    return '—' if value is None else f'{value:.4g}'


def train_reports(out: Path, name: str) -> list[dict]:
    """Training reports of generator ``name`` with CORAL's reward metrics, else []."""
    for path in (out / name / 'model.trainstats', out / 'logs' / f'{name}.train.log'):
        if path.exists():
            reports = [r for r in plots.train_reports(path) if 'train_reward' in r]
            if reports:
                return reports
    return []


def reward_model(out: Path, names: list[str]) -> str:
    """The folder name of the runs' ``--reward-model-file`` (``esim`` / ``xenc``), or ``?``."""
    for name in names:
        path = out / name / 'model.opt'
        if path.exists():
            model_file = json.loads(path.read_text()).get('reward_model_file')
            if model_file:
                return Path(model_file).parent.name
    return '?'


def reward_figure(out: Path):
    """Reward of all responses trained on (top), of the negatives (bottom); None without runs."""
    runs = {name: train_reports(out, name) for name, _ in GENERATORS}
    runs = {name: reports for name, reports in runs.items() if reports}
    if not runs:
        return None
    titles = dict(GENERATORS)
    label = f'R3 ({reward_model(out, list(runs))})'
    panels = [
        plots.Panel(
            'CORAL (Eq. 3): mean reward R3 of the responses trained on',
            label,
            [plots.series(reports, 'train_reward', titles[n]) for n, reports in runs.items()],
        ),
        plots.Panel(
            'mean reward R3 of the negative responses',
            label,
            [
                # a report without negatives (p+ = 1) logs reward_neg 0: left out
                plots.series(
                    [r for r in reports if r.get('positive', 0) < 1], 'reward_neg', titles[n]
                )
                for n, reports in runs.items()
            ],
        ),
    ]
    return plots.curves_figure(panels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', nargs='?', default='runs/coral', type=Path)
    parser.add_argument('--plot-dir', type=Path, help='write coral_rewards.png here')
    args = parser.parse_args()
    out = args.out
    print('| reward model | updates | pair accuracy | AUC | pos score | neg score | exs |')
    print('|---|---|---|---|---|---|---|')
    for name, title in REWARD_MODELS:
        rep = report(out, name)
        if rep is None:
            continue
        keys = ('pair_acc', 'auc', 'pos_score', 'neg_score', 'exs')
        print(
            f'| {title} | {steps(out, name)} | ' + ' | '.join(cell(rep.get(k)) for k in keys) + ' |'
        )
    print('\n| generator | updates | ' + ' | '.join(t for _, t in GEN_COLUMNS) + ' |')
    print('|---|---|' + '---|' * len(GEN_COLUMNS))
    for name, title in GENERATORS:
        rep = report(out, name)
        if rep is None:
            continue
        cells = ' | '.join(cell(rep.get(k)) for k, _ in GEN_COLUMNS)
        print(f'| {title} | {steps(out, name)} | {cells} |')
    if args.plot_dir:
        plots.write_plot(
            reward_figure(out),
            args.plot_dir,
            'coral_rewards.png',
            f'no CORAL training runs in {out}',
        )


if __name__ == '__main__':
    main()
