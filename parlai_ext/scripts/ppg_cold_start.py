"""``parlai ppg_cold_start``: DRG perplexity when only the first N turns are visible (PPG §5.2).

PPG's cold-start analysis (§5.2, Fig. 3) evaluates the response generators on the examples
whose dialogue context holds the first N = 1, 2, 3 turns, when little is known about the
partner. This script runs ``eval_model`` once per N on ``-t ppg_ext`` with ``--ppg-turn N``
(see ``tasks/ppg``) and prints one row per N (examples, perplexity, token accuracy)::

    parlai ppg_cold_start -mf drg -t ppg_ext --personachat-file F --ppg-valid-episodes 100 \\
        -dt valid --partner-personas generated --ppg-model-file ppg --turns 1,2,3

Every model option (``--partner-personas``, ``--ppg-model-file``, ...) is passed through to the
agent, so each system of Fig. 3 is one call. Unofficial re-implementation.
"""

from __future__ import annotations

import copy
import json

from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript, register_script
from parlai.scripts.eval_model import eval_model
from parlai.scripts.eval_model import setup_args as eval_setup_args
from parlai.utils import logging

COLUMNS = ('exs', 'ppl', 'token_acc', 'loss')


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    parser = eval_setup_args(parser)
    parser.description = 'PPG cold start (§5.2): perplexity with only the first N turns visible'
    group = parser.add_argument_group('PPG cold start')
    group.add_argument('--turns', type=str, default='1,2,3', help='comma-separated N values')
    group.add_argument(
        '--cold-start-report', type=str, default='', help='also save the rows here (json)'
    )
    return parser


def _value(metric) -> float | int | None:
    if metric is None:
        return None
    return metric.value() if hasattr(metric, 'value') else metric


def cold_start(opt) -> dict[int, dict[str, float]]:
    """One ``eval_model`` per N; returns ``{N: {column: value}}``."""
    if not str(opt.get('task', '')).startswith('ppg_ext'):
        raise ValueError('ppg_cold_start needs -t ppg_ext (its --ppg-turn option selects turns)')
    rows: dict[int, dict[str, float]] = {}
    for turns in [int(t) for t in str(opt['turns']).split(',') if t.strip()]:
        if turns < 1:
            raise ValueError(f'--turns values must be >= 1, got {turns}')
        run = copy.deepcopy(opt)
        run['ppg_turn'] = turns
        run['report_filename'] = ''
        report = eval_model(run)
        rows[turns] = {c: _value(report.get(c)) for c in COLUMNS}
    lines = ['   N' + ''.join(f'{c:>12}' for c in COLUMNS)]
    for turns, row in rows.items():
        cells = ''.join(f'{"-":>12}' if row[c] is None else f'{row[c]:>12.4g}' for c in COLUMNS)
        lines.append(f'{turns:>4}{cells}')
    logging.info('PPG cold start (first N turns visible):\n' + '\n'.join(lines))
    print('\n'.join(lines))
    if opt.get('cold_start_report'):
        with open(opt['cold_start_report'], 'w', encoding='utf-8') as f:
            json.dump({'model_file': opt.get('model_file'), 'rows': rows}, f, indent=2)
    return rows


@register_script('ppg_cold_start')
class PpgColdStart(ParlaiScript):
    """DRG perplexity per number of visible turns (PPG §5.2, Fig. 3)."""

    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> dict[int, dict[str, float]]:
        return cold_start(self.opt)
