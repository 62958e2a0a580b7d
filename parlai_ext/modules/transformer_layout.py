"""Memory layouts of the transformer (``parlai_ext/modules/transformer.py``): where its
tensors lie, so that no step copies what it does not have to.

- :class:`KVCache`: a layer's key/value cache as views of preallocated buffers that decoding
  extends in place (instead of a ``torch.cat`` copy of the whole cache per step and layer).
- :class:`Packing`: the valid positions of a right-padded ``(batch, time)`` batch, for running
  the token-wise parts of a stack on real tokens only.
- :func:`join_rows`: ``torch.cat`` of two tensors along dim 0 that is a view (no copy) when
  they already :func:`lie_end_to_end` in one storage (the query and key/value weights of
  :class:`~parlai_ext.modules.transformer.MultiHeadAttention`).
"""

from __future__ import annotations

import torch


class _KVStore:
    """Preallocated key and value buffers ``(batch, heads, capacity, head_dim)`` shared by
    the :class:`KVCache` views cut from them; ``filled`` = positions written so far."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int) -> None:
        self.keys, self.values, self.filled = keys, values, filled

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]


class KVCache(tuple):
    """A layer cache ``(keys, values)`` whose tensors are views ``[:, :, :length]`` of
    preallocated buffers: appending writes the new positions into the buffers in place
    instead of copying the whole cache (``torch.cat``). It *is* a ``(keys, values)`` tuple,
    so code that reads ``cache[0].shape[2]`` or index-selects the pair works unchanged (an
    index-selected pair is a plain tuple again: the next append starts a new buffer).

    An append writes in place only when this cache is the longest view of its buffer (no
    other cache extended it first: two continuations of one cache never overwrite each
    other) and the buffer has room; otherwise it copies into a new buffer with
    ``reserve`` free positions.
    """

    store: _KVStore

    def __new__(cls, store: _KVStore, length: int) -> KVCache:
        cache = super().__new__(cls, (store.keys[:, :, :length], store.values[:, :, :length]))
        cache.store = store
        return cache

    def __getnewargs__(self) -> tuple[_KVStore, int]:  # copy / pickle
        return self.store, self.length

    @property
    def length(self) -> int:
        return self[0].shape[2]

    @classmethod
    def allocate(cls, keys: torch.Tensor, values: torch.Tensor, reserve: int) -> KVCache:
        """A new buffer holding ``keys``/``values`` and ``reserve`` free positions."""
        batch, heads, length, head_dim = keys.shape
        shape = (batch, heads, length + reserve, head_dim)
        key_buffer = keys.new_empty(shape)
        value_buffer = values.new_empty(shape)
        key_buffer[:, :, :length] = keys
        value_buffer[:, :, :length] = values
        return cls(_KVStore(key_buffer, value_buffer, length), length)

    def append(self, keys: torch.Tensor, values: torch.Tensor, reserve: int) -> KVCache:
        """This cache followed by ``keys``/``values`` (in place when possible, see above)."""
        length, new = self.length, keys.shape[2]
        store = self.store
        if (
            store.filled == length
            and length + new <= store.capacity
            and keys.shape[:2] == store.keys.shape[:2]
            and keys.dtype == store.keys.dtype
        ):
            store.keys[:, :, length : length + new] = keys
            store.values[:, :, length : length + new] = values
            store.filled = length + new
            return KVCache(store, length + new)
        return KVCache.allocate(
            torch.cat([self[0], keys], dim=2), torch.cat([self[1], values], dim=2), reserve
        )


class Packing:
    """The valid positions of a ``(batch, time)`` layout, for running the token-wise parts of
    a stack (projections, feed-forward, norms, residual dropout) on real tokens only.

    Right-padded batches of dialogue contexts are ~half padding (DailyDialog, batch 32: 35 %
    of label and ~50 % of context positions are real); the padded positions' states are never
    read (their keys are masked, their outputs ignored), so computing them is waste. Only
    attention needs the padded layout; :meth:`pad` and :meth:`pack` move between the two.
    ``index`` holds the flat positions ``b * time + t`` of the valid tokens, in row-major
    order (the order of ``tensor[valid]``).
    """

    def __init__(self, valid: torch.Tensor) -> None:
        self.shape = tuple(valid.shape)
        self.index = valid.reshape(-1).nonzero().squeeze(1)  # one host sync per forward

    @property
    def n_tokens(self) -> int:
        return self.index.shape[0]

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """``(batch, time, d)`` -> ``(n_tokens, d)``: the rows at the valid positions."""
        return padded.reshape(-1, padded.shape[-1]).index_select(0, self.index)

    def pad(self, packed: torch.Tensor) -> torch.Tensor:
        """``(n_tokens, d)`` -> ``(batch, time, d)`` with zeros at the padding."""
        batch, time = self.shape
        out = packed.new_zeros(batch * time, packed.shape[-1])
        # in place: the out-of-place ``index_copy`` would copy the whole zero tensor once more
        return out.index_copy_(0, self.index, packed).view(batch, time, -1)


def lie_end_to_end(first: torch.Tensor, second: torch.Tensor) -> bool:
    """Whether ``second`` starts in ``first``'s storage where ``first`` ends (both contiguous,
    same dtype, device and trailing shape): then ``torch.cat([first, second])`` is a view."""
    return (
        first.is_contiguous()
        and second.is_contiguous()
        and first.dtype == second.dtype
        and first.device == second.device
        and first.shape[1:] == second.shape[1:]
        and first.untyped_storage().data_ptr() == second.untyped_storage().data_ptr()
        and second.storage_offset() == first.storage_offset() + first.numel()
    )


class _JoinedView(torch.autograd.Function):
    """``torch.cat(parts)`` (dim 0) of tensors that :func:`lie_end_to_end`: forward returns a
    view of their common storage (no copy), backward splits the gradient between them."""

    @staticmethod
    def forward(ctx, *parts: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rows = [part.shape[0] for part in parts]
        first = parts[0]
        shape = (sum(ctx.rows), *first.shape[1:])
        view = first.new_empty(0)
        return view.set_(first.untyped_storage(), first.storage_offset(), shape, first.stride())

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # type: ignore[override]
        return grad.split(ctx.rows)


def join_rows(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``torch.cat([first, second])``, differentiable; without a copy when the two
    :func:`lie_end_to_end` (e.g. parameters placed so by :meth:`MultiHeadAttention.fuse_qkv`)."""
    if lie_end_to_end(first, second):
        return _JoinedView.apply(first, second)
    return torch.cat([first, second])
