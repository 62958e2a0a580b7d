"""Helpers of the on-disk teachers' tests: build a teacher from command-line words, read all of
its episodes back through ParlAI's own ``get``."""

from __future__ import annotations

from typing import Any

from parlai.core.loader import load_teacher_module
from parlai.core.params import ParlaiParser


def make_teacher(task: str, *args: str, datatype: str = 'valid') -> Any:
    """The teacher of ``-t task -dt datatype *args``, built as ParlAI's scripts build it."""
    opt = ParlaiParser(True, False).parse_args(['-t', task, '-dt', datatype, *args])
    return load_teacher_module(task)(opt)


def episodes(teacher: Any) -> list[list[dict]]:
    """Every episode of ``teacher`` in order, each the list of its messages up to
    ``episode_done``."""
    result = []
    for episode_idx in range(teacher.num_episodes()):
        episode, entry = [], 0
        while True:
            message = teacher.get(episode_idx, entry)
            episode.append(message)
            entry += 1
            if message['episode_done']:
                break
        result.append(episode)
    return result
