"""``-t multiref_ext``: train on pseudo references written by ``parlai generate_pseudo_refs``.

Multi-referenced training, data side (``../shared/papers/multiref_vhred_lgm.txt`` §5, §8.1):
every (context, reference) pair becomes its own training example (the "flattened" references
of the authors' code), in the three data settings of Table 4::

    --multiref-mode gt        1 GT:        the ground-truth response only
    --multiref-mode hyp       N hyp:       the first N hypotheses (--multiref-n-hyps N)
    --multiref-mode gt+hyp    1 GT + N hyp: both

The input file is the JSONL of ``parlai generate_pseudo_refs`` (one line per context; see that
script). Each example's text is the line's context turns joined by newlines (the last
``--multiref-context-turns``, default all), its label one reference; ``multiref_source`` is
``gt`` or ``hyp``, ``multiref_index`` the line. Each example is an episode of its own, so ParlAI
shuffles all references of all contexts every epoch (B.2). Agents that split the history on
the delimiter (our ``mr_hred`` / ``vhred*``) see exactly the context of the original teacher.

Pseudo references exist for the training split only: validate and test on the original teacher
(``parlai train_model -t multiref_ext ... --evaltask dailydialog_ext``). A ``{split}`` in
``--multiref-file`` is replaced by train / valid / test; in the valid and test splits only the
ground truth is used (the paper evaluates against the original single reference, §4.3).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.teachers import DialogTeacher

MODES = ('gt', 'hyp', 'gt+hyp')


def read_pseudo_refs(path: str) -> Iterator[dict]:
    """Records of a pseudo-reference JSONL file, checked (each needs context, response and
    hypotheses; indices run 0, 1, 2, ...)."""
    with open(path, encoding='utf-8') as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f'{path}:{number}: not JSON ({err})') from err
            missing = [k for k in ('context', 'response', 'hypotheses') if k not in record]
            if missing:
                raise ValueError(f'{path}:{number}: missing {", ".join(missing)}')
            if record.get('index', number - 1) != number - 1:
                raise ValueError(f'{path}:{number}: index {record["index"]}, expected {number - 1}')
            yield record


def references(record: dict, mode: str, n_hyps: int, where: str) -> list[tuple[str, str]]:
    """(source, text) references of one context in a Table 4 data setting."""
    refs = [('gt', record['response'])] if mode in ('gt', 'gt+hyp') else []
    if mode in ('hyp', 'gt+hyp'):
        hyps = record['hypotheses'] if n_hyps < 0 else record['hypotheses'][:n_hyps]
        if n_hyps >= 0 and len(hyps) < n_hyps:
            raise ValueError(f'{where}: {len(hyps)} hypotheses, --multiref-n-hyps {n_hyps}')
        refs += [('hyp', h) for h in hyps]
    return refs


class MultirefTeacher(DialogTeacher):
    """One single-turn episode per (context, reference) pair of a pseudo-reference file."""

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = parser.add_argument_group('Multi-referenced data (parlai-ext)')
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

    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        self.split = opt['datatype'].split(':')[0]
        self.id = 'multiref_ext'
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
        opt['datafile'] = path
        super().__init__(opt, shared)

    def setup_data(self, path: str) -> Iterator[tuple[dict, bool]]:
        for number, record in enumerate(read_pseudo_refs(path)):
            context = record['context']
            if self.context_turns >= 0:
                context = context[-self.context_turns :] if self.context_turns else []
            text = '\n'.join(context)
            refs = references(record, self.mode, self.n_hyps, f'{path}:{number + 1}')
            for source, reference in refs:
                message = {
                    'text': text,
                    'labels': [reference],
                    'multiref_source': source,
                    'multiref_index': number,
                }
                yield message, True


class DefaultTeacher(MultirefTeacher):
    """``-t multiref_ext``."""
