"""PPG's RL objective (Lu et al., NAACL 2022, §3.3; unofficial re-implementation).

The critic's predicted label L̂ on (generated partner personas p̂, generated response r̂) is
turned into a reward R (+1 if L̂ = 1, else −1), and both generators are updated with
REINFORCE: ∆θ_PPG = −R ∇ log P(p̂ | s, c) and ∆θ_DRG = −R ∇ log P(r̂ | s, p̂, c). The
score-function surrogate is the project's shared one (:mod:`parlai_ext.losses.reinforce`).
"""

from __future__ import annotations

import torch

from parlai_ext.losses.reinforce import reward_weighted_nll, sequence_log_probs

REWARD_TYPES = ('label', 'probability')


def critic_rewards(
    positive_probability: torch.Tensor, reward_type: str = 'label', scale: float = 1.0
) -> torch.Tensor:
    """R from the critic's P(L = 1 | p̂, r̂), one per example (§3.3).

    ``'label'`` (the paper): L̂ = 1 when P(L = 1) > 0.5 (the predicted class), R = +scale
    if L̂ = 1 else −scale. ``'probability'``: R = scale · (2 P(L = 1) − 1), in (−scale, scale),
    positive exactly when L̂ = 1. The paper's ablation (§5.7) scales R by 10 (``scale``).
    """
    if reward_type not in REWARD_TYPES:
        raise ValueError(f'reward_type must be one of {REWARD_TYPES}, got {reward_type!r}')
    probability = positive_probability.detach().float()
    if reward_type == 'label':
        return torch.where(probability > 0.5, 1.0, -1.0) * scale
    return (2.0 * probability - 1.0) * scale


def generator_reinforce_loss(
    logits: torch.Tensor,
    sample: torch.Tensor,
    rewards: torch.Tensor,
    padding_idx: int,
    normalise: str = 'mean',
) -> torch.Tensor:
    """−R log P(sample) of one generator (§3.3), from its teacher-forced ``logits`` (N, T, V).

    ``sample (N, T)`` holds the generated tokens (end token included, padding after it).
    With ``normalise='mean'`` the loss is the batch mean of −R_i Σ_t log P(y_it): the
    gradient of each example is exactly the paper's −R ∇ log P; see
    :func:`parlai_ext.losses.reinforce.reward_weighted_nll` for the other choices.
    """
    log_probs, mask = sequence_log_probs(logits, sample, padding_idx)
    return reward_weighted_nll(log_probs, mask, rewards, None, normalise)
