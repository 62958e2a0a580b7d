"""``-t ppg_ext[:response|persona|critic]``: the data of PPG (Lu et al., NAACL 2022).

Unofficial re-implementation. Reads a PersonaChat / ConvAI2 file of the ``both`` view (self
and partner persona lines) with ``personachat_ext``'s strict parser and options
(``--personachat-file``, ``--personachat-data-dir``) and gives one single-message episode per
dialogue turn, the whole context inside it, so that any agent sees the same input:

- ``ppg_ext`` / ``ppg_ext:response``: the DRG task (§3.2): text = :func:`drg_source` with the
  gold partner personas, label = the reply;
- ``ppg_ext:persona``: the PPG task (§3.1): text = :func:`ppg_source` (context + self
  personas), label = the complete gold partner persona profile;
- ``ppg_ext:critic``: the critic's (persona, response) pairs with speaker-swapped negatives
  (§3.3), labels ``1`` / ``0``; each dialogue once, although ConvAI2's train file holds it
  from both sides (``--critic-deduplicate``).

Every message of ``response`` and ``persona`` also carries ``self_persona`` and
``partner_persona`` (lists of sentences), ``context`` (the utterances so far, the partner's
latest last), ``response`` (the gold reply) and ``turn`` (1-based), which the PPG agents use to
build their inputs (e.g. with generated partner personas).

``--ppg-valid-episodes N`` cuts one file into parts: the last N episodes are ``valid`` and
``test``, the others ``train`` (used for the 800-episode ConvAI2 ``dev800`` file: 700/100).
``--ppg-turn N`` keeps only the examples whose context holds the first N turns (cold start, §5.2).
"""

from __future__ import annotations

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from parlai_ext.modules.ppg import (
    critic_pairs,
    drg_source,
    persona_text,
    ppg_source,
    unique_dialogues,
)
from parlai_ext.tasks.personachat.agents import Episode, PersonachatTeacher, parse_fbdialog

TASK = 'ppg_ext'


def episode_turn_fields(episode: Episode) -> list[dict]:
    """The structured fields of each turn of one episode (context grows turn by turn)."""
    rows, context = [], []
    for number, turn in enumerate(episode.turns, start=1):
        context = [*context, turn.text]
        rows.append(
            {
                'self_persona': list(episode.self_persona),
                'partner_persona': list(episode.partner_persona),
                'context': list(context),
                'response': turn.labels[0],
                'labels': list(turn.labels),
                'turn': number,
            }
        )
        context = [*context, turn.labels[0]]
    return rows


class PpgTeacher(PersonachatTeacher):
    """Base: a ``both`` view file, split and turn filters, one kind of example."""

    task_name = TASK
    view = 'both'
    kind = 'response'

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = parser.add_argument_group('PPG data (parlai-ext)')
        group.add_argument(
            '--ppg-persona-set',
            choices=['original', 'revised'],
            default='original',
            help='PERSONACHAT-ORI or -REV files (default file lookup only)',
        )
        group.add_argument(
            '--ppg-valid-episodes',
            type=int,
            default=0,
            help='>0: the last N episodes of the file are valid/test and the rest train '
            '(one file for every datatype, e.g. dev800: 700/100); 0: the file as it is',
        )
        group.add_argument(
            '--ppg-turn',
            type=int,
            default=0,
            help='>0: only the examples whose context holds the first N turns (cold start)',
        )
        group.add_argument(
            '--critic-persona',
            choices=['self', 'partner'],
            default='self',
            help="ppg_ext:critic: pair responses with their speaker's own persona (the "
            "paper's choice, §3.3 footnote 3) or with the speaker's partner's persona",
        )
        group.add_argument(
            '--critic-deduplicate',
            type='bool',
            default=True,
            help="ppg_ext:critic: count each dialogue once (ConvAI2's train file holds every "
            'dialogue twice, once from each side, which would give every pair twice)',
        )
        return parser

    @property
    def persona(self) -> str:  # type: ignore[override]
        return self.opt.get('ppg_persona_set') or 'original'

    @property
    def sub_name(self) -> str:  # type: ignore[override]
        return self.kind

    def option_prefixes(self) -> tuple[str, ...]:
        return (*super().option_prefixes(), 'ppg_', 'critic_')

    def split_episodes(self, episodes: list[Episode]) -> list[Episode]:
        held_out = int(self.opt.get('ppg_valid_episodes') or 0)
        if held_out <= 0:
            return episodes
        if held_out >= len(episodes):
            raise ValueError(
                f'--ppg-valid-episodes {held_out} leaves no training episode '
                f'({len(episodes)} in {self.sources[0]})'
            )
        return episodes[:-held_out] if self.split == 'train' else episodes[-held_out:]

    def load_episodes(self) -> list[list[dict]]:
        episodes = parse_fbdialog(self.sources[0], self.view, False, self.malformed)
        episodes = self.split_episodes(episodes)
        turn_filter = int(self.opt.get('ppg_turn') or 0)
        out = []
        for episode in episodes:
            for row in episode_turn_fields(episode):
                if turn_filter and row['turn'] != turn_filter:
                    continue
                out += [[m] for m in self.messages(row)]
        return out

    def messages(self, row: dict) -> list[dict]:
        raise NotImplementedError


class ResponseTeacher(PpgTeacher):
    """``ppg_ext:response``: DRG examples (§3.2), input with the gold partner personas."""

    kind = 'response'

    def messages(self, row: dict) -> list[dict]:
        partner = persona_text(row['partner_persona'])
        text = drg_source(row['context'], row['self_persona'], partner)
        return [{**row, 'text': text}]


class PersonaTeacher(PpgTeacher):
    """``ppg_ext:persona``: PPG examples (§3.1), label = the complete partner persona."""

    kind = 'persona'

    def messages(self, row: dict) -> list[dict]:
        text = ppg_source(row['context'], row['self_persona'])
        return [{**row, 'text': text, 'labels': [persona_text(row['partner_persona'])]}]


class CriticTeacher(PpgTeacher):
    """``ppg_ext:critic``: (persona, response, label) pairs of §3.3, one per message."""

    kind = 'critic'

    def load_episodes(self) -> list[list[dict]]:
        episodes = parse_fbdialog(self.sources[0], self.view, False, self.malformed)
        episodes = self.split_episodes(episodes)
        which = self.opt.get('critic_persona') or 'self'
        views = [
            (e.self_persona, e.partner_persona, [(t.text, t.labels[0]) for t in e.turns])
            for e in episodes
        ]
        if self.opt.get('critic_deduplicate', True):
            views = [views[i] for i in unique_dialogues(views)]
        out = []
        for self_persona, partner_persona, turns in views:
            for pair in critic_pairs(self_persona, partner_persona, turns, which):
                persona = persona_text(pair.persona)
                out.append(
                    [
                        {
                            'text': f'{persona}\n{pair.response}',
                            'labels': [str(pair.label)],
                            'persona': persona,
                            'response': pair.response,
                        }
                    ]
                )
        return out


class DefaultTeacher(ResponseTeacher):
    """``ppg_ext`` = ``ppg_ext:response``."""
