"""Mean component weights of a GMM/LGM student from its evaluation report (§8.2's pi-bar).

    python projects/multiref/component_weights.py RUN/vhred_lgm.hyp/valid.json

reads the ``pi_0`` .. ``pi_{K-1}`` and ``pi_max`` metrics that ``eval_model`` reports for
``vhred_gmm`` / ``vhred_lgm`` (the prior's weights averaged over the evaluated examples) and
writes ``component_weights.json`` beside the report (atomically)::

    {"report": "valid.json", "model": "vhred_lgm", "n_components": 5,
     "latent_prior": "lgm", "lgm_kl": "exact",
     "num_examples": 200, "pi_mean": [0.31, ...], "pi_max": 0.42, "used": 3}

``used``: the components whose mean weight is at least half of uniform (1 / 2K). A report
without ``pi_*`` metrics (HRED, VHRED) writes nothing and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from parlai_ext.io import atomic_write

OUTPUT_NAME = 'component_weights.json'


def _model_opt(report_opt: dict) -> dict:
    """The options the model was trained with (``<model_file>.opt``): a report's own opt
    holds eval_model's defaults for the agent's options, not the model's."""
    path = str(report_opt.get('model_file') or '') + '.opt'
    if os.path.isfile(path):
        with open(path, encoding='utf-8') as handle:
            return json.load(handle)
    return report_opt


def component_weights(report_path: str) -> dict | None:
    """The summary dictionary of one ParlAI report file, or None without ``pi_*`` metrics."""
    try:
        with open(report_path, encoding='utf-8') as handle:
            data = json.load(handle)
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(
            f'{report_path}:1: cannot read a ParlAI report ({error}), expected '
            'the JSON of eval_model --report-filename'
        ) from error
    report = data.get('report') if isinstance(data, dict) else None
    if not isinstance(report, dict):
        raise SystemExit(f'{report_path}:1: no "report" object, expected eval_model\'s JSON')
    weights = []
    while f'pi_{len(weights)}' in report:
        weights.append(float(report[f'pi_{len(weights)}']))
    if not weights:
        return None
    opt = _model_opt(data.get('opt') or {})
    k = len(weights)
    return {
        'report': os.path.basename(report_path),
        'model': opt.get('model'),
        'n_components': k,
        'latent_prior': opt.get('latent_prior'),
        'lgm_kl': opt.get('lgm_kl') if opt.get('latent_prior') == 'lgm' else None,
        'num_examples': report.get('exs'),
        'pi_mean': weights,
        'pi_max': float(report['pi_max']) if 'pi_max' in report else None,
        'used': sum(w >= 0.5 / k for w in weights),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('reports', nargs='+', help='eval_model --report-filename JSON files')
    args = parser.parse_args(argv)
    for path in args.reports:
        summary = component_weights(path)
        if summary is None:
            continue
        out = os.path.join(os.path.dirname(path) or '.', OUTPUT_NAME)
        atomic_write(out, json.dumps(summary, indent=1) + '\n')
        print(out, ' '.join(f'{w:.3f}' for w in summary['pi_mean']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
