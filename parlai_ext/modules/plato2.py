"""PLATO-2 (Bao et al., 2021, §2): the fine-grained generator and the evaluation model.

All three models of the curriculum share one backbone, the pre-norm unified transformer of
:mod:`parlai_ext.modules.unified_transformer` (stage 1 *is* that model, trained on Eq. 1):

- :class:`Plato2Generator` (stage 2.1, Eq. 2-6) adds K discrete latent values. A training
  step runs the stack twice: a bidirectional *recognition* pass over ``[M; context;
  response]`` gives the posterior p(z|c,r) from the [M] slot (Eq. 3); a Gumbel-softmax sample
  of it mixes the latent embeddings into one vector z, prepended to the *generation* pass
  over ``[z; context; response]`` (prefix-LM mask: z is part of the bidirectional context).
  The response NLL (Eq. 2) comes from that pass, the bag-of-words prediction (Eq. 4-5) from
  its output at the latent position. At inference the context is encoded once per latent
  value (``latent_ids``), all K in one batch.
- :class:`Plato2Evaluator` (stage 2.2, Eq. 7-9): the same stack, fully bidirectional over
  ``[CLS; context; response]``; a coherence classifier on the [CLS] output and a masked LM
  (tied to the token embeddings) on the token outputs.

The extra slots (z, [M], [CLS]) are vectors added after the token/type/position sum, so they
carry no position or type embedding, as in the authors' Knover code. Details taken from that
code (the paper does not fix them): the recognition classifier is ``tanh(fc(h_[M]))`` whose
output weight *is* the latent embedding table (tied) plus a bias; the BOW head is
``LayerNorm(gelu(fc(h_z)))`` times the tied token embeddings plus a bias; Gumbel-softmax
temperature 0.67, soft sample, no KL term and no prior network. Losses live in
:mod:`parlai_ext.losses.plato2`; the ParlAI glue in :mod:`parlai_ext.agents.plato2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from parlai_ext.modules.sampling import gumbel_softmax
from parlai_ext.modules.transformer import init_weights
from parlai_ext.modules.unified_transformer import ContextState, UnifiedTransformer

EVALUATOR_CLS = ('slot', 'token')


def _slot(dim: int) -> nn.Parameter:
    """A learned input vector for a special slot ([M], [CLS]), initialised like embeddings."""
    return nn.Parameter(torch.randn(dim) * dim**-0.5)


def _check_mask_id(mask_id: int | None, vocab_size: int) -> int | None:
    if mask_id is not None and not 0 <= mask_id < vocab_size:
        raise ValueError(f'mask_id {mask_id} is not a token id (vocabulary of {vocab_size})')
    return mask_id


def mask_vector(model: nn.Module) -> torch.Tensor:
    """The [MASK] / [M] input vector ``(dim,)``: the learned ``mask_embedding``, or the token
    embedding of ``model.mask_id`` (``--mask-slot token``, Knover's tied [MASK] row)."""
    if getattr(model, 'mask_id', None) is None:
        return model.mask_embedding
    return model.embeddings.tokens.weight[model.mask_id]


# --- stage 2.1: fine-grained generation ---------------------------------------------------------
@dataclass
class Plato2Output:
    """What one training pass of :class:`Plato2Generator` returns."""

    response_hidden: torch.Tensor  # (batch, Lr, dim): generation pass, response positions
    bow_logits: torch.Tensor  # (batch, vocab): f of Eq. 5 (before the softmax)
    posterior_logits: torch.Tensor  # (batch, K): logits of p(z|c,r), Eq. 3
    latent_weights: torch.Tensor  # (batch, K): the Gumbel-softmax (or one-hot) sample used
    context: ContextState  # keys/values of [z; context]


class LatentHeadsMixin:
    """Stage 2.1's extra parameters and passes (Eq. 2-6) over any unified-transformer backbone.

    The backbone provides ``encode(context, response, prefix, bidirectional)`` (hidden states of
    ``[prefix; context; response]`` and a state whose ``valid`` covers the prefix and context
    columns), ``encode_context(context, prefix)`` and ``logits(hidden)`` (the LM head):
    :class:`~parlai_ext.modules.unified_transformer.UnifiedTransformer` (from scratch) or
    :class:`~parlai_ext.modules.plato2_hf.HfUnifiedTransformer` (a pretrained HF decoder).
    """

    latent_embedding: nn.Parameter
    mask_embedding: nn.Parameter
    mask_id: int | None

    def _init_latent_heads(
        self, vocab_size: int, dim: int, n_latent: int, tau: float, mask_id: int | None = None
    ) -> None:
        """``mask_id``: None = a learned [M] slot (``mask_embedding``); an id = the [M] slot is
        that token's embedding (Knover: the word embedding of [MASK], tied)."""
        if n_latent < 1:
            raise ValueError(f'n_latent must be >= 1, got {n_latent}')
        self.n_latent = n_latent
        self.tau = tau
        # the K latent embeddings; also W1 of the recognition classifier (Eq. 3, tied)
        self.latent_embedding = nn.Parameter(torch.randn(n_latent, dim) * 0.02)
        self.mask_id = _check_mask_id(mask_id, vocab_size)
        if mask_id is None:
            self.mask_embedding = _slot(dim)  # the special [M] slot of the recognition pass
        self.recognition = nn.Linear(dim, dim)  # tanh(fc(h_[M])) before W1
        self.recognition_bias = nn.Parameter(torch.zeros(n_latent))  # b1
        # BOW head (Eq. 5): W2 = the token embeddings (tied), b2 = bow_bias
        self.bow_transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.bow_bias = nn.Parameter(torch.zeros(vocab_size))
        init_weights(self.recognition)
        init_weights(self.bow_transform)

    def recognize(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """Logits of the posterior p(z|c,r) (Eq. 3): softmax(W1 h_[M] + b1).

        ``h_[M]`` is the [M] output of a fully bidirectional pass over ``[M; c; r]``.
        """
        prefix = mask_vector(self).expand(context.shape[0], 1, -1)
        hidden, _ = self.encode(context, response, prefix, bidirectional=True)
        pooled = torch.tanh(self.recognition(hidden[:, 0]))
        return F.linear(pooled, self.latent_embedding, self.recognition_bias)

    def latent_vectors(self, weights: torch.Tensor) -> torch.Tensor:
        """``(batch, K)`` weights (one-hot or Gumbel-softmax) -> ``(batch, 1, dim)`` z slots."""
        return (weights @ self.latent_embedding)[:, None, :]

    def bow_logits(self, latent_hidden: torch.Tensor) -> torch.Tensor:
        """f of Eq. 5 before its softmax: scores of every word from ``h_z``."""
        # the tied token embeddings (never the Knover LM head's transform: BOW has its own)
        project = getattr(self, 'tied_logits', None) or self.logits
        return project(self.bow_transform(latent_hidden)) + self.bow_bias

    def forward(  # type: ignore[override]
        self, context: torch.Tensor, response: torch.Tensor
    ) -> Plato2Output:
        """Recognition pass, latent sample, generation pass (one training step of Eq. 2-6).

        Training draws z with Gumbel-softmax (temperature ``tau``); evaluation uses the
        posterior's argmax, so validation NLL is that of p(r|c, z*) with z* read from r.

        :param context: ``(batch, Lc)`` token ids, right-padded.
        :param response: ``(batch, Lr)`` decoder input ids (start token, r_1, ...).
        """
        posterior_logits = self.recognize(context, response)
        if self.training:
            weights = gumbel_softmax(posterior_logits, self.tau)
        else:
            weights = F.one_hot(posterior_logits.argmax(dim=-1), self.n_latent)
            weights = weights.to(posterior_logits.dtype)
        hidden, state = self.encode(context, response, self.latent_vectors(weights))
        n_context = state.valid.shape[1]  # latent slot + context columns
        return Plato2Output(
            response_hidden=hidden[:, n_context:],
            bow_logits=self.bow_logits(hidden[:, 0]),
            posterior_logits=posterior_logits,
            latent_weights=weights,
            context=state,
        )

    def response_hidden_per_latent(
        self, context: torch.Tensor, response: torch.Tensor
    ) -> torch.Tensor:
        """Generation-pass response states for every latent value, in one batched pass.

        :return: ``(batch, K, Lr, dim)``; row ``[b, z]`` is conditioned on one-hot z. With the
            output layer this gives log p(r|c,z) for all z, e.g. for the marginal
            p(r|c) = 1/K sum_z p(r|c,z) under a uniform prior (there is no prior network).
        """
        batch, n_latent = context.shape[0], self.n_latent
        latent_ids = torch.arange(n_latent, device=context.device).repeat(batch)
        weights = F.one_hot(latent_ids, n_latent).to(self.latent_embedding.dtype)
        hidden, state = self.encode(
            context.repeat_interleave(n_latent, dim=0),
            response.repeat_interleave(n_latent, dim=0),
            self.latent_vectors(weights),
        )
        response_hidden = hidden[:, state.valid.shape[1] :]
        return response_hidden.view(batch, n_latent, *response_hidden.shape[1:])

    def encode_latent_context(
        self, context: torch.Tensor, latent_ids: torch.Tensor
    ) -> ContextState:
        """Encode ``[z; context]`` for decoding, with z = the embedding of ``latent_ids``.

        One row per (context, latent value) pair: to get the K candidates of one context,
        repeat it K times with ``latent_ids = 0..K-1`` (one batched pass).
        """
        return self.encode_context(context, self.latent_embedding[latent_ids][:, None, :])


class Plato2Generator(LatentHeadsMixin, UnifiedTransformer):
    """Unified transformer with K discrete latent values (PLATO-2 stage 2.1, Eq. 2-6)."""

    def __init__(
        self,
        vocab_size: int,
        n_latent: int = 20,
        tau: float = 0.67,
        mask_id: int | None = None,
        **transformer_args,
    ) -> None:
        super().__init__(vocab_size, **transformer_args)
        dim = self.embeddings.tokens.embedding_dim
        self._init_latent_heads(vocab_size, dim, n_latent, tau, mask_id)


# --- stage 2.2: evaluation ----------------------------------------------------------------------
class Plato2Evaluator(UnifiedTransformer):
    """Bidirectional coherence classifier p(l_r|c,r) (Eq. 7) with a masked LM (Eq. 8).

    :param cls: ``'slot'`` (default): a learned [CLS] vector before the context (no position);
        ``'token'``: Knover's layout, [CLS] is the context's first *token* (position 0, type
        0; the agent's start token) and its output is classified (docs/knover.md item 11).
    :param mask_id: None = a learned [MASK] input vector; an id = that token's embedding.
    """

    def __init__(
        self,
        vocab_size: int,
        cls: str = 'slot',
        mask_id: int | None = None,
        **transformer_args,
    ) -> None:
        super().__init__(vocab_size, **transformer_args)
        if cls not in EVALUATOR_CLS:
            raise ValueError(f'cls must be one of {EVALUATOR_CLS}, got {cls!r}')
        dim = self.embeddings.tokens.embedding_dim
        self.cls = cls
        if cls == 'slot':
            self.cls_embedding = _slot(dim)  # the [CLS] slot whose output is classified
        self.mask_id = _check_mask_id(mask_id, vocab_size)
        if mask_id is None:
            self.mask_embedding = _slot(dim)  # the masked LM's [MASK] input
        # PyTorch's default init here, not BERT's normal(0, 0.02): with the small one the
        # coherence gradient was swamped by the masked LM's in our small-scale runs
        self.pooler = nn.Linear(dim, dim)
        self.classifier = nn.Linear(dim, 2)  # label 1 = coherent

    def forward(  # type: ignore[override]
        self,
        context: torch.Tensor,
        response: torch.Tensor,
        replaced: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One bidirectional pass over ``[CLS; context; response]`` (``cls='token'``: over
        ``[context; response]``, whose first context token is [CLS]).

        :param replaced: ``(batch, Lc + Lr)`` bool: inputs shown as [MASK] (masked LM), or None.
        :return: coherence logits ``(batch, 2)`` and token hidden states
            ``(batch, Lc + Lr, dim)`` (for :meth:`mlm_logits`).
        """
        slot = self.cls == 'slot'
        prefix = self.cls_embedding.expand(context.shape[0], 1, -1) if slot else None
        hidden, _ = self.encode(
            context, response, prefix, bidirectional=True, replaced=replaced,
            replacement=mask_vector(self),
        )  # fmt: skip
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(pooled), (hidden[:, 1:] if slot else hidden)

    def mlm_logits(self, token_hidden: torch.Tensor) -> torch.Tensor:
        """Masked-LM word scores (Eq. 8), tied to the token embeddings."""
        return self.logits(token_hidden)

    @torch.no_grad()
    def coherence(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """p(l_r = 1 | c, r) of each row: the reranking score (no masking)."""
        logits, _ = self(context, response)
        return logits.float().softmax(dim=-1)[:, 1]
