"""parlai_ext.modules.sampling against exact distributions: chi-square tests of top-k, nucleus
(p = 0.9, both the rejection sampler and its sorting fallback), temperature and the Gumbel
draws; the nucleus rule by hand; the Gumbel-softmax temperature's sharpness and gradients.

Every chi-square test uses a seeded generator (deterministic) and asserts p-value > 1e-3
against the exact law; each also asserts that the law of the plausible bug (no filter, no
temperature, a nucleus one token short or long) is rejected (p-value < 1e-6), so the test has
the power to tell them apart.
"""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chisquare

from parlai_ext.modules import sampling as S

# 8 tokens with distinct probabilities: .30 .22 .16 .12 .08 .06 .04 .02
PROBS = torch.tensor([0.30, 0.22, 0.16, 0.12, 0.08, 0.06, 0.04, 0.02], dtype=torch.float64)
LOGITS = PROBS.log().float()
N = 40_000


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _counts(draws: torch.Tensor, vocab: int = len(PROBS)) -> torch.Tensor:
    return torch.bincount(draws.flatten(), minlength=vocab).double()


def _pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Chi-square p-value of ``counts`` under ``probs``; a draw of a zero-probability token
    gives 0 (impossible under the law)."""
    probs = probs.double() / probs.sum()
    if bool((counts[probs == 0] > 0).any()):
        return 0.0
    support = probs > 0
    if int(support.sum()) == 1:  # one possible token: every draw must be it (checked above)
        return 1.0
    expected = probs[support] * counts.sum()
    return float(chisquare(counts[support].numpy(), expected.numpy()).pvalue)


def _nucleus_law(probs: torch.Tensor, p: float) -> torch.Tensor:
    """The exact nucleus law by hand: token i is kept when the mass of the tokens more probable
    than i is below p (ParlAI's NucleusSampling rule), then renormalised."""
    kept = torch.tensor([float(probs[probs > q].sum()) < p for q in probs])
    law = probs * kept
    return law / law.sum()


def _rows(n: int = N) -> torch.Tensor:
    return LOGITS.expand(n, -1)


# --- filters by hand ----------------------------------------------------------------------------
def test_top_p_filter_keeps_the_smallest_set_reaching_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    kept = lambda p: torch.isfinite(S.top_p_filter(logits, p))[0].tolist()  # noqa: E731
    assert kept(0.9) == [True, True, True, False]  # mass before token 3: 0.95 >= 0.9
    assert kept(0.8) == [True, True, False, False]  # before token 2: exactly 0.8 -> dropped
    assert kept(0.81) == [True, True, True, False]
    assert kept(0.01) == [True, False, False, False]  # the top token is always kept
    assert kept(1.0) == [True] * 4
    # order of the vocabulary does not matter: the rule follows probabilities
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isfinite(S.top_p_filter(shuffled, 0.8))[0].tolist() == [
        False, True, False, True
    ]  # fmt: skip
    # kept logits are unchanged
    assert torch.equal(S.top_p_filter(logits, 0.9)[0, :3], logits[0, :3])


def test_top_k_filter_by_hand():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0, 0.0]])
    out = S.top_k_filter(logits, 2)
    assert torch.isfinite(out)[0].tolist() == [False, True, True, False, False]
    assert torch.equal(out[0, 1:3], logits[0, 1:3])
    assert torch.equal(S.top_k_filter(logits, 0), logits)  # 0: no filter
    assert torch.equal(S.top_k_filter(logits, 5), logits)  # k = vocab: no filter
    assert torch.isfinite(S.top_k_filter(logits, 4)).sum() == 4
    rows = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    assert torch.isfinite(S.top_k_filter(rows, 1)).tolist() == [
        [False, False, True], [True, False, False]
    ]  # fmt: skip


# --- chi-square tests against the exact laws ---------------------------------------------------
def test_plain_sampling_is_the_softmax():
    counts = _counts(S.sample(_rows(), generator=_generator(1)))
    assert _pvalue(counts, PROBS) > 1e-3


@pytest.mark.parametrize('temperature', [0.5, 2.0])
def test_temperature_changes_the_law_to_softmax_of_logits_over_t(temperature):
    counts = _counts(S.sample(_rows(), temperature=temperature, generator=_generator(2)))
    law = torch.softmax(PROBS.log() / temperature, dim=-1)
    assert _pvalue(counts, law) > 1e-3
    assert _pvalue(counts, PROBS) < 1e-6  # the temperature really acts
    with pytest.raises(ValueError, match='temperature'):
        S.sample(_rows(2), temperature=0.0)


