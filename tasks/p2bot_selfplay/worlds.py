"""Worlds of ``-t p2bot_selfplay``: self-play fine-tuning (§3.2-3.3) and persona self-chat.

``parlai train_model -m p2bot_transmitter -t p2bot_selfplay --init-model <supervised> -mf M``
runs :class:`SelfPlayWorld` (``-dt train`` with a P2Bot transmitter; any other agent or
datatype gets ParlAI's ordinary :class:`~parlai.core.worlds.DialogPartnerWorld`, so validation
is supervised evaluation on the held-out episodes). Each parley is one REINFORCE update over
``--batchsize`` self-play dialogues:

1. Personas are paired at random: the user A speaks first with the first utterance of a data
   episode and that episode's partner persona ``w^A``; the learning agent B gets the persona
   ``w^B`` of another random episode (§3.2, Fig. 4).
2. For n = 1..N (``--selfplay-turns``, 3): B *samples* its reply token by token from the full
   output distribution (multinomial, at most ``--selfplay-max-len`` = 32 tokens; a reply that
   reaches the cap keeps its sampled tokens and has no END); A, a frozen copy of the
   supervised transmitter, answers with its normal inference (beam search + Eq. 3), except
   after B's last turn.
3. Rewards of each B turn: RS.1 (Eq. 6) the length-normalised log-likelihood of the reply
   under a frozen LM (``--rs1-lm``), RS.2 (Eq. 7) ``log p(y=1)`` of the NUP head, RS.3 (Eq. 8)
   the receiver's persona-perception scores (Eq. 9, Eq. 15) discounted with γ;
   ``R = λ1 R1 + λ2 R2 + λ3 R3`` (Eq. 10).
4. REINFORCE (Eq. 5) with the mini-batch mean reward as baseline (``--rl-baseline batch``; or
   the mean per turn, ``turn``, as the authors' code), through the learner's own optimizer,
   gradient clipping and lr scheduler (so ParlAI checkpoints and resumes it). A NaN or
   infinite reward stops the run (:class:`~parlai_ext.losses.reinforce.NonFiniteRewardError`).
   Under ``multiprocessing_train`` each worker plays its own ``--batchsize`` dialogues with
   its own baseline (its mini-batch mean) and the gradients are averaged over the workers.

Metrics (``parlai train_model`` logs them; ``--selfplay-log-file`` also writes them per
update): ``rs1 rs2 rs3 reward`` (means over B's turns), ``rl_loss``, ``sp_reply_len``.

Resuming (the same command after a crash: ParlAI loads ``<mf>.checkpoint``) keeps the frozen
user A of the first run (recorded as ``selfplay_user_model`` in the checkpoint's ``.opt``,
never the learner's own checkpoint) and drops the self-play log lines of the updates after the
checkpoint, which the resumed run redoes: the log holds each update once.

``parlai self_chat -mf <transmitter> -t p2bot_selfplay --personachat-file F`` uses
:class:`SelfChatWorld`: two random personas of the file and, as opener, the first utterance of
the episode whose partner persona the first speaker gets.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from typing import Any

import parlai.utils.logging as logging
import torch
from parlai.core.metrics import AverageMetric, SumMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.worlds import DialogPartnerWorld, World
from parlai.tasks.self_chat.worlds import SelfChatWorld as BaseSelfChatWorld
from parlai.utils.data import DatatypeHelper
from parlai.utils.distributed import get_rank, is_primary_worker
from parlai.utils.torch import padded_tensor

from parlai_ext.agents.p2bot import (
    HFLanguageModelScorer,
    P2BotTransmitterAgent,
    load_receiver,
    load_transmitter,
)
from parlai_ext.losses.p2bot import (
    discounted_persona_reward,
    reinforce_baseline,
    total_reward,
)
from parlai_ext.losses.reinforce import (
    average_gradients,
    reward_weighted_nll,
    sequence_log_probs,
)
from parlai_ext.tasks.p2bot_selfplay.agents import SupervisedTeacher


def _pair_personas(episodes: list[dict], rng: random.Random, index: int) -> dict[str, Any]:
    """User A = episode ``index``'s opener and partner persona; agent B = another persona."""
    episode = episodes[index]
    other = rng.choice([j for j in range(len(episodes)) if j != index])
    user_persona = episode['partner_persona']
    if not user_persona:  # a `self`-view file: no partner persona, take a third one
        user_persona = episodes[rng.choice([j for j in range(len(episodes)) if j != other])][
            'self_persona'
        ]
    return {
        'user_persona': list(user_persona),
        'agent_persona': list(episodes[other]['self_persona']),
        'opener': episode['first_utterance'],
    }


