"""``-t multiref_ext``: train on pseudo references written by ``parlai generate_pseudo_refs``.

Multi-referenced training, data side (``../shared/papers/multiref_vhred_lgm.txt`` §5, §8.1):
every (context, reference) pair becomes its own training example (the "flattened" references
of the authors' code), in the three data settings of Table 4::

    --multiref-mode gt        1 GT:        the ground-truth response only
    --multiref-mode hyp       N hyp:       the first N hypotheses (--multiref-n-hyps N)
    --multiref-mode gt+hyp    1 GT + N hyp: both

The input file is the JSONL of ``parlai generate_pseudo_refs`` (one record per line; the
format is in docs/teachers.md and :func:`check_record`). Each example's text is the record's
context turns joined by newlines (the last ``--multiref-context-turns``, default all), its
label one reference; ``multiref_source`` is ``gt`` or ``hyp``, ``multiref_index`` the record's
index. Each example is an episode of its own, so ParlAI shuffles all references of all
contexts every epoch (B.2). Agents that split the history on the delimiter (our ``mr_hred`` /
``vhred*``) see exactly the context of the original teacher.

Every record is validated before the first example is handed to ParlAI: a bad one stops with
``file:line: what is wrong, what is expected``, or, with ``--skip-malformed true``, is left out
(all its references) and counted in one warning at the end, as the other on-disk teachers do
(:mod:`parlai_ext.tasks.common`).

Pseudo references exist for the training split only: validate and test on the original teacher
(``parlai train_model -t multiref_ext ... --evaltask dailydialog_ext``). A ``{split}`` in
``--multiref-file`` is replaced by train / valid / test; in the valid and test splits only the
ground truth is used (the paper evaluates against the original single reference, §4.3).
"""

from __future__ import annotations

import json
import os
from typing import Any

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from parlai_ext.tasks.common import (
    MalformedDataError,
    MalformedLog,
    ReleaseDialogTeacher,
    Source,
    add_common_args,
    at,
    read_lines,
)

TASK = 'multiref_ext'
MODES = ('gt', 'hyp', 'gt+hyp')
RECORD_FORMAT = (
    'one JSON object per line with "context" (a non-empty list of strings), "response" '
    '(a non-empty string) and "hypotheses" (a non-empty list of non-empty strings), as '
    '`parlai generate_pseudo_refs` writes'
)


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages (``null``, ``a string``, ...)."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, (int, float)):
        return 'a number'
    if isinstance(value, list):
        return 'a list'
    return 'an object'


def _string_list_problem(record: dict, key: str, what: str, allow_empty_items: bool) -> str | None:
    """Why ``record[key]`` is not a non-empty list of (non-empty) strings, or None."""
    value = record[key]
    if not isinstance(value, list):
        return f'"{key}" is {_json_type(value)}, expected a list of {what} (strings)'
    if not value:
        return f'"{key}" is an empty list, expected at least one {what[:-1]}'
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f'"{key}"[{i}] is {_json_type(item)}, expected a string'
        if not allow_empty_items and not item.strip():
            return f'"{key}"[{i}] is empty, expected the text of a {what[:-1]}'
    return None


def check_record(record: Any, line_index: int) -> str | None:
    """What is wrong with one parsed line (None if it is a valid record).

    Valid: an object with ``context`` (a non-empty list of strings: the turns, the last one
    the example's own text; a turn may be empty, e.g. a silent start), ``response`` (the
    ground truth, a non-empty string) and ``hypotheses`` (a non-empty list of non-empty
    strings); ``index``, when present, is the record's 0-based line position. Other keys
    (``episode``, ``turn``, ``logprobs``) are ignored.
    """
    if not isinstance(record, dict):
        return f'the line is {_json_type(record)}, expected {RECORD_FORMAT}'
    missing = [k for k in ('context', 'response', 'hypotheses') if k not in record]
    if missing:
        return f'missing {", ".join(missing)}; expected {RECORD_FORMAT}'
    if 'index' in record and (
        not isinstance(record['index'], int)
        or isinstance(record['index'], bool)
        or record['index'] != line_index
    ):
        return f'"index" is {record["index"]!r}, expected {line_index} (the line number - 1)'
    problem = _string_list_problem(record, 'context', 'turns', allow_empty_items=True)
    if problem:
        return problem
    response = record['response']
    if not isinstance(response, str):
        return f'"response" is {_json_type(response)}, expected a non-empty string'
    if not response.strip():
        return '"response" is empty, expected the ground-truth text'
    return _string_list_problem(record, 'hypotheses', 'hypotheses', allow_empty_items=False)


