"""The shared REINFORCE helper (``parlai_ext/losses/reinforce.py``) by value, and its guard
against NaN / infinite rewards in every RL loop that uses it (CORAL, PPG, P2Bot)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parlai_ext.losses.reinforce import (
    NonFiniteRewardError,
    average_gradients,
    check_finite_rewards,
    reward_weighted_nll,
    sequence_log_probs,
)

PAD = 0


def _fixture():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 6)
    # variable lengths: 4, 2 and 1 real tokens (padding at the end)
    targets = torch.tensor([[1, 2, 3, 4], [5, 1, PAD, PAD], [2, PAD, PAD, PAD]])
    return logits, targets


def test_sequence_log_probs_pick_the_target_and_zero_the_padding():
    logits, targets = _fixture()
    picked, mask = sequence_log_probs(logits, targets, PAD)
    log_probs = F.log_softmax(logits, dim=-1)
    assert mask.tolist() == [[True] * 4, [True, True, False, False], [True, False, False, False]]
    for i in range(3):
        for t in range(4):
            expected = log_probs[i, t, targets[i, t]].item() if mask[i, t] else 0.0
            assert picked[i, t].item() == pytest.approx(expected, abs=1e-6)


def _by_hand(logits, targets, rewards, baseline):
    log_probs = F.log_softmax(logits, dim=-1)
    lengths = [int((row != PAD).sum()) for row in targets]
    sums = [
        sum(log_probs[i, t, targets[i, t]].item() for t in range(n)) for i, n in enumerate(lengths)
    ]
    adv = [r - b for r, b in zip(rewards, baseline)]
    per = [-a * s for a, s in zip(adv, sums)]
    return {
        'sum': sum(per),
        'mean': sum(per) / len(per),
        'token': sum(per) / sum(lengths),
        'length': sum(p / n for p, n in zip(per, lengths)) / len(per),
    }


@pytest.mark.parametrize('normalise', ['sum', 'mean', 'token', 'length'])
def test_surrogate_matches_a_hand_computation_for_each_normalisation(normalise):
    logits, targets = _fixture()
    rewards = torch.tensor([1.5, -0.5, 0.25])
    picked, mask = sequence_log_probs(logits, targets, PAD)
    # a scalar baseline, a per-row baseline, and none
    got = reward_weighted_nll(picked, mask, rewards, 0.5, normalise)
    assert got.item() == pytest.approx(
        _by_hand(logits, targets, rewards.tolist(), [0.5] * 3)[normalise], rel=1e-5
    )
    per_row = torch.tensor([0.1, 0.2, -0.3])
    got = reward_weighted_nll(picked, mask, rewards, per_row, normalise)
    expected = _by_hand(logits, targets, rewards.tolist(), per_row.tolist())[normalise]
    assert got.item() == pytest.approx(expected, rel=1e-5)
    got = reward_weighted_nll(picked, mask, rewards, None, normalise)
    assert got.item() == pytest.approx(
        _by_hand(logits, targets, rewards.tolist(), [0.0] * 3)[normalise], rel=1e-5
    )


def test_padding_positions_never_count_even_with_garbage_log_probs():
    logits, targets = _fixture()
    picked, mask = sequence_log_probs(logits, targets, PAD)
    garbage = picked.masked_fill(~mask, -123.0)  # what a caller may pass: unmasked values
    rewards = torch.tensor([1.0, 2.0, 3.0])
    for normalise in ('sum', 'mean', 'token', 'length'):
        assert reward_weighted_nll(garbage, mask, rewards, 0.0, normalise).item() == pytest.approx(
            reward_weighted_nll(picked, mask, rewards, 0.0, normalise).item(), rel=1e-6
        )


def test_gradient_is_minus_advantage_times_score_and_rewards_are_constants():
    logits, targets = _fixture()
    logits = logits.clone().requires_grad_(True)
    rewards = torch.tensor([2.0, 0.0, 1.0], requires_grad=True)
    baseline = rewards.mean()
    picked, mask = sequence_log_probs(logits, targets, PAD)
    reward_weighted_nll(picked, mask, rewards, baseline, 'sum').backward()
    assert rewards.grad is None  # no gradient flows into the reward or the baseline
    # d/dlogits of -(R-b) log p(y_t) = -(R-b) (onehot - softmax)
    probs = F.softmax(logits.detach(), dim=-1)
    advantages = [1.0, -1.0, 0.0]
    for i in range(3):
        for t in range(4):
            expected = torch.zeros(6)
            if mask[i, t]:
                onehot = F.one_hot(targets[i, t], 6).float()
                expected = -advantages[i] * (onehot - probs[i, t])
            assert torch.allclose(logits.grad[i, t], expected, atol=1e-6)


def test_bad_normalisation_is_refused():
    logits, targets = _fixture()
    picked, mask = sequence_log_probs(logits, targets, PAD)
    with pytest.raises(ValueError, match='normalise'):
        reward_weighted_nll(picked, mask, torch.ones(3), None, 'avg')


@pytest.mark.parametrize('bad', [math.nan, math.inf, -math.inf])
def test_non_finite_reward_or_baseline_stops_with_a_clear_error(bad):
    logits, targets = _fixture()
    picked, mask = sequence_log_probs(logits, targets, PAD)
    rewards = torch.tensor([1.0, bad, 0.0])
    with pytest.raises(NonFiniteRewardError, match=r'1 of 3 reward values .*\[1\]='):
        reward_weighted_nll(picked, mask, rewards, None, 'mean')
    with pytest.raises(NonFiniteRewardError, match='baseline'):
        reward_weighted_nll(picked, mask, torch.ones(3), bad, 'mean')
    with pytest.raises(NonFiniteRewardError, match='baseline'):
        reward_weighted_nll(picked, mask, torch.ones(3), torch.tensor([0.0, 0.0, bad]), 'mean')
    check_finite_rewards(torch.tensor([0.0, -1e30, 1e30]))  # large but finite is fine


def test_coral_and_ppg_losses_go_through_the_checked_surrogate():
    from parlai_ext.losses.coral import coral_loss
    from parlai_ext.losses.ppg import generator_reinforce_loss

    logits, targets = _fixture()
    picked, mask = sequence_log_probs(logits, targets, PAD)
    nan = torch.tensor([0.5, math.nan, 0.5])
    with pytest.raises(NonFiniteRewardError):
        coral_loss(picked, mask, nan, 0.0, 'mean')
    with pytest.raises(NonFiniteRewardError):
        generator_reinforce_loss(logits, targets, nan, PAD, 'mean')
    # and with finite rewards they are the shared surrogate
    rewards = torch.tensor([0.9, 0.1, 0.4])
    assert generator_reinforce_loss(logits, targets, rewards, PAD, 'mean').item() == pytest.approx(
        reward_weighted_nll(picked, mask, rewards, None, 'mean').item()
    )


def test_average_gradients_is_a_no_op_in_one_process():
    layer = torch.nn.Linear(2, 2)
    layer(torch.ones(1, 2)).sum().backward()
    before = [p.grad.clone() for p in layer.parameters()]
    average_gradients(layer.parameters())
    assert all(torch.equal(b, p.grad) for b, p in zip(before, layer.parameters()))


# ------------------------------------------------------------- parlai_ext/rewards.py (CORAL's)


def test_constant_reward_and_its_range():
    from parlai_ext.rewards import ConstantReward, load_reward_model

    assert load_reward_model('constant:0.3').score(['c'] * 3, ['a', 'b', 'c']).tolist() == (
        pytest.approx([0.3] * 3)
    )
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r'\[0, 1\]'):
            ConstantReward(bad)
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_reward_model('/nonexistent/reward/model')


class _CoherenceAgent:
    """A reward agent with the PLATO-2 evaluator's interface: records how texts were cut."""

    def __init__(self):
        self.model = torch.nn.Linear(2, 2)
        self.calls = []

    def _vectorize_text(self, text, truncate_left=True):
        self.calls.append((text, truncate_left))
        return torch.tensor([len(text)])

    def coherence_scores(self, context_vecs, response_vecs):
        return torch.tensor(
            [[c.item() / 10 + r.item() / 100] for c, r in zip(context_vecs, response_vecs)]
        )


def test_agent_reward_vectorises_contexts_from_the_left_and_responses_from_the_right():
    from parlai_ext.rewards import AgentReward, freeze

    agent = _CoherenceAgent()
    reward = AgentReward(agent, 'coherence_scores')
    freeze(reward.module)
    assert not agent.model.training and not any(p.requires_grad for p in agent.model.parameters())
    got = reward.score(['abc', 'ab'], ['x', 'xyz'])
    assert got.tolist() == pytest.approx([0.31, 0.23]) and got.shape == (2,)
    # contexts keep their end (truncated from the left), responses their start
    assert agent.calls == [('abc', True), ('ab', True), ('x', False), ('xyz', False)]
    with pytest.raises(ValueError, match='2 contexts for 1 responses'):
        reward.score(['a', 'b'], ['c'])
    assert reward.score([], []).shape == (0,)
