"""Markdown table of the DailyDialog runs of ``projects/multiref/dailydialog.sh``.

    .venv/bin/python projects/multiref/summarize.py runs/multiref_dd

Reads each ``<model>.<data>/`` folder (``train.log`` for the parameter count,
``model.trainstats`` for steps, ``valid.json`` from ``eval_model``) and ``times.tsv`` (wall
seconds). BLEU-2 and the embedding similarities are shown x100 (as in the paper's tables);
D1/D2 are distinct unigram/bigram type counts over the whole validation set.
"""

from __future__ import annotations

import json
import os
import re
import sys

MODELS = [('mr_hred', 'HRED'), ('vhred', 'VHRED'), ('vhred_gmm', 'VHRED-GMM5'),
          ('vhred_lgm', 'VHRED-LGM5')]  # fmt: skip
DATA = [('gt', '1 GT'), ('hyp', '5 hyp'), ('gt_hyp', '1 GT + 5 hyp')]
COLUMNS = ['ppl', 'post_ppl', 'kl', 'elbo_ppl', 'ext_sent_bleu-2', 'ext_emb_extrema',
           'ext_emb_avg', 'ext_emb_greedy', 'ext_dist_types-1', 'ext_dist_types-2',
           'gen_n_toks']  # fmt: skip
HEADER = ('| model | data | params (M) | steps | train s | eval s | ppl | post ppl | KL | '
          'ELBO ppl | BLEU-2 | Ext | Avg | Grd | D1 | D2 | len |')  # fmt: skip


def times(folder: str) -> dict[str, int]:
    out = {}
    path = os.path.join(folder, 'times.tsv')
    if os.path.exists(path):
        for line in open(path):
            name, seconds = line.rstrip('\n').split('\t')
            out[name] = int(seconds)
    return out


def fmt(key: str, value) -> str:
    if value is None:
        return '–'
    if key in ('ext_dist_types-1', 'ext_dist_types-2'):
        return f'{int(value)}'
    if key.startswith('ext_'):
        return f'{100 * value:.2f}'
    return f'{value:.2f}' if key != 'kl' else f'{value:.3f}'


def row(folder: str, model: str, name: str, data: str, label: str, wall: dict) -> str | None:
    run = os.path.join(folder, f'{model}.{data}')
    report_path = os.path.join(run, 'valid.json')
    if not os.path.exists(report_path):
        return None
    report = json.load(open(report_path))['report']
    params = re.search(r'Total parameters: ([\d,]+)', open(os.path.join(run, 'train.log')).read())
    n_params = int(params.group(1).replace(',', '')) / 1e6 if params else None
    stats = json.load(open(os.path.join(run, 'model.trainstats')))
    steps = stats.get('train_steps', stats.get('parleys'))
    cells = [
        name,
        label,
        f'{n_params:.2f}' if n_params else '–',
        str(steps),
        str(wall.get(f'train {model} {data.replace("_", "+")}', '–')),
        str(wall.get(f'eval {model} {data.replace("_", "+")}', '–')),
    ]
    cells += [fmt(k, report.get(k)) for k in COLUMNS]
    return '| ' + ' | '.join(cells) + ' |'


def main(folder: str) -> None:
    wall = times(folder)
    print(HEADER)
    print('|' + '---|' * (HEADER.count('|') - 1))
    for data, label in DATA:
        for model, name in MODELS:
            line = row(folder, model, name, data, label, wall)
            if line:
                print(line)


if __name__ == '__main__':
    main(sys.argv[1] if len(sys.argv) > 1 else 'runs/multiref_dd')