@pytest.mark.parametrize('k', [1, 3, 5])
def test_top_k_sampling_is_the_renormalised_top_k(k):
    counts = _counts(S.sample(_rows(), top_k=k, generator=_generator(3)))
    law = PROBS.clone()
    law[k:] = 0
    assert _pvalue(counts, law) > 1e-3
    if k > 1:
        wrong = PROBS.clone()
        wrong[k + 1 :] = 0  # one token too many
        assert _pvalue(counts, wrong) < 1e-6 or counts[k] == 0


def test_top_k_with_temperature_applies_both():
    counts = _counts(S.sample(_rows(), top_k=3, temperature=0.5, generator=_generator(4)))
    law = torch.softmax(PROBS.log() / 0.5, dim=-1)
    law[3:] = 0
    assert _pvalue(counts, law) > 1e-3
    untempered = PROBS.clone()
    untempered[3:] = 0
    assert _pvalue(counts, untempered) < 1e-6


@pytest.mark.parametrize('p', [0.9, 0.7, 0.5])
def test_nucleus_sampling_at_p_is_the_exact_nucleus_law(p):
    """p = 0.9 keeps 6 of 8 tokens (mass before the 6th: .88), p = .7: 4, p = .5: 2."""
    law = _nucleus_law(PROBS, p)
    assert int((law > 0).sum()) == {0.9: 6, 0.7: 4, 0.5: 2}[p]
    counts = _counts(S.sample(_rows(), top_p=p, generator=_generator(5)))
    assert _pvalue(counts, law) > 1e-3
    one_short = law.clone()
    one_short[int((law > 0).sum()) - 1] = 0
    assert _pvalue(counts, one_short) < 1e-6
    assert _pvalue(counts, PROBS) < 1e-6  # not the unfiltered softmax


def test_nucleus_rejection_and_sorting_paths_draw_the_same_law():
    """max_rounds=0 forces the sorting fallback for every row; 1 round leaves about 10% of
    the rows to it; the default mostly accepts by rejection."""
    law = _nucleus_law(PROBS, 0.9)
    for rounds in (0, 1, 8):
        draws = S.nucleus_sample(_rows(), 0.9, generator=_generator(6 + rounds), max_rounds=rounds)
        assert _pvalue(_counts(draws), law) > 1e-3, rounds
    # shapes: one draw per row of (..., vocab)
    assert S.nucleus_sample(LOGITS.expand(2, 3, -1), 0.9).shape == (2, 3)


def test_nucleus_with_top_k_and_temperature_composes_in_that_order():
    """temperature first, then top-k, then the nucleus of the renormalised top-k."""
    tempered = torch.softmax(PROBS.log() / 2.0, dim=-1)
    top = tempered.clone()
    top[5:] = 0
    law = _nucleus_law(top / top.sum(), 0.8)
    draws = S.sample(_rows(), top_k=5, top_p=0.8, temperature=2.0, generator=_generator(9))
    assert _pvalue(_counts(draws), law) > 1e-3


def test_nucleus_rows_are_independent_distributions():
    """Two different rows in one batch: each follows its own nucleus law."""
    flipped = PROBS.flip(0)
    logits = torch.stack([PROBS.log(), flipped.log()]).float().repeat(N // 2, 1)
    draws = S.nucleus_sample(logits, 0.9, generator=_generator(10)).view(-1, 2)
    assert _pvalue(_counts(draws[:, 0]), _nucleus_law(PROBS, 0.9)) > 1e-3
    assert _pvalue(_counts(draws[:, 1]), _nucleus_law(flipped, 0.9)) > 1e-3


# --- Gumbel ----------------------------------------------------------------------------------
def test_gumbel_noise_has_the_standard_gumbel_law():
    g = S.gumbel_noise((200_000,), dtype=torch.float64, generator=_generator(11))
    assert g.mean().item() == pytest.approx(0.5772, abs=0.01)  # Euler-Mascheroni
    assert g.var().item() == pytest.approx(math.pi**2 / 6, rel=0.02)
    # the CDF exp(-exp(-x)) at three points
    for x in (-1.0, 0.0, 2.0):
        assert (g <= x).double().mean().item() == pytest.approx(math.exp(-math.exp(-x)), abs=5e-3)


def test_gumbel_max_draws_the_softmax():
    """argmax of logits + Gumbel noise is an exact sample of softmax(logits), whatever tau."""
    for tau in (0.1, 1.0):
        soft = S.gumbel_softmax(_rows(), tau=tau, generator=_generator(12))
        assert _pvalue(_counts(soft.argmax(dim=-1)), PROBS) > 1e-3


def test_gumbel_softmax_is_softmax_of_noisy_logits_over_tau():
    logits = torch.tensor([[0.5, -1.0, 2.0]])
    noise = S.gumbel_noise(logits.shape, generator=_generator(13))
    expected = torch.softmax((logits + noise) / 0.3, dim=-1)
    got = S.gumbel_softmax(logits, tau=0.3, generator=_generator(13))
    assert torch.allclose(got, expected, atol=1e-6)
    assert got.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match='tau'):
        S.gumbel_softmax(logits, tau=0.0)


