"""Print the docs/results.md tables of projects/ppg/convai2_dev800.sh from its reports.

.venv/bin/python projects/ppg/summarize.py /tmp/ppg_real
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

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


if __name__ == '__main__':
    main(Path(sys.argv[1] if len(sys.argv) > 1 else '/tmp/ppg_real'))
