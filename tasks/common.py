"""Shared pieces of parlai-ext's on-disk teachers: error types, file lookup, strict line reading.

The PersonaChat, DailyDialog and Ubuntu teachers read official releases that the user already
has (nothing is ever downloaded). They must all fail the same way on bad input: a missing
file names what was expected, where it was looked for and where to get it; a malformed line
names file and line number, or, with ``--skip-malformed true``, is counted and reported once
loading ends. Every file is parsed and validated completely before the first example is
handed to ParlAI, so a bad file never leaves a half-loaded teacher behind.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import hashlib
import json
import os
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import parlai.utils.logging as logging
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.teachers import DialogTeacher

SKIP_HINT = 'pass --skip-malformed true to skip such entries and get a count at the end'


class DataNotFoundError(FileNotFoundError):
    """The release files a teacher needs are not on disk (we never download them)."""

    def __init__(
        self,
        dataset: str,
        expected: Iterable[str],
        searched: Iterable[str],
        obtain: str,
        option: str | None = None,
        note: str | None = None,
    ) -> None:
        self.dataset = dataset
        self.expected = list(expected)
        self.searched = list(searched)
        lines = [f'{dataset}: data files not found (parlai-ext reads them from disk only).']
        lines.append('  expected: ' + ', '.join(self.expected))
        lines.append('  looked in:')
        lines += [f'    - {place}' for place in self.searched]
        if note:
            lines.append(f'  note: {note}')
        lines.append(f'  official release: {obtain}')
        if option:
            lines.append(f'  point {option} at the folder that holds the files.')
        super().__init__('\n'.join(lines))


class MalformedDataError(ValueError):
    """A line (or JSON entry) of a release file does not have the documented format."""

    def __init__(self, location: str, reason: str, hint: str | None = SKIP_HINT) -> None:
        self.location = location
        self.reason = reason
        message = f'{location}: {reason}'
        if hint:
            message += f' ({hint})'
        super().__init__(message)


def at(source: object, lineno: int) -> str:
    """``file:line`` location string used by every error message."""
    return f'{source}:{lineno}'


class MalformedLog:
    """Strict by default (raise at the first bad entry); with ``skip`` counts and reports."""

    def __init__(self, dataset: str, skip: bool = False) -> None:
        self.dataset = dataset
        self.skip = skip
        self.problems: list[tuple[str, str]] = []
        self.dropped = 0
        self.unit = 'entries'

    def report(self, location: str, reason: str) -> None:
        """Raise :class:`MalformedDataError`, or record it when skipping is allowed."""
        if not self.skip:
            raise MalformedDataError(location, reason)
        self.problems.append((location, reason))

    def drop(self, unit: str, count: int = 1) -> None:
        """Count whole units (episodes, dialogues, rows) left out because of a bad entry."""
        self.unit = unit
        self.dropped += count

    def summary(self) -> str | None:
        if not self.problems:
            return None
        first_location, first_reason = self.problems[0]
        return (
            f'{self.dataset}: skipped {len(self.problems)} malformed line(s)/entries '
            f'({self.dropped} {self.unit} left out); first: {first_location}: {first_reason}'
        )

    def log_summary(self) -> None:
        text = self.summary()
        if text:
            logging.warning(text)


@dataclass(frozen=True)
class Source:
    """A file on disk, or a member of a zip archive on disk."""

    path: str
    member: str | None = None

    def __str__(self) -> str:
        return self.path if self.member is None else f'{self.path}[{self.member}]'

    @contextlib.contextmanager
    def open_binary(self) -> Iterator[IO[bytes]]:
        if self.member is None:
            with open(self.path, 'rb') as handle:
                yield handle
            return
        with zipfile.ZipFile(self.path) as archive, archive.open(self.member) as handle:
            yield handle

    def read_bytes(self) -> bytes:
        with self.open_binary() as handle:
            return handle.read()

    def stat_key(self) -> str:
        st = os.stat(self.path)
        return f'{self.path}|{self.member}|{st.st_size}|{st.st_mtime_ns}'


def read_lines(source: Source, log: MalformedLog) -> Iterator[tuple[int, str | None]]:
    """Yield ``(line number, text)`` for every line; ``text`` is None for undecodable lines.

    UTF-8 only (a leading byte-order mark is dropped); ``\\r\\n`` and ``\\n`` line ends are both
    accepted and removed. A line that is not valid UTF-8 is reported through ``log`` (an error
    unless skipping), then yielded as None so callers drop the unit it belongs to instead of
    shifting anything.
    """
    for lineno, text, _raw in read_raw_lines(source, log):
        yield lineno, text


def read_raw_lines(source: Source, log: MalformedLog) -> Iterator[tuple[int, str | None, bytes]]:
    """:func:`read_lines`, also yielding each line's raw bytes (BOM and line end removed).

    For callers that must still read an undecodable line's ASCII parts (e.g. the leading
    fbdialog index that says whether the line starts a new episode).
    """
    with source.open_binary() as handle:
        for lineno, raw in enumerate(handle, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            if raw.endswith(b'\n'):
                raw = raw[:-1]
            if raw.endswith(b'\r'):
                raw = raw[:-1]
            try:
                text = raw.decode('utf-8')
            except UnicodeDecodeError as err:
                log.report(
                    at(source, lineno),
                    f'not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})',
                )
                yield lineno, None, raw
                continue
            yield lineno, text, raw


def ends_without_line_end(source: Source) -> int | None:
    """The number of the last line if the file's last byte is not a line end, else None.

    Release files end every line with ``\\n``; a last line without one usually means the file
    was cut (an interrupted copy, download or save). Empty files give None.
    """
    if source.member is None:  # the last byte only (release files are large)
        with open(source.path, 'rb') as handle:
            if handle.seek(0, os.SEEK_END) == 0:
                return None
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) == b'\n':
                return None
    data = source.read_bytes()
    if not data or data.endswith(b'\n'):
        return None
    return data.count(b'\n') + 1


def warn_if_cut(source: Source, what: str = 'line') -> str | None:
    """Log (and return) a ``file:line`` warning when the last line has no line end."""
    lineno = ends_without_line_end(source)
    if lineno is None:
        return None
    message = (
        f'{at(source, lineno)}: the last {what} has no line end, so the file may be cut '
        '(an interrupted copy or download); it was read as it is. Expected every line to end '
        'with a newline: compare the file with the official release.'
    )
    logging.warning(message)
    return message


def load_json(source: Source) -> Any:
    """Parse a whole JSON file; decoding and syntax errors name file, line and column."""
    data = source.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as err:
        lineno = data.count(b'\n', 0, err.start) + 1
        raise MalformedDataError(
            at(source, lineno), f'not valid UTF-8 (byte 0x{data[err.start]:02x})', hint=None
        ) from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise MalformedDataError(
            at(source, err.lineno), f'invalid JSON at column {err.colno}: {err.msg}', hint=None
        ) from err


def first_existing(paths: Iterable[str]) -> str | None:
    for path in paths:
        if os.path.isfile(path):
            return path
    return None


def split_of(opt: Opt) -> str:
    """``train``, ``valid`` or ``test`` from ParlAI's ``--datatype`` (``train:stream`` etc.)."""
    split = opt.get('datatype', 'train').split(':')[0]
    if split not in ('train', 'valid', 'test'):
        raise ValueError(f'unknown datatype {opt.get("datatype")!r}')
    return split


