"""Sampling utilities shared by the latent-variable models (batched, pure torch).

- :func:`gumbel_softmax`: the relaxed categorical sample that PLATO-2 (Eq. 2) and other
  discrete-latent models train through; the noise is the authors' Knover form.
- :func:`top_k_filter`, :func:`top_p_filter`, :func:`sample`: filtering and drawing for code
  that samples outside ParlAI's tree search (e.g. latent samples, self-play rollouts). For
  response generation prefer ParlAI's own ``TopKSampling`` / ``NucleusSampling`` (selected with
  ``--inference topk|nucleus``), which the agents reuse.

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
    filtered = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = filtered.softmax(dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])
    draws = torch.multinomial(flat, 1, generator=generator)
    return draws.view(probs.shape[:-1])
