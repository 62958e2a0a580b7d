"""What a generate-then-rank reply was chosen from: PLATO-2's K candidates, for people to read.

PLATO-2 (§2.3, "generate-then-rank") decodes one candidate per latent value z = 0..K-1 and
answers with the one its evaluation model ranks first. The agent puts them into its reply
message under :data:`CANDIDATES_FIELD`, one dict per candidate, best first::

    {'text': str, 'latent': int, 'score': float, 'logprob': float,
     'evaluator': float | None, 'penalty': float, 'chosen': bool}

``score`` is the ranking score (``evaluator`` or the length-averaged log-probability, per
``--ranking``) minus ``penalty`` (the repetition / unfinished penalty); ``logprob`` is the summed
token log-probability of the candidate under its latent; ``chosen`` marks the reply.

:func:`message_candidates` reads that field, and falls back to ParlAI's ``beam_texts`` (pairs
``(text, score)``, best first) or ``text_candidates`` for any other agent, so that
``parlai chat_web`` (``parlai_ext/scripts/chat_web.py``) and ``parlai interactive
--show-candidates`` (:func:`add_show_candidates_option`) show whatever the model offers.
This module imports neither torch nor ParlAI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

CANDIDATES_FIELD = 'plato2_candidates'
KEYS = ('text', 'latent', 'score', 'logprob', 'evaluator', 'penalty', 'chosen')
_NUMBER_KEYS = ('score', 'logprob', 'evaluator', 'penalty')
_MARK = '_parlai_ext_show_candidates'


def _number(value: Any) -> float | None:
    """A finite float, or None (missing, NaN or infinite values cannot travel as JSON)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)  # also a 0-d tensor or numpy scalar
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def candidate_records(
    texts: Sequence[str],
    latents: Sequence[int | None],
    logprobs: Sequence[float | None],
    ranking_scores: Sequence[float | None],
    penalties: Sequence[float],
    evaluator: bool = True,
    n_tokens: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """The :data:`CANDIDATES_FIELD` value of one reply, in the given order (the agent's final
    ranking, best first): the first is marked ``chosen``.

    ``ranking_scores`` are the scores before penalties (the evaluator's when ``evaluator``,
    else e.g. the length-averaged log-probability); ``score = ranking_score - penalty``.
    ``n_tokens`` (optional), each candidate's generated tokens with END, the divisor of the
    log-probability ranking: with it any ranking can be recomputed from a log
    (``projects/plato2/candidate_rankings.py``).
    """
    lengths = {len(texts), len(latents), len(logprobs), len(ranking_scores), len(penalties)}
    if n_tokens is not None:
        lengths.add(len(n_tokens))
    if len(lengths) != 1:
        raise ValueError(
            f'candidate_records: all sequences need one entry per candidate, got {lengths}'
        )
    records = []
    for text, latent, logprob, ranking, penalty in zip(
        texts, latents, logprobs, ranking_scores, penalties, strict=True
    ):
        ranking, penalty = _number(ranking), _number(penalty) or 0.0
        records.append(
            {
                'text': str(text),
                'latent': None if latent is None else int(latent),
                'score': None if ranking is None else ranking - penalty,
                'logprob': _number(logprob),
                'evaluator': ranking if evaluator else None,
                'penalty': penalty,
                'chosen': False,
            }
        )
    if n_tokens is not None:
        for record, count in zip(records, n_tokens, strict=True):
            record['n_tokens'] = int(count)
    if records:
        records[0]['chosen'] = True
    return records


_SEARCH_CLASSES: dict[type, type] = {}


def latent_id_search(search_cls: type) -> type:
    """``search_cls`` (a ParlAI ``TreeSearch``) that also records, in ``latent_ids``, which
    hypothesis each candidate of ``get_rescored_finished`` came from.

    ParlAI drops the hypothesis id of a finished candidate; in PLATO-2's sampling searches
    (``TopKSampling``/``NucleusSampling`` with K hypotheses per context) hypothesis j never
    leaves row j, and row j decodes latent value j, so the id *is* the latent. The ids are
    recovered by ParlAI's own sort (stable, by the length-penalised score) of ``finished``.
    Hypotheses that never finish within ``max_ts`` are not candidates (ParlAI's rule), so a
    reply may have fewer than K.
    """
    if search_cls not in _SEARCH_CLASSES:

        def get_rescored_finished(self, n_best=None):
            ranked = search_cls.get_rescored_finished(self, n_best)
            tails = sorted(
                self.finished,  # super() forced one in if none finished
                key=lambda tail: (
                    float(tail.score) / math.pow((2 + tail.timestep) / 6, self.length_penalty)
                ),
                reverse=True,
            )
            self.latent_ids = [int(tail.hypid) for tail in tails[: len(ranked)]]
            return ranked

        _SEARCH_CLASSES[search_cls] = type(
            'LatentId' + search_cls.__name__,
            (search_cls,),
            {'get_rescored_finished': get_rescored_finished, '__doc__': latent_id_search.__doc__},
        )
    return _SEARCH_CLASSES[search_cls]


def _normalise(record: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {'text': str(record.get('text', ''))}
    latent = record.get('latent')
    out['latent'] = None if latent is None or isinstance(latent, bool) else int(latent)
    for key in _NUMBER_KEYS:
        out[key] = _number(record.get(key))
    out['chosen'] = bool(record.get('chosen', False))
    return out


def message_candidates(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The candidates of a reply message as :data:`KEYS` dicts (JSON-safe), best first.

    Reads :data:`CANDIDATES_FIELD`; else ``beam_texts`` ((text, score) pairs: only ``text``
    and ``score`` known); else ``text_candidates`` (texts only). Without a ``chosen`` mark
    from the agent, the first candidate whose text is the reply's is marked chosen.
    """
    records = message.get(CANDIDATES_FIELD)
    if records:
        found = [_normalise(rec) for rec in records]
    elif message.get('beam_texts'):
        found = [
            _normalise({'text': text, 'score': score}) for text, score in message['beam_texts']
        ]
    elif message.get('text_candidates'):
        found = [_normalise({'text': text}) for text in message['text_candidates']]
    else:
        return []
    if not any(rec['chosen'] for rec in found):
        reply = message.get('text')
        for rec in found:
            if rec['text'] == reply:
                rec['chosen'] = True
                break
    return found


def _cell(value: float | None, digits: int) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def format_candidates(candidates: Sequence[Mapping[str, Any]], max_text: int = 100) -> str:
    """A plain-text table of the candidates (one line each, ``*`` marks the reply)."""
    if not candidates:
        return '[no candidates: the model offered only its reply]'
    header = f'[{len(candidates)} candidates, best first; * = the reply]'
    columns = (
        f'  {"#":>3} {"z":>3} {"score":>8} {"evaluator":>9} {"logprob":>8} {"penalty":>7}  text'
    )
    lines = [header, columns]
    for rank, rec in enumerate(candidates, start=1):
        text = ' '.join(str(rec.get('text', '')).split())
        if len(text) > max_text:
            text = text[: max_text - 3] + '...'
        latent = rec.get('latent')
        lines.append(
            f'{"*" if rec.get("chosen") else " "} {rank:>3} {"-" if latent is None else latent:>3} '
            f'{_cell(rec.get("score"), 3):>8} {_cell(rec.get("evaluator"), 3):>9} '
            f'{_cell(rec.get("logprob"), 2):>8} {_cell(rec.get("penalty"), 1):>7}  {text}'
        )
    return '\n'.join(lines)


def add_show_candidates_option(agent_cls: type) -> None:
    """``--show-candidates``: ParlAI's ``LocalHumanAgent`` prints the candidates of each reply.

    ``parlai interactive`` adds the local human's options to its parser and shows the model's
    replies through the human's ``observe``; this wraps both (once; the option is off by
    default, so nothing else changes). Called by ``parlai_ext.compat`` when
    ``parlai.agents.local_human.local_human`` is imported.
    """
    if getattr(agent_cls, _MARK, False):
        return
    add_args = agent_cls.add_cmdline_args.__func__
    observe = agent_cls.observe

    def add_cmdline_args(cls, parser, partial_opt=None):
        parser = add_args(cls, parser, partial_opt=partial_opt) or parser
        group = parser.add_argument_group('Candidates display (parlai-ext)')
        group.add_argument(
            '--show-candidates',
            type='bool',
            default=False,
            help='after each reply, print the candidates it was chosen from (PLATO-2: K '
            'candidates with latent id, score, evaluator, log-probability, penalty)',
        )
        return parser

    def observe_and_show(self, msg):
        result = observe(self, msg)
        if self.opt.get('show_candidates') and msg is not None and msg.get('text'):
            print(format_candidates(message_candidates(msg)), flush=True)
        return result

    agent_cls.add_cmdline_args = classmethod(add_cmdline_args)
    agent_cls.observe = observe_and_show
    setattr(agent_cls, _MARK, True)
