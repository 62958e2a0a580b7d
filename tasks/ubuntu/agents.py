"""``-t ubuntu_ext[:dstc7|:dstc7_ranking|:udc_v2]``: Ubuntu dialogue data from disk.

Two readers, nothing downloaded:

* DSTC7 track 1 subtask 1 (Ubuntu) JSON, ``ubuntu_{train,dev,test}_subtask_1.json`` as in
  ParlAI's ``<datapath>/dstc7/``: ``dstc7`` (the default) gives context -> correct answer for
  generation; ``dstc7_ranking`` adds the 100 ``options-for-next`` as ``label_candidates``.
* Ubuntu Dialogue Corpus v2 CSV (``train.csv``: ``Context,Utterance,Label``; ``valid.csv`` /
  ``test.csv``: ``Context,Ground Truth Utterance,Distractor_0..8``) as in ParlAI's
  ``<datapath>/Ubuntu/``: ``udc_v2``. Train keeps the ``Label=1`` rows (``Label=0`` rows pair a
  context with a random response); valid/test carry truth + distractors as candidates.

Every example is a one-message episode; candidates are shuffled deterministically (seeded by
the example's position) so the truth's position carries no signal. See docs/teachers.md.
"""

from __future__ import annotations

import csv
import os
import random
from collections.abc import Iterator

import parlai.utils.logging as logging
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from parlai_ext.tasks.common import (
    DataNotFoundError,
    MalformedLog,
    ReleaseDialogTeacher,
    Source,
    add_common_args,
    at,
    load_json,
    read_lines,
    read_raw_lines,
)

TASK = 'ubuntu_ext'
DSTC7_SPLIT = {'train': 'train', 'valid': 'dev', 'test': 'test'}
DSTC7_RESPONSES = 'ubuntu_responses_subtask_1.tsv'
OBTAIN_DSTC7 = (
    "DSTC7 track 1 (https://github.com/IBM/dstc7-noesis, data on registration); ParlAI's "
    '`parlai display_data -t dstc7` leaves the files in <datapath>/dstc7/'
)
OBTAIN_UDC = (
    'Ubuntu Dialogue Corpus v2 (https://github.com/rkadlec/ubuntu-ranking-dataset-creator); '
    "ParlAI's `parlai display_data -t ubuntu` leaves train/valid/test.csv in <datapath>/Ubuntu/"
)
EOU = '__eou__'
EOT = '__eot__'
UDC_TRAIN_HEADER = ['Context', 'Utterance', 'Label']
UDC_EVAL_HEADER = ['Context', 'Ground Truth Utterance']


def _ubuntu_dirs(opt: Opt, default: str) -> list[str]:
    folder = opt.get('ubuntu_data_dir')
    return [folder] if folder else [os.path.join(opt['datapath'], default)]


def shuffled(candidates: list[str], seed: int) -> list[str]:
    """A copy of ``candidates`` in a fixed pseudo-random order (ParlAI's dstc7 does the same)."""
    result = list(candidates)
    random.Random(seed).shuffle(result)
    return result


# --- DSTC7 -------------------------------------------------------------------------------------
def _utterance(value: object) -> str | None:
    if isinstance(value, dict) and isinstance(value.get('utterance'), str):
        return value['utterance'].strip()
    return None


def read_dstc7(
    source: Source,
    data: object,
    answers: dict[str, list[str] | None] | None,
    ranking: bool,
    log: MalformedLog,
) -> list[list[dict]]:
    """Turn a parsed DSTC7 subtask-1 JSON file into one-message episodes (entry by entry).

    ``answers`` (example-id -> correct utterances, from the responses TSV) fills in examples
    without ``options-for-correct-answers`` (the released test file has none).
    """
    if not isinstance(data, list):
        log.report(str(source), 'expected a JSON list of examples')
        return []
    episodes = []
    for number, example in enumerate(data):
        where = f'{source}: example #{number}'
        if isinstance(example, dict) and 'example-id' in example:
            where += f' (example-id {example["example-id"]})'
        message = _dstc7_message(example, answers, ranking, number, where, log)
        if message is None:
            log.drop('examples')
        else:
            episodes.append([message])
    return episodes


