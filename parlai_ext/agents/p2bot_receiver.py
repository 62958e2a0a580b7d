"""ParlAI glue for P2Bot's receiver (Liu et al., ACL 2020, §4): ``-m p2bot_receiver``.

:class:`P2BotReceiverAgent` - a :class:`~parlai.core.torch_agent.TorchAgent` over
:class:`~parlai_ext.modules.p2bot.Receiver`, trained with the margin loss of Eq. 12 on the
``p2bot_selfplay:receiver`` teacher (τ of Eq. 13 annealed linearly, §5.1);
:meth:`P2BotReceiverAgent.perception_scores` is the inference score of Eq. 15 (used by the
self-play rewards, Eq. 9, and callable by other code through :func:`load_receiver`). The
transmitter and the dictionary are in :mod:`parlai_ext.agents.p2bot`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch, Output, TorchAgent
from parlai.utils.distributed import is_distributed
from parlai.utils.torch import padded_tensor

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.p2bot import P2BotDictionaryAgent, load_frozen
from parlai_ext.agents.unified_transformer import add_transformer_args, encoder_args
from parlai_ext.distributed import wrap_in_ddp
from parlai_ext.losses.p2bot import receiver_loss
from parlai_ext.modules import hf
from parlai_ext.modules.p2bot import (
    HFSentenceEncoder,
    Receiver,
    ReceiverOutput,
    SentenceEncoder,
    linear_tau,
)


class P2BotReceiverAgent(hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchAgent):
    """P2Bot's receiver (§4): ranks candidate personas for one speaker's utterances.

    Observations (``-t p2bot_selfplay:receiver``): ``utterances`` (list; else the lines of
    ``text``), ``label_candidates`` (personas, one sentence per line) and the true persona as
    label. Training: margin loss + L1 (Eq. 12) with τ annealed linearly (§5.1); evaluation
    returns the candidates ranked by ``c`` (Eq. 14) as ``text_candidates`` (hits@k, ``ext_mrr``).
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'P2Bot receiver encoders (from scratch)')
        group = parser.add_argument_group('P2Bot receiver')
        hf_glue.add_hf_args(group, 'encoder (AutoModel, e.g. MiniLM/BERT)')
        group.add_argument('--margin', type=float, default=0.4, help='m of Eq. 12')
        group.add_argument('--l1-beta', type=float, default=1e-4, help='β of Eq. 12')
        group.add_argument('--tau-start', type=float, default=10.0, help='τ of Eq. 13 at start')
        group.add_argument('--tau-end', type=float, default=0.5, help='τ after annealing')
        group.add_argument(
            '--tau-anneal-steps',
            type=int,
            default=2000,
            help='updates over which τ goes linearly from --tau-start to --tau-end',
        )
        group.add_argument('--sentence-truncate', type=int, default=40, help='tokens per sentence')
        group.add_argument(
            '--max-utterances', type=int, default=16, help='last N utterances of a speaker'
        )
        group.add_argument(
            '--encoders-follow-options',
            type='bool',
            default=True,
            hidden=True,
            help='the from-scratch sentence encoders use --activation and --attention-dropout '
            '(false in receivers saved before they did: GELU, no attention dropout)',
        )
        parser.set_defaults(learningrate=6.25e-5, optimizer='adamw', n_positions=64, dict_maxexs=-1)
        return parser

    @classmethod
    def upgrade_opt(cls, opt_from_disk: Opt) -> Opt:
        """A receiver saved before its encoders honoured ``--activation`` and
        ``--attention-dropout`` (no ``encoders_follow_options`` in its opt) keeps GELU and no
        attention dropout, whatever those options say, so it scores as it was trained."""
        opt_from_disk = super().upgrade_opt(opt_from_disk)
        opt_from_disk.setdefault('encoders_follow_options', False)
        return opt_from_disk

    @staticmethod
    def dictionary_class():
        return P2BotDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        init_model, is_finetune = self._get_init_model(opt, shared)
        super().__init__(opt, shared)
        states: dict = {}
        if shared:
            if 'optimizer' in shared:
                self.optimizer = shared['optimizer']
        else:
            self.criterion = None
            self._fresh = init_model is None  # no checkpoint: HF encoders take pretrained weights
            self.model = self.build_model()
            if self.use_cuda:
                self.model.cuda()
            if init_model is not None:
                states = self.load(init_model)
            if self._should_initialize_optimizer():
                was_reset = self.init_optim(
                    [p for p in self.model.parameters() if p.requires_grad],
                    optim_states=states.get('optimizer'),
                    saved_optim_type=states.get('optimizer_type'),
                    is_finetune=is_finetune,
                )
                self.build_lr_scheduler(states, hard_reset=is_finetune or was_reset)
                if is_distributed():  # TorchAgent never wraps; frozen copies stay unwrapped
                    self.model = wrap_in_ddp(self.model, self.opt, self.use_cuda)
        self.reset()

    @property
    def _module(self) -> Receiver:
        return getattr(self.model, 'module', self.model)  # unwrap DDP

    def build_model(self) -> Receiver:
        opt, d = self.opt, self.dict
        pad = d[d.null_token]

        def encoder():
            if hf_glue.hf_model_name(opt):
                # pretrained weights for a new model, the architecture only under a full
                # model file, base + LoRA adapters with --lora-rank
                model = hf_glue.build_encoder(opt, d, fresh=getattr(self, '_fresh', True))
                return HFSentenceEncoder(model, pad)
            args = encoder_args(opt, d)
            if not opt.get('encoders_follow_options', False):  # saved before: see upgrade_opt
                # SentenceEncoder's defaults, as those receivers were built: GELU, none
                del args['attention_dropout'], args['activation']
            return SentenceEncoder(len(d), **args)

        return Receiver(encoder(), encoder(), tau=opt['tau_start'])

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_sentence(self, text: str) -> list[int]:
        """Token ids of one sentence ([CLS] ... [SEP] for HF encoders)."""
        limit = min(self.opt.get('sentence_truncate', 40), self.opt['n_positions'])
        if getattr(self.dict, 'hf_tokenizer', None) is not None:
            ids = self.dict.hf_tokenizer.encode(
                text, add_special_tokens=True, truncation=True, max_length=limit
            )
        else:
            ids = self.dict.txt2vec(text)[:limit]
        return ids or [self.dict[self.dict.unk_token]]

    def vectorize(self, obs, history, **kwargs):
        """Token ids of the utterances and of every candidate persona's sentences."""
        utterances = obs.get('utterances')
        if utterances is None and obs.get('text'):
            utterances = [u for u in obs['text'].split('\n') if u.strip()]
        candidates = obs.get('label_candidates')
        if not utterances or not candidates:
            return obs
        utterances = list(utterances)[-self.opt.get('max_utterances', 16) :]
        obs['p2_utterance_vecs'] = [self.encode_sentence(u) for u in utterances]
        obs['p2_candidate_vecs'] = [
            [self.encode_sentence(s) for s in c.split('\n') if s.strip()] for c in candidates
        ]
        labels = obs.get('labels', obs.get('eval_labels'))
        if labels:
            obs['p2_true_index'] = list(candidates).index(labels[0])
        return obs

    def observe(self, observation):
        self.history.reset()  # each example is a whole dialogue side
        return super().observe(observation)

    def batchify(self, obs_batch, sort=False):
        valid = [(i, o) for i, o in enumerate(obs_batch) if o.get('p2_candidate_vecs')]
        if not valid:
            return Batch(batchsize=0)
        indices, exs = zip(*valid)
        utterance_rows, utterance_index = [], []
        persona_rows, persona_index = [], []
        n_max = max(len(o['p2_utterance_vecs']) for o in exs)
        c_max = max(len(o['p2_candidate_vecs']) for o in exs)
        l_max = max(len(c) for o in exs for c in o['p2_candidate_vecs'])
        for o in exs:
            row = []
            for vec in o['p2_utterance_vecs']:
                row.append(len(utterance_rows))
                utterance_rows.append(vec)
            utterance_index.append(row + [-1] * (n_max - len(row)))
            grid = []
            for candidate in o['p2_candidate_vecs']:
                cells = []
                for vec in candidate:
                    cells.append(len(persona_rows))
                    persona_rows.append(vec)
                grid.append(cells + [-1] * (l_max - len(cells)))
            grid += [[-1] * l_max] * (c_max - len(grid))
            persona_index.append(grid)
        pad = self.NULL_IDX
        true_index = None
        if all('p2_true_index' in o for o in exs):
            true_index = torch.LongTensor([o['p2_true_index'] for o in exs])
        return Batch(
            batchsize=len(exs),
            is_training=any('labels' in o for o in exs),
            valid_indices=torch.LongTensor(indices),
            candidates=[list(o['label_candidates']) for o in exs],
            utterance_tokens=padded_tensor(utterance_rows, pad_idx=pad)[0],
            utterance_index=torch.LongTensor(utterance_index),
            persona_tokens=padded_tensor(persona_rows, pad_idx=pad)[0],
            persona_index=torch.LongTensor(persona_index),
            true_index=true_index,
            n_candidates=torch.LongTensor([len(o['p2_candidate_vecs']) for o in exs]),
        )

    def _autocast(self):
        """``--bf16`` autocast over HF encoders (the from-scratch encoders stay fp32)."""
        enabled = bool(hf_glue.hf_model_name(self.opt))
        device = self._device()
        return hf.autocast(enabled and hf_glue.bf16_enabled(self.opt, device), device)

    def _forward(self, batch):
        with self._autocast():
            out = self.model(
                batch.utterance_tokens,
                batch.utterance_index,
                batch.persona_tokens,
                batch.persona_index,
            )
        out = ReceiverOutput(out.scores.float(), out.relevance.float(), out.mask)  # fp32 loss
        # padded candidate slots (examples with fewer candidates) can never win
        slots = torch.arange(out.scores.shape[1], device=out.scores.device)
        missing = slots[None, :] >= batch.n_candidates.to(out.scores.device)[:, None]
        return out, out.scores.masked_fill(missing, float('-inf'))

    def _record_ranking(self, batch, scores: torch.Tensor) -> list[list[str]]:
        order = scores.argsort(dim=1, descending=True)
        ranked = [
            [batch.candidates[b][j] for j in row[: len(batch.candidates[b])]]
            for b, row in enumerate(order.tolist())
        ]
        if batch.true_index is not None:
            true = batch.true_index.to(scores.device)
            rank = (order == true[:, None]).float().argmax(dim=1) + 1
            self.record_local_metric('rec_hits@1', AverageMetric.many((rank == 1).tolist()))
            self.record_local_metric('rec_mrr', AverageMetric.many((1.0 / rank).tolist()))
        return ranked

    def train_step(self, batch):
        if batch.batchsize == 0 or batch.true_index is None:
            return None
        self.model.train()
        tau = linear_tau(
            self._number_training_updates,
            self.opt['tau_start'],
            self.opt['tau_end'],
            self.opt['tau_anneal_steps'],
        )
        self._module.tau.fill_(tau)
        self.zero_grad()
        out, scores = self._forward(batch)
        true = batch.true_index.to(scores.device)
        valid = out.mask & ~torch.isinf(scores)[:, :, None, None]
        loss, margin, l1 = receiver_loss(
            out.scores, true, out.relevance, valid, self.opt['margin'], self.opt['l1_beta']
        )
        self.backward(loss)
        self.update_params()
        n = batch.batchsize
        self.record_local_metric('loss', AverageMetric.many([loss.item()] * n))
        self.record_local_metric('margin_loss', AverageMetric.many([margin.item()] * n))
        self.record_local_metric('l1', AverageMetric.many([l1.item()] * n))
        self.global_metrics.add('tau', AverageMetric(tau))
        self._record_ranking(batch, scores.detach())
        return None

    def eval_step(self, batch):
        if batch.batchsize == 0:
            return None
        self.model.eval()
        _, scores = self._forward(batch)
        ranked = self._record_ranking(batch, scores)
        return Output([r[0] for r in ranked], ranked)

    # ------------------------------------------------------------- Eq. 15 for other code
    @torch.no_grad()
    def perception_scores(
        self, utterances: Sequence[str], personas: Sequence[Sequence[str]], chunk: int = 64
    ) -> torch.Tensor:
        """``score(x_i, w_i)`` (Eq. 15) of each utterance with its persona (sentence list).

        This is ``r(·)`` of Eq. 9 for the self-play rewards, and the receiver's public scoring
        function for other code (e.g. PPG). Returns a CPU float tensor ``(len(utterances),)``.
        """
        if len(utterances) != len(personas):
            raise ValueError('one persona per utterance')
        was_training = self.model.training
        self.model.eval()
        results = []
        device = self._device()
        try:
            for start in range(0, len(utterances), chunk):
                utts = utterances[start : start + chunk]
                pers = personas[start : start + chunk]
                rows, index = [], []
                width = max(max(len(p) for p in pers), 1)
                for persona in pers:
                    cells = []
                    for sentence in persona:
                        cells.append(len(rows))
                        rows.append(self.encode_sentence(sentence))
                    index.append(cells + [-1] * (width - len(cells)))
                if not rows:
                    rows = [[self.NULL_IDX]]
                utt_tokens = padded_tensor(
                    [self.encode_sentence(u) for u in utts], pad_idx=self.NULL_IDX
                )[0]
                with self._autocast():
                    scores = self._module.perception_scores(
                        utt_tokens.to(device),
                        padded_tensor(rows, pad_idx=self.NULL_IDX)[0].to(device),
                        torch.LongTensor(index).to(device),
                    )
                results.append(scores.float().cpu())
        finally:
            self.model.train(was_training)
        return torch.cat(results) if results else torch.zeros(0)

    @torch.no_grad()
    def persona_scores(
        self, utterances: Sequence[str], personas: Sequence[Sequence[str]]
    ) -> torch.Tensor:
        """``c`` (Eq. 14) of one speaker's ``utterances`` against each candidate persona."""
        obs = {
            'utterances': list(utterances),
            'label_candidates': ['\n'.join(p) for p in personas],
        }
        self.vectorize(obs, None)
        batch = self.batchify([obs])
        self.model.eval()
        _, scores = self._forward(batch)
        return scores[0].float().cpu()


def load_receiver(model_file: str, overrides: dict | None = None) -> P2BotReceiverAgent:
    """A trained receiver, frozen, ready for :meth:`P2BotReceiverAgent.perception_scores`."""
    return load_frozen(model_file, P2BotReceiverAgent, 'P2Bot receiver', overrides)


# the class name ParlAI derives from the short name (`p2bot_receiver` -> P2botReceiverAgent)
P2botReceiverAgent = P2BotReceiverAgent

__all__ = ['P2BotReceiverAgent', 'load_receiver']
