"""Tables and the latent-usage plot of ``projects/plato2/dailydialog_small.sh`` runs.

    .venv/bin/python projects/plato2/summarize.py OUT [--plot-dir docs/img] [--measure 200 0]

Prints one row per report the recipe wrote in OUT (``ppl_*.json``, ``gen_*.json``,
``select_*.json``). ``--plot-dir DIR`` writes ``DIR/plato2_latents.png``: how often each of the
K latent values is

- the posterior's argmax, p(z | c, r) (Eq. 3), over validation examples (teacher-forced:
  ``z_used``'s per-value counts), from ``OUT/latent_usage.json``, and
- the latent of the reply chosen among the K candidates by the evaluator (§2.3), over
  validation contexts: the ``plato2_candidates`` field of ``eval_model --world-logs`` files
  (``--world-logs``; default the recipe's ``OUT/gen_stage21.jsonl`` of its ``generate_once``
  step), else from ``OUT/latent_usage.json``.

``--measure N_POSTERIOR N_REPLIES`` first writes ``OUT/latent_usage.json``: it evaluates
``OUT/stage21`` (``--model-file``) on the first N_POSTERIOR validation examples without
generation, then (N_REPLIES > 0) generates K candidates for the first N_REPLIES and reranks
them with ``OUT/stage22`` (``--evaluator-model-file``), as the recipe's ``generate`` step
(top-k 10). The posterior pass is cheap (no decoding); each reranked reply costs K decodings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from parlai_ext import plots
from parlai_ext.io import atomic_write

USAGE_FILE = 'latent_usage.json'
COLUMNS = [('exs', 'exs'), ('ppl', 'ppl'), ('uniform_z_ppl', 'ppl z uniform'),
           ('ext_dist-1', 'dist-1'), ('ext_dist-2', 'dist-2'), ('ext_len', 'avg len'),
           ('hits@1', 'hits@1'), ('ext_map', 'MAP'), ('ext_mrr', 'MRR'), ('ext_p@1', 'P@1'),
           ('z_used', 'z used')]  # fmt: skip


def report_table(out: Path) -> None:
    print('| report | ' + ' | '.join(title for _, title in COLUMNS) + ' |')
    print('|---|' + '---|' * len(COLUMNS))
    for pattern in ('ppl_*.json', 'gen_*.json', 'select_*.json'):
        for path in sorted(out.glob(pattern)):
            report = json.loads(path.read_text()).get('report', {})
            cells = ['—' if report.get(key) is None else f'{report[key]:.4g}' for key, _ in COLUMNS]
            print(f'| {path.stem} | ' + ' | '.join(cells) + ' |')


def _task_options(model_file: str) -> dict:
    """The task of the model's training run and its data-folder options (``*_data_dir``)."""
    with open(model_file + '.opt', encoding='utf-8') as handle:
        opt = json.load(handle)
    options = {'task': opt['task']}
    options.update({k: v for k, v in opt.items() if k.endswith('_data_dir') and v})
    return options


def measure(
    model_file: str,
    n_posterior: int,
    n_replies: int,
    evaluator_file: str | None = None,
    task_options: dict | None = None,
    scratch: str | None = None,
) -> dict:
    """Latent counts of a PLATO-2 generator on validation (see the module docstring).

    ``{'k', 'posterior', 'posterior_examples', 'chosen', 'chosen_replies', 'model_file'}``;
    ``chosen`` is None when ``n_replies`` is 0.
    """
    from parlai.scripts.eval_model import EvalModel

    task = task_options or _task_options(model_file)
    common = dict(model_file=model_file, datatype='valid', **task)
    report = EvalModel.main(
        **common, num_examples=n_posterior, batchsize=min(8, n_posterior), skip_generation=True
    )
    posterior = list(report['z_used'].counts)
    usage = {
        'model_file': model_file,
        'k': len(posterior),
        'posterior': posterior,
        'posterior_examples': sum(posterior),
        'chosen': None,
        'chosen_replies': 0,
    }
    if n_replies:
        rerank = dict(inference='topk', topk=10, skip_generation=False)
        if evaluator_file:
            rerank.update(evaluator_model_file=evaluator_file, ranking_score='evaluator')
        with tempfile.TemporaryDirectory(dir=scratch) as folder:
            logs = os.path.join(folder, 'world_logs.jsonl')
            EvalModel.main(
                **common, **rerank, num_examples=n_replies, batchsize=min(8, n_replies),
                world_logs=logs,
            )  # fmt: skip
            chosen = plots.chosen_latents(logs)
        usage['chosen'] = plots.counts(chosen, usage['k'])
        usage['chosen_replies'] = len(chosen)
    return usage


