"""Batching helpers shared by our agents (PLATO-2's evaluator, CORAL's reward models, PPG)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from parlai.utils.torch import padded_tensor


def pad_rows(rows: Sequence[torch.Tensor | Sequence[int]], pad: int) -> torch.Tensor:
    """Right-pad rows of token ids into ``(len(rows), max(1, longest))`` with ``pad``.

    ParlAI's :func:`~parlai.utils.torch.padded_tensor` without the lengths: tensors keep their
    dtype and device; an all-empty batch gives one column of padding."""
    tensor, _ = padded_tensor(list(rows), pad_idx=pad)
    return tensor


def context_candidate_pairs(
    context: torch.Tensor, cand_vecs: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Every (context, candidate) pair of a batch, for pairwise scorers of ParlAI's
    ``score_candidates``: ``context`` ``(B, T)``; ``cand_vecs`` ``(B, N, L)`` (a set per
    example) or ``(N, L)`` (one set shared by the batch). Returns the ``B·N`` context rows
    (each repeated ``N`` times), the ``B·N`` candidate rows in the same order, ``B`` and ``N``;
    scores of the pairs ``.view(B, N)`` back to ParlAI's layout."""
    bsz = context.shape[0]
    if cand_vecs.dim() == 2:
        cand_vecs = cand_vecs.unsqueeze(0).expand(bsz, -1, -1)
    n_cands = cand_vecs.shape[1]
    contexts = context.repeat_interleave(n_cands, dim=0)
    return contexts, cand_vecs.reshape(bsz * n_cands, -1), bsz, n_cands
