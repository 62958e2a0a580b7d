"""Memory layouts of the transformer (``parlai_ext/modules/transformer.py``): where its
tensors lie, so that no step copies what it does not have to.

- :class:`KVCache`: a layer's key/value cache as views of preallocated buffers that decoding
  extends in place (instead of a ``torch.cat`` copy of the whole cache per step and layer).
- :class:`Packing`: the valid positions of a right-padded ``(batch, time)`` batch, for running
  the token-wise parts of a stack on real tokens only.
- :class:`StackedLinear`: one ``nn.Linear`` whose output rows stack several projections (the
  self-attention query, keys and values: one GEMM), each initialised as its own layer was, and
  :func:`join_legacy_rows`, which maps a state dict of the separate layers onto it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

# attention groups: at most this many per batch, and a group must save at least this many
# (row x length^2) units of attention work to pay for its extra kernel calls and gathers
MAX_ATTENTION_GROUPS = 4
GROUP_OVERHEAD = 64 * 64


def split_sorted_lengths(lengths: list[int], max_groups: int, overhead: float) -> list[int]:
    """Cut points ``[0, ..., len(lengths)]`` splitting ascending ``lengths`` into at most
    ``max_groups`` consecutive groups, minimising the attention work of padding each group to
    its longest row, ``sum(rows * longest^2)``, plus ``overhead`` per group (dynamic program)."""
    n = len(lengths)
    if n == 0:
        return [0]
    inf = float('inf')
    # best[k][j]: the cost of the first j rows in k groups; cut[k][j]: where the last one starts
    best = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0.0
    for k in range(1, max_groups + 1):
        for j in range(1, n + 1):
            longest = lengths[j - 1] ** 2
            for i in range(k - 1, j):
                cost = best[k - 1][i] + (j - i) * longest + overhead
                if cost < best[k][j]:
                    best[k][j], cut[k][j] = cost, i
    groups = min(range(1, max_groups + 1), key=lambda k: best[k][n])
    points, j = [n], n
    for k in range(groups, 0, -1):
        j = cut[k][j]
        points.append(j)
    return points[::-1]


@dataclass
class AttentionGroup:
    """Rows of a packed batch that attend together, each row's real tokens first (in order,
    its padding dropped) and padded to the group's longest row: ``(rows, length, ...)``."""

    rows: int  # batch rows in the group
    length: int  # real tokens of its longest row
    source: torch.Tensor  # (t,) packed index of each of the group's real tokens
    target: torch.Tensor  # (t,) its flat position ``slot * length + j`` in the group layout
    mask: torch.Tensor  # (rows, heads or 1, length, length) bool, True = may attend


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
        self.valid = valid
        self.index = valid.reshape(-1).nonzero().squeeze(1)  # one host sync per forward
        self._groups: tuple[torch.Tensor, list[AttentionGroup], torch.Tensor] | None = None

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

    def attention_groups(self, mask: torch.Tensor) -> tuple[list[AttentionGroup], torch.Tensor]:
        """The batch regrouped for attention, and the permutation that puts the groups'
        concatenated real tokens back in packed order.

        Attention over the padded layout costs ``batch * time^2``; a dialogue batch's rows
        are ~half padding, with their padding in the middle (between context and response).
        Here each row's real tokens come first and the rows, sorted by length, are cut into
        at most :data:`MAX_ATTENTION_GROUPS` groups, each padded to its own longest row
        (:func:`split_sorted_lengths`): the same attention over real tokens for less work.
        ``mask`` (bool, broadcastable to ``(batch, heads, time, time)``) is gathered to each
        group's layout; it must already mask every padding key (as
        :func:`~parlai_ext.modules.transformer.prefix_lm_mask` and ``bidirectional_mask``
        do), since padding keys are dropped. A group's padding slots see only themselves.
        Built once per mask (every layer of a stack shares it).
        """
        if self._groups is not None and self._groups[0] is mask:
            return self._groups[1], self._groups[2]
        valid = self.valid
        batch, time = self.shape
        device = valid.device
        counts = valid.sum(dim=1).tolist()  # host sync, once per stack forward
        starts = [0] * batch
        for row in range(1, batch):
            starts[row] = starts[row - 1] + counts[row - 1]
        order = sorted((row for row in range(batch) if counts[row]), key=counts.__getitem__)
        lengths = [counts[row] for row in order]
        cuts = split_sorted_lengths(lengths, MAX_ATTENTION_GROUPS, GROUP_OVERHEAD)
        positions = self.index % time  # (n_tokens,) each real token's padded position
        full = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        full = full.expand(batch, full.shape[1], time, time)
        groups = []
        for lo, hi in zip(cuts[:-1], cuts[1:]):
            rows = order[lo:hi]
            length = counts[rows[-1]]
            source = torch.cat([torch.arange(starts[r], starts[r] + counts[r]) for r in rows])
            target = torch.cat(
                [torch.arange(counts[r]) + slot * length for slot, r in enumerate(rows)]
            )
            source, target = source.to(device), target.to(device)
            size = len(rows) * length
            # each slot's position in the padded layout (padding slots: position 0, masked)
            where = torch.zeros(size, dtype=torch.long, device=device)
            where = where.index_copy_(0, target, positions.index_select(0, source))
            where = where.view(len(rows), length)
            real = torch.zeros(size, dtype=torch.bool, device=device)
            real = real.index_fill_(0, target, True).view(len(rows), length)
            heads = full.shape[1]
            picked = full.index_select(0, torch.tensor(rows, device=device))
            picked = picked.gather(2, where[:, None, :, None].expand(-1, heads, -1, time))
            picked = picked.gather(3, where[:, None, None, :].expand(-1, heads, length, -1))
            eye = torch.eye(length, dtype=torch.bool, device=device)
            group_mask = (picked & real[:, None, None, :] & real[:, None, :, None]) | eye
            groups.append(AttentionGroup(len(rows), length, source, target, group_mask))
        sources = torch.cat([group.source for group in groups])
        back = torch.empty_like(sources).index_copy_(
            0, sources, torch.arange(sources.shape[0], device=device)
        )
        self._groups = (mask, groups, back)
        return groups, back