def add_common_args(parser: ParlaiParser, title: str) -> Any:
    """Add the options every on-disk teacher has; return the argument group for more."""
    group = parser.add_argument_group(title)
    group.add_argument(
        '--skip-malformed',
        type='bool',
        default=False,
        help='skip malformed lines/entries (dropping the episode, dialogue or row they '
        'belong to) and log a count at the end, instead of stopping with file:line',
    )
    return group


class ReleaseDialogTeacher(DialogTeacher):
    """A DialogTeacher over release files: locate, parse and validate all, then yield.

    Subclasses set ``task_name`` and implement :meth:`locate` (return the files, raising
    :class:`DataNotFoundError`) and :meth:`load_episodes` (return a list of episodes, each a
    non-empty list of message dicts, reporting bad entries to ``self.malformed``).
    """

    task_name = 'parlai_ext'
    sub_name: str | None = None

    def __init__(self, opt: Opt, shared: dict | None = None) -> None:
        opt = copy.deepcopy(opt)
        self.split = split_of(opt)
        self.id = self.task_name if self.sub_name is None else f'{self.task_name}:{self.sub_name}'
        self.malformed = MalformedLog(self.id, bool(opt.get('skip_malformed', False)))
        self.opt = opt
        self.sources = self.locate(opt)
        opt['datafile'] = str(self.sources[0])
        if 'stream' in opt.get('datatype', ''):
            self._set_length_cache(opt)
        super().__init__(opt, shared)

    def locate(self, opt: Opt) -> list[Source]:
        raise NotImplementedError

    def load_episodes(self) -> list[list[dict]]:
        raise NotImplementedError

    def cache_key(self) -> str:
        """Everything that changes the examples produced (for the stream length cache)."""
        keys = sorted(k for k in self.opt if k.startswith(self.option_prefixes()))
        options = {k: self.opt[k] for k in keys}
        return json.dumps([self.id, self.split, options], sort_keys=True, default=str)

    def option_prefixes(self) -> tuple[str, ...]:
        return ('skip_malformed',)

    def _set_length_cache(self, opt: Opt) -> None:
        # ParlAI's stream mode caches lengths in '<datafile>.lengths', i.e. beside the user's
        # release files, and keyed by file only; keep our own cache keyed by options too.
        key = self.cache_key() + '|' + '|'.join(s.stat_key() for s in self.sources)
        digest = hashlib.sha1(key.encode('utf-8')).hexdigest()[:16]
        folder = os.path.join(opt['datapath'], 'parlai_ext', 'lengths')
        os.makedirs(folder, exist_ok=True)
        opt['length_datafile'] = os.path.join(folder, f'{self.id.replace(":", "_")}_{digest}')

    def setup_data(self, datafile: str) -> Iterator[tuple[dict, bool]]:
        self.malformed = MalformedLog(self.id, self.malformed.skip)
        episodes = self.load_episodes()
        self.malformed.log_summary()
        if not episodes:
            raise MalformedDataError(
                ', '.join(str(s) for s in self.sources), 'no usable examples found', hint=None
            )
        for episode in episodes:
            for index, message in enumerate(episode):
                yield message, index == 0
