"""CORAL's objectives as small functions (unofficial re-implementation of Santra et al.).

- :func:`r3`: the reward R3(c, r) = f_R(c, r) − m (§3.1, Algorithm 1);
- :func:`coral_loss`: L = −R3(c, r) Σ_t log P(r_t | r_<t, c) (Eq. 2), over a batch that mixes
  ground-truth and negative responses (Eq. 3), through the shared REINFORCE helper;
- :func:`choose_positives`: Algorithm 1's per-example choice, ground truth with probability p+;
- :class:`UtterancePool`: the "training utterance pool" that random negatives are drawn from
  uniformly (RandomNegative sampling, §3.3);
- :func:`retrieval_bce_loss` and :func:`roc_auc`: training and evaluating the reward models
  on positive vs random-negative pairs (§4.1, §4.2).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from parlai_ext.losses.reinforce import reward_weighted_nll


def r3(scores: torch.Tensor, margin: float) -> torch.Tensor:
    """R3(c, r) = f_R(c, r) − m (Algorithm 1): the reward after the fixed margin baseline."""
    return scores - margin


def coral_loss(
    log_probs_per_token: torch.Tensor,
    mask: torch.Tensor,
    scores: torch.Tensor,
    margin: float = 0.0,
    normalise: str = 'token',
) -> torch.Tensor:
    """CORAL loss (Eq. 2; Eq. 3 when the batch mixes positives and negatives).

    ``−Σ_i (f_R(c_i, r_i) − m) Σ_t log P(r_it | r_i<t, c_i)``, scaled as ``normalise`` says
    (see :func:`~parlai_ext.losses.reinforce.reward_weighted_nll`; the paper leaves this
    open). With m = 0, only ground-truth responses and f_R ≡ 1 it is the token-summed
    cross-entropy (Appendix A); ``normalise='token'`` then equals ParlAI's token-averaged NLL.

    :param log_probs_per_token: ``(N, T)`` log P of each response token.
    :param mask: ``(N, T)`` bool, True at real tokens.
    :param scores: ``(N,)`` f_R(c, r) in (0, 1) from the frozen reward model.
    """
    return reward_weighted_nll(log_probs_per_token, mask, scores, margin, normalise)


def choose_positives(
    batch_size: int,
    p_positive: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Algorithm 1's choice per example: True = ground truth (probability p+), False = negative."""
    if not 0.0 <= p_positive <= 1.0:
        raise ValueError(f'p+ must be in [0, 1], got {p_positive}')
    return torch.rand(batch_size, generator=generator) < p_positive


class UtterancePool:
    """Training utterances seen so far (a uniform reservoir of at most ``capacity``).

    Random negatives (RandomNegative sampling, §3.3) are drawn uniformly from it. Each item is
    a ``(text, token_vector)`` pair. With a capacity at least the number of training responses,
    the pool is the whole training set after one epoch; before that it holds what was seen.
    """

    def __init__(self, capacity: int = 100_000, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError('the pool needs a capacity of at least 1')
        self.capacity = capacity
        self.items: list[tuple[str, Any]] = []
        self.seen = 0
        self.random = random.Random(seed)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, texts: Sequence[str], vectors: Sequence[Any]) -> None:
        """Reservoir sampling (Vitter's algorithm R): every utterance seen is kept with equal
        probability ``capacity / seen``."""
        for item in zip(texts, vectors):
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(item)
            else:
                slot = self.random.randrange(self.seen)
                if slot < self.capacity:
                    self.items[slot] = item

    def sample(self, excluded: Sequence[str], tries: int = 16) -> list[tuple[str, Any]]:
        """One draw per entry of ``excluded``: uniform over the pool's utterances whose text
        differs from that entry (a negative is never the example's own response); uniform
        over the whole pool only if every utterance in it has that text.

        ``tries`` rejection draws first (exactly uniform over the allowed items), then one
        uniform choice among the allowed items found by a scan.
        """
        if not self.items:
            raise ValueError('the utterance pool is empty')
        out = []
        for text in excluded:
            item = None
            for _ in range(tries):
                candidate = self.items[self.random.randrange(len(self.items))]
                if candidate[0] != text:
                    item = candidate
                    break
            if item is None:
                allowed = [it for it in self.items if it[0] != text] or self.items
                item = allowed[self.random.randrange(len(allowed))]
            out.append(item)
        return out


def retrieval_bce_loss(
    positive_logits: torch.Tensor, negative_logits: torch.Tensor
) -> torch.Tensor:
    """Binary cross-entropy of the reward model: label 1 for the true response, 0 for a random
    one (§4.2: "we used randomly sampled utterances as negative samples"); mean over pairs."""
    logits = torch.cat([positive_logits, negative_logits]).float()
    labels = torch.cat([torch.ones_like(positive_logits), torch.zeros_like(negative_logits)])
    return F.binary_cross_entropy_with_logits(logits, labels.float())


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties 1/2
    (the Mann-Whitney statistic); NaN without both kinds."""
    pos, neg = np.asarray(positive, dtype=np.float64), np.asarray(negative, dtype=np.float64)
    if not len(pos) or not len(neg):
        return float('nan')
    neg_sorted = np.sort(neg)
    below = np.searchsorted(neg_sorted, pos, side='left')
    not_above = np.searchsorted(neg_sorted, pos, side='right')
    return float((below + 0.5 * (not_above - below)).sum() / (len(pos) * len(neg)))