def _dstc7_message(example, answers, ranking, number, where, log) -> dict | None:
    if not isinstance(example, dict):
        log.report(where, 'an example must be a JSON object')
        return None
    history = example.get('messages-so-far')
    if not isinstance(history, list) or not history:
        log.report(where, '"messages-so-far" must be a non-empty list')
        return None
    speakers, turns = [], []
    for position, entry in enumerate(history):
        utterance = _utterance(entry)
        speaker = entry.get('speaker') if isinstance(entry, dict) else None
        if not utterance or not isinstance(speaker, str) or not speaker.strip():
            log.report(
                where, f'messages-so-far[{position}] needs a speaker and a non-empty utterance'
            )
            return None
        speakers.append(speaker.strip())
        turns.append(utterance)
    example_id = str(example.get('example-id', number))
    correct = example.get('options-for-correct-answers')
    if correct is None and answers is not None:
        if example_id in answers and answers[example_id] is None:
            return None  # a malformed line of its answers, already reported: left out, counted
        labels = answers.get(example_id)
        if labels is None:
            log.report(where, f'no answer for example-id {example_id} in {DSTC7_RESPONSES}')
            return None
    elif not isinstance(correct, list) or not correct:
        log.report(where, '"options-for-correct-answers" must be a non-empty list')
        return None
    else:
        labels = [_utterance(option) for option in correct]
        if not all(labels):
            log.report(where, 'a correct answer has no (or an empty) utterance')
            return None
    message = {
        'text': '\n'.join(f'{s.replace("_", " ")}: {t}' for s, t in zip(speakers, turns)),
        'labels': labels,
        'example_id': example_id,
        'context_turns': turns,
        'context_speakers': speakers,
    }
    if ranking:
        options = example.get('options-for-next')
        candidates = [_utterance(o) for o in options] if isinstance(options, list) else []
        if not candidates or not all(candidates):
            log.report(where, '"options-for-next" must be a non-empty list of utterances')
            return None
        if labels[0] not in candidates:
            log.report(where, 'the correct answer is not among "options-for-next"')
            return None
        message['label_candidates'] = shuffled(candidates, number)
    return message


def read_dstc7_answers(source: Source, log: MalformedLog) -> dict[str, list[str] | None]:
    """``example-id<TAB>candidate-id<TAB>utterance`` lines of the test answers file.

    A malformed (or undecodable) line maps its example-id, when readable, to None: that example
    is then left out and counted like any other bad entry, not kept with part of its answers
    or reported a second time for having none.
    """
    answers: dict[str, list[str] | None] = {}
    for lineno, line, raw in read_raw_lines(source, log):
        if line is None:  # undecodable, already reported: its example-id may still be readable
            try:
                example_id = raw.split(b'\t', 1)[0].decode('utf-8').strip()
            except UnicodeDecodeError:
                example_id = ''
            if example_id:
                answers[example_id] = None
            continue
        if not line.strip():
            continue
        parts = line.split('\t')
        example_id = parts[0].strip()
        if len(parts) != 3 or not example_id or not parts[2].strip():
            log.report(at(source, lineno), 'expected example-id<TAB>candidate-id<TAB>utterance')
            if example_id:
                answers[example_id] = None
            continue
        if example_id not in answers:
            answers[example_id] = []
        found = answers[example_id]
        if found is not None:
            found.append(parts[2].strip())
    return answers


# --- Ubuntu Dialogue Corpus v2 -----------------------------------------------------------------
def clean_turn(turn: str) -> str:
    """One turn: its ``__eou__``-separated utterances joined by a space (empty ones dropped)."""
    pieces = [p.strip() for p in turn.replace(EOT, ' ').split(EOU)]
    return ' '.join(p for p in pieces if p)


def split_context(context: str) -> list[str] | None:
    """Context -> turns (``__eot__`` ends a turn); None if a turn is empty."""
    raw_turns = context.split(EOT)
    if len(raw_turns) > 1 and not raw_turns[-1].strip():
        raw_turns = raw_turns[:-1]  # the context's own final __eot__
    turns = [clean_turn(t) for t in raw_turns]
    if not turns or not all(turns):
        return None
    return turns


def _csv_records(source: Source, log: MalformedLog) -> Iterator[tuple[int, int, list[str], bool]]:
    """Yield ``(first line, last line, fields, ok)`` per CSV record, with line numbers."""
    bad_lines: set[int] = set()

    def lines() -> Iterator[str]:
        for lineno, line in read_lines(source, log):
            if line is None:
                bad_lines.add(lineno)
                line = ''
            yield line + '\n'

    reader = csv.reader(lines())
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            log.report(at(source, reader.line_num), f'CSV error: {err}')
            yield start, reader.line_num, [], False
            continue
        ok = not any(start <= n <= reader.line_num for n in bad_lines)
        yield start, reader.line_num, fields, ok


