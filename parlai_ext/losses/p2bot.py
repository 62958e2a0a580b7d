"""P2Bot's objectives and self-play rewards (Liu et al., ACL 2020), as small functions.

- :func:`nup_loss`: the auxiliary next-utterance prediction loss of the transmitter (§3.1).
- :func:`receiver_loss`: ``max(0, m + c_Z − c_A) + β·|U|₁`` (Eq. 12).
- :func:`discounted_persona_reward`: RS.3, Eq. 8.
- :func:`total_reward`: ``R = λ1 R1 + λ2 R2 + λ3 R3`` (Eq. 10).
- :func:`reinforce_baseline`: the baseline subtracted from ``R`` in Eq. 5 (§3.2): the
  mini-batch mean, or the mean per turn (authors' code).

RS.1 (Eq. 6) is :func:`parlai_ext.modules.p2bot.length_normalised_log_prob` under a frozen LM,
RS.2 (Eq. 7) the NUP head's ``log p(y=1)``; REINFORCE (Eq. 5) is the shared
:mod:`parlai_ext.losses.reinforce`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nup_loss(positive_logits: torch.Tensor, negative_logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the NUP head: the true response is class 1, the distractor class 0.

    ``(B, 2)`` logits each; the mean over the 2B decisions (§3.1: "train the classifier to give
    a higher score on the response than the distractor").
    """
    logits = torch.cat([positive_logits, negative_logits], dim=0).float()
    labels = torch.cat(
        [
            torch.ones(len(positive_logits), dtype=torch.long, device=logits.device),
            torch.zeros(len(negative_logits), dtype=torch.long, device=logits.device),
        ]
    )
    return F.cross_entropy(logits, labels)


def receiver_loss(
    scores: torch.Tensor,
    true_index: torch.Tensor,
    relevance: torch.Tensor,
    mask: torch.Tensor,
    margin: float = 0.4,
    beta: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``L_rec = max(0, m + c_Z − c_A) + β · |U^Δ|₁`` (Eq. 12), mean over the batch.

    :param scores: ``(B, C)`` cumulative scores ``c`` of the C candidate personas (Eq. 14).
    :param true_index: ``(B,)`` which candidate is the real persona ``w^A``.
    :param relevance: ``(B, C, N, L)`` relevance matrices ``U^Δ`` (Eq. 11) of all candidates.
    :param mask: ``(B, C, N, L)`` valid entries of ``U``.
    :return: ``(loss, margin part, L1 part)``. With more than one distractor the hinge is
        averaged over them; ``|U|₁`` sums the absolute entries of every candidate's ``U``
        (Δ ∈ {A, Z}), as the paper's notation reads.
    """
    batch, candidates = scores.shape
    rows = torch.arange(batch, device=scores.device)
    positive = scores[rows, true_index]  # c_A
    is_distractor = torch.ones_like(scores, dtype=torch.bool)
    is_distractor[rows, true_index] = False
    hinge = (margin + scores - positive[:, None]).clamp(min=0.0)  # per candidate
    margin_part = (hinge * is_distractor).sum(dim=1) / max(candidates - 1, 1)
    l1_part = (relevance.abs() * mask).flatten(1).sum(dim=1)
    return (margin_part + beta * l1_part).mean(), margin_part.mean(), l1_part.mean()


def discounted_persona_reward(
    user_scores: torch.Tensor, agent_scores: torch.Tensor, gamma: float = 0.5
) -> torch.Tensor:
    """RS.3, Eq. 8: ``R3(a_n) = r(a_n) + Σ_{k=n+1..N} (γ^{2(k−n)−1} r(x_k) + γ^{2(k−n)} r(a_k))``.

    :param user_scores: ``(B, N)`` ``r(x^A_k)``, the user's k-th utterance (k = 1..N; the first
        one, taken from the data, never enters Eq. 8 because k starts at n + 1 ≥ 2).
    :param agent_scores: ``(B, N)`` ``r(a^B_k)``, the learning agent's k-th utterance.
    :return: ``(B, N)`` ``R3(a^B_n)`` for n = 1..N.
    """
    turns = agent_scores.shape[1]
    rewards = agent_scores.clone()
    for n in range(turns):
        for k in range(n + 1, turns):
            distance = k - n
            rewards[:, n] += (
                gamma ** (2 * distance - 1) * user_scores[:, k]
                + gamma ** (2 * distance) * agent_scores[:, k]
            )
    return rewards


def total_reward(
    language: torch.Tensor,
    coherence: torch.Tensor,
    persona: torch.Tensor,
    lambdas: tuple[float, float, float] = (0.4, 0.1, 0.5),
) -> torch.Tensor:
    """``R = λ1 R1 + λ2 R2 + λ3 R3`` (Eq. 10); defaults are the paper's (§5.1)."""
    return lambdas[0] * language + lambdas[1] * coherence + lambdas[2] * persona


BASELINES = ('batch', 'turn')


def reinforce_baseline(rewards: torch.Tensor, kind: str = 'batch') -> torch.Tensor:
    """The baseline ``b`` of each reward ``R(a^B_n)``, shape ``(rollouts, turns)`` like ``rewards``.

    - ``'batch'``: the mean reward of the mini-batch over all rollouts and turns (§3.2: "here
      the mean reward of a mini-batch").
    - ``'turn'``: the mean over the rollouts of the same turn n (the authors' code). RS.3's
      discounting (Eq. 8) gives early turns more terms, so the expected reward differs by turn
      (about 1.9μ, 1.75μ, μ for N = 3, γ = 0.5 and mean persona score μ); a per-turn baseline
      removes that difference from the advantage.
    """
    if kind == 'batch':
        return rewards.mean().expand_as(rewards)
    if kind == 'turn':
        return rewards.mean(dim=0, keepdim=True).expand_as(rewards)
    raise ValueError(f'baseline must be one of {BASELINES}, got {kind!r}')