def read_pseudo_refs(source: Source, log: MalformedLog) -> list[tuple[int, dict]]:
    """(line number, record) of every valid record of a pseudo-reference JSONL file.

    Each bad line (not UTF-8, not JSON, not a valid record: :func:`check_record`) goes to
    ``log``: an error naming ``file:line`` unless skipping, then left out and counted. A file
    without any record is an error.
    """
    records: list[tuple[int, dict]] = []
    n_lines = 0
    for lineno, line in read_lines(source, log):
        if line is None:  # not UTF-8: reported by read_lines
            n_lines += 1
            log.drop('contexts')
            continue
        if not line.strip():
            continue
        n_lines += 1
        where = at(source, lineno)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            log.report(
                where, f'not JSON ({err.msg} at column {err.colno}); expected {RECORD_FORMAT}'
            )
            log.drop('contexts')
            continue
        problem = check_record(record, lineno - 1)
        if problem:
            log.report(where, problem)
            log.drop('contexts')
            continue
        records.append((lineno, record))
    if n_lines == 0:
        raise MalformedDataError(
            at(source, 1), f'the file is empty, expected {RECORD_FORMAT}', hint=None
        )
    return records


def references(record: dict, mode: str, n_hyps: int) -> tuple[list[tuple[str, str]], str | None]:
    """(source, text) references of one context in a Table 4 data setting, and a problem
    (fewer hypotheses than ``n_hyps``) or None."""
    refs = [('gt', record['response'])] if mode in ('gt', 'gt+hyp') else []
    if mode in ('hyp', 'gt+hyp'):
        hyps = record['hypotheses'] if n_hyps < 0 else record['hypotheses'][:n_hyps]
        if n_hyps >= 0 and len(hyps) < n_hyps:
            problem = f'{len(hyps)} hypotheses, expected at least --multiref-n-hyps {n_hyps}'
            return [], problem
        refs += [('hyp', h) for h in hyps]
    return refs, None


class MultirefTeacher(ReleaseDialogTeacher):
    """One single-turn episode per (context, reference) pair of a pseudo-reference file."""

    task_name = TASK

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = add_common_args(parser, 'Multi-referenced data (parlai-ext)')
        group.add_argument(
            '--multiref-file',
            type=str,
            default=None,
            help='JSONL of `parlai generate_pseudo_refs`; "{split}" becomes train/valid/test',
        )
        group.add_argument(
            '--multiref-mode',
            choices=MODES,
            default='hyp',
            help='gt: ground truth only; hyp: N hypotheses; gt+hyp: both (Table 4)',
        )
        group.add_argument(
            '--multiref-n-hyps',
            type=int,
            default=-1,
            help='hypotheses used per context (the first N; error if fewer); -1: all',
        )
        group.add_argument(
            '--multiref-context-turns',
            type=int,
            default=-1,
            help='context turns kept (the last ones); -1: all',
        )
        return parser

    def option_prefixes(self) -> tuple[str, ...]:
        return ('skip_malformed', 'multiref_')

    def locate(self, opt: Opt) -> list[Source]:
        path = opt.get('multiref_file')
        if not path:
            raise ValueError(
                'multiref_ext needs --multiref-file (from parlai generate_pseudo_refs)'
            )
        if self.split != 'train' and '{split}' not in path:
            raise ValueError(
                f'multiref_ext has pseudo references for training only, not for {self.split}; '
                'evaluate on the original teacher (train_model --evaltask <task>) or put '
                '"{split}" in --multiref-file'
            )
        path = path.replace('{split}', self.split)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'multiref_ext: {path} not found; write it with `parlai generate_pseudo_refs`'
            )
        self.mode = opt['multiref_mode'] if self.split == 'train' else 'gt'
        self.n_hyps = opt['multiref_n_hyps']
        self.context_turns = opt['multiref_context_turns']
        return [Source(path)]

    def load_episodes(self) -> list[list[dict]]:
        source = self.sources[0]
        episodes = []
        for lineno, record in read_pseudo_refs(source, self.malformed):
            refs, problem = references(record, self.mode, self.n_hyps)
            if problem:
                self.malformed.report(at(source, lineno), problem)
                self.malformed.drop('contexts')
                continue
            context = record['context']
            if self.context_turns >= 0:
                context = context[-self.context_turns :] if self.context_turns else []
            text = '\n'.join(context)
            index = record.get('index', lineno - 1)
            for origin, reference in refs:
                message = {
                    'text': text,
                    'labels': [reference],
                    'multiref_source': origin,
                    'multiref_index': index,
                }
                episodes.append([message])
        return episodes


class DefaultTeacher(MultirefTeacher):
    """``-t multiref_ext``."""
