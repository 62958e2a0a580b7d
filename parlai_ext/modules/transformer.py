"""The one transformer of parlai-ext: a pre-norm block with a key/value cache.

Every transformer model of the project (PLATO-2's unified transformer, the CORAL / PPG
encoder-decoders, classifiers and rankers) is built from :class:`TransformerBlock`.
Attention runs through :func:`torch.nn.functional.scaled_dot_product_attention` (:func:`attend`).

Conventions
- Hidden states are ``(batch, time, dim)``.
- Attention masks are boolean, broadcastable to ``(batch, heads, query_len, key_len)``;
  ``True`` means "may attend". Every query row must be able to see at least one key.
- A layer cache is a ``(keys, values)`` pair, each ``(batch, heads, time, head_dim)``;
  self-attention appends the new keys/values to it, so decoding one token at a time
  costs one row of attention per layer. By default the append is a ``torch.cat`` (a copy of
  the whole cache per step and layer); a stack with :meth:`TransformerStack.reserve_cache`
  instead returns :class:`KVCache` pairs, views of preallocated buffers that each step
  extends in place (generation only: never while autograd records).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

# Hugging Face encoders live in the shared loader; re-exported for the callers of this module
from parlai_ext.modules.hf import HfEncoder, drop_unused_pooler  # noqa: F401

# the memory layouts (caches, packing, stacked projections) live in their own module; re-exported
from parlai_ext.modules.transformer_layout import (  # noqa: F401
    KVCache,
    Packing,
    StackedLinear,
    _KVStore,
    join_legacy_rows,
    part_weights,
)

LayerCache = tuple[torch.Tensor, torch.Tensor]


def attend(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``; in training under CPU low-precision autocast the
    kernel runs in fp32 (inputs cast up, output left in fp32 for the next projection, which
    autocast casts down). On the CPU, torch 2.13's bf16 flash-attention backward is slower
    than its fp32 one (forward + backward of ``(32, 4, 180, 64)`` with a padding mask, one
    thread: 86 ms bf16, 59 ms fp32, 64 ms bf16 inputs through the fp32 kernel). Without
    gradients (generation) and on GPUs the kernel runs at the autocast precision as before.
    """
    if (
        query.device.type == 'cpu'
        and torch.is_grad_enabled()
        and torch.is_autocast_enabled('cpu')
        and torch.get_autocast_dtype('cpu') != torch.float32
    ):
        with torch.autocast('cpu', enabled=False):
            return F.scaled_dot_product_attention(
                query.float(), keys.float(), values.float(), attn_mask, dropout_p
            )
    return F.scaled_dot_product_attention(query, keys, values, attn_mask, dropout_p)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with an optional key/value cache (self- or cross-attention).

    Self-attention projects queries, keys and values with one ``qkv`` Linear (``3 * dim``
    outputs: query rows, then key rows, then value rows; one GEMM); cross-attention
    (``cross=True``) projects its input with ``query`` and the memory with ``key_value`` (keys
    then values; :meth:`project_key_value`). Model files written when self-attention also
    had ``query`` and ``key_value`` load: :meth:`_load_from_state_dict` stacks their rows.
    """

    # the layers self-attention had before ``qkv`` (model files up to commit 0936f2a)
    LEGACY_SELF_ATTENTION = ('query', 'key_value')

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0, cross: bool = False) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f'dim {dim} is not divisible by n_heads {n_heads}')
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.dropout = dropout
        self.cross = cross
        if cross:
            self.query = nn.Linear(dim, dim)
            self.key_value = nn.Linear(dim, 2 * dim)
        else:
            # initialised part by part as the separate query and key_value layers were
            self.qkv = StackedLinear(dim, (dim, 2 * dim))
        self.out = nn.Linear(dim, dim)
        # > 0: self-attention caches are KVCache buffers with this many free positions
        # (set by TransformerStack.reserve_cache; used only while autograd is off)
        self.cache_reserve = 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Self-attention: a state dict with ``query.*`` and ``key_value.*`` (the layout
        before ``qkv``) loads as ``qkv.*`` = their rows stacked (query, then keys and values)."""
        if not self.cross:
            join_legacy_rows(state_dict, prefix, self.LEGACY_SELF_ATTENTION, 'qkv')
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        return x.view(batch, time, self.n_heads, self.head_dim).transpose(1, 2)

    def project_key_value(self, source: torch.Tensor) -> LayerCache:
        """Keys and values of ``source`` (cross-attention: e.g. an encoder output)."""
        keys, values = self.key_value(source).chunk(2, dim=-1)
        return self._split_heads(keys), self._split_heads(values)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        memory: LayerCache | None = None,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        """Attend from ``x``.

        With ``packing`` (self-attention without a cache only), ``x`` is ``(n_tokens, dim)``:
        the valid positions of a ``packing.shape`` batch; the projections run on those rows,
        attention on the padded layout (padding keys are masked anyway), and the output is
        packed again (see :class:`Packing`).

        Self-attention (``memory is None``): keys/values are the cached ones followed by
        those of ``x``; the returned cache includes ``x`` (a :class:`KVCache` when
        ``cache_reserve`` > 0 and autograd is off). Cross-attention: keys/values are
        ``memory`` (already projected), returned unchanged.
        """
        if (memory is None) == self.cross:
            raise ValueError('cross-attention needs a memory, self-attention takes none')
        if packing is not None:
            return self._packed_forward(x, mask, packing)
        if memory is None:
            query, keys, values = (self._split_heads(part) for part in self.qkv(x).chunk(3, -1))
            if self.cache_reserve > 0 and not torch.is_grad_enabled():
                new_cache = self._buffered_cache(cache, keys, values)
                keys, values = new_cache
            else:
                if cache is not None:
                    keys = torch.cat([cache[0], keys], dim=2)
                    values = torch.cat([cache[1], values], dim=2)
                new_cache = (keys, values)
        else:
            query = self._split_heads(self.query(x))
            keys, values = new_cache = memory
        attended = attend(
            query,
            keys,
            values,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
        )
        batch, _, time, _ = attended.shape
        attended = attended.transpose(1, 2).reshape(batch, time, -1)
        return self.out(attended), new_cache

    def _packed_forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, packing: Packing
    ) -> tuple[torch.Tensor, LayerCache]:
        """Self-attention of packed rows; the three projections and ``out`` see real tokens
        only. With a boolean ``mask`` attention runs on :meth:`Packing.attention_groups` (each
        row's real tokens, rows of similar length together) and the keys/values returned
        for the cache are scattered to the padded layout; otherwise one scatter of q/k/v to
        the padded layout and one gather of the attended rows."""
        projected = self.qkv(x)  # (n_tokens, 3 * dim): query, keys, values
        dropout = self.dropout if self.training else 0.0
        if mask is not None and mask.dtype == torch.bool and packing.n_tokens:
            attended = self._grouped_attention(projected, mask, packing, dropout)
            key_value = packing.pad(projected[:, x.shape[-1] :])
            keys, values = (self._split_heads(part) for part in key_value.chunk(2, dim=-1))
        else:
            qkv = packing.pad(projected)
            query, keys, values = (self._split_heads(part) for part in qkv.chunk(3, dim=-1))
            attended = attend(query, keys, values, attn_mask=mask, dropout_p=dropout)
            batch, _, time, _ = attended.shape
            attended = packing.pack(attended.transpose(1, 2).reshape(batch, time, -1))
        if self.cache_reserve > 0 and not torch.is_grad_enabled():
            return self.out(attended), KVCache.allocate(keys, values, self.cache_reserve)
        return self.out(attended), (keys, values)

    def _grouped_attention(
        self, projected: torch.Tensor, mask: torch.Tensor, packing: Packing, dropout: float
    ) -> torch.Tensor:
        """Attention of packed ``(n_tokens, 3 * dim)`` q/k/v rows group by group
        (:meth:`Packing.attention_groups`); the attended rows come back in packed order."""
        groups, back = packing.attention_groups(mask)
        # one gather of every group's rows (its backward: one zero-filled scatter, not one each)
        ordered = projected.index_select(0, torch.cat([group.source for group in groups]))
        parts = []
        for group, rows in zip(groups, ordered.split([len(g.source) for g in groups])):
            padded = rows.new_zeros(group.rows * group.length, rows.shape[1])
            padded = padded.index_copy_(0, group.target, rows).view(group.rows, group.length, -1)
            query, keys, values = (self._split_heads(part) for part in padded.chunk(3, dim=-1))
            attended = attend(query, keys, values, attn_mask=group.mask, dropout_p=dropout)
            attended = attended.transpose(1, 2).reshape(group.rows * group.length, -1)
            parts.append(attended.index_select(0, group.target))
        return torch.cat(parts).index_select(0, back)

    def _buffered_cache(
        self, cache: LayerCache | None, keys: torch.Tensor, values: torch.Tensor
    ) -> KVCache:
        if isinstance(cache, KVCache):
            return cache.append(keys, values, self.cache_reserve)
        if cache is not None:  # a plain pair (e.g. a context's, or after a reorder)
            keys = torch.cat([cache[0], keys], dim=2)
            values = torch.cat([cache[1], values], dim=2)
        return KVCache.allocate(keys, values, self.cache_reserve)


