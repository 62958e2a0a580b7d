"""Sampling utilities shared by the latent-variable models (batched, pure torch).

- :func:`gumbel_softmax`: the relaxed categorical sample that PLATO-2 (Eq. 2) and other
  discrete-latent models train through; the noise is the authors' Knover form.
- :func:`top_k_filter`, :func:`top_p_filter`, :func:`nucleus_sample`, :func:`sample`:
  filtering and drawing for code that samples outside ParlAI's tree search (latent samples,
  self-play rollouts, batched pseudo references). For response generation prefer ParlAI's own
  ``TopKSampling`` / ``NucleusSampling`` (``--inference topk|nucleus``), which the agents reuse.

Every function takes an optional :class:`torch.Generator` so that callers can make samples
reproducible without touching the global RNG.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

GUMBEL_EPS = 1e-10


def gumbel_noise(
    shape: torch.Size | tuple[int, ...],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard Gumbel noise ``-log(eps - log(u + eps))``, ``u ~ U(0, 1)`` (Knover's form)."""
    uniform = torch.rand(shape, device=device, dtype=dtype, generator=generator)
    return -torch.log(GUMBEL_EPS - torch.log(uniform + GUMBEL_EPS))


def gumbel_softmax(
    logits: torch.Tensor,
    tau: float = 0.67,
    hard: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Relaxed one-hot sample ``softmax((logits + g) / tau)`` over the last dimension.

    ``hard=False`` (PLATO-2, as the authors' code) returns the soft sample itself; with
    ``hard=True`` the forward value is the one-hot argmax and the gradient is the soft
    sample's (straight-through).
    """
    if tau <= 0:
        raise ValueError(f'tau must be > 0, got {tau}')
    noise = gumbel_noise(logits.shape, logits.device, logits.dtype, generator)
    soft = F.softmax((logits + noise) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = F.one_hot(soft.argmax(dim=-1), soft.shape[-1]).to(soft.dtype)
    return one_hot - soft.detach() + soft


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (last dimension); the rest become ``-inf``."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float('-inf'))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of top tokens whose probability reaches ``p``.

    The most probable token is always kept (ParlAI's ``NucleusSampling`` rule: a token is
    dropped when the mass *before* it already reaches ``p``).
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float('-inf'))


def _nucleus_by_sorting(probs: torch.Tensor, p: float, generator) -> torch.Tensor:
    """Rows of ``probs (N, V)``: sort, keep ParlAI's nucleus, draw by inverse CDF."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    cumulative = sorted_probs.cumsum(dim=-1)
    n_kept = ((cumulative - sorted_probs) < p).sum(dim=-1, keepdim=True).clamp_min(1)
    kept_mass = cumulative.gather(1, n_kept - 1)
    uniform = torch.rand(kept_mass.shape, device=probs.device, generator=generator)
    position = torch.searchsorted(cumulative, uniform * kept_mass, right=True)
    return order.gather(1, torch.minimum(position, n_kept - 1))[:, 0]


def nucleus_sample(
    logits: torch.Tensor,
    p: float,
    generator: torch.Generator | None = None,
    max_rounds: int = 8,
) -> torch.Tensor:
    """One draw per row of ``(..., vocab)`` logits from the nucleus of mass ``p``, renormalised.

    The distribution of :func:`top_p_filter` + a multinomial draw (token i is in the nucleus
    when the mass of the tokens more probable than i is below ``p``: ParlAI's rule), drawn by
    rejection instead of sorting: draw i from the full distribution (inverse CDF), accept it
    when it is in the nucleus (one masked sum), redraw the rejected rows. A row is accepted
    with probability = its nucleus mass (>= ``p``), so one or two rounds suffice for usual
    ``p``; rows still rejected after ``max_rounds`` (tiny ``p``) are drawn by sorting. On a CPU
    with flat distributions over 10k words this is about 10x cheaper than sorting every row.

    Exact ties at the nucleus boundary: the rejection rule keeps every token tied with the
    last one in (only strictly more probable tokens count), where sorting keeps the tied
    tokens its sort happens to put first; the two laws differ only there (tested on exact
    float32 probabilities in ``tests/test_sampling.py``).
    """
    vocab = logits.shape[-1]
    probs = logits.float().softmax(dim=-1).reshape(-1, vocab)
    rows = probs.shape[0]
    cumulative = probs.cumsum(dim=-1)
    chosen = torch.empty(rows, dtype=torch.long, device=probs.device)
    pending = torch.arange(rows, device=probs.device)
    for _ in range(max_rounds):
        if pending.numel() == 0:
            break
        row_probs, row_cumulative = probs[pending], cumulative[pending]
        uniform = torch.rand((len(pending), 1), device=probs.device, generator=generator)
        token = torch.searchsorted(row_cumulative, uniform * row_cumulative[:, -1:], right=True)
        token = token.clamp_max(vocab - 1)
        token_prob = row_probs.gather(1, token)
        mass_above = (row_probs * (row_probs > token_prob)).sum(dim=-1)
        accepted = mass_above < p
        chosen[pending[accepted]] = token[accepted, 0]
        pending = pending[~accepted]
    if pending.numel():
        chosen[pending] = _nucleus_by_sorting(probs[pending], p, generator)
    return chosen.view(logits.shape[:-1])


def sample(
    logits: torch.Tensor,
    top_k: int = 0,
    top_p: float = 1.0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One draw per row of ``(..., vocab)`` logits after temperature, top-k and top-p."""
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {temperature}')
    filtered = top_k_filter(logits / temperature, top_k)
    if top_p < 1.0:
        return nucleus_sample(filtered, top_p, generator)
    probs = filtered.softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, 1, generator=generator)
    return draws.view(probs.shape[:-1])
