"""Crash-safe file writing and the one-writer lock on a model file.

Every file parlai-ext writes goes through :func:`atomic_open` (or :func:`atomic_write`): the
bytes go to a temporary file in the target's folder, which then replaces the target with
``os.replace``, so a reader (or the next run, after a ``kill -9``) sees either the old file or
the new one, never a cut one. With ``skip_identical`` a file whose new content equals what is on
disk is left alone (no rewrite, same inode and time stamp).

:func:`atomic_writes` makes ParlAI's own writers atomic too: inside it, every
``PathManager.open(path, 'w' | 'wb')`` of a local file is an :func:`atomic_open` with
``skip_identical``. The compatibility module wraps ``DictionaryAgent.save``, ``Opt.save``,
``TorchAgent.save`` and ``TrainLoop``'s train-stats writer in it.

:class:`ModelFileLock` is an exclusive, non-blocking ``flock`` on ``<model file>.lock``: a
second training on the same ``-mf`` stops at once (the kernel drops the lock when its process
ends, ``kill -9`` included, so a crashed run never leaves a stale lock behind).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import threading
from collections.abc import Iterator
from typing import IO, Any

_TMP_TAG = '.parlai-ext-tmp'
_state = threading.local()


def _temp_path(path: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f'.{name}.{os.getpid()}{_TMP_TAG}')


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: str) -> list[str]:
    """Remove temporaries of ``path`` left by processes that no longer run (a ``kill -9``)."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    for temp in glob.glob(os.path.join(glob.escape(folder), f'.{glob.escape(name)}.*{_TMP_TAG}')):
        pid_text = temp[: -len(_TMP_TAG)].rsplit('.', 1)[-1]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)
                removed.append(temp)
    return removed


def _same_content(path: str, data: bytes) -> bool:
    try:
        if os.path.getsize(path) != len(data):
            return False
        with open(path, 'rb') as handle:
            return handle.read() == data
    except OSError:
        return False


def _same_files(first: str, second: str, chunk: int = 1 << 20) -> bool:
    """Whether two files hold the same bytes (sizes first, then chunk by chunk)."""
    try:
        if os.path.getsize(first) != os.path.getsize(second):
            return False
        with open(first, 'rb') as a, open(second, 'rb') as b:
            while True:
                block = a.read(chunk)
                if block != b.read(chunk):
                    return False
                if not block:
                    return True
    except OSError:
        return False


class _AtomicFile(io.BufferedIOBase):
    """Writes to a temporary file beside the target; ``close`` commits it with os.replace."""

    def __init__(self, path: str, skip_identical: bool) -> None:
        super().__init__()
        self.path = path
        self.skip_identical = skip_identical
        self.temp = _temp_path(path)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        remove_stale_temps(path)
        self._raw = open(self.temp, 'wb')  # noqa: SIM115 (closed in close/discard)
        self.committed = False
        self.unchanged = False

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        return self._raw.write(data)

    def flush(self) -> None:
        if not self._raw.closed:
            self._raw.flush()

    def discard(self) -> None:
        if not self._raw.closed:
            self._raw.close()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.temp)
        super().close()

    def close(self) -> None:
        if self.closed:
            return
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        if self.skip_identical and _same_files(self.temp, self.path):
            os.remove(self.temp)
            self.unchanged = True
            super().close()
            return
        os.replace(self.temp, self.path)
        self.committed = True
        super().close()

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.discard()
            return False
        self.close()
        return False


def atomic_open(
    path: str,
    mode: str = 'w',
    encoding: str | None = 'utf-8',
    newline: str | None = None,
    skip_identical: bool = False,
) -> IO[Any]:
    """Open ``path`` for writing so that it is replaced in one step when the handle is closed.

    ``mode`` is ``'w'`` (text) or ``'wb'``. Leaving a ``with`` block through an exception
    discards the new content and keeps the old file. With ``skip_identical`` an unchanged
    content leaves the file on disk untouched.
    """
    if mode not in ('w', 'wb', 'wt'):
        raise ValueError(f'atomic_open: mode {mode!r}; expected "w" or "wb"')
    binary = _AtomicFile(path, skip_identical)
    if mode == 'wb':
        return binary
    text = io.TextIOWrapper(binary, encoding=encoding or 'utf-8', newline=newline)
    return _TextAtomic(text, binary)


