"""Print the docs/results.md tables of ``projects/coral/dailydialog.sh`` from its reports.

    .venv/bin/python projects/coral/summarize.py runs/coral

Reward models: validation pair accuracy and AUC with random negatives (``<rm>.valid.json``).
Generators: ``<name>.valid.json`` of the final evaluation (greedy decoding): R3 of the ESIM
reward used in training, the MAUDE-style score of the independent cross-encoder, BLEU-4,
distinct-1/2, average length, perplexity; updates from ``<name>/model.trainstats``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REWARD_MODELS = [('esim', 'ESIM (training reward R3)'), ('xenc', 'cross-encoder (MAUDE-style)')]
GENERATORS = [
    ('ce', 'cross-entropy'),
    ('offp', 'CORAL off-policy (random negatives)'),
    ('offp_gt', 'CORAL off-policy (ground truth only, p+ = 1)'),
    ('mixp', 'CORAL mix-policy (nucleus negatives)'),
]
GEN_COLUMNS = [('r3', 'R3 (ESIM)'), ('maude', 'MAUDE-style (xenc)'), ('ext_bleu-4', 'BLEU-4'),
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


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/coral')
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


if __name__ == '__main__':
    main()