class FeedForward(nn.Module):
    """``fc_out(Dropout(act(fc_in(x))))``; the inner dropout is ParlAI's ``--relu-dropout``
    (0 by default: the PLATO-2 code has none there)."""

    def __init__(self, dim: int, hidden: int, activation: str = 'gelu', dropout: float = 0.0):
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden)
        self.fc_out = nn.Linear(hidden, dim)
        self.activation = {'gelu': F.gelu, 'relu': F.relu}[activation]
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.dropout(self.activation(self.fc_in(x))))


class TransformerBlock(nn.Module):
    """Pre-norm block (PLATO-2 code: ``preprocess_cmd="n"``, ``postprocess_cmd="da"``)::

        x = x + Dropout(SelfAttn(LN(x)))
        x = x + Dropout(CrossAttn(LN(x), memory))     (decoder blocks only)
        x = x + Dropout(FFN(LN(x)))

    ``dropout`` is the residual dropout; ``attention_dropout`` acts on the attention weights;
    ``ffn_dropout`` inside the feed-forward layer, after its activation (default 0).
    """

    def __init__(
        self,
        dim: int,
        n_heads: int,
        ffn_dim: int,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        activation: str = 'gelu',
        cross_attention: bool = False,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm_attention = nn.LayerNorm(dim)
        self.attention = MultiHeadAttention(dim, n_heads, attention_dropout)
        self.cross_attention = None
        if cross_attention:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attention = MultiHeadAttention(dim, n_heads, attention_dropout, cross=True)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, activation, ffn_dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: LayerCache | None = None,
        memory: LayerCache | None = None,
        memory_mask: torch.Tensor | None = None,
        packing: Packing | None = None,
    ) -> tuple[torch.Tensor, LayerCache]:
        """``packing``: ``x`` holds the valid positions only (see :class:`Packing`)."""
        if packing is not None and self.cross_attention is not None:
            raise ValueError('packed blocks support self-attention only')
        attended, new_cache = self.attention(self.norm_attention(x), mask, cache, packing=packing)
        x = x + self.dropout(attended)
        if self.cross_attention is not None:
            crossed, _ = self.cross_attention(self.norm_cross(x), memory_mask, memory=memory)
            x = x + self.dropout(crossed)
        x = x + self.dropout(self.ffn(self.norm_ffn(x)))
        return x, new_cache


