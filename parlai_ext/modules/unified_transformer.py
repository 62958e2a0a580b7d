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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from parlai_ext.modules.transformer import (
    Embeddings,
    LayerCache,
    TransformerStack,
    causal_mask,
    init_weights,
    prefix_lm_mask,
)

CONTEXT_TYPE = 0
RESPONSE_TYPE = 1


@dataclass
class ContextState:
    """What decoding needs to know about the (already encoded) context."""

    caches: list[LayerCache]  # per layer (keys, values) over the context
    valid: torch.Tensor  # (batch, Lc) bool, False at padding
    length: torch.Tensor  # (batch,) number of valid context tokens = first response position

    def index_select(self, indices: torch.Tensor) -> ContextState:
        return ContextState(
            [(k.index_select(0, indices), v.index_select(0, indices)) for k, v in self.caches],
            self.valid.index_select(0, indices),
            self.length.index_select(0, indices),
        )


class UnifiedTransformer(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        n_layers: int = 2,
        n_heads: int = 4,
        ffn_dim: int = 1024,
        n_positions: int = 512,
        n_types: int = 2,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = 'gelu',
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.embeddings = Embeddings(vocab_size, dim, n_positions, n_types, padding_idx, dropout)
        self.stack = TransformerStack(
            n_layers,
            dim,
            n_heads=n_heads,
            ffn_dim=ffn_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation=activation,
        )
        init_weights(self.stack)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Output layer tied to the token embeddings."""
        return F.linear(hidden, self.embeddings.tokens.weight)

    def forward(
        self, context: torch.Tensor, response: torch.Tensor
    ) -> tuple[torch.Tensor, ContextState]:
        """One pass over ``[context; response]`` with the prefix-LM mask.

        :param context: ``(batch, Lc)`` token ids, right-padded.
        :param response: ``(batch, Lr)`` decoder input ids (starting with the start token).
        :return: response hidden states ``(batch, Lr, dim)`` and the context state.
        """
        context_valid = context != self.padding_idx
        response_valid = response != self.padding_idx
        context_len = context_valid.sum(dim=1)
        lc, lr = context.shape[1], response.shape[1]
        device = context.device
        positions = torch.cat(
            [
                torch.arange(lc, device=device).expand(context.shape[0], lc),
                context_len[:, None] + torch.arange(lr, device=device)[None, :],
            ],
            dim=1,
        )
        types = torch.cat(
            [torch.full_like(context, CONTEXT_TYPE), torch.full_like(response, RESPONSE_TYPE)],
            dim=1,
        )
        x = self.embeddings(torch.cat([context, response], dim=1), positions, types)
        hidden, caches = self.stack(x, prefix_lm_mask(context_valid, response_valid))
        context_caches = [(k[:, :, :lc], v[:, :, :lc]) for k, v in caches]
        return hidden[:, lc:], ContextState(context_caches, context_valid, context_len)

    def encode_context(self, context: torch.Tensor) -> ContextState:
        """Bidirectional pass over the context alone; keeps every layer's keys/values."""
        valid = context != self.padding_idx
        lc = context.shape[1]
        positions = torch.arange(lc, device=context.device).expand_as(context)
        x = self.embeddings(context, positions, torch.full_like(context, CONTEXT_TYPE))
        mask = valid[:, None, None, :] | torch.eye(lc, dtype=torch.bool, device=x.device)
        _, caches = self.stack(x, mask)
        return ContextState(caches, valid, valid.sum(dim=1))

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
        lc = context.valid.shape[1]
        batch, new = tokens.shape
        device = tokens.device
        start = past_len - lc  # response tokens already decoded
        positions = context.length[:, None] + start + torch.arange(new, device=device)[None, :]
        x = self.embeddings(tokens, positions, torch.full_like(tokens, RESPONSE_TYPE))
        response_part = causal_mask(new, start + new, device).expand(batch, new, start + new)
        context_part = context.valid[:, None, :].expand(batch, new, lc)
        mask = torch.cat([context_part, response_part], dim=2)[:, None]
        return self.stack(x, mask, caches=past)
