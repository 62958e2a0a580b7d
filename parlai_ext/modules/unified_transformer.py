"""The unified transformer of PLATO-2 (§2.1, Fig. 2): one pre-norm stack, prefix-LM mask.

Context and response share one stack of :class:`~parlai_ext.modules.transformer.TransformerBlock`.
Context tokens attend to each other bidirectionally; response tokens attend to the whole
context and causally to the response (:func:`~parlai_ext.modules.transformer.prefix_lm_mask`).
Input embeddings are token + type (0 context, 1 response) + position; the output layer is tied
to the token embeddings; GELU activations and a final LayerNorm, as in the paper.

Because context rows never see the response, the context's keys/values of every layer are
the same whether computed in one pass over ``[context; response]`` (training) or in a
separate context pass followed by token-by-token decoding with a key/value cache
(generation). :meth:`UnifiedTransformer.encode_context` and
:meth:`UnifiedTransformer.decode` implement the second form; :meth:`UnifiedTransformer.forward`
the first. Tests check that both give the same logits.

PLATO-2's later stages (``parlai_ext/modules/plato2.py``) reuse this stack with two extras:

- ``prefix``: vectors placed before the context (the latent z of Eq. 2, the [M] slot of
  Eq. 3, a [CLS] slot for Eq. 7). They are added *after* the token/type/position sum, so they
  carry no position or type embedding (as in the authors' code), and they belong to the
  bidirectional context segment: every context token and every response token sees them.
- ``bidirectional=True``: one fully bidirectional pass over ``[prefix; context; response]``
  (recognition network, Eq. 3; evaluation model, Eq. 7-9), and ``replaced``/``replacement``
  for the masked LM's [MASK] inputs (Eq. 8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from parlai_ext.modules.transformer import (
    LayerCache,
    TransformerEncoder,
    banned_linear,
    bidirectional_mask,
    causal_mask,
    init_weights,
    prefix_lm_mask,
)

CONTEXT_TYPE = 0
RESPONSE_TYPE = 1
LM_HEADS = ('tied', 'knover')


@dataclass
class ContextState:
    """What decoding needs to know about the (already encoded) context."""

    caches: list[LayerCache]  # per layer (keys, values) over the prefix and the context
    valid: torch.Tensor  # (batch, P + Lc) bool, False at padding (prefix slots are True)
    length: torch.Tensor  # (batch,) number of valid context tokens = first response position
    # the largest ``length`` as a Python int (None: unknown), so that decoding checks its
    # positions without a device-to-host sync per step; after index_select an upper bound
    max_length: int | None = None

    def index_select(self, indices: torch.Tensor) -> ContextState:
        return ContextState(
            [(k.index_select(0, indices), v.index_select(0, indices)) for k, v in self.caches],
            self.valid.index_select(0, indices),
            self.length.index_select(0, indices),
            self.max_length,
        )


class UnifiedTransformer(TransformerEncoder):
    """:class:`TransformerEncoder`'s embeddings and stack, run with the prefix-LM mask.

    Same constructor (and parameter names) as the shared encoder; type embeddings mark
    context (0) and response (1) tokens.

    :param lm_head: ``'tied'`` (default): logits = ``h E^T``; ``'knover'``: the authors' Knover
        head ``LayerNorm(gelu(fc(h))) E^T + b`` (``mask_lm_trans_fc`` -> ``mask_lm_trans``
        -> tied ``word_embedding`` + ``mask_lm_out_fc.b_0``; docs/knover.md item 10), with
        parameters ``lm_transform`` and ``lm_bias``.
    """

    def __init__(
        self, vocab_size: int, padding_idx: int = 0, lm_head: str = 'tied', **encoder_args
    ) -> None:
        super().__init__(vocab_size, padding_idx=padding_idx, **encoder_args)
        if lm_head not in LM_HEADS:
            raise ValueError(f'lm_head must be one of {LM_HEADS}, got {lm_head!r}')
        self.padding_idx = padding_idx
        self.lm_head = lm_head
        # encode() runs the stack on real tokens only (same values at every valid position)
        self.packed = True
        if lm_head == 'knover':
            dim = self.embeddings.tokens.embedding_dim
            self.lm_transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
            self.lm_bias = nn.Parameter(torch.zeros(vocab_size))
            init_weights(self.lm_transform)

    def tied_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``h E^T``: scores over the vocabulary from the tied token embeddings."""
        return F.linear(hidden, self.embeddings.tokens.weight)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output layer tied to the token embeddings (after Knover's transform, with its
        bias, under ``lm_head='knover'``)."""
        if self.lm_head == 'knover':
            return F.linear(self.lm_transform(hidden), self.embeddings.tokens.weight, self.lm_bias)
        return self.tied_logits(hidden)

    def banned_logits(self, hidden: torch.Tensor, ban: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` with the columns where ``ban < 0`` at ParlAI's ``neginf``, the ban
        folded into the output GEMM's bias (:func:`~parlai_ext.modules.transformer.banned_linear`:
        no full-size in-place write, whose backward would clone the gradient)."""
        weight = self.embeddings.tokens.weight
        if self.lm_head == 'knover':
            return banned_linear(self.lm_transform(hidden), weight, self.lm_bias, ban)
        return banned_linear(hidden, weight, None, ban)

    def embed(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        types: torch.Tensor,
        prefix: torch.Tensor | None = None,
        replaced: torch.Tensor | None = None,
        replacement: torch.Tensor | None = None,
        max_position: int | None = None,
        dropout: bool = True,
    ) -> torch.Tensor:
        """Input embeddings: token + type + position (Fig. 2), then dropout (``dropout=False``:
        the caller applies ``self.embeddings.dropout`` itself, e.g. to the packed tokens).

        :param prefix: ``(batch, P, dim)`` vectors prepended after the sum (no position/type).
        :param replaced: ``(batch, L)`` bool; there the token embedding is ``replacement``
            (``(dim,)``, the masked LM's [MASK] vector, Eq. 8); position and type are kept.
        :param max_position: the largest of ``positions`` when the caller knows it without
            reading the tensor (no device-to-host sync); None: ``positions.max()``.
        """
        if replaced is None:
            # (``dropout`` passed only when off: callers may wrap ``Embeddings.forward``)
            extra = {} if dropout else {'dropout': False}
            x = self.embeddings(tokens, positions, types, max_position=max_position, **extra)
        else:
            emb = self.embeddings
            largest = int(positions.max()) if max_position is None else max_position
            if largest >= emb.n_positions:
                raise ValueError(f'position {largest} >= --n-positions {emb.n_positions}')
            token_part = torch.where(replaced[..., None], replacement, emb.tokens(tokens))
            x = token_part + emb.positions(positions)
            if emb.types is not None:
                x = x + emb.types(types)
            x = emb.dropout(x) if dropout else x
        if prefix is not None:
            x = torch.cat([self.embeddings.dropout(prefix) if dropout else prefix, x], dim=1)
        return x

    def encode(
        self,
        context: torch.Tensor,
        response: torch.Tensor,
        prefix: torch.Tensor | None = None,
        bidirectional: bool = False,
        replaced: torch.Tensor | None = None,
        replacement: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ContextState]:
        """One pass over ``[prefix; context; response]``; hidden states of every position.

        With the prefix-LM mask (default; Fig. 2) the prefix counts as context. With
        ``bidirectional=True`` every position sees every valid position.

        :param context: ``(batch, Lc)`` token ids, right-padded.
        :param response: ``(batch, Lr)`` token ids, right-padded.
        :param prefix: ``(batch, P, dim)`` or None (P = 0).
        :param replaced: ``(batch, Lc + Lr)`` bool or None; see :meth:`embed`.
        :return: hidden states ``(batch, P + Lc + Lr, dim)`` and the context state.
        """
        batch, lc = context.shape
        lr = response.shape[1]
        n_prefix = 0 if prefix is None else prefix.shape[1]
        device = context.device
        context_valid = context != self.padding_idx
        response_valid = response != self.padding_idx
        context_len = context_valid.sum(dim=1)
        positions = torch.cat(
            [
                torch.arange(lc, device=device).expand(batch, lc),
                context_len[:, None] + torch.arange(lr, device=device)[None, :],
            ],
            dim=1,
        )
        types = torch.cat(
            [torch.full_like(context, CONTEXT_TYPE), torch.full_like(response, RESPONSE_TYPE)],
            dim=1,
        )
        tokens = torch.cat([context, response], dim=1)
        # packed: the embedding dropout runs on the real tokens only, inside the stack
        x = self.embed(tokens, positions, types, prefix, replaced, replacement,
                       dropout=not self.packed)  # fmt: skip
        prefix_valid = torch.ones(batch, n_prefix, dtype=torch.bool, device=device)
        context_valid = torch.cat([prefix_valid, context_valid], dim=1)
        if bidirectional:
            mask = bidirectional_mask(torch.cat([context_valid, response_valid], dim=1))
        else:
            mask = prefix_lm_mask(context_valid, response_valid)
        # token-wise work at the valid positions only (modules.transformer.Packing): the
        # padded positions' states are never read (masked keys; outputs at padding ignored)
        valid = torch.cat([context_valid, response_valid], dim=1) if self.packed else None
        input_dropout = self.embeddings.dropout if self.packed else None
        hidden, caches = self.stack(x, mask, valid=valid, input_dropout=input_dropout)
        split = n_prefix + lc
        context_caches = [(k[:, :, :split], v[:, :, :split]) for k, v in caches]
        return hidden, ContextState(context_caches, context_valid, context_len)

    def forward(  # type: ignore[override]
        self, context: torch.Tensor, response: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ContextState]:
        """One pass over ``[prefix; context; response]`` with the prefix-LM mask.

        :param context: ``(batch, Lc)`` token ids, right-padded.
        :param response: ``(batch, Lr)`` decoder input ids (starting with the start token).
        :param prefix: ``(batch, P, dim)`` vectors before the context, or None.
        :return: response hidden states ``(batch, Lr, dim)`` and the context state.
        """
        hidden, state = self.encode(context, response, prefix)
        return hidden[:, state.valid.shape[1] :], state

    def encode_context(
        self, context: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> ContextState:
        """Bidirectional pass over ``[prefix; context]``; keeps every layer's keys/values."""
        valid = context != self.padding_idx
        batch, lc = context.shape
        positions = torch.arange(lc, device=context.device).expand_as(context)
        x = self.embed(
            context, positions, torch.full_like(context, CONTEXT_TYPE), prefix, max_position=lc - 1
        )
        if prefix is not None:
            prefix_valid = torch.ones(batch, prefix.shape[1], dtype=torch.bool, device=x.device)
            valid_all = torch.cat([prefix_valid, valid], dim=1)
        else:
            valid_all = valid
        packed = valid_all if self.packed else None  # real tokens only (see encode)
        _, caches = self.stack(x, bidirectional_mask(valid_all), valid=packed)
        length = valid.sum(dim=1)
        # one sync per context pass, so that no decoding step needs one
        max_length = int(length.max()) if batch else 0
        return ContextState(caches, valid_all, length, max_length)

    def decode(
        self,
        tokens: torch.Tensor,
        context: ContextState,
        caches: list[LayerCache] | None = None,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """Run response ``tokens`` that follow the context (and ``caches``, if given).

        ``caches`` holds the keys/values of the context and of the response tokens decoded so
        far (``None`` on the first call: the context's are taken from ``context``).
        """
        past = context.caches if caches is None else caches
        past_len = past[0][0].shape[2]
        lc = context.valid.shape[1]  # prefix + context columns
        batch, new = tokens.shape
        device = tokens.device
        start = past_len - lc  # response tokens already decoded
        positions = context.length[:, None] + start + torch.arange(new, device=device)[None, :]
        largest = None if context.max_length is None else context.max_length + start + new - 1
        x = self.embed(
            tokens, positions, torch.full_like(tokens, RESPONSE_TYPE), max_position=largest
        )
        response_part = causal_mask(new, start + new, device).expand(batch, new, start + new)
        context_part = context.valid[:, None, :].expand(batch, new, lc)
        mask = torch.cat([context_part, response_part], dim=2)[:, None]
        return self.stack(x, mask, caches=past)