def test_gumbel_softmax_temperature_sharpness():
    """Small tau: nearly one-hot samples; large tau: nearly uniform ones."""
    rows = _rows(5_000)
    sharp = S.gumbel_softmax(rows, tau=0.05, generator=_generator(14))
    medium = S.gumbel_softmax(rows, tau=1.0, generator=_generator(14))
    flat = S.gumbel_softmax(rows, tau=50.0, generator=_generator(14))
    top = lambda x: x.max(dim=-1).values.mean().item()  # noqa: E731
    assert top(sharp) > 0.97
    assert 0.3 < top(medium) < 0.9
    assert top(flat) < 1 / 8 + 0.02
    assert top(sharp) > top(medium) > top(flat)
    # same noise: the argmax does not depend on tau
    assert torch.equal(sharp.argmax(-1), flat.argmax(-1))


def test_hard_gumbel_softmax_is_one_hot_with_the_soft_gradient():
    logits = torch.tensor([[0.2, 1.0, -0.5]], requires_grad=True)
    hard = S.gumbel_softmax(logits, tau=0.5, hard=True, generator=_generator(15))
    soft = S.gumbel_softmax(logits.detach(), tau=0.5, generator=_generator(15))
    assert hard.tolist() == [[float(i == int(soft.argmax())) for i in range(3)]]
    weights = torch.tensor([[1.0, 2.0, 3.0]])
    (hard * weights).sum().backward()
    leaf = logits.detach().clone().requires_grad_(True)
    (S.gumbel_softmax(leaf, tau=0.5, generator=_generator(15)) * weights).sum().backward()
    assert torch.allclose(logits.grad, leaf.grad)
    assert logits.grad.abs().sum() > 0


def test_nucleus_boundary_mass_equal_to_p_is_dropped_on_every_path():
    """Probabilities .5 .25 .125 .125 are exact in float32: at p = .75 the mass before token
    2 equals p, so token 2 is out (ParlAI's rule: dropped when the mass before it >= p)."""
    logits = torch.tensor([[4.0, 2.0, 1.0, 1.0]]).log()
    assert torch.isfinite(S.top_p_filter(logits, 0.75))[0].tolist() == [True, True, False, False]
    for rounds in (0, 8):  # sorting fallback, rejection
        draws = S.nucleus_sample(logits.expand(4000, -1), 0.75, _generator(16), max_rounds=rounds)
        counts = _counts(draws, 4)
        assert counts[2:].sum() == 0, rounds
        assert _pvalue(counts, torch.tensor([2.0, 1.0, 0.0, 0.0])) > 1e-3
    # just above the boundary token 2 is in (sorting path; by rejection its tie, 3, is in too)
    draws = S.nucleus_sample(logits.expand(4000, -1), 0.76, _generator(17), max_rounds=0)
    assert _counts(draws, 4)[2] > 0


def test_top_k_threshold_is_per_row():
    rows = torch.tensor([[0.0, 1.0, 2.0], [5.0, 4.0, 3.0]])
    assert torch.isfinite(S.top_k_filter(rows, 1)).tolist() == [
        [False, False, True], [True, False, False]
    ]  # fmt: skip
    assert torch.isfinite(S.top_k_filter(rows, 2)).tolist() == [
        [False, True, True], [True, True, False]
    ]  # fmt: skip


def test_nucleus_ties_at_the_boundary():
    """Four tokens of exactly .25, p = .5: by rejection no token is more probable than
    another, so all four stay (uniform); the sorting fallback keeps two of them."""
    logits = torch.zeros(4000, 4)
    by_rejection = _counts(S.nucleus_sample(logits, 0.5, _generator(18)), 4)
    assert _pvalue(by_rejection, torch.ones(4)) > 1e-3
    by_sorting = _counts(S.nucleus_sample(logits, 0.5, _generator(18), max_rounds=0), 4)
    assert int((by_sorting > 0).sum()) == 2
