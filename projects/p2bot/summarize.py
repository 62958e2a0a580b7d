"""Print the docs/results.md tables of ``projects/p2bot/convai2_dev800.sh`` from its outputs.

    .venv/bin/python projects/p2bot/summarize.py runs/p2bot

Transmitter rows (supervised, then the Table 3 self-play variants) from ``<name>.valid.json``;
the persona-perception probe (Table 5) from ``probe.json``; the self-play reward curves from
``<name>.jsonl`` (one line per update), as means over consecutive blocks of updates.

``--plot-dir DIR`` also writes ``DIR/p2bot_rewards.png`` (matplotlib, ``parlai_ext.plots``):
R (Eq. 10) per self-play variant, and RS.1 / RS.2 / RS.3 of P2Bot, against the update, as
moving means over ``--smooth`` updates (default: a tenth of the run).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from parlai_ext import plots

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


def selfplay_records(out: Path, name: str) -> list[dict]:
    """Per-update self-play records (``<name>.jsonl``), else the training reports (``update`` =
    ``train_steps``) of ``<name>.trainstats`` or ``logs/<name>.train.log``."""
    log = out / f'{name}.jsonl'
    if log.exists():
        return [r for r in plots.jsonl_records(log) if 'reward' in r]
    for path in (out / f'{name}.trainstats', out / 'logs' / f'{name}.train.log'):
        if path.exists():
            reports = [r for r in plots.train_reports(path) if 'reward' in r]
            if reports:
                return [{**r, 'update': r['train_steps']} for r in reports]
    return []


def reward_figure(out: Path, smooth: int | None = None):
    """R per variant (top) and the three rewards of the full P2Bot (bottom); None without runs."""
    runs = {name: selfplay_records(out, name) for name, _ in TRANSMITTERS[1:]}
    titles = dict(TRANSMITTERS)
    if not any(runs.values()):
        return None

    def line(records: list[dict], key: str, label: str) -> plots.Series:
        raw = plots.series(records, key, label, x_key='update')
        window = smooth or max(1, len(raw.y) // 10)
        return plots.Series(label, raw.x, plots.smooth(raw.y, window))

    total = plots.Panel(
        'self-play reward R = λ1 RS.1 + λ2 RS.2 + λ3 RS.3 (Eq. 10), per variant',
        'R (moving mean)',
        [line(records, 'reward', titles[name]) for name, records in runs.items() if records],
    )
    full = next((n for n in ('sp', 'sp_rs12', 'sp_rs1') if runs[n]), None)
    parts = plots.Panel(
        f'rewards of {titles[full]}',
        'reward (moving mean)',
        [
            line(runs[full], key, label)
            for key, label in (
                ('rs1', 'RS.1 language model (Eq. 6)'),
                ('rs2', 'RS.2 next-utterance (Eq. 7)'),
                ('rs3', 'RS.3 persona perception (Eq. 8)'),
            )
        ],  # fmt: skip
    )
    return plots.curves_figure([total, parts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', nargs='?', default='runs/p2bot', type=Path)
    parser.add_argument('--plot-dir', type=Path, help='write p2bot_rewards.png here')
    parser.add_argument('--smooth', type=int, help='moving-mean window in updates')
    args = parser.parse_args()
    transmitter_table(args.out)
    probe_table(args.out)
    reward_curves(args.out)
    if args.plot_dir:
        plots.write_plot(
            reward_figure(args.out, args.smooth), args.plot_dir, 'p2bot_rewards.png',
            f'no self-play runs in {args.out}',
        )  # fmt: skip


if __name__ == '__main__':
    main()
