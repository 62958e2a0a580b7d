"""A transformer encoder-decoder on the shared pre-norm block (CORAL §4.2, PPG §3.1-3.2).

The encoder is a bidirectional :class:`~parlai_ext.modules.transformer.TransformerStack`
over the source; the decoder is a causal stack whose blocks cross-attend to the encoder
output. Token and position embeddings are shared by both sides and tied to the output layer.
For generation, the source is encoded once and each decoder layer's cross-attention
keys/values are projected once (:meth:`EncoderDecoder.encode`); self-attention keys/values
are cached per generated token.
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
    bidirectional_mask,
    causal_mask,
    init_weights,
)


@dataclass
class EncoderState:
    """The encoded source, and every decoder layer's cross-attention keys/values of it."""

    hidden: torch.Tensor  # (batch, Ls, dim)
    valid: torch.Tensor  # (batch, Ls) bool, False at padding
    memories: list[LayerCache]

    def index_select(self, indices: torch.Tensor) -> EncoderState:
        return EncoderState(
            self.hidden.index_select(0, indices),
            self.valid.index_select(0, indices),
            [(k.index_select(0, indices), v.index_select(0, indices)) for k, v in self.memories],
        )

    @property
    def mask(self) -> torch.Tensor:
        """Cross-attention mask ``(batch, 1, 1, Ls)``."""
        return self.valid[:, None, None, :]


class EncoderDecoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        n_encoder_layers: int = 2,
        n_decoder_layers: int = 2,
        n_heads: int = 4,
        ffn_dim: int = 1024,
        n_positions: int = 512,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        activation: str = 'gelu',
        padding_idx: int = 0,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.embeddings = Embeddings(vocab_size, dim, n_positions, 0, padding_idx, dropout)
        # encode() runs the encoder on real source tokens only: zeros at the padding, which
        # cross-attention masks (memory_mask) and nothing else reads
        self.packed = True
        block_args = dict(
            n_heads=n_heads,
            ffn_dim=ffn_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation=activation,
            ffn_dropout=ffn_dropout,
        )
        self.encoder = TransformerStack(n_encoder_layers, dim, **block_args)
        self.decoder = TransformerStack(n_decoder_layers, dim, cross_attention=True, **block_args)
        init_weights(self)
        # init_weights touched only linear layers; embeddings keep their own initialisation

    def logits(self, hidden: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """Output layer tied to the token embeddings (``bias``: e.g. bans, see
        :func:`~parlai_ext.modules.transformer.banned_bias`)."""
        return F.linear(hidden, self.embeddings.tokens.weight, bias)

    def encode(self, source: torch.Tensor) -> EncoderState:
        valid = source != self.padding_idx
        length = source.shape[1]
        positions = torch.arange(length, device=source.device).expand_as(source)
        packed = self.packed  # token-wise work at the real source tokens only (Packing)
        x = self.embeddings(source, positions, max_position=length - 1, dropout=not packed)
        hidden, _ = self.encoder(
            x,
            bidirectional_mask(valid),
            valid=valid if packed else None,
            input_dropout=self.embeddings.dropout if packed else None,
        )
        memories = [
            layer.cross_attention.project_key_value(hidden) for layer in self.decoder.layers
        ]
        return EncoderState(hidden, valid, memories)

    def decode(
        self,
        tokens: torch.Tensor,
        encoder_state: EncoderState,
        caches: list[LayerCache] | None = None,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """Decoder hidden states of ``tokens``, which follow the ``caches`` (if any)."""
        past = 0 if caches is None else caches[0][0].shape[2]
        new = tokens.shape[1]
        positions = past + torch.arange(new, device=tokens.device).expand_as(tokens)
        x = self.embeddings(tokens, positions, max_position=past + new - 1)
        mask = causal_mask(new, past + new, tokens.device)
        return self.decoder(
            x, mask, caches, memories=encoder_state.memories, memory_mask=encoder_state.mask
        )

    def forward(
        self, source: torch.Tensor, target_input: torch.Tensor
    ) -> tuple[torch.Tensor, EncoderState]:
        """Teacher-forced pass: decoder hidden states ``(batch, Lt, dim)`` and the encoding."""
        state = self.encode(source)
        hidden, _ = self.decode(target_input, state)
        return hidden, state
