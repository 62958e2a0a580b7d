"""``-t dailydialog_ext[:no_start]``: DailyDialog (Li et al., 2017) from the official release.

Reads the ``ijcnlp_dailydialog`` layout (``train/dialogues_train.txt`` with the aligned
``dialogues_act_train.txt`` and ``dialogues_emotion_train.txt``; ``validation/``, ``test/``),
or the split zips ``train.zip`` / ``validation.zip`` / ``test.zip`` directly, or, for users who
ran ParlAI's own ``dailydialog`` download, its ``<datapath>/dailydialog/{train,valid,test}.json``.
Nothing is downloaded. Official split. Episodes follow ParlAI's ``dailydialog`` teacher: every
dialogue gives two episodes, one where the model speaks first (its first text is
``__SILENCE__``) and one where it answers the first speaker; ``:no_start`` drops the
``__SILENCE__`` turn like ParlAI's ``dailydialog:no_start``. Acts and emotions of the text and
of the label utterance are fields of every message. Each text line must have exactly as many
act and emotion labels as utterances, else the error names file and line. See
docs/teachers.md.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass
from itertools import zip_longest

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from parlai_ext.tasks.common import (
    DataNotFoundError,
    MalformedLog,
    ReleaseDialogTeacher,
    Source,
    add_common_args,
    at,
    read_lines,
)

TASK = 'dailydialog_ext'
EOU = '__eou__'
SILENCE = '__SILENCE__'
# index = the release's integer code (acts start at 1; 'no_act' marks __SILENCE__), names as
# in ParlAI's dailydialog/parse.py
ACTS = ['no_act', 'inform', 'question', 'directive', 'commissive']
EMOTIONS = ['no_emotion', 'anger', 'disgust', 'fear', 'happiness', 'sadness', 'surprise']
RELEASE_SPLIT = {'train': 'train', 'valid': 'validation', 'test': 'test'}
OBTAIN = (
    'http://yanran.li/dailydialog (ijcnlp_dailydialog.zip; unzip it and its train.zip, '
    "validation.zip, test.zip, or leave the three split zips zipped); or ParlAI's "
    '`parlai display_data -t dailydialog`, which leaves {train,valid,test}.json in '
    '<datapath>/dailydialog/'
)


@dataclass
class Dialogue:
    """One dialogue: utterances with their act and emotion names (same lengths)."""

    dialogue_id: str
    utterances: list[str]
    acts: list[str]
    emotions: list[str]
    topic: str | None = None


# --- spacing normalisation (--normalize-spacing) ---------------------------------------------
_CONTRACTION = re.compile(r"(\w) (['’]) (s|t|m|d|re|ve|ll)\b", re.IGNORECASE)
_SPACE_BEFORE = re.compile(r' +([.,?!;:%)]|\.\.\.)')
_SPACE_AFTER = re.compile(r'([($]) +')
_MISSING_SPACE = re.compile(r'(?<=[a-z])([.?!])(?=[A-Z][a-z])')


def normalize_spacing(text: str) -> str:
    """Undo the release's tokenisation spaces: ``Let ' s go , now !`` -> ``Let's go, now!``.

    Joins split contractions (``' s``, ``’ m``, ``' ll``…), removes the space before
    ``. , ? ! ; : % )`` and ``...`` and after ``(`` and ``$``, maps the full-width ``。`` to
    ``.``, adds the missing space in ``right.But`` and collapses runs of spaces. Quotes are left
    alone (opening and closing ones cannot be told apart).
    """
    text = text.replace(' 。', '.').replace('。', '.')
    text = _CONTRACTION.sub(r'\1\2\3', text)
    text = _SPACE_BEFORE.sub(r'\1', text)
    text = _SPACE_AFTER.sub(r'\1', text)
    text = _MISSING_SPACE.sub(r'\1 ', text)
    return ' '.join(text.split())


# --- readers -----------------------------------------------------------------------------------
def _parse_labels(
    line: str, names: list[str], low: int, what: str, count: int, where: str, log: MalformedLog
) -> list[str] | None:
    tokens = line.split()
    values = []
    for token in tokens:
        if not token.isdigit() or not low <= int(token) < len(names):
            log.report(where, f'{what} label {token!r} is not an integer {low}..{len(names) - 1}')
            return None
        values.append(names[int(token)])
    if len(values) != count:
        log.report(where, f'{len(values)} {what} labels for {count} utterances')
        return None
    return values


def read_release(
    text: Source, act: Source, emotion: Source, split: str, log: MalformedLog
) -> list[Dialogue]:
    """Read a split's three files in lockstep; every line must agree in utterance counts.

    Blank lines are accepted only where all three files are blank (e.g. a final newline);
    with skipping, a bad line drops that dialogue (all three lines), never shifting labels.
    """
    dialogues: list[Dialogue] = []
    missing = (0, None)
    streams = zip_longest(
        read_lines(text, log), read_lines(act, log), read_lines(emotion, log), fillvalue=missing
    )
    for (t_no, t_line), (a_no, a_line), (e_no, e_line) in streams:
        lineno = max(t_no, a_no, e_no)
        lines = {text: t_line, act: a_line, emotion: e_line}
        numbers = {text: t_no, act: a_no, emotion: e_no}
        ended = [src for src, no in numbers.items() if no == 0]
        if ended and any(line and line.strip() for line in lines.values()):
            log.report(
                at(ended[0], lineno),
                f'file ends before line {lineno}, but the other files of the split go on',
            )
            log.drop('dialogues')
            continue
        if ended:
            continue
        if any(line is None for line in lines.values()):  # undecodable, already reported
            log.drop('dialogues')
            continue
        blank = [src for src, line in lines.items() if not line.strip()]
        if len(blank) == 3:
            continue
        if blank:
            log.report(at(blank[0], lineno), 'blank line where the other files have a dialogue')
            log.drop('dialogues')
            continue
        dialogue = _release_dialogue(
            t_line, a_line, e_line, f'{split}:{lineno}', text, act, emotion, lineno, log
        )
        if dialogue is None:
            log.drop('dialogues')
        else:
            dialogues.append(dialogue)
    return dialogues


def _release_dialogue(
    t_line: str,
    a_line: str,
    e_line: str,
    dialogue_id: str,
    text: Source,
    act: Source,
    emotion: Source,
    lineno: int,
    log: MalformedLog,
) -> Dialogue | None:
    stripped = t_line.strip()
    where = at(text, lineno)
    if not stripped.endswith(EOU):
        log.report(where, f'dialogue line does not end with {EOU}')
        return None
    utterances = [u.strip() for u in stripped.split(EOU)[:-1]]
    for number, utterance in enumerate(utterances, 1):
        if not utterance:
            log.report(where, f'utterance {number} is empty')
            return None
    if len(utterances) < 2:
        log.report(where, 'a dialogue needs at least 2 utterances')
        return None
    acts = _parse_labels(a_line, ACTS, 1, 'act', len(utterances), at(act, lineno), log)
    if acts is None:
        return None
    emotions = _parse_labels(
        e_line, EMOTIONS, 0, 'emotion', len(utterances), at(emotion, lineno), log
    )
    if emotions is None:
        return None
    return Dialogue(dialogue_id, utterances, acts, emotions)


def read_parlai_json(source: Source, split: str, log: MalformedLog) -> list[Dialogue]:
    """Read ParlAI's ``dailydialog/<split>.json`` (one JSON dialogue per line)."""
    dialogues: list[Dialogue] = []
    for lineno, line in read_lines(source, log):
        if line is None:
            log.drop('dialogues')
            continue
        if not line.strip():
            continue
        where = at(source, lineno)
        try:
            record = json.loads(line)
            turns = record['dialogue']
            utterances = [str(turn['text']).strip() for turn in turns]
            acts = [turn['act'] for turn in turns]
            emotions = [turn['emotion'] for turn in turns]
        except (ValueError, KeyError, TypeError) as err:
            log.report(where, f'not a ParlAI dailydialog record ({type(err).__name__}: {err})')
            log.drop('dialogues')
            continue
        problem = None
        if len(utterances) < 2:
            problem = 'a dialogue needs at least 2 utterances'
        elif not all(utterances):
            problem = f'utterance {utterances.index("") + 1} is empty'
        elif not all(a in ACTS[1:] for a in acts):
            problem = f'unknown act in {acts}'
        elif not all(e in EMOTIONS for e in emotions):
            problem = f'unknown emotion in {emotions}'
        if problem:
            log.report(where, problem)
            log.drop('dialogues')
            continue
        topic = record.get('topic')
        dialogues.append(Dialogue(f'{split}:{lineno}', utterances, acts, emotions, topic))
    return dialogues


# --- episodes ----------------------------------------------------------------------------------
def _message(dialogue: Dialogue, text_index: int, label_index: int) -> dict:
    if text_index < 0:
        text, act, emotion = SILENCE, ACTS[0], EMOTIONS[0]
    else:
        text = dialogue.utterances[text_index]
        act, emotion = dialogue.acts[text_index], dialogue.emotions[text_index]
    message = {
        'text': text,
        'labels': [dialogue.utterances[label_index]],
        'act_type': act,
        'emotion': emotion,
        'label_act_type': dialogue.acts[label_index],
        'label_emotion': dialogue.emotions[label_index],
        'dialogue_id': dialogue.dialogue_id,
        'turn': label_index,
    }
    if dialogue.topic is not None:
        message['topic'] = dialogue.topic
    return message


def view_episode(dialogue: Dialogue, first_label: int) -> list[dict]:
    """The model answers utterances ``first_label``, ``first_label + 2``, … (text: the turn
    before, ``__SILENCE__`` before utterance 0)."""
    n = len(dialogue.utterances)
    return [_message(dialogue, i - 1, i) for i in range(first_label, n, 2)]


def build_episodes(dialogues: list[Dialogue], no_start: bool) -> list[list[dict]]:
    """ParlAI's episode order: default = per dialogue, the model as first then as second speaker;
    ``no_start`` = all dialogues with the model as second speaker, then (for dialogues of more
    than 2 utterances) as first speaker without its opening line."""
    if not no_start:
        episodes = []
        for dialogue in dialogues:
            episodes.append(view_episode(dialogue, 0))
            episodes.append(view_episode(dialogue, 1))
        return episodes
    second = [view_episode(d, 1) for d in dialogues]
    first = [view_episode(d, 2) for d in dialogues if len(d.utterances) > 2]
    return second + first


# --- teachers ----------------------------------------------------------------------------------
def _release_files(split: str) -> dict[str, str]:
    name = RELEASE_SPLIT[split]
    return {
        'text': f'dialogues_{name}.txt',
        'act': f'dialogues_act_{name}.txt',
        'emotion': f'dialogues_emotion_{name}.txt',
    }


def locate_dailydialog(opt: Opt, split: str, task_id: str) -> tuple[str, list[Source]]:
    """Find a split: release folder, else release zip, else ParlAI's JSON; in each root."""
    folder = opt.get('dailydialog_data_dir')
    if folder:
        roots = [folder, os.path.join(folder, 'ijcnlp_dailydialog')]
    else:
        datapath = opt['datapath']
        roots = [
            os.path.join(datapath, 'dailydialog', 'ijcnlp_dailydialog'),
            os.path.join(datapath, 'ijcnlp_dailydialog'),
            os.path.join(datapath, 'dailydialog'),
        ]
    name = RELEASE_SPLIT[split]
    files = _release_files(split)
    searched = []
    for root in roots:
        split_dir = os.path.join(root, name)
        searched.append(split_dir + os.sep)
        if os.path.isdir(split_dir) and os.path.isfile(os.path.join(split_dir, files['text'])):
            paths = {k: os.path.join(split_dir, v) for k, v in files.items()}
            absent = [p for p in paths.values() if not os.path.isfile(p)]
            if absent:
                raise DataNotFoundError(
                    task_id, [os.path.basename(p) for p in absent], [split_dir], OBTAIN,
                    '--dailydialog-data-dir',
                    note='the dialogue file is there, but its act/emotion files are not',
                )  # fmt: skip
            return 'release', [Source(paths[k]) for k in ('text', 'act', 'emotion')]
        archive = os.path.join(root, f'{name}.zip')
        searched.append(archive)
        if os.path.isfile(archive):
            return 'release', _zip_sources(archive, files, task_id)
        parlai_json = os.path.join(root, f'{split}.json')
        searched.append(parlai_json)
        if os.path.isfile(parlai_json):
            return 'parlai_json', [Source(parlai_json)]
    expected = [f'{name}/{f}' for f in files.values()] + [f'{name}.zip', f'{split}.json (ParlAI)']
    note = None
    if split == 'test':
        note = 'the test split is test/ (or test.zip) of the release'
    raise DataNotFoundError(task_id, expected, searched, OBTAIN, '--dailydialog-data-dir', note)


def _zip_sources(archive: str, files: dict[str, str], task_id: str) -> list[Source]:
    with zipfile.ZipFile(archive) as handle:
        members = [m for m in handle.namelist() if not m.endswith('/')]
    found = {}
    for key, name in files.items():
        matches = [m for m in members if m.split('/')[-1] == name]
        if len(matches) == 1:
            found[key] = matches[0]
    if len(found) != 3:
        raise DataNotFoundError(
            task_id, list(files.values()), [f'{archive} (zip members)'], OBTAIN,
            '--dailydialog-data-dir',
            note='the zip must hold each of these once (any folder inside the zip)',
        )  # fmt: skip
    return [Source(archive, found[k]) for k in ('text', 'act', 'emotion')]


class DailydialogTeacher(ReleaseDialogTeacher):
    """Both speakers' views of every dialogue, the first-speaker view opening on __SILENCE__."""

    task_name = TASK
    no_start = False

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = add_common_args(parser, 'DailyDialog (parlai-ext, files on disk)')
        group.add_argument(
            '--dailydialog-data-dir',
            type=str,
            default=None,
            help='folder of the release (train/, validation/, test/ or the split zips) or of '
            "ParlAI's {train,valid,test}.json; default: <datapath>/dailydialog/"
            'ijcnlp_dailydialog, <datapath>/ijcnlp_dailydialog, <datapath>/dailydialog',
        )
        group.add_argument(
            '--normalize-spacing',
            type='bool',
            default=False,
            help='undo the release\'s tokenisation spaces ("Let \' s go , now !" -> '
            '"Let\'s go, now!"); off: utterances exactly as released',
        )
        return parser

    def option_prefixes(self) -> tuple[str, ...]:
        return ('skip_malformed', 'dailydialog_', 'normalize_spacing')

    def locate(self, opt: Opt) -> list[Source]:
        self.normalize = bool(opt.get('normalize_spacing', False))
        self.file_format, sources = locate_dailydialog(opt, self.split, self.id)
        return sources

    def load_dialogues(self) -> list[Dialogue]:
        if self.file_format == 'release':
            dialogues = read_release(*self.sources, self.split, self.malformed)
        else:
            dialogues = read_parlai_json(self.sources[0], self.split, self.malformed)
        if self.normalize:
            for dialogue in dialogues:
                dialogue.utterances = [normalize_spacing(u) for u in dialogue.utterances]
        return dialogues

    def load_episodes(self) -> list[list[dict]]:
        return build_episodes(self.load_dialogues(), self.no_start)


class NoStartTeacher(DailydialogTeacher):
    """``dailydialog_ext:no_start``: no __SILENCE__ turn (ParlAI's ``dailydialog:no_start``)."""

    no_start = True
    sub_name = 'no_start'


class DefaultTeacher(DailydialogTeacher):
    """``dailydialog_ext``."""
