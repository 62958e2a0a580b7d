"""Generate once, rank three ways: PLATO-2's rankings of the SAME K candidates, from one world log.

PLATO-2 (§2.3) decodes one candidate per latent value and answers with the one its evaluation
model ranks first; the paper compares that with ranking by log-probability and with a random
pick. Decoding K = 20 candidates over SmolLM2 costs about 10 CPU-seconds per context, so
instead of three ``eval_model`` runs this reads one run's world log (``--world-logs F.jsonl
--log-keep-fields all``), whose replies carry every candidate in ``plato2_candidates`` (text,
latent, evaluator score, summed log-probability, token count, penalty), and re-chooses each
reply the way the agent's ``--ranking-score`` would have:

- ``evaluator``: the highest evaluator coherence minus the penalty;
- ``logprob``: the highest length-averaged log-probability (``logprob / n_tokens``) minus the
  penalty;
- ``random``: a uniformly random candidate among the unpenalised ones (random score minus the
  penalty, as the agent's ``random``), seeded.

A log without candidates (e.g. the stage-1 model's, one sampled reply) is read as one ranking,
``reply``. For each ranking it reports distinct-1/2 (corpus level), ParlAI's F1 against the
label, the mean length in words (``parlai_ext.metrics``'s tokens), and latent usage: how many of
the K latent values the chosen replies came from, the entropy of that distribution (bits; log2 K
at uniform use) and the largest share. Example::

    python projects/plato2/candidate_rankings.py stage21=/tmp/gen_stage21.jsonl \\
        stage1=/tmp/gen_stage1.jsonl --n-latent 20 --outfile /tmp/rankings.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from parlai_ext.io import atomic_open
from parlai_ext.metrics import corpus_report

CANDIDATES = 'plato2_candidates'
RANKINGS = ('evaluator', 'logprob', 'random')
METRICS = ('ext_dist-1', 'ext_dist-2', 'ext_len', 'f1')


def read_log(path: str) -> list[tuple[dict, dict]]:
    """(teacher message, reply) pairs of a ParlAI conversations-format world log."""
    pairs = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                episode = json.loads(line)
                turns = episode['dialog']
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(
                    f'{path}:{number}: not a world-log episode ({err}); expected a JSON object '
                    "with 'dialog' (eval_model --world-logs F.jsonl --log-keep-fields all)"
                ) from None
            for turn in turns:
                if len(turn) != 2:
                    raise ValueError(
                        f'{path}:{number}: a turn of {len(turn)} messages; expected '
                        '[teacher message, reply]'
                    )
                pairs.append((turn[0], turn[1]))
    return pairs


def ranking_score(record: dict, ranking: str, rng: random.Random) -> float:
    """The agent's ``--ranking-score`` of one candidate record, penalty subtracted."""
    penalty = record.get('penalty') or 0.0
    if ranking == 'evaluator':
        if record.get('evaluator') is None:
            raise ValueError('no evaluator score in the log: decode with --ranking-score evaluator')
        return record['evaluator'] - penalty
    if ranking == 'logprob':
        return record['logprob'] / max(1, record['n_tokens']) - penalty
    if ranking == 'random':
        return rng.random() - penalty
    raise ValueError(f'unknown ranking {ranking!r}; expected one of {RANKINGS}')


def choose(records: Sequence[dict], ranking: str, rng: random.Random) -> dict:
    """The candidate ``ranking`` puts first (the first of equal scores, as a stable sort)."""
    scores = [ranking_score(record, ranking, rng) for record in records]
    return records[max(range(len(records)), key=lambda i: (scores[i], -i))]


def latent_usage(latents: Sequence[int | None], n_latent: int) -> dict[str, float]:
    """How many of the K latent values the chosen replies use, their entropy (bits), top share."""
    counts = Counter(latent for latent in latents if latent is not None)
    total = sum(counts.values())
    if not total:
        return {}
    shares = [count / total for count in counts.values()]
    return {
        'latents_used': float(len(counts)),
        'latent_entropy_bits': -sum(p * math.log2(p) for p in shares),
        'latent_max_share': max(shares),
    }


def evaluate(
    pairs: Sequence[tuple[dict, dict]], ranking: str, n_latent: int, seed: int = 0
) -> dict[str, Any]:
    """Metrics of the replies ``ranking`` picks (``reply``: the logged reply as it is)."""
    rng = random.Random(seed)
    predictions, references, latents, n_candidates = [], [], [], []
    for teacher, reply in pairs:
        labels = teacher.get('eval_labels') or teacher.get('labels')
        if ranking == 'reply':
            predictions.append(reply.get('text', ''))
        else:
            records = reply.get(CANDIDATES)
            if not records:
                raise ValueError(f'a reply without {CANDIDATES}: {str(reply)[:200]}')
            chosen = choose(records, ranking, rng)
            predictions.append(chosen['text'])
            latents.append(chosen.get('latent'))
            n_candidates.append(len(records))
        references.append(list(labels) if labels else None)
    report: dict[str, Any] = dict(corpus_report(predictions, references, METRICS))
    report['examples'] = len(predictions)
    if n_candidates:
        report['mean_candidates'] = sum(n_candidates) / len(n_candidates)
        report['n_latent'] = n_latent
        report.update(latent_usage(latents, n_latent))
        counts = Counter(str(latent) for latent in latents)  # JSON keys are strings
        report['latent_counts'] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))
    report['samples'] = predictions[:5]
    return report


def markdown(results: dict[str, dict[str, Any]]) -> str:
    """One table row per (log, ranking)."""
    head = '| run | ranking | n | distinct-1 | distinct-2 | F1 | length | latents used | entropy (bits) | top share |'
    lines = [head, '|' + '---|' * 10]
    for name, report in results.items():
        run, ranking = name.split('/', 1)
        used = report.get('latents_used')
        lines.append(
            f'| {run} | {ranking} | {report["examples"]} | {report["ext_dist-1"]:.3f} | '
            f'{report["ext_dist-2"]:.3f} | {report["f1"]:.4f} | {report["ext_len"]:.2f} | '
            + (
                f'{used:.0f} / {report["n_latent"]} | '
                f'{report["latent_entropy_bits"]:.2f} | {report["latent_max_share"]:.2f} |'
                if used is not None
                else '- | - | - |'
            )
        )
    return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('logs', nargs='+', metavar='NAME=FILE.jsonl', help='world logs')
    parser.add_argument('--rankings', default=','.join(RANKINGS))
    parser.add_argument('--n-latent', type=int, default=20)
    parser.add_argument('--seed', type=int, default=0, help='of the random ranking')
    parser.add_argument('--outfile', default=None, help='JSON report (and a .md table beside)')
    args = parser.parse_args(argv)
    if args.n_latent < 1:
        parser.error(f'--n-latent must be >= 1, got {args.n_latent}')
    results = {}
    for item in args.logs:
        if '=' not in item:
            parser.error(f'{item}: expected NAME=FILE.jsonl')
        name, path = item.split('=', 1)
        pairs = read_log(path)
        has_candidates = any(reply.get(CANDIDATES) for _, reply in pairs)
        rankings = args.rankings.split(',') if has_candidates else ['reply']
        for ranking in rankings:
            results[f'{name}/{ranking}'] = evaluate(pairs, ranking, args.n_latent, args.seed)
    table = markdown(results)
    print(table)
    if args.outfile:
        with atomic_open(args.outfile, 'w') as handle:
            json.dump(results, handle, indent=2)
        with atomic_open(args.outfile.rsplit('.', 1)[0] + '.md', 'w') as handle:
            handle.write(table + '\n')
    return results


if __name__ == '__main__':
    main()