class TransformerStack(nn.Module):
    """``n_layers`` blocks and the final LayerNorm that pre-norm stacks need."""

    def __init__(self, n_layers: int, dim: int, **block_args) -> None:
        super().__init__()
        self.layers = nn.ModuleList(TransformerBlock(dim, **block_args) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        caches: list[LayerCache] | None = None,
        memories: list[LayerCache] | None = None,
        memory_mask: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
        input_dropout: nn.Module | None = None,
    ) -> tuple[torch.Tensor, list[LayerCache]]:
        """Run the blocks. ``valid`` (``(batch, time)`` bool; self-attention stacks without
        caches): the token-wise work runs on the valid positions only (:class:`Packing`);
        the returned states are zeros at the other positions, whose states are never read
        (masked keys, ignored outputs). Keys/values at valid positions, and so every valid
        position's state, equal the padded computation's. ``input_dropout``: applied to the
        input first (after packing: on the real tokens only)."""
        packing = None
        if valid is not None and caches is None and memories is None:
            packing = Packing(valid)
            x = packing.pack(x)
        if input_dropout is not None:
            x = input_dropout(x)
        new_caches = []
        for index, layer in enumerate(self.layers):
            x, cache = layer(
                x,
                mask,
                None if caches is None else caches[index],
                None if memories is None else memories[index],
                memory_mask,
                packing=packing,
            )
            new_caches.append(cache)
        x = self.final_norm(x)
        return (x if packing is None else packing.pad(x)), new_caches

    def reserve_cache(self, positions: int) -> None:
        """Opt in to preallocated self-attention caches (:class:`KVCache`): each buffer
        keeps room for ``positions`` more positions, so decoding token by token writes in
        place instead of re-copying the cache at every step (0: ``torch.cat``, the default).
        Only while autograd is off (generation); values are unchanged either way."""
        if positions < 0:
            raise ValueError(f'reserve_cache: positions must be >= 0, got {positions}')
        for layer in self.layers:
            layer.attention.cache_reserve = positions


