"""Markdown table of the DailyDialog runs of ``projects/multiref/dailydialog.sh``.

    .venv/bin/python projects/multiref/summarize.py runs/multiref_dd

Reads each ``<model>.<data>/`` folder (``train.log`` for the parameter count,
``model.trainstats`` for steps, ``valid.json`` from ``eval_model``) and ``times.tsv`` (wall
seconds). BLEU-2 and the embedding similarities are shown x100 (as in the paper's tables);
D1/D2 are distinct unigram/bigram type counts over the whole validation set.

``--plot-dir DIR`` also writes ``DIR/multiref_lgm_weights.png`` (matplotlib,
``parlai_ext.plots``): the mean component weights pi_k(c) of the GMM/LGM priors over the
validation contexts (§8.2), one panel per run, from ``<model>.<data>/component_weights.json``
(``component_weights.py``) or the ``pi_*`` metrics of its ``valid.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from parlai_ext import plots

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


def component_weights(folder: str) -> dict[str, list[float]]:
    """Mean prior weights pi_k of each GMM/LGM run, by row title (e.g. ``VHRED-LGM5, 5 hyp``).

    From ``<model>.<data>/component_weights.json`` (``pi_mean``, written by
    ``component_weights.py``), else from the ``pi_0`` .. ``pi_{K-1}`` of its ``valid.json``;
    then any other folder's ``component_weights.json``, titled by the folder name.
    """
    found = {}
    for data, label in DATA:
        for model, name in MODELS:
            run = Path(folder) / f'{model}.{data}'
            weights = []
            if (run / 'component_weights.json').exists():
                weights = json.loads((run / 'component_weights.json').read_text())['pi_mean']
            elif (run / 'valid.json').exists():
                report = json.loads((run / 'valid.json').read_text())['report']
                while f'pi_{len(weights)}' in report:
                    weights.append(report[f'pi_{len(weights)}'])
            if weights:
                found[f'{name}, {label}'] = [float(w) for w in weights]
    known = {f'{model}.{data}' for data, _ in DATA for model, _ in MODELS}
    for path in sorted(Path(folder).glob('*/component_weights.json')):
        if path.parent.name not in known:  # other runs (e.g. vhred_lgm_authors.hyp): by folder
            found[path.parent.name] = [float(w) for w in json.loads(path.read_text())['pi_mean']]
    return found


def weights_figure(folder: str):
    """One bar panel per GMM/LGM run (dashed: the uniform 1/K); None without such runs."""
    runs = component_weights(folder)
    if not runs:
        return None
    panels = [
        plots.BarPanel(title, 'mean π_k(c)', pi, 'component k', 1 / len(pi))
        for title, pi in runs.items()
    ]
    title = 'VHRED-GMM/LGM: mean prior component weights (validation)'
    return plots.bars_figure(panels, title=title, columns=2 if len(panels) > 1 else 1)


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('folder', nargs='?', default='runs/multiref_dd')
    parser.add_argument('--plot-dir', type=Path, help='write multiref_lgm_weights.png here')
    args = parser.parse_args()
    main(args.folder)
    if args.plot_dir:
        plots.write_plot(
            weights_figure(args.folder), args.plot_dir, 'multiref_lgm_weights.png',
            f'no GMM/LGM evaluation in {args.folder}',
        )  # fmt: skip
