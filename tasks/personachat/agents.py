"""``-t personachat_ext[:<view>_<persona>]``: PersonaChat / ConvAI2 from ParlAI's text files.

Reads the fbdialog files that ParlAI's own ``personachat`` and ``convai2`` downloads leave
on disk (``<datapath>/ConvAI2/`` and ``<datapath>/Persona-Chat/personachat/``) or any folder
or single file named by an option; nothing is downloaded. Text, labels and candidates are
exactly what ParlAI's ``FbDeprecatedDialogTeacher`` gives (persona lines first, joined with
newlines); on top, every message carries the persona sentences as lists (``self_persona``,
``partner_persona``) so models need not re-parse the text. Unlike ParlAI's reader, every
line is validated (index sequence, tabs, candidates containing the label, persona lines only
before the dialogue, persona kinds matching the view) and errors name file and line.
See docs/teachers.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from parlai_ext.persona import persona_line
from parlai_ext.tasks.common import (
    DataNotFoundError,
    MalformedLog,
    ReleaseDialogTeacher,
    Source,
    add_common_args,
    at,
    read_raw_lines,
    warn_if_cut,
)

TASK = 'personachat_ext'
VIEWS = ('self', 'other', 'both', 'none')
PERSONAS = ('original', 'revised')
OBTAIN = (
    "ParlAI's downloads: `parlai display_data -t convai2` fetches "
    'http://parl.ai/downloads/convai2/convai2_fix_723.tgz into <datapath>/ConvAI2/ (train, '
    'valid; with and without candidates); `-t personachat` fetches '
    'http://parl.ai/downloads/personachat/personachat.tgz into '
    '<datapath>/Persona-Chat/personachat/ (train, valid, test; with candidates)'
)
# which persona-line kinds each view may contain
ALLOWED_KINDS = {
    'self': {'self'},
    'other': {'partner'},
    'both': {'self', 'partner'},
    'none': set(),
}


@dataclass
class Turn:
    """One dialogue line: partner utterance, reply (ParlAI splits labels on '|'), candidates."""

    text: str
    labels: list[str]
    candidates: list[str] | None
    lineno: int


@dataclass
class Episode:
    """One conversation: the raw persona lines (with prefixes, file order) and the turns."""

    lineno: int
    persona_lines: list[str] = field(default_factory=list)
    self_persona: list[str] = field(default_factory=list)
    partner_persona: list[str] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    bad: bool = False


def parse_fbdialog(
    source: Source, view: str, with_candidates: bool, log: MalformedLog
) -> list[Episode]:
    """Parse and validate a PersonaChat fbdialog file (``idx text[\\ttext\\treward\\tcands]``).

    A new episode starts at index 1; other indices must follow on. Persona lines (no tab) come
    before the dialogue lines. Blank lines are ignored (as ParlAI does). With skipping, a bad
    line drops its whole episode, so no turn is ever joined to the wrong context.
    """
    episodes: list[Episode] = []
    current: Episode | None = None
    last_index = 0

    def bad(lineno: int, reason: str) -> None:
        nonlocal current
        log.report(at(source, lineno), reason)
        if current is None:  # a bad line before any episode: an episode of its own
            current = Episode(lineno=lineno)
        current.bad = True

    def finish() -> None:
        if current is None:
            return
        if not current.bad and not current.turns:
            bad(current.lineno, 'episode has persona lines but no dialogue line')
        if current.bad:
            log.drop('episodes')
        else:
            episodes.append(current)

    for lineno, line, raw in read_raw_lines(source, log):
        if line is None:  # undecodable, already reported: drop the episode it belongs to
            head = raw.lstrip(b' \x0b\x0c').split(b' ', 1)[0]
            index = int(head) if head.isdigit() else None
            if index == 1 or current is None:  # it starts an episode: not the previous one's
                finish()
                current = Episode(lineno=lineno)
            current.bad = True
            if index is not None:
                last_index = index
            continue
        # strip spaces but not tabs: '5 hello\t' is an empty reply, not a context line
        line = line.strip(' \x0b\x0c').replace('\\n', '\n')
        if not line:
            continue
        head, sep, rest = line.partition(' ')
        if not head.isdigit() or not sep:
            bad(lineno, 'expected "<index> <text>" (a line number, one space, then text)')
            continue
        index = int(head)
        if index == 1:
            finish()
            current = Episode(lineno=lineno)
        elif current is None or index != last_index + 1:
            if current is None or not current.bad:  # report once per episode
                bad(
                    lineno, f'line index {index} does not follow {last_index} (episodes start at 1)'
                )
            last_index = index
            continue
        last_index = index
        parts = [p.strip() for p in rest.split('\t')]
        if len(parts) == 1:
            _add_persona_line(current, parts[0], view, lineno, bad)
            continue
        if len(parts) > 4:
            bad(
                lineno, f'{len(parts)} tab-separated fields; at most 4 (text, reply, reward, cands)'
            )
            continue
        text, reply = parts[0], parts[1]
        if not text:
            bad(lineno, 'empty partner utterance before the first tab')
            continue
        if not reply:
            bad(lineno, 'empty reply after the first tab')
            continue
        labels = reply.split('|')
        candidates = None
        if with_candidates:
            if len(parts) < 4 or not parts[3]:
                bad(
                    lineno,
                    'no label candidates on this line (a file without candidates? use '
                    '--with-candidates false, or a file with candidates)',
                )
                continue
            candidates = parts[3].split('|')
            if labels[0] not in candidates:
                bad(lineno, 'the reply is not among the label candidates')
                continue
        current.turns.append(Turn(text, labels, candidates, lineno))
    finish()
    return episodes


def _add_persona_line(current: Episode, line: str, view: str, lineno: int, bad) -> None:
    """Record one context line; only persona lines before the dialogue are allowed."""
    persona = persona_line(line)
    if persona is None:
        bad(lineno, 'a line without a tab must be a "your persona:" or "partner\'s persona:" line')
        return
    kind, sentence = persona
    if current.turns:
        bad(lineno, 'persona line after the dialogue has started')
        return
    if kind not in ALLOWED_KINDS[view]:
        bad(lineno, f'{kind} persona line in a file read with the "{view}" view')
        return
    if not sentence:
        bad(lineno, 'empty persona sentence')
        return
    current.persona_lines.append(line)
    (current.self_persona if kind == 'self' else current.partner_persona).append(sentence)


def episode_messages(episode: Episode, with_candidates: bool) -> list[dict]:
    """ParlAI's messages for one episode, plus the structured persona fields."""
    messages = []
    for position, turn in enumerate(episode.turns):
        text = turn.text
        if position == 0 and episode.persona_lines:
            text = '\n'.join(episode.persona_lines + [turn.text])
        message = {
            'text': text,
            'labels': list(turn.labels),
            'self_persona': list(episode.self_persona),
            'partner_persona': list(episode.partner_persona),
        }
        if with_candidates:
            message['label_candidates'] = list(turn.candidates)
        messages.append(message)
    return messages


