"""Table 3 of the paper from ``projects/p2bot/convai2_dev800.sh``'s evaluations, with the spread.

    .venv/bin/python projects/p2bot/table3.py runs/p2bot [--boot 2000] [--seed 0]

Reads ``<name>.valid.json`` (the corpus metrics: ppl, distinct-n, ...) and
``<name>.valid.world.jsonl`` (per-example metrics) of the six rows: P2Bot-S (``tx``),
"- Persona" (``tx_nopersona``), "- Next" (``tx_nonext``), + RS.1 (``sp_rs1``), ↪ + RS.2
(``sp_rs12``), ↪ + RS.3 (``sp``). Prints the table, then for F1, BLEU-4 and hits@1 each row's
per-example standard deviation and the paired bootstrap of its difference from P2Bot-S (the
same validation examples in every row: resample examples, 95 % interval of the mean
difference); then each self-play variant's rewards per update (``<name>.jsonl``: means over
the update's sampled replies; a reward whose λ is 0 is not computed and shows 0) and whether
the variants saw the same persona pairs. BLEU-4 is ParlAI's (the authors' metric: NLTK sentence BLEU, smoothing method 1,
ε 1e-12, on normalised words); ``corpus BLEU-2`` (NLTK ``corpus_bleu``, weights (½, ½), on the
same words; not the paper's) is added because BLEU-4 is ~0 on a few dozen short replies (no
example of the zoo model's 32 shares a trigram with its reference).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

ROWS = [
    ('tx', 'P2Bot-S'),
    ('tx_nopersona', '- Persona'),
    ('tx_nonext', '- Next'),
    ('sp_rs1', '+ RS.1'),
    ('sp_rs12', '↪ + RS.2'),
    ('sp', '↪ + RS.3'),
]
PAIRED = [('f1', 'F1'), ('bleu-4', 'BLEU-4'), ('ext_hits@1', 'hits@1 / 20')]


def examples(path: Path) -> list[dict]:
    """(prediction, labels, per-example metrics) of each evaluated example, in order."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        for turn in json.loads(line)['dialog']:
            if len(turn) != 2 or 'metrics' not in turn[1]:
                raise ValueError(f'{path}:{number}: a turn without model metrics, expected '
                                 'the [teacher act, model act] pairs of eval_model --world-logs')  # fmt: skip
            teacher, model = turn
            rows.append({
                'text': model.get('text', ''),
                'labels': teacher.get('eval_labels') or teacher.get('labels') or [],
                **model['metrics'],
            })  # fmt: skip
    return rows


def corpus_bleu2(rows: list[dict]) -> float:
    """Corpus BLEU-2 (no smoothing; NLTK's ``corpus_bleu`` with weights (0.5, 0.5)) on
    ParlAI's normalised words, from the project's metrics module."""
    from parlai.core.metrics import normalize_answer

    from parlai_ext.metrics import bleu_stats, corpus_bleu

    stats = [
        bleu_stats(
            normalize_answer(row['text']).split(),
            [normalize_answer(label).split() for label in row['labels']],
        )
        for row in rows
    ]
    return corpus_bleu(sum(stats[1:], stats[0]), 2) if stats else 0.0


def paired_bootstrap(
    base: list[float], other: list[float], boot: int, rng: random.Random
) -> tuple[float, float, float]:
    """Mean of ``other − base`` and its 95 % percentile interval over ``boot`` resamples."""
    if len(base) != len(other):
        raise ValueError(f'paired bootstrap needs equal lengths, got {len(base)} and {len(other)}')
    diff = [o - b for b, o in zip(base, other)]
    n = len(diff)
    means = sorted(sum(diff[rng.randrange(n)] for _ in range(n)) / n for _ in range(boot))
    return sum(diff) / n, means[int(0.025 * boot)], means[min(boot - 1, int(0.975 * boot))]


def load(out: Path) -> dict[str, tuple[dict, list[dict]]]:
    found = {}
    for name, _ in ROWS:
        report, world = out / f'{name}.valid.json', out / f'{name}.valid.world.jsonl'
        if report.exists() and world.exists():
            found[name] = (json.loads(report.read_text())['report'], examples(world))
    return found