class Embeddings(nn.Module):
    """Token + type (segment) + learned position embeddings, then dropout.

    PLATO-2 (§2.1, Fig. 2): "the input embeddings are the sum of token, role/type and
    position embeddings". ``n_types = 0`` disables type embeddings.

    All three tables start at the same scale, normal(0, dim^-0.5) (the scale of the tied
    token embeddings), as the authors' code gives all three the same initialiser: a type or
    position table left at PyTorch's normal(0, 1) would drown the token signal (a from-scratch
    cross-encoder then could not learn to match a response to its context).
    """

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        n_positions: int,
        n_types: int = 2,
        padding_idx: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=padding_idx)
        self.positions = nn.Embedding(n_positions, dim)
        self.types = nn.Embedding(n_types, dim) if n_types else None
        self.dropout = nn.Dropout(dropout)
        self.n_positions = n_positions
        for table in (self.tokens, self.positions, self.types):
            if table is not None:
                nn.init.normal_(table.weight, std=dim**-0.5)
        if padding_idx is not None:
            with torch.no_grad():
                self.tokens.weight[padding_idx].zero_()

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        types: torch.Tensor | None = None,
        max_position: int | None = None,
        dropout: bool = True,
    ) -> torch.Tensor:
        """Embedded ``tokens``; ``max_position``, when the caller knows the largest position
        from shapes, replaces the check on ``positions.max()`` (a device-to-host sync);
        ``dropout=False`` leaves the dropout to the caller (e.g. after packing)."""
        largest = int(positions.max()) if max_position is None else max_position
        if largest >= self.n_positions:
            raise ValueError(
                f'position {largest} >= --n-positions {self.n_positions}; '
                'lower --text-truncate/--label-truncate or raise --n-positions'
            )
        x = self.tokens(tokens) + self.positions(positions)
        if self.types is not None and types is not None:
            x = x + self.types(types)
        return self.dropout(x) if dropout else x


NEAR_INF = 1e20  # ParlAI's neginf: -1e20 (fp32, bf16), -65504 in fp16
NEAR_INF_FP16 = 65504.0