class PersonachatTeacher(ReleaseDialogTeacher):
    """PersonaChat / ConvAI2 in one view (``self``/``other``/``both``/``none``) and persona set."""

    task_name = TASK
    view = 'self'
    persona = 'original'

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = add_common_args(parser, 'PersonaChat / ConvAI2 (parlai-ext, files on disk)')
        group.add_argument(
            '--personachat-data-dir',
            type=str,
            default=None,
            help='folder holding <split>_<view>_<persona>[_no_cands].txt; default: '
            '<datapath>/ConvAI2 then <datapath>/Persona-Chat/personachat',
        )
        group.add_argument(
            '--personachat-file',
            type=str,
            default=None,
            help='read exactly this file (any name) for every datatype; "{split}" in the '
            'path is replaced by train/valid/test',
        )
        group.add_argument(
            '--with-candidates',
            type='bool',
            default=False,
            help='give the 20 label_candidates per turn (needs files with candidates); '
            'false: candidates are dropped and *_no_cands.txt files are preferred',
        )
        return parser

    @property
    def variant(self) -> str:
        return f'{self.view}_{self.persona}'

    @property
    def sub_name(self) -> str:  # type: ignore[override]
        return self.variant

    def option_prefixes(self) -> tuple[str, ...]:
        return ('skip_malformed', 'personachat_', 'with_candidates')

    def locate(self, opt: Opt) -> list[Source]:
        self.with_candidates = bool(opt.get('with_candidates', False))
        explicit = opt.get('personachat_file')
        if explicit:
            path = explicit.replace('{split}', self.split)
            if not os.path.isfile(path):
                raise DataNotFoundError(
                    self.id, [os.path.basename(path)], [path], OBTAIN, '--personachat-file'
                )
            return [Source(path)]
        names = [f'{self.split}_{self.variant}.txt']
        if not self.with_candidates:
            names.insert(0, f'{self.split}_{self.variant}_no_cands.txt')
        folder = opt.get('personachat_data_dir')
        if folder:
            folders = [folder]
        else:
            folders = [
                os.path.join(opt['datapath'], 'ConvAI2'),
                os.path.join(opt['datapath'], 'Persona-Chat', 'personachat'),
            ]
        for directory in folders:
            for name in names:
                path = os.path.join(directory, name)
                if os.path.isfile(path):
                    return [Source(path)]
        note = None
        if self.split == 'test':
            note = (
                "ConvAI2 has no public test split (ParlAI's convai2 teacher silently reads "
                "valid instead); PersonaChat's test files are test_*.txt in Persona-Chat/personachat"
            )
        elif self.with_candidates:
            note = 'files with candidates are the ones without "_no_cands" in their name'
        raise DataNotFoundError(
            self.id, names, folders, OBTAIN, '--personachat-data-dir (or --personachat-file)', note
        )

    def load_episodes(self) -> list[list[dict]]:
        self.cut_warning = warn_if_cut(self.sources[0])  # ParlAI's files end every line
        episodes = parse_fbdialog(self.sources[0], self.view, self.with_candidates, self.malformed)
        return [episode_messages(e, self.with_candidates) for e in episodes]


def _teacher(view: str, persona: str) -> type[PersonachatTeacher]:
    name = f'{view.capitalize()}{persona.capitalize()}Teacher'
    doc = f'``{TASK}:{view}_{persona}``: the {view} view with {persona} personas.'
    return type(name, (PersonachatTeacher,), {'view': view, 'persona': persona, '__doc__': doc})


SelfOriginalTeacher = _teacher('self', 'original')
SelfRevisedTeacher = _teacher('self', 'revised')
OtherOriginalTeacher = _teacher('other', 'original')
OtherRevisedTeacher = _teacher('other', 'revised')
BothOriginalTeacher = _teacher('both', 'original')
BothRevisedTeacher = _teacher('both', 'revised')
NoneOriginalTeacher = _teacher('none', 'original')


class SelfTeacher(SelfOriginalTeacher):
    """``personachat_ext:self`` = ``self_original``."""


class OtherTeacher(OtherOriginalTeacher):
    """``personachat_ext:other`` = ``other_original``."""


class BothTeacher(BothOriginalTeacher):
    """``personachat_ext:both`` = ``both_original``."""


class NoneTeacher(NoneOriginalTeacher):
    """``personachat_ext:none`` = ``none_original`` (no personas; there is no revised one)."""


class DefaultTeacher(SelfOriginalTeacher):
    """``personachat_ext`` = ``self_original``, as in ParlAI."""
