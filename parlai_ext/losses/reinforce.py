"""REINFORCE (Williams, 1992) for sequence generators, shared by CORAL, P2Bot and PPG.

For a sampled (or given) sequence y with reward R and baseline b, the score-function
estimator of ∇ E[R] is ``(R − b) ∇ Σ_t log p(y_t | y_<t, x)``; the surrogate loss whose
gradient is its negative is ``−(R − b) Σ_t log p(y_t | y_<t, x)``. Rewards and baselines are
constants (no gradient flows into the reward model or the baseline).

Every RL loop of the project (CORAL's Eq. 3, PPG's joint RL, P2Bot's self-play) computes its
surrogate with :func:`reward_weighted_nll`, which refuses a NaN or infinite reward or baseline
(:class:`NonFiniteRewardError`) before anything reaches the gradients: one such value would turn
every weight into NaN after the optimizer step.

Under ``multiprocessing_train`` (DDP), :func:`average_gradients` averages the gradients of an
update whose surrogate was computed outside the DDP wrapper's forward (P2Bot self-play, PPG).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

NORMALISATIONS = ('sum', 'mean', 'token', 'length')


class NonFiniteRewardError(ValueError):
    """A reward (or baseline) of a REINFORCE update is NaN or infinite."""


def check_finite_rewards(values: torch.Tensor, what: str = 'reward') -> None:
    """Raise :class:`NonFiniteRewardError` naming the bad entries when ``values`` is not finite.

    A single NaN or infinite reward makes the surrogate (and, after the optimizer step, every
    weight it touches) NaN; stop the update instead, with the positions and values.
    """
    finite = torch.isfinite(values)
    if bool(finite.all()):
        return
    flat = values.detach().reshape(-1).float().cpu()
    bad = (~finite.reshape(-1).cpu()).nonzero().flatten().tolist()
    shown = ', '.join(f'[{i}]={flat[i].item()}' for i in bad[:8])
    more = f' (and {len(bad) - 8} more)' if len(bad) > 8 else ''
    raise NonFiniteRewardError(
        f'{len(bad)} of {flat.numel()} {what} values are NaN or infinite: {shown}{more}; the '
        'REINFORCE update stops here so the weights stay finite. Check the reward model (its '
        'inputs, its dtype, a division by zero in a normalisation) or the reward options.'
    )


def sequence_log_probs(
    logits: torch.Tensor, targets: torch.Tensor, padding_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(y_t | y_<t, x)`` of each target token ``(N, T)`` and the mask of real tokens.

    ``logits (N, T, V)`` are the teacher-forced decoder outputs for ``targets (N, T)``;
    positions holding ``padding_idx`` are masked (their log-probability is set to 0).
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    mask = targets != padding_idx
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~mask, 0.0), mask


def reward_weighted_nll(
    log_probs_per_token: torch.Tensor,
    mask: torch.Tensor,
    rewards: torch.Tensor,
    baseline: float | torch.Tensor | None = None,
    normalise: str = 'token',
) -> torch.Tensor:
    """The REINFORCE surrogate ``−Σ_i (R_i − b_i) Σ_t log p(y_it)``, normalised.

    :param log_probs_per_token: ``(N, T)`` log-probabilities of the sequences' tokens.
    :param mask: ``(N, T)`` bool, True at real tokens.
    :param rewards: ``(N,)`` rewards (detached here).
    :param baseline: subtracted from the rewards (a float, or ``(N,)``); None = 0.
    :param normalise: how the batch sum is scaled:
        ``'sum'`` none (the plain sum over the batch);
        ``'mean'`` divided by the number of sequences N;
        ``'token'`` divided by the number of real tokens in the batch (the scaling of
        ParlAI's token-averaged cross-entropy; relative weights of the sequences unchanged);
        ``'length'`` each sequence's sum divided by its own length, then the mean over
        sequences (changes the relative weights: long sequences count less).
    :return: a scalar loss.
    :raises NonFiniteRewardError: a reward or the baseline is NaN or infinite.
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f'normalise must be one of {NORMALISATIONS}, got {normalise!r}')
    check_finite_rewards(rewards, 'reward')
    advantages = rewards.detach().to(log_probs_per_token.dtype)
    if baseline is not None:
        if torch.is_tensor(baseline):
            baseline = baseline.detach().to(advantages.dtype)
        else:
            baseline = torch.tensor(float(baseline), dtype=advantages.dtype)
        check_finite_rewards(baseline, 'baseline')
        advantages = advantages - baseline.to(advantages.device)
    weights = mask.to(log_probs_per_token.dtype)
    sequence_log_prob = (log_probs_per_token * weights).sum(dim=-1)
    per_sequence = -advantages * sequence_log_prob
    if normalise == 'sum':
        return per_sequence.sum()
    if normalise == 'mean':
        return per_sequence.mean()
    if normalise == 'token':
        return per_sequence.sum() / weights.sum().clamp(min=1.0)
    return (per_sequence / weights.sum(dim=-1).clamp(min=1.0)).mean()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by its mean over the distributed workers (no-op in one process).

    DDP all-reduces only the gradients of a backward pass that follows a forward through the
    DDP wrapper; an RL loop that samples with the bare model and recomputes log-probabilities
    with it calls this after ``backward`` and before the optimizer step, on every worker, with
    the same parameters in the same order. A gradient missing (None) on some workers only is
    taken as zeros there; one missing on all workers stays None (as in one process).
    """
    from parlai.utils.distributed import is_distributed

    if not is_distributed():
        return
    import torch.distributed as dist

    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    device = params[0].device
    present = torch.tensor([p.grad is not None for p in params], device=device, dtype=torch.int)
    dist.all_reduce(present, op=dist.ReduceOp.MAX)
    grads = []
    for p, anywhere in zip(params, present.tolist()):
        if anywhere and p.grad is None:
            p.grad = torch.zeros_like(p)
        if anywhere:
            grads.append(p.grad)
    world = dist.get_world_size()
    groups: dict[tuple, list[torch.Tensor]] = {}
    for grad in grads:
        groups.setdefault((grad.dtype, grad.device), []).append(grad)
    for group in groups.values():  # one all-reduce per dtype and device
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat)
        flat /= world
        for grad, value in zip(group, flat.split([g.numel() for g in group])):
            grad.copy_(value.view_as(grad))