def read_udc_v2(source: Source, log: MalformedLog) -> list[list[dict]]:
    """Parse a UDC v2 CSV (train or valid/test layout, told apart by the header)."""
    episodes = []
    records = _csv_records(source, log)
    header = next(records, None)
    if header is None or not header[3]:
        log.report(at(source, 1), 'empty file or unreadable header')
        return []
    columns = [c.strip() for c in header[2]]
    is_train = columns == UDC_TRAIN_HEADER
    distractors = len(columns) - 2
    if not is_train and (
        columns[:2] != UDC_EVAL_HEADER
        or distractors < 1
        or columns[2:] != [f'Distractor_{i}' for i in range(distractors)]
    ):
        log.report(
            at(source, 1),
            f'unexpected header {columns}; expected {UDC_TRAIN_HEADER} (train) or '
            f'{UDC_EVAL_HEADER} + Distractor_0.. (valid/test)',
        )
        return []
    negatives = 0
    for number, (start, _end, fields, ok) in enumerate(records, 1):
        if not ok:
            log.drop('rows')
            continue
        if not fields or fields == ['']:
            continue  # blank line
        where = at(source, start)
        if len(fields) != len(columns):
            log.report(where, f'{len(fields)} fields, the header has {len(columns)}')
            log.drop('rows')
            continue
        turns = split_context(fields[0])
        response = clean_turn(fields[1])
        if turns is None:
            log.report(where, 'the context is empty or has an empty turn')
            log.drop('rows')
            continue
        if not response:
            log.report(where, 'the response is empty')
            log.drop('rows')
            continue
        message = {'text': '\n'.join(turns), 'labels': [response], 'context_turns': turns}
        if is_train:
            try:
                label = float(fields[2])
            except ValueError:
                label = None
            if label not in (0.0, 1.0):
                log.report(where, f'Label must be 0 or 1, not {fields[2]!r}')
                log.drop('rows')
                continue
            if label == 0.0:
                negatives += 1
                continue
        else:
            others = [clean_turn(f) for f in fields[2:]]
            if not all(others):
                log.report(where, 'an empty distractor')
                log.drop('rows')
                continue
            message['label_candidates'] = shuffled([response] + others, number)
        episodes.append([message])
    if negatives:
        logging.info(f'{source}: left out {negatives} Label=0 rows (random negative responses)')
    return episodes


# --- teachers ----------------------------------------------------------------------------------
class UbuntuBaseTeacher(ReleaseDialogTeacher):
    """Common options of the Ubuntu readers."""

    task_name = TASK

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = add_common_args(parser, 'Ubuntu / DSTC7 (parlai-ext, files on disk)')
        group.add_argument(
            '--ubuntu-data-dir',
            type=str,
            default=None,
            help='folder holding the files; default: <datapath>/dstc7 for the DSTC7 JSON, '
            '<datapath>/Ubuntu for the UDC v2 CSV',
        )
        return parser

    def option_prefixes(self) -> tuple[str, ...]:
        return ('skip_malformed', 'ubuntu_')


class Dstc7Teacher(UbuntuBaseTeacher):
    """``ubuntu_ext:dstc7``: DSTC7 subtask 1, context -> correct answer (generation)."""

    sub_name = 'dstc7'
    ranking = False

    def locate(self, opt: Opt) -> list[Source]:
        name = f'ubuntu_{DSTC7_SPLIT[self.split]}_subtask_1.json'
        folders = _ubuntu_dirs(opt, 'dstc7')
        for folder in folders:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                sources = [Source(path)]
                answers = os.path.join(folder, DSTC7_RESPONSES)
                if self.split == 'test' and os.path.isfile(answers):
                    sources.append(Source(answers))
                return sources
        raise DataNotFoundError(self.id, [name], folders, OBTAIN_DSTC7, '--ubuntu-data-dir')

    def load_episodes(self) -> list[list[dict]]:
        data = load_json(self.sources[0])
        answers = None
        if len(self.sources) > 1:
            answers = read_dstc7_answers(self.sources[1], self.malformed)
        elif isinstance(data, list) and any(
            isinstance(e, dict) and 'options-for-correct-answers' not in e for e in data
        ):
            folder = os.path.dirname(self.sources[0].path)
            raise DataNotFoundError(
                self.id, [DSTC7_RESPONSES], [folder], OBTAIN_DSTC7, '--ubuntu-data-dir',
                note=f'{self.sources[0]} has no "options-for-correct-answers"; the released '
                'test answers are in a separate file',
            )  # fmt: skip
        return read_dstc7(self.sources[0], data, answers, self.ranking, self.malformed)


class Dstc7RankingTeacher(Dstc7Teacher):
    """``ubuntu_ext:dstc7_ranking``: as ``dstc7`` plus the 100 candidates (hits@k, MRR)."""

    sub_name = 'dstc7_ranking'
    ranking = True


class UdcV2Teacher(UbuntuBaseTeacher):
    """``ubuntu_ext:udc_v2``: Ubuntu Dialogue Corpus v2 CSV, context -> response."""

    sub_name = 'udc_v2'

    def locate(self, opt: Opt) -> list[Source]:
        name = f'{self.split}.csv'
        folders = _ubuntu_dirs(opt, 'Ubuntu')
        for folder in folders:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return [Source(path)]
        raise DataNotFoundError(self.id, [name], folders, OBTAIN_UDC, '--ubuntu-data-dir')

    def load_episodes(self) -> list[list[dict]]:
        return read_udc_v2(self.sources[0], self.malformed)


class DefaultTeacher(Dstc7Teacher):
    """``ubuntu_ext`` = ``ubuntu_ext:dstc7``."""
