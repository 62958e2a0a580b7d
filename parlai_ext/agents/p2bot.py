"""ParlAI glue for P2Bot's transmitter (Liu et al., ACL 2020): ``-m p2bot_transmitter``.

- :class:`P2BotTransmitterAgent` - a :class:`~parlai.core.torch_generator_agent.TorchGeneratorAgent`
  over :class:`~parlai_ext.modules.p2bot.Transmitter`: input ``[PS] persona [P] partner
  [S] self ... -> response``, loss = MLE (Eq. 1) + the next-utterance prediction (NUP) loss
  against one sampled distractor (another reply), ParlAI's beam search / sampling with the
  finished hypotheses reranked by Eq. 3, and ``--rank-candidates true`` ranking by Eq. 3
  (hits@1). From scratch (the project's prefix-LM transformer) or from a local Hugging Face
  causal LM (``--hf-model-dir``, optionally ``--hf-gguf-file``). Self-play replies are sampled
  with :func:`~parlai_ext.modules.p2bot.sample_responses` (:meth:`sample_replies`).
- The network side (dictionary, :class:`P2BotTransmitterModel`, RS.1's
  :class:`HFLanguageModelScorer`, :func:`load_frozen`) is :mod:`parlai_ext.agents.p2bot_model`;
  the receiver (``-m p2bot_receiver``) :mod:`parlai_ext.agents.p2bot_receiver`. Their names are
  importable from here too.
"""

from __future__ import annotations

import collections
import copy
import os
import random
from collections.abc import Sequence

import torch
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch
from parlai.core.torch_generator_agent import TorchGeneratorAgent
from parlai.utils.misc import warn_once
from parlai.utils.torch import padded_tensor

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.generation import record_generator_metrics
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.p2bot_model import (
    CLS_TOKEN,
    P2BOT_TOKENS,
    PARTNER_TOKEN,
    PERSONA_TOKEN,
    SELF_TOKEN,
    HFLanguageModelScorer,
    P2BotDictionaryAgent,
    P2BotTransmitterModel,
    _fit_positions_to_hf,
    load_frozen,
)
from parlai_ext.agents.unified_transformer import add_transformer_args, default_truncation
from parlai_ext.losses.p2bot import nup_loss
from parlai_ext.modules.p2bot import eq3_score, sample_responses
from parlai_ext.persona import split_persona_lines

SHARED_LABELS = 'p2bot_recent_labels'  # share() key of the training replies (distractor pool)

# options copied from --init-model's .opt so `-m p2bot_transmitter --init-model X` rebuilds X
ARCH_KEYS = (
    'n_layers',
    'embedding_size',
    'n_heads',
    'ffn_size',
    'n_positions',
    'activation',
    'dropout',
    'attention_dropout',
    'relu_dropout',
    *hf_glue.HF_ARCH_KEYS,
    'text_truncate',
    'label_truncate',
    'persona_truncate',
    'use_persona',
    'nup_pmi',
    'dict_tokenizer',
    'dict_lower',
)


# =============================================================================== transmitter


def split_history(raw_turns: Sequence[str]) -> tuple[list[str], list[tuple[bool, str]]]:
    """Own persona sentences and the dialogue turns from ParlAI's history strings.

    ``your persona:`` lines (anywhere, as ParlAI's PersonaChat teachers and self-chat contexts
    put them) form the persona; ``partner's persona:`` lines are dropped (the transmitter is
    conditioned on its own persona, §3.1). The remaining lines of each history entry, joined
    by spaces, are one turn. The last turn is the partner's (the message being answered), so
    speakers alternate backwards from it: ``(is_self, text)`` in chronological order.
    """
    persona, _, lines = split_persona_lines(raw_turns)
    texts = [' '.join(kept) for kept in lines]
    last = len(texts) - 1
    return persona, [((last - i) % 2 == 1, text) for i, text in enumerate(texts)]