class SelfPlayWorld(World):
    """One parley = ``--batchsize`` self-play dialogues and one REINFORCE update of B."""

    def __init__(self, opt: Opt, agents: list, shared=None) -> None:
        if shared is not None:
            raise RuntimeError('the P2Bot self-play world cannot be shared or batched')
        super().__init__(opt, agents)
        self.teacher, self.learner = agents
        if not isinstance(self.learner, P2BotTransmitterAgent):
            raise TypeError('self-play needs a P2Bot transmitter (-m p2bot_transmitter)')
        self.rollouts = max(1, opt.get('p2bot_rollouts', opt.get('batchsize', 1)))
        self.turns = opt.get('selfplay_turns', 3)
        self.max_len = opt.get('selfplay_max_len', 32)
        self.lambdas = (opt['rs_lambda1'], opt['rs_lambda2'], opt['rs_lambda3'])
        self.gamma = opt['rs_gamma']
        self.episodes = self.teacher.selfplay_episodes()
        if len(self.episodes) < 3:
            raise ValueError('self-play needs at least 3 episodes to pair personas')
        # each worker of multiprocessing_train pairs personas on its own stream; torch (the
        # sampling) is reseeded per worker by compat fix 10 once TrainLoop has built this world
        seed = 1000 + self.learner._number_training_updates + 7919 * get_rank()
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.episodes_seen = 0
        self.last_dialogue: list[str] = []

        user_file = self._user_model_file(opt)
        own = opt.get('model_file')
        if own and os.path.abspath(user_file) in {
            os.path.abspath(own + suffix) for suffix in ('', '.checkpoint')
        }:
            raise ValueError(
                f'the frozen user A would be the learner itself ({user_file}); give the '
                'supervised transmitter with --selfplay-user-model'
            )
        logging.info(f'self-play: frozen user A = {user_file}')
        self.user = load_transmitter(user_file)
        if dict(self.user.dict.tok2ind) != dict(self.learner.dict.tok2ind):
            raise ValueError(f'the user model {user_file} has another dictionary than the learner')
        self.learner.opt['selfplay_user_model'] = user_file  # saved with the model: resume
        self.receiver = None
        if self.lambdas[2] != 0:
            if not opt.get('selfplay_receiver_model'):
                raise ValueError('RS.3 needs --selfplay-receiver-model (or --rs-lambda3 0)')
            self.receiver = load_receiver(opt['selfplay_receiver_model'])
        self.lm = None
        if self.lambdas[0] != 0 and opt.get('rs1_lm', 'user') != 'user':
            self.lm = HFLanguageModelScorer(
                opt['rs1_lm'], opt.get('rs1_lm_gguf_file'), opt.get('datapath')
            )
        elif self.lambdas[0] != 0:
            logging.warning(
                '--rs1-lm user: RS.1 (Eq. 6) scores the replies with the frozen supervised '
                'transmitter, i.e. the model the learner itself starts from, not an independent '
                "language model as the paper's GPT; give a separate LM with --rs1-lm <HF dir>"
            )
        self.baseline = opt.get('rl_baseline', 'batch')
        reinforce_baseline(torch.zeros(1, 1), self.baseline)  # checks the option up front
        # one line per update: the first worker's dialogues and rewards under DDP
        self.log_file = opt.get('selfplay_log_file') if is_primary_worker() else None
        if self.log_file:
            truncate_log(self.log_file, self.learner._number_training_updates)

    def _user_model_file(self, opt: Opt) -> str:
        """The frozen user A: given, remembered by the learner, remembered in the ``.opt`` of
        the model being resumed (``<mf>.checkpoint`` after a crash), or ``--init-model``."""
        init = opt.get('init_model')
        remembered = None
        if init and os.path.isfile(init + '.opt'):
            remembered = Opt.load(init + '.opt').get('selfplay_user_model')
        for candidate in (
            opt.get('selfplay_user_model'),
            self.learner.opt.get('selfplay_user_model'),
            remembered,
            init,
        ):
            if candidate:
                return candidate
        raise ValueError(
            'self-play needs the supervised transmitter: --init-model or --selfplay-user-model'
        )

    # ---------------------------------------------------------------------------- counters
    def num_examples(self) -> int:
        return len(self.episodes)

    def num_episodes(self) -> int:
        return len(self.episodes)

    def get_total_epochs(self) -> float:
        return self.episodes_seen / len(self.episodes)

    def epoch_done(self) -> bool:
        return False

    def get_task_agent(self):
        return self.teacher

    def get_model_agent(self):
        return self.learner

    def report(self) -> dict:
        return self.learner.report()

    def reset_metrics(self) -> None:
        self.learner.reset_metrics()

    def display(self) -> str:
        speakers = ['A (user)', 'B (learner)']
        return '\n'.join(f'{speakers[i % 2]}: {u}' for i, u in enumerate(self.last_dialogue))

    def _next_index(self) -> int:
        if not self.order:
            self.order = list(range(len(self.episodes)))
            self.rng.shuffle(self.order)
        return self.order.pop()

    # ----------------------------------------------------------------------------- rollout
    def parley(self) -> None:
        learner, user = self.learner, self.user
        pairs = [
            _pair_personas(self.episodes, self.rng, self._next_index())
            for _ in range(self.rollouts)
        ]
        dialogues = [[p['opener']] for p in pairs]
        contexts: list[list[torch.Tensor]] = [[] for _ in pairs]  # B's context at turn n
        replies: list[list[torch.Tensor]] = [[] for _ in pairs]  # B's sampled tokens
        for n in range(self.turns):
            turn_contexts = [
                learner.context_vec(p['agent_persona'], d) for p, d in zip(pairs, dialogues)
            ]
            # multinomial samples (P2BotTransmitterAgent.sample_replies): capped ones keep
            # their tokens, no END written over the last one
            sampled = learner.generate(turn_contexts, sample=True, max_len=self.max_len)
            for i, tokens in enumerate(sampled):
                contexts[i].append(turn_contexts[i])
                replies[i].append(tokens)
                dialogues[i].append(learner.decode_text(tokens))
            if n < self.turns - 1:
                user_contexts = [
                    user.context_vec(p['user_persona'], d) for p, d in zip(pairs, dialogues)
                ]
                for i, tokens in enumerate(user.generate(user_contexts)):
                    dialogues[i].append(user.decode_text(tokens))
        self.last_dialogue = dialogues[0]
        rewards, parts = self.rewards(pairs, dialogues, contexts, replies)
        loss = self.update(contexts, replies, rewards)
        self.episodes_seen += len(pairs)
        self._record(rewards, parts, loss, replies, pairs, dialogues)

    def rewards(self, pairs, dialogues, contexts, replies):
        """``R`` (Eq. 10) and its parts, each ``(rollouts, turns)``."""
        flat_replies = [r for rows in replies for r in rows]
        shape = (len(pairs), self.turns)
        zeros = torch.zeros(shape)
        r1 = r2 = r3 = zeros
        if self.lambdas[0] != 0:  # RS.1, Eq. 6
            if self.lm is not None:
                texts = [d[2 * n + 1] for d in dialogues for n in range(self.turns)]
                r1 = self.lm.score(texts).view(shape)
            else:
                empty = self.user.context_vec([], [])
                r1, _ = self.user.score_replies([empty] * len(flat_replies), flat_replies)
                r1 = r1.cpu().view(shape)
        if self.lambdas[1] != 0:  # RS.2, Eq. 7
            scorer = self.user if self.opt.get('rs2_model', 'user') == 'user' else self.learner
            scorer_contexts = [
                scorer.context_vec(p['agent_persona'], d[: 2 * n + 1])
                for p, d in zip(pairs, dialogues)
                for n in range(self.turns)
            ]
            _, r2 = scorer.score_replies(scorer_contexts, flat_replies)
            r2 = r2.cpu().view(shape)
        if self.lambdas[2] != 0:  # RS.3, Eq. 8-9
            agent_texts = [d[2 * n + 1] for d in dialogues for n in range(self.turns)]
            agent_personas = [p['agent_persona'] for p in pairs for _ in range(self.turns)]
            user_texts = [d[2 * n] for d in dialogues for n in range(self.turns)]
            user_personas = [p['user_persona'] for p in pairs for _ in range(self.turns)]
            r_agent = self.receiver.perception_scores(agent_texts, agent_personas).view(shape)
            r_user = self.receiver.perception_scores(user_texts, user_personas).view(shape)
            r3 = discounted_persona_reward(r_user, r_agent, self.gamma)
        return total_reward(r1, r2, r3, self.lambdas), (r1, r2, r3)

    def update(self, contexts, replies, rewards: torch.Tensor) -> float:
        """REINFORCE (Eq. 5) on ``rewards (rollouts, turns)``; the baseline is the mean reward
        of the mini-batch (§3.2) or of the turn (``--rl-baseline``).

        The log-probabilities are recomputed with gradients in eval mode (no dropout), i.e.
        under the distribution the replies were sampled from.
        """
        learner = self.learner
        model = learner._model()
        device = next(model.parameters()).device
        flat_contexts = [c for rows in contexts for c in rows]
        flat_replies = [r for rows in replies for r in rows]
        context, _ = padded_tensor(flat_contexts, pad_idx=learner.NULL_IDX)
        targets, _ = padded_tensor(flat_replies, pad_idx=learner.NULL_IDX)
        context, targets = context.to(device), targets.to(device)
        flat_rewards = rewards.reshape(-1).to(device)
        baseline = reinforce_baseline(rewards, self.baseline).reshape(-1).to(device)
        model.eval()
        learner.zero_grad()
        logits = model.mask_logits(model.transmitter(context, targets).lm_logits)
        log_probs, mask = sequence_log_probs(logits, targets, learner.NULL_IDX)
        loss = reward_weighted_nll(
            log_probs,
            mask,
            flat_rewards,
            baseline=baseline,
            normalise=self.opt.get('rl_normalise', 'mean'),
        )
        learner.backward(loss)
        average_gradients(model.parameters())  # the loss bypassed DDP's forward
        learner.update_params()
        model.train()
        return float(loss.item())

    def _record(self, rewards, parts, loss, replies, pairs, dialogues) -> None:
        metrics = self.learner.global_metrics
        count = rewards.numel()
        names = ('rs1', 'rs2', 'rs3')
        values = {name: float(part.sum()) / count for name, part in zip(names, parts)}
        values['reward'] = float(rewards.sum()) / count
        for name, part in zip(names, parts):
            metrics.add(name, AverageMetric(float(part.sum()), count))
        metrics.add('reward', AverageMetric(float(rewards.sum()), count))
        metrics.add('rl_loss', AverageMetric(loss))
        lengths = [len(r) for rows in replies for r in rows]
        metrics.add('sp_reply_len', AverageMetric(sum(lengths), len(lengths)))
        metrics.add('exs', SumMetric(len(pairs)))
        if self.log_file:
            record = {
                'update': self.learner._number_training_updates,
                **values,
                'rl_loss': loss,
                'sp_reply_len': sum(lengths) / len(lengths),
                'dialogue': dialogues[0],
                'user_persona': pairs[0]['user_persona'],
                'agent_persona': pairs[0]['agent_persona'],
            }
            with open(self.log_file, 'a', encoding='utf-8') as handle:
                handle.write(json.dumps(record) + '\n')