class StackedLinear(nn.Linear):
    """``nn.Linear(in_features, sum(parts))`` whose output rows stack ``len(parts)`` projections
    (``parts``: their output sizes, in order), e.g. a query ``(dim, dim)`` on top of keys and
    values ``(2 * dim, dim)``. Each part is initialised as a separate ``nn.Linear`` of its
    size would be, drawing in the same order (weight then bias, part by part), so a seeded
    model gets the same weights as with the separate layers; :func:`part_weights` gives
    ``init_weights`` the parts to initialise one by one."""

    def __init__(self, in_features: int, parts: tuple[int, ...], bias: bool = True) -> None:
        self.parts = tuple(parts)
        super().__init__(in_features, sum(self.parts), bias)

    def reset_parameters(self) -> None:
        biases = self.bias.split(self.parts) if self.bias is not None else [None] * len(self.parts)
        for weight, bias in zip(self.weight.split(self.parts), biases):
            nn.init.kaiming_uniform_(weight, a=math.sqrt(5))  # nn.Linear's own initialisation
            if bias is not None:
                bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0
                nn.init.uniform_(bias, -bound, bound)


def part_weights(linear: nn.Linear) -> tuple[torch.Tensor, ...]:
    """The weight of each part of a :class:`StackedLinear` (row views), or ``(weight,)``."""
    if isinstance(linear, StackedLinear):
        return linear.weight.split(linear.parts)
    return (linear.weight,)


def join_legacy_rows(
    state_dict: dict[str, torch.Tensor], prefix: str, old: tuple[str, ...], new: str
) -> None:
    """In place: replace the ``{prefix}{old[i]}.weight`` / ``.bias`` entries of separate layers
    by ``{prefix}{new}.weight`` / ``.bias``, their rows stacked in the order of ``old`` (a
    model file written before the layers were stacked into one :class:`StackedLinear`).
    Nothing changes when ``new`` is already there or an ``old`` layer is missing."""
    for kind in ('weight', 'bias'):
        names = [f'{prefix}{name}.{kind}' for name in old]
        if f'{prefix}{new}.{kind}' in state_dict or not all(n in state_dict for n in names):
            continue
        state_dict[f'{prefix}{new}.{kind}'] = torch.cat([state_dict.pop(n) for n in names])