def updates(out: Path, name: str) -> str:
    path = out / f'{name}.trainstats'
    return str(json.loads(path.read_text()).get('train_steps')) if path.exists() else '—'


def reward_table(out: Path) -> None:
    """Per-update rewards of the self-play variants, and whether their persona pairs agree."""
    logs = {}
    for name, _ in ROWS[3:]:
        path = out / f'{name}.jsonl'
        if path.exists():
            logs[name] = [
                json.loads(line) for line in path.read_text().splitlines() if line.strip()
            ]
    if not logs:
        return
    print('\n| variant | update | RS.1 | RS.2 | RS.3 | R (Eq. 10) | reply length (tokens) |')
    print('|---|---|---|---|---|---|---|')
    titles = dict(ROWS)
    for name, records in logs.items():
        for r in records:
            print(f'| {titles[name]} | {r["update"]} | {r["rs1"]:.3f} | {r["rs2"]:.3f} | '
                  f'{r["rs3"]:.3f} | {r["reward"]:.3f} | {r["sp_reply_len"]:.1f} |')  # fmt: skip
    for name, records in logs.items():
        mean = statistics.fmean(r['reward'] for r in records)
        print(f'{titles[name]}: {len(records)} updates, mean R {mean:.3f}')
    pairs = {n: [(tuple(r.get('user_persona', ())), tuple(r.get('agent_persona', ())))
                 for r in records] for n, records in logs.items()}  # fmt: skip
    same = len({tuple(v) for v in pairs.values()}) == 1
    print(f'persona pairs identical across the variants: {same}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', type=Path)
    parser.add_argument('--boot', type=int, default=2000, help='bootstrap resamples')
    parser.add_argument('--seed', type=int, default=0, help='bootstrap seed')
    args = parser.parse_args()
    rows = load(args.out)
    reward_table(args.out)
    if not rows:
        raise SystemExit(f'{args.out}: no <name>.valid.json with its .valid.world.jsonl')
    print('| variant | updates | exs | ppl | F1 | BLEU-4 | corpus BLEU-2 | hits@1 / 20 | MRR | '
          'NUP acc | NUP pair acc | distinct-1 | distinct-2 | length (words) |')  # fmt: skip
    print('|---' * 14 + '|')
    for name, title in ROWS:
        if name not in rows:
            continue
        report, exs = rows[name]
        cells = [report.get(k) for k in ('ppl', 'f1', 'bleu-4')] + [corpus_bleu2(exs)]
        cells += [report.get(k) for k in ('ext_hits@1', 'ext_mrr', 'nup_acc', 'nup_pair_acc',
                                          'ext_dist-1', 'ext_dist-2', 'ext_len')]  # fmt: skip
        text = ' | '.join('—' if c is None else f'{c:.4g}' for c in cells)
        print(f'| {title} (`{name}`) | {updates(args.out, name)} | {len(exs)} | {text} |')
    if 'tx' not in rows:
        return
    base = rows['tx'][1]
    print(
        '\nPer-example spread, and the paired bootstrap of each row minus P2Bot-S '
        f'({args.boot} resamples of the {len(base)} examples, 95 % interval):\n'
    )
    print('| variant | metric | mean | per-example std | difference from P2Bot-S | 95 % interval |')
    print('|---|---|---|---|---|---|')
    rng = random.Random(args.seed)
    for name, title in ROWS:
        if name not in rows:
            continue
        exs = rows[name][1]
        for key, label in PAIRED:
            values = [float(e[key]) for e in exs]
            mean, std = statistics.fmean(values), statistics.pstdev(values)
            if name == 'tx':
                print(f'| {title} | {label} | {mean:.4g} | {std:.4g} | | |')
                continue
            diff, low, high = paired_bootstrap(
                [float(e[key]) for e in base], values, args.boot, rng
            )
            print(f'| {title} | {label} | {mean:.4g} | {std:.4g} | {diff:+.4g} | '
                  f'[{low:+.4g}, {high:+.4g}] |')  # fmt: skip


if __name__ == '__main__':
    main()