def truncate_log(path: str, updates: int) -> None:
    """Keep the self-play log records of updates ``<= updates`` (the model being resumed).

    A run killed after its last checkpoint logged updates that the resumed run redoes; their
    lines (and a line cut by the kill) are dropped, atomically, so every update appears once.
    """
    if not os.path.isfile(path):
        return
    with open(path, encoding='utf-8') as handle:
        lines = handle.read().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(record, dict) and record.get('update', 0) <= updates:
            kept.append(line)
    if len(kept) == len(lines):
        return
    logging.info(
        f'self-play log {path}: {len(lines) - len(kept)} lines after update {updates} dropped'
    )
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.selfplay_log.')
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as handle:
            handle.write(''.join(line + '\n' for line in kept))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class DefaultWorld(World):
    """``-t p2bot_selfplay``: self-play when training a P2Bot transmitter, else ParlAI's world.

    ``--batchsize`` is the number of self-play dialogues per update; the self-play world
    batches them itself, so ParlAI's BatchWorld must not wrap it (``create_task`` checks the
    batch size on the same opt right after building the world; we set it to 1 there).
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        return parser

    def __new__(cls, opt: Opt, agents=None, shared=None):
        model = agents[-1] if agents else None
        if (
            shared is None
            and isinstance(model, P2BotTransmitterAgent)
            and DatatypeHelper.is_training(opt.get('datatype', 'train'))
        ):
            world_opt = opt.copy()
            world_opt['p2bot_rollouts'] = opt.get('batchsize', 1)
            world = SelfPlayWorld(world_opt, agents)
            opt['batchsize'] = 1  # create_task's own copy: keeps BatchWorld away
            return world
        return DialogPartnerWorld(opt, agents, shared)


class SelfChatWorld(BaseSelfChatWorld):
    """``parlai self_chat -t p2bot_selfplay``: two random personas of the file + a data opener."""

    def init_contexts(self, shared=None) -> None:
        opt = self.opt.copy()
        opt['datatype'] = 'train:evalmode' if 'train' in opt['datatype'] else opt['datatype']
        self.episodes = SupervisedTeacher(opt).selfplay_episodes()
        self.rng = random.Random(self.opt.get('seed', 0))
        self._opener = None

    def get_contexts(self) -> list[str]:
        pair = _pair_personas(self.episodes, self.rng, self.rng.randrange(len(self.episodes)))
        self._opener = pair['opener']

        def lines(persona):
            return '\n'.join(f'your persona: {s}' for s in persona)

        return [lines(pair['user_persona']), lines(pair['agent_persona'])]

    def get_openers(self, episode_num: int) -> list[str] | None:
        if self.opt.get('seed_messages_from_task') or self.opt.get('seed_messages_from_file'):
            return super().get_openers(episode_num)
        return [self._opener] if self._opener else None