def banned_bias(vocab_size: int, banned: Iterable[int]) -> torch.Tensor:
    """``(vocab_size,)`` fp32: 0, and ParlAI's ``neginf`` (-1e20) at the ``banned`` ids
    (e.g. START and NULL, which a generator must never emit); see :func:`banned_linear`."""
    bias = torch.zeros(vocab_size)
    bias[list(banned)] = -NEAR_INF
    return bias


def banned_linear(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, ban: torch.Tensor
) -> torch.Tensor:
    """``F.linear(hidden, weight, bias)`` with the banned columns (``ban < 0``) at -1e20.

    The ban is folded into the bias of the one output GEMM, so no full-size in-place write
    follows it (an in-place write makes autograd clone the whole ``(..., vocab)`` gradient in
    backward). The values are those of writing ParlAI's ``neginf`` into the columns: in fp32
    and bf16, -1e20 absorbs any bias and dot product (|x| < 1e12 is below its spacing), and
    the gradient reaching those columns is softmax's 0. In fp16 (autocast or a halved model)
    -1e20 would overflow, so the columns get ``neginf(fp16)`` = -65504 by ``masked_fill``.
    """
    device_type = hidden.device.type
    dtype = (
        torch.get_autocast_dtype(device_type)
        if torch.is_autocast_enabled(device_type)
        else weight.dtype
    )
    if dtype == torch.float16:
        logits = F.linear(hidden, weight, bias)
        return logits.masked_fill(ban < 0, -NEAR_INF_FP16)
    total = ban if bias is None else bias + ban
    return F.linear(hidden, weight, total.to(weight.dtype))


def padded_from_flat(flat: torch.Tensor, mask: torch.Tensor, fill: int = 0) -> torch.Tensor:
    """The ``mask.shape`` tensor with ``flat`` (one value per True of ``mask``, in the
    row-major order of ``tensor[mask]``) at the True positions and ``fill`` elsewhere;
    differentiable in ``flat``. Turns the per-token values of an output layer run at the
    real tokens only back into ParlAI's padded ``(batch, time)`` layout."""
    padded = torch.full(mask.shape, fill, dtype=flat.dtype, device=flat.device)
    return padded.masked_scatter(mask, flat)


def init_weights(module: nn.Module) -> None:
    """Xavier-normal linear layers, zero biases.

    At the papers' sizes (hidden 1024-2048) this is the normal(0, ~0.02-0.03) of BERT, GPT and
    the PLATO-2 code; at the small CPU sizes a fixed 0.02 would make the query/key products
    (and so attention learning) several times weaker than at those sizes.
    """
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            for weight in part_weights(sub):  # a StackedLinear: each projection on its own
                nn.init.xavier_normal_(weight)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)


def prefix_lm_mask(context_valid: torch.Tensor, response_valid: torch.Tensor) -> torch.Tensor:
    """The unified-transformer attention mask of PLATO-2 (Fig. 2): a prefix-LM mask.

    The sequence is ``[context; response]``. Context tokens attend bidirectionally to every
    valid context token and never to the response; response tokens attend to every valid
    context token and causally to the response (themselves and earlier positions).

    :param context_valid: ``(batch, Lc)`` bool, False at padding.
    :param response_valid: ``(batch, Lr)`` bool, False at padding.
    :return: ``(batch, 1, Lc + Lr, Lc + Lr)`` bool, True = may attend.
    """
    batch, context_len = context_valid.shape
    response_len = response_valid.shape[1]
    total = context_len + response_len
    device = context_valid.device
    key_valid = torch.cat([context_valid, response_valid], dim=1)  # (B, L)
    is_context_key = torch.arange(total, device=device) < context_len  # (L,)
    query_index = torch.arange(total, device=device)[:, None]
    key_index = torch.arange(total, device=device)[None, :]
    # context queries: context keys only; response queries: context keys + causal response
    structure = is_context_key[None, :] | (
        (query_index >= context_len) & (key_index <= query_index)
    )
    mask = structure[None, :, :] & key_valid[:, None, :]
    # a padded query row that would see nothing (never used) may see its own position,
    # so scaled_dot_product_attention never produces NaN
    mask = mask | torch.eye(total, dtype=torch.bool, device=device)[None]
    return mask[:, None]


