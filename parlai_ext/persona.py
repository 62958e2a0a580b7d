"""ConvAI2's persona lines in ParlAI texts: ``your persona: ...`` and ``partner's persona: ...``.

ParlAI's PersonaChat / ConvAI2 teachers and self-chat contexts put a speaker's persona into
the first message as lines ``your persona: <sentence>`` (the speaker's own) and, in the
``both`` view, ``partner's persona: <sentence>`` (the other speaker's, gold). Agents that read
the persona back out of ParlAI's history strings (P2Bot's transmitter, PPG's free-chat path)
share :func:`split_persona_lines`; pure Python, no ParlAI.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

SELF_PREFIX = 'your persona:'
PARTNER_PREFIX = "partner's persona:"

PersonaKind = Literal['self', 'partner']


def persona_line(line: str, ignore_case: bool = False) -> tuple[PersonaKind, str] | None:
    """``(kind, sentence)`` of a persona line (``line`` already stripped), prefix removed and
    the sentence stripped; ``None`` for any other line. ``ignore_case`` also accepts e.g.
    ``Your persona:`` (a person typing in ``parlai interactive``)."""
    head = line.lower() if ignore_case else line
    if head.startswith(SELF_PREFIX):
        return 'self', line[len(SELF_PREFIX) :].strip()
    if head.startswith(PARTNER_PREFIX):
        return 'partner', line[len(PARTNER_PREFIX) :].strip()
    return None


class PersonaSplit(NamedTuple):
    """What :func:`split_persona_lines` finds in a dialogue's history strings."""

    self_persona: list[str]
    """the ``your persona:`` sentences, in order"""
    partner_persona: list[str]
    """the ``partner's persona:`` sentences (gold; only in ``both``-view texts)"""
    turns: list[list[str]]
    """per history entry that has any, its other non-empty lines (stripped), in order"""


def split_persona_lines(entries: Sequence[str], ignore_case: bool = False) -> PersonaSplit:
    """Split ParlAI history strings into persona sentences and dialogue lines.

    Persona lines are recognised anywhere in an entry (a self-chat context is an entry of
    persona lines only; a teacher's first message has them before the utterance). An entry
    left with no other non-empty line gives no turn.
    """
    found: dict[PersonaKind, list[str]] = {'self': [], 'partner': []}
    turns: list[list[str]] = []
    for entry in entries:
        kept = []
        for line in entry.split('\n'):
            line = line.strip()
            persona = persona_line(line, ignore_case)
            if persona is not None:
                found[persona[0]].append(persona[1])
            elif line:
                kept.append(line)
        if kept:
            turns.append(kept)
    return PersonaSplit(found['self'], found['partner'], turns)
