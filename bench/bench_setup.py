"""What the benchmark scripts do the same way before and after their measurements.

- :func:`task_with_dictionary`: the benchmark task (DailyDialog, else ``ext_demo``) and one
  ParlAI dictionary of it in a fresh working folder, shared by every compared agent;
- :func:`write_and_print_results`: the ``<stem>.json`` / ``<stem>.md`` files of a run (default
  stem ``runs/bench/<script>[-quick]-<time>``), then the markdown and where it went.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import configs
from harness import default_out_stem, write_results


def task_with_dictionary(
    data: str | None, prefix: str, no_start: bool = False
) -> tuple[list[str], str, str]:
    """The task options of ``data`` (:func:`configs.task_args`), a new working folder
    (``tempfile.mkdtemp(prefix=prefix)``) and ``<folder>/dict`` built from the task's training
    data.

    :return: ``(task_args, workdir, dict_file)``.
    """
    task = configs.task_args(data, no_start=no_start)
    workdir = tempfile.mkdtemp(prefix=prefix)
    dict_file = os.path.join(workdir, 'dict')
    configs.build_dictionary(task, dict_file)
    return task, workdir, dict_file


def write_and_print_results(
    script: str, out: str | None, quick: bool, data: dict[str, Any], markdown: str
) -> tuple[str, str]:
    """Write ``data`` and ``markdown`` to ``out`` (an output stem; default
    ``runs/bench/<script>[-quick]-<time>``) with :func:`harness.write_results`, print the
    markdown and both paths.

    :param script: the benchmark's ``__file__`` (names the default stem).
    :return: the paths of the ``.json`` and the ``.md`` file.
    """
    stem = out or default_out_stem(script, quick)
    paths = write_results(stem, data, markdown)
    print('\n' + markdown + f'\n\n(written {paths[0]} and {paths[1]})')
    return paths