class P2BotTransmitterAgent(
    hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchGeneratorAgent
):
    """P2Bot's transmitter (§3.1): persona-conditioned LM + next-utterance prediction.

    Example::

        parlai train_model -m p2bot_transmitter -t p2bot_selfplay:supervised \\
            --personachat-file valid_both_original_no_cands.txt -mf /tmp/tx
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'P2Bot transmitter (from scratch: prefix-LM transformer)')
        group = parser.add_argument_group('P2Bot transmitter')
        hf_glue.add_hf_args(group, 'causal LM (AutoModelForCausalLM)')
        group.add_argument(
            '--persona-truncate',
            type=int,
            default=128,
            help='at most this many persona tokens in the context (the history gets the rest '
            'of --text-truncate, newest turns first)',
        )
        group.add_argument(
            '--use-persona',
            type='bool',
            default=True,
            help='condition on the own persona; false = the "− Persona" variant of Table 3 '
            '(dialogue generation without personas: the context keeps the [PS] marker and the '
            'history only). Saved with the model; self-play and evaluation inherit it',
        )
        group.add_argument(
            '--shuffle-persona',
            type='bool',
            default=False,
            help="shuffle the persona sentences of training examples (authors' code)",
        )
        group.add_argument('--mle-coef', type=float, default=1.0, help='weight of Eq. 1')
        group.add_argument(
            '--nup-coef', type=float, default=1.0, help='weight of the NUP loss (§3.1)'
        )
        group.add_argument(
            '--nup-pmi',
            type='bool',
            default=False,
            help='(--hf-model-dir only; not in the paper) the NUP logit of "next utterance" '
            'also reads a·PMI, PMI = log p(x|w,h)/|x| − log p(x|[PS])/|x| (a learned, from 1): '
            "how much the context raises the reply's Eq. 2 likelihood. Saved with the model",
        )
        group.add_argument(
            '--rerank-alpha',
            type=float,
            default=0.1,
            help='α of Eq. 3: α·log p(x)/|x| + (1−α)·log p(y=1); ranks candidates '
            '(--rank-candidates) and the finished beam hypotheses (1 = Eq. 2 only)',
        )
        group.add_argument(
            '--rerank-beams',
            type='bool',
            default=True,
            help='choose the reply among the finished hypotheses by Eq. 3',
        )
        parser.set_defaults(
            learningrate=5e-4,
            optimizer='adamw',
            inference='beam',
            beam_size=2,
            label_truncate=32,
        )
        if (partial_opt or {}).get('task') == 'p2bot_selfplay':
            parser.set_defaults(learningrate=1e-6)  # self-play fine-tuning (§5.1)
        init = (partial_opt or {}).get('init_model')
        if init and os.path.isfile(init + '.opt'):
            saved = Opt.load(init + '.opt')
            parser.set_defaults(**{k: saved[k] for k in ARCH_KEYS if k in saved})
        return parser

    @staticmethod
    def dictionary_class():
        return P2BotDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        self.hf_fresh = True  # no model file follows: HF backbones take pretrained weights
        if hf_glue.hf_model_name(opt) and not shared:
            opt = copy.deepcopy(opt)
            self.hf_fresh = hf_glue.is_fresh(self, opt, shared)  # also sets dict_file
            opt = _fit_positions_to_hf(opt)
        super().__init__(default_truncation(opt), shared)
        self.rng = random.Random(opt.get('seed') or 0)
        # distractor pools (§3.1), shared with every copy (batch rows, the validation world):
        # training replies, and evaluation replies (kept apart: never a training distractor)
        if shared and SHARED_LABELS in shared:
            self.recent_labels, self.recent_eval_labels = shared[SHARED_LABELS]
        else:
            self.recent_labels: collections.deque[str] = collections.deque(maxlen=2000)
            self.recent_eval_labels: collections.deque[str] = collections.deque(maxlen=2000)
        self.persona_idx = self.dict[PERSONA_TOKEN]
        self.partner_idx = self.dict[PARTNER_TOKEN]
        self.self_idx = self.dict[SELF_TOKEN]

    def share(self):
        shared = super().share()
        shared[SHARED_LABELS] = (self.recent_labels, self.recent_eval_labels)
        return shared

    def build_dictionary(self):
        d = super().build_dictionary()
        missing = [t for t in P2BOT_TOKENS if t not in d.tok2ind]
        if missing:
            raise ValueError(f'dictionary {type(d).__name__} lacks P2Bot tokens {missing}')
        return d

    def build_model(self) -> P2BotTransmitterModel:
        device = 'cuda' if getattr(self, 'use_cuda', False) else 'cpu'
        return P2BotTransmitterModel(self.opt, self.dict, fresh=self.hf_fresh, device=device)

    # ----------------------------------------------------------------------- input format
    def build_context(self, persona: Sequence[str], turns: Sequence[tuple[bool, str]]) -> list:
        """``[PS] p_1 .. p_L [P] x_1 [S] y_1 [P] x_2 ...`` truncated to --text-truncate.

        The persona keeps at most --persona-truncate tokens; the history fills the rest of the
        budget from the newest turn backwards (the oldest kept turn is cut from the left).
        With ``--use-persona false`` (Table 3, "− Persona") the persona sentences are left out.
        """
        budget = self.text_truncate or 10**9
        persona_vec = [self.persona_idx]
        for sentence in persona if self.opt.get('use_persona', True) else ():
            persona_vec += self.dict.txt2vec(sentence)
        persona_vec = persona_vec[: max(1, min(self.opt.get('persona_truncate', 128), budget))]
        history: list[int] = []
        remaining = budget - len(persona_vec)
        for is_self, text in reversed(turns):
            if remaining <= 0:
                break
            turn = [self.self_idx if is_self else self.partner_idx] + self.dict.txt2vec(text)
            turn = turn[-remaining:]
            history = turn + history
            remaining -= len(turn)
        return persona_vec + history

    def _set_text_vec(self, obs, history, truncate):
        if 'text' not in obs or 'text_vec' in obs:
            return super()._set_text_vec(obs, history, truncate)
        raw = history.history_raw_strings
        if not raw:
            return obs
        persona, turns = split_history(raw)
        if self.opt.get('shuffle_persona') and 'labels' in obs:
            persona = list(persona)
            self.rng.shuffle(persona)
        full = self.build_context(persona, turns)
        obs['full_text'] = history.get_history_str()
        obs['text_vec'] = torch.LongTensor(full)
        obs['full_text_vec'] = obs['text_vec']
        obs.force_set('context_original_length', len(full))
        obs.force_set('context_truncate_rate', False)
        obs.force_set('context_truncated_length', 0)
        return obs

    def vectorize(self, obs, history, **kwargs):
        obs = super().vectorize(obs, history, **kwargs)
        labels = obs.get('labels', obs.get('eval_labels'))
        if labels and 'text_vec' in obs:
            distractor = self._pick_distractor(obs, labels)
            obs['p2bot_distractor'] = distractor
            obs['p2bot_distractor_vec'] = self._vectorize_distractor(distractor)
        return obs

    def _vectorize_distractor(self, text: str) -> torch.LongTensor:
        return self._vectorize_text(text, False, True, self.label_truncate, False)

    def _pick_distractor(self, obs, labels) -> str:
        """One distractor response (§3.1): a wrong label candidate, else another reply seen
        earlier: a training reply (training, and validation inside ``train_model``), else an
        earlier evaluation reply (``eval_model`` of a loaded model). ``''`` when there is none
        yet; :meth:`batchify` then takes another row's reply.
        """
        gold = set(labels)
        pool = [c for c in obs.get('label_candidates') or () if c not in gold]
        for seen in (self.recent_labels, self.recent_eval_labels):
            if not pool:
                pool = [r for r in seen if r not in gold]
        choice = self.rng.choice(pool) if pool else ''
        (self.recent_labels if 'labels' in obs else self.recent_eval_labels).append(labels[0])
        return choice

    @staticmethod
    def _batch_distractor(golds: Sequence[Sequence[str]], row: int) -> str:
        """The reply of the next row of the batch (cyclically) that is not one of ``row``'s."""
        for step in range(1, len(golds)):
            other = golds[(row + step) % len(golds)]
            if other and other[0] not in golds[row]:
                return other[0]
        return ''

    def batchify(self, obs_batch, sort=False):
        batch = super().batchify(obs_batch, sort)
        if batch.batchsize and batch.label_vec is not None:
            rows = [obs_batch[i] for i in batch.valid_indices]
            golds = [list(o.get('labels', o.get('eval_labels')) or ()) for o in rows]
            vecs = []
            for k, obs in enumerate(rows):
                vec = obs.get('p2bot_distractor_vec', self.EMPTY)
                if not obs.get('p2bot_distractor'):  # no reply seen yet: an empty distractor
                    other = self._batch_distractor(golds, k)
                    vec = self._vectorize_distractor(other) if other else vec
                vecs.append(vec)
            batch.distractor_vec, _ = self._pad_tensor(vecs, is_label=True)
        return batch

    # ----------------------------------------------------------------------------- losses
    def compute_loss(self, batch, return_output=False):
        """MLE (Eq. 1) + NUP against one distractor (§3.1); ParlAI's loss/ppl metrics."""
        if batch.label_vec is None:
            raise ValueError('Cannot compute loss without a label.')
        # through self.model's forward: under DDP that is what all-reduces the gradients (the
        # distractor pass below reuses the encoded context, inside the same backward)
        scores, preds, state, nup_logits = self.model(batch.text_vec, ys=batch.label_vec)
        model = self._model()
        labels = batch.label_vec
        loss_per_token = self.criterion(scores.reshape(-1, scores.size(-1)), labels.view(-1))
        loss_per_token = loss_per_token.view(labels.shape)
        mle = record_generator_metrics(self, batch, loss_per_token, preds)
        loss = self.opt.get('mle_coef', 1.0) * mle
        distractors = getattr(batch, 'distractor_vec', None)
        if distractors is not None:
            with model.autocast(labels):
                negative = model.transmitter(None, distractors.to(labels.device), state=state)
            nup = nup_loss(nup_logits, negative.nup_logits)
            positive_right = nup_logits.argmax(-1) == 1
            negative_right = negative.nup_logits.argmax(-1) == 0
            # the comparison Eq. 3 makes: the true reply's p(y=1) above the distractor's
            margin = (nup_logits[:, 1] - nup_logits[:, 0]) - (
                negative.nup_logits[:, 1] - negative.nup_logits[:, 0]
            )
            self.record_local_metric(
                'nup_pair_acc', AverageMetric.many((margin > 0).long().tolist())
            )
            self.record_local_metric('nup_loss', AverageMetric.many([nup.item()] * len(labels)))
            self.record_local_metric(
                'nup_acc',
                [
                    AverageMetric(right, 2)
                    for right in (positive_right.long() + negative_right.long()).tolist()
                ],
            )
            loss = loss + self.opt.get('nup_coef', 1.0) * nup
        if return_output:
            return loss, (scores, preds, state)
        return loss

    # ------------------------------------------------------------------------- inference
    def _model(self) -> P2BotTransmitterModel:
        return self.model.module if hasattr(self.model, 'module') else self.model

    def _eq3(self, state, row: int, responses: list[torch.Tensor]):
        """Eq. 3 scores of ``responses`` (token ids ending with END) after context ``row``."""
        model = self._model()
        targets, _ = padded_tensor(responses, pad_idx=self.NULL_IDX)
        targets = targets.to(next(model.parameters()).device)
        index = torch.full((len(responses),), row, dtype=torch.long, device=targets.device)
        lennorm, nup = model.score(None, targets, model.reorder_encoder_states(state, index))
        return eq3_score(lennorm, nup, self.opt.get('rerank_alpha', 0.1))

    def rank_eval_label_candidates(self, batch, batchsize):
        """Rank the label candidates by Eq. 3 (hits@1 over PersonaChat's 20 candidates)."""
        if batch.candidate_vecs is None:  # e.g. self-chat with a model trained to rank
            return None, None
        state = self._model().encoder(batch.text_vec)
        choices, choice_scores = [], []
        for i in range(batchsize):
            scores = self._eq3(state, i, list(batch.candidate_vecs[i]))
            sorted_scores, order = scores.sort(descending=True)
            choices.append([batch.candidates[i][o] for o in order.tolist()])
            choice_scores.append(sorted_scores.tolist())
        return choices, choice_scores

    def _rerank_beams(self, batch, n_best_beam_preds_scores):
        """Pick the reply among the finished hypotheses by Eq. 3 (§3.1)."""
        if not self.opt.get('rerank_beams', True):
            return n_best_beam_preds_scores
        state = self._model().encoder(batch.text_vec)
        reranked = []
        for i, hypotheses in enumerate(n_best_beam_preds_scores):
            if len(hypotheses) < 2:
                reranked.append(hypotheses)
                continue
            responses = [
                tokens[1:] if tokens[0] == self.START_IDX else tokens for tokens, *_ in hypotheses
            ]
            scores = self._eq3(state, i, responses)
            order = scores.argsort(descending=True).tolist()
            reranked.append([(hypotheses[o][0], scores[o], *hypotheses[o][2:]) for o in order])
        return reranked

    # ----------------------------------------------------------- self-play helper methods
    def context_vec(self, persona: Sequence[str], turns: Sequence[str]) -> torch.LongTensor:
        """The context of a speaker with ``persona`` whose partner said ``turns[-1]`` last."""
        last = len(turns) - 1
        return torch.LongTensor(
            self.build_context(persona, [((last - i) % 2 == 1, t) for i, t in enumerate(turns)])
        )

    def _pad_contexts(self, contexts: Sequence[torch.Tensor]) -> torch.Tensor:
        padded, _ = padded_tensor(list(contexts), pad_idx=self.NULL_IDX)
        return padded.to(next(self._model().parameters()).device)

    @torch.no_grad()
    def sample_replies(
        self,
        contexts: Sequence[torch.Tensor],
        max_len: int,
        generator: torch.Generator | None = None,
    ) -> list[torch.Tensor]:
        """Self-play replies (§3.2): multinomial samples over the whole distribution, in eval mode.

        Each reply is the token ids actually sampled (no START): it ends with END, or, when it
        reached ``max_len`` first, with its last sampled token (ParlAI's search would overwrite
        that token with END, and REINFORCE would then score an END that was never drawn).
        """
        model = self._model()
        was_training = self.model.training
        self.model.eval()
        try:
            rows = sample_responses(
                model.transmitter, self._pad_contexts(contexts), max_len, model.banned, generator
            )
        finally:
            self.model.train(was_training)
        replies = []
        for row in rows.cpu():
            ends = (row == self.END_IDX).nonzero()
            replies.append(row[: int(ends[0]) + 1] if len(ends) else row)
        return replies

    @torch.no_grad()
    def generate(
        self, contexts: Sequence[torch.Tensor], sample: bool = False, max_len: int | None = None
    ) -> list[torch.Tensor]:
        """Replies (token ids, no START): sampled (:meth:`sample_replies`), or by --inference
        + Eq. 3 (ending with END)."""
        max_len = max_len or self.label_truncate or 32
        if sample:
            return self.sample_replies(contexts, max_len)
        was_training = self.model.training
        self.model.eval()
        text_vec = self._pad_contexts(contexts)
        batch = Batch(batchsize=len(contexts), text_vec=text_vec)
        try:
            preds, _ = self._generate(batch, self.beam_size, max_len)
        finally:
            self.model.train(was_training)
        replies = []
        for tokens, *_ in preds:
            tokens = tokens[1:] if tokens[0] == self.START_IDX else tokens
            replies.append(tokens.cpu())
        return replies

    def decode_text(self, tokens: torch.Tensor) -> str:
        return self._v2t(tokens)

    @torch.no_grad()
    def score_replies(
        self, contexts: Sequence[torch.Tensor], replies: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p(x)/|x|, log p(y=1))`` of each (context, reply) pair, without gradients."""
        was_training = self.model.training
        self.model.eval()
        try:
            targets, _ = padded_tensor(list(replies), pad_idx=self.NULL_IDX)
            device = next(self._model().parameters()).device
            return self._model().score(self._pad_contexts(contexts), targets.to(device))
        finally:
            self.model.train(was_training)


def load_transmitter(model_file: str, overrides: dict | None = None) -> P2BotTransmitterAgent:
    """A trained transmitter, frozen (the self-play user, RS.1's and RS.2's scorer)."""
    return load_frozen(model_file, P2BotTransmitterAgent, 'P2Bot transmitter', overrides)


# the class names ParlAI derives from the short names (`p2bot_transmitter` -> P2botTransmitterAgent)
P2botTransmitterAgent = P2BotTransmitterAgent

_RECEIVER_NAMES = ('P2BotReceiverAgent', 'P2botReceiverAgent', 'load_receiver')


def __getattr__(name: str):
    """The receiver's names, from :mod:`parlai_ext.agents.p2bot_receiver` (imported lazily:
    that module imports this one); ``P2BotHFDictionaryAgent`` from
    :mod:`parlai_ext.agents.p2bot_hf_dict` (it imports ``transformers``)."""
    if name in _RECEIVER_NAMES:
        from parlai_ext.agents import p2bot_receiver

        return getattr(p2bot_receiver, name)
    if name == 'P2BotHFDictionaryAgent':  # imports transformers: only when asked for
        from parlai_ext.agents.p2bot_hf_dict import P2BotHFDictionaryAgent

        return P2BotHFDictionaryAgent
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = [
    'CLS_TOKEN',
    'P2BOT_TOKENS',
    'PARTNER_TOKEN',
    'PERSONA_TOKEN',
    'SELF_TOKEN',
    'P2BotDictionaryAgent',
    'P2BotTransmitterModel',
    'load_frozen',
    '_fit_positions_to_hf',
    'P2BotTransmitterAgent',
    'HFLanguageModelScorer',
    'load_transmitter',
    'split_history',
    'warn_once',
]
