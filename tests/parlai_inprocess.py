"""A ParlAI script in this process, as the command line would run it (tests only).

Most command-line tests need the stock ``parlai`` executable once; their other trainings and
evaluations can run here and save a start-up of torch + ParlAI each (several seconds on a loaded
2-core machine). :func:`run_script` returns what :func:`conftest.run_parlai` returns, with the
messages of ParlAI's logger (progress, reports) as ``stdout``.
"""

from __future__ import annotations

import logging
import subprocess

import parlai.utils.logging as parlai_logging


class LogLines(logging.Handler):
    """Collects the messages of ParlAI's logger from INFO up (what the command line prints)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_script(script, *args: str) -> subprocess.CompletedProcess:
    """``script.main(*args)`` (e.g. ``TrainModel``, the command line's arguments) in this
    process; ``stdout`` holds the log messages, ``returncode`` is 0 (a failure raises)."""
    records = LogLines()
    parlai_logging.logger.addHandler(records)
    try:
        script.main(*args)
    finally:
        parlai_logging.logger.removeHandler(records)
    return subprocess.CompletedProcess(list(args), 0, '\n'.join(records.lines) + '\n', '')
