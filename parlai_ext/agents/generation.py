"""Shared pieces of our generator agents' decoding and loss (unified transformer, PLATO-2,
encoder-decoder, CORAL and PPG generators)."""

from __future__ import annotations

import torch
from parlai.core.metrics import AverageMetric
from parlai.core.torch_generator_agent import (
    GreedySearch,
    NucleusSampling,
    PPLMetric,
    TopKSampling,
    TreeSearch,
)

# ParlAI searches whose select_paths always return hypothesis ids = arange (a finished
# hypothesis keeps its row too): every reorder_decoder_incremental_state is the identity
IDENTITY_REORDER_SEARCHES = (GreedySearch, TopKSampling, NucleusSampling)


def reorders_identically(search: TreeSearch) -> bool:
    """True when ``search`` never reorders its hypotheses: its ``select_paths`` is that of
    one of :data:`IDENTITY_REORDER_SEARCHES` (subclasses that only add bookkeeping, such as
    PLATO-2's latent-id searches, count; one overriding ``select_paths`` does not)."""
    select = type(search).select_paths
    return any(select is cls.select_paths for cls in IDENTITY_REORDER_SEARCHES)


def record_generator_metrics(agent, batch, loss_per_token: torch.Tensor, preds: torch.Tensor):
    """ParlAI's ``TorchGeneratorAgent.compute_loss`` metrics (``loss``, ``ppl``,
    ``token_acc``, ``token_em``, ``record_per_token_metrics``) and its loss, the summed token
    NLL over the target tokens, from ``(batch, time)`` per-token losses (0 at padding) and
    predictions: the same calls as ParlAI's, so the same values."""
    labels = batch.label_vec
    notnull = labels.ne(agent.NULL_IDX)
    agent.record_local_metric('loss', AverageMetric.from_mask(loss_per_token, notnull))
    agent.record_local_metric('ppl', PPLMetric.from_mask(loss_per_token, notnull))
    agent.record_local_metric('token_acc', AverageMetric.from_mask(labels == preds, notnull))
    num_target_tokens = notnull.long().sum(dim=-1)
    num_tokens_correct = ((labels == preds) * notnull).sum(dim=-1)
    agent.record_local_metric(
        'token_em', AverageMetric.many(num_tokens_correct == num_target_tokens)
    )
    agent.record_per_token_metrics(batch, loss_per_token)
    loss = loss_per_token.sum(dim=1).sum()
    return loss / num_target_tokens.sum()
