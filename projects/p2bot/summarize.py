"""Print the docs/results.md tables of ``projects/p2bot/convai2_dev800.sh`` from its outputs.

    .venv/bin/python projects/p2bot/summarize.py runs/p2bot

Transmitter rows (supervised, then the Table 3 self-play variants) from ``<name>.valid.json``;
the persona-perception probe (Table 5) from ``probe.json``; the self-play reward curves from
``<name>.jsonl`` (one line per update), as means over consecutive blocks of updates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRANSMITTERS = [
    ('tx', 'supervised (Eq. 1 + NUP)'),
    ('sp_rs1', '+ self-play, RS.1'),
    ('sp_rs12', '+ self-play, RS.1 + RS.2'),
    ('sp', '+ self-play, RS.1 + RS.2 + RS.3 (P2Bot)'),
]
COLUMNS = [('ppl', 'ppl'), ('f1', 'F1'), ('bleu-4', 'BLEU-4'), ('ext_hits@1', 'hits@1/20'),
           ('ext_mrr', 'MRR'), ('nup_acc', 'NUP acc'), ('exs', 'exs')]  # fmt: skip


def updates(out: Path, name: str) -> int | None:
    path = out / f'{name}.trainstats'
    if not path.exists():
        return None
    return json.loads(path.read_text()).get('train_steps')


def transmitter_table(out: Path) -> None:
    print('| model | updates | ' + ' | '.join(title for _, title in COLUMNS) + ' |')
    print('|---|---|' + '---|' * len(COLUMNS))
    for name, title in TRANSMITTERS:
        path = out / f'{name}.valid.json'
        if not path.exists():
            continue
        report = json.loads(path.read_text())['report']
        cells = []
        for key, _ in COLUMNS:
            value = report.get(key)
            cells.append('—' if value is None else f'{value:.4g}')
        print(f'| {title} | {updates(out, name)} | ' + ' | '.join(cells) + ' |')


def probe_table(out: Path) -> None:
    path = out / 'probe.json'
    if not path.exists():
        return
    probe = json.loads(path.read_text())
    print('\n| method | hits@1 | MRR | sentence MRR | dialogue sides |')
    print('|---|---|---|---|---|')
    for method, row in probe.items():
        print(
            f'| {method} | {row["hits@1"]:.4f} | {row["mrr"]:.4f} | {row["sent_mrr"]:.4f} | '
            f'{row["exs"]} |'
        )


def reward_curves(out: Path, blocks: int = 5) -> None:
    for name, title in TRANSMITTERS[1:]:
        path = out / f'{name}.jsonl'
        if not path.exists():
            continue
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not lines:
            continue
        print(f'\n{title}: rewards per update, means over blocks of updates\n')
        print('| updates | RS.1 | RS.2 | RS.3 | R (Eq. 10) | reply length |')
        print('|---|---|---|---|---|---|')
        size = max(1, len(lines) // blocks)
        for start in range(0, len(lines), size):
            block = lines[start : start + size]

            def mean(key: str, block: list[dict] = block) -> float:
                return sum(entry[key] for entry in block) / len(block)

            print(
                f'| {block[0]["update"]}-{block[-1]["update"]} | {mean("rs1"):.3f} | '
                f'{mean("rs2"):.3f} | {mean("rs3"):.3f} | {mean("reward"):.3f} | '
                f'{mean("sp_reply_len"):.1f} |'
            )


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else 'runs/p2bot')
    transmitter_table(out)
    probe_table(out)
    reward_curves(out)


if __name__ == '__main__':
    main()