def latent_figure(usage: dict):
    """Share of each latent value: posterior argmax (top, if any), reranked reply (bottom, if
    any). ``usage`` as :func:`measure` returns it (``posterior`` or ``chosen`` may be None)."""
    k = usage['k']

    def shares(values: list[int]) -> list[float]:
        total = sum(values)
        return [v / total if total else 0.0 for v in values]

    panels = []
    if usage.get('posterior'):
        panels.append(
            plots.BarPanel(
                f'posterior argmax p(z | c, r), {usage["posterior_examples"]} validation examples',
                'share of examples',
                shares(usage['posterior']),
                reference=1 / k,
            )
        )
    if usage.get('chosen'):
        panels.append(
            plots.BarPanel(
                f"latent of the evaluator's choice among K = {k} candidates, "
                f'{usage["chosen_replies"]} contexts',
                'share of replies',
                shares(usage['chosen']),
                reference=1 / k,
            )
        )
    return plots.bars_figure(panels, title=f'PLATO-2: use of the K = {k} latent values')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', type=Path)
    parser.add_argument('--plot-dir', type=Path, help='write plato2_latents.png here')
    parser.add_argument('--measure', type=int, nargs=2, metavar=('N_POSTERIOR', 'N_REPLIES'))
    parser.add_argument('--model-file', help='default OUT/stage21')
    parser.add_argument('--evaluator-model-file', help='default OUT/stage22 if it exists')
    parser.add_argument('--world-logs', type=Path, nargs='+', help='default OUT/gen_stage21.jsonl')
    args = parser.parse_args()
    if args.measure and (args.measure[0] < 1 or args.measure[1] < 0):
        parser.error('--measure N_POSTERIOR N_REPLIES: expected N_POSTERIOR >= 1, N_REPLIES >= 0')
    report_table(args.out)
    model_file = args.model_file or str(args.out / 'stage21')
    usage_path = args.out / USAGE_FILE
    if args.measure:
        evaluator = args.evaluator_model_file
        if evaluator is None and (args.out / 'stage22').exists():
            evaluator = str(args.out / 'stage22')
        usage = measure(model_file, *args.measure, evaluator_file=evaluator)
        atomic_write(str(usage_path), json.dumps(usage, indent=1) + '\n')
        print(f'\nwrote {usage_path}')
    if not args.plot_dir:
        return
    usage = json.loads(usage_path.read_text()) if usage_path.exists() else None
    if usage is None:
        with open(model_file + '.opt', encoding='utf-8') as handle:
            k = json.load(handle)['n_latent']
        usage = {'k': k, 'posterior': None, 'chosen': None, 'model_file': model_file}
    logs = args.world_logs or [p for p in [args.out / 'gen_stage21.jsonl'] if p.exists()]
    if logs:
        chosen = [z for path in logs for z in plots.chosen_latents(path)]
        usage.update(chosen=plots.counts(chosen, usage['k']), chosen_replies=len(chosen))
    if not usage.get('posterior') and not usage.get('chosen'):
        print(f'\nno {usage_path} (--measure) and no world logs: no plot')
        return
    path = plots.save_png(latent_figure(usage), args.plot_dir / 'plato2_latents.png')
    print(f'\nwrote {path}')


if __name__ == '__main__':
    main()