class _TextAtomic:
    """A text wrapper whose ``with`` exit discards on error and commits otherwise."""

    def __init__(self, text: io.TextIOWrapper, binary: _AtomicFile) -> None:
        self._text = text
        self._binary = binary

    def __getattr__(self, name: str):
        return getattr(self._text, name)

    def __iter__(self):
        return iter(self._text)

    def close(self) -> None:
        if not self._binary.closed:
            self._text.flush()
            self._binary.close()

    @property
    def unchanged(self) -> bool:
        return self._binary.unchanged

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self._text.flush()
            self._binary.discard()
            return False
        self.close()
        return False


def atomic_write(path: str, data: bytes | str, skip_identical: bool = True) -> bool:
    """Write ``data`` to ``path`` atomically; return False when it was already identical."""
    raw = data.encode('utf-8') if isinstance(data, str) else data
    if skip_identical and _same_content(path, raw):
        return False
    with atomic_open(path, 'wb') as handle:
        handle.write(raw)
    return True


def atomic_copy(source: str, target: str) -> bool:
    """Copy ``source`` to ``target`` atomically (skipped when identical)."""
    with open(source, 'rb') as handle:
        return atomic_write(target, handle.read())


# --- ParlAI's PathManager.open, atomic inside atomic_writes() --------------------------------

_install_lock = threading.Lock()


def _install_path_manager_redirect() -> None:
    from parlai.utils.io import PathManager

    with _install_lock:
        if getattr(PathManager, '_parlai_ext_atomic', False):
            return
        original = PathManager.open

        def open_(path, mode='r', *args, **kwargs):
            if (
                getattr(_state, 'depth', 0) > 0
                and mode in ('w', 'wb', 'wt')
                and isinstance(path, str)
                and '://' not in path
            ):
                encoding = kwargs.get('encoding') or (args[1] if len(args) > 1 else None)
                newline = kwargs.get('newline')
                return atomic_open(path, mode, encoding, newline, skip_identical=True)
            return original(path, mode, *args, **kwargs)

        PathManager.open = open_
        PathManager._parlai_ext_atomic = True


@contextlib.contextmanager
def atomic_writes() -> Iterator[None]:
    """Within this block, ParlAI's ``PathManager.open(path, 'w'/'wb')`` writes atomically.

    Files whose new content equals the old are not rewritten. Nesting is allowed.
    """
    _install_path_manager_redirect()
    _state.depth = getattr(_state, 'depth', 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


def atomically(function):
    """Decorator: run ``function`` inside :func:`atomic_writes`."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with atomic_writes():
            return function(*args, **kwargs)

    return wrapper


# --- one writer per model file ----------------------------------------------------------------


class ModelFileLocked(RuntimeError):
    """Another process is training (writing) the same model file."""


class ModelFileLock:
    """Exclusive lock on ``<model_file>.lock``; re-entrant within one process."""

    _held: dict[str, list] = {}  # real path -> [file object, count]

    def __init__(self, model_file: str) -> None:
        self.model_file = model_file
        self.path = os.path.realpath(model_file) + '.lock'
        self.acquired = False

    def acquire(self) -> ModelFileLock:
        import fcntl

        held = self._held.get(self.path)
        if held is not None:
            held[1] += 1
            self.acquired = True
            return self
        os.makedirs(os.path.dirname(self.path) or '.', exist_ok=True)
        handle = open(self.path, 'a+')  # noqa: SIM115 (kept open while the lock is held)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                handle.close()
                raise
            handle.seek(0)
            owner = handle.read().strip() or 'unknown'
            handle.close()
            raise ModelFileLocked(
                f'{self.model_file} is being written by another training ({owner}; lock file '
                f'{self.path}). Two runs on one model file would overwrite each other: wait for '
                f'that run to end, stop it, or choose another --model-file.'
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f'pid {os.getpid()} on {os.uname().nodename}')
        handle.flush()
        self._held[self.path] = [handle, 1]
        self.acquired = True
        return self

    def release(self) -> None:
        if not self.acquired:
            return
        self.acquired = False
        held = self._held.get(self.path)
        if held is None:
            return
        held[1] -= 1
        if held[1] <= 0:
            del self._held[self.path]
            held[0].close()  # closing the descriptor drops the flock

    def __enter__(self) -> ModelFileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