def causal_mask(query_len: int, key_len: int, device: torch.device) -> torch.Tensor:
    """``(query_len, key_len)`` bool: query i (the last ``query_len`` of the keys) sees keys <= i."""
    offset = key_len - query_len
    query_index = torch.arange(query_len, device=device)[:, None] + offset
    return torch.arange(key_len, device=device)[None, :] <= query_index


def bidirectional_mask(valid: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, L, L)`` bool: every token sees every valid token (a padded row also sees
    itself, so attention never gets an all-masked row and NaN)."""
    length = valid.shape[1]
    eye = torch.eye(length, dtype=torch.bool, device=valid.device)
    return valid[:, None, None, :] | eye


# Evaluation (no gradients) packs a batch only when at most this share of it is real tokens.
# Measured (dim 256, 2 layers, one thread, CPU time, padded / packed; docs/speed.md): batch 32
# at 53 % real 1.52x, 69 % 1.21x, 79 % 1.01x, 89 % 0.88x; batch 8 at 55 % 1.27x, 68 % 1.11x;
# batch 1-4 with little or no padding 0.76-0.81x (Packing's gathers with nothing to drop).
EVAL_PACKING_MAX_FILL = 0.75


def _mostly_padding(valid: torch.Tensor) -> bool:
    """Whether real tokens are at most :data:`EVAL_PACKING_MAX_FILL` of ``valid``."""
    return int(valid.sum()) <= EVAL_PACKING_MAX_FILL * valid.numel()


class TransformerEncoder(nn.Module):
    """A BERT-style bidirectional encoder trained from scratch: the one encoder of the project.

    Token (+ type) + learned position embeddings and a :class:`TransformerStack`; returns the
    last layer's states. Used by the retrieval/reward models (CORAL), critics (PPG) and
    sentence encoders (P2Bot's receiver).
    """

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
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.hidden_size = dim
        self.max_len = n_positions
        self.embeddings = Embeddings(vocab_size, dim, n_positions, n_types, padding_idx, dropout)
        self.packed = True  # forward() runs on real tokens only (Packing)
        self.stack = TransformerStack(
            n_layers,
            dim,
            n_heads=n_heads,
            ffn_dim=ffn_dim,
            dropout=dropout,
            attention_dropout=attention_dropout,
            activation=activation,
            ffn_dropout=ffn_dropout,
        )
        init_weights(self.stack)

    def forward(
        self,
        ids: torch.Tensor,
        type_ids: torch.Tensor | None = None,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(batch, L)`` ids (and types, validity) -> ``(batch, L, dim)`` states (zeros at
        the padding when ``packed``)."""
        if valid is None:
            valid = ids != self.embeddings.tokens.padding_idx
        length = ids.shape[1]
        positions = torch.arange(length, device=ids.device).expand_as(ids)
        # packed: the token-wise work (embedding dropout included) at the valid positions only;
        # the states at padding come back as zeros (every reader pools over ``valid`` or reads
        # [CLS]). In training always; at evaluation when enough of the batch is padding
        # (EVAL_PACKING_MAX_FILL)
        if not (self.packed and (self.training or _mostly_padding(valid))):
            x = self.embeddings(ids, positions, type_ids, max_position=length - 1)
            return self.stack(x, bidirectional_mask(valid))[0]
        x = self.embeddings(ids, positions, type_ids, max_position=length - 1, dropout=False)
        hidden, _ = self.stack(
            x, bidirectional_mask(valid), valid=valid, input_dropout=self.embeddings.dropout
        )
        return hidden
