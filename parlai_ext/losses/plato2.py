"""PLATO-2's training objectives (§2.2), apart from the architecture.

- Stage 1 and the NLL of stage 2.1 (Eq. 1, Eq. 2) are ParlAI's token cross-entropy, computed
  by ``TorchGeneratorAgent.compute_loss`` and not repeated here.
- :func:`bow_loss`: the bag-of-words loss of stage 2.1 (Eq. 4-5).
- :func:`coherence_pairs`, :func:`coherence_loss`: response coherence estimation (Eq. 7) with
  one random negative response per example.
- :func:`mlm_corrupt`, :func:`mlm_loss`: the masked LM of the evaluation model (Eq. 8).
- :func:`negative_entropy_loss`: the authors' optional entropy term (``use_entropy``).
- :func:`posterior_entropy`, :func:`latent_counts`: diagnostics of the latent posterior.

Reductions follow the authors' code: every loss is a mean over its targets in the batch
(tokens for NLL/BOW/MLM, (context, response) pairs for coherence), and the stage losses are
plain sums (Eq. 6, Eq. 9).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bow_loss(
    bow_logits: torch.Tensor, targets: torch.Tensor, padding_idx: int, reduction: str = 'mean'
) -> torch.Tensor:
    """Bag-of-words loss (Eq. 4): -sum_t log f_{r_t}, with f = softmax(bow_logits) (Eq. 5).

    Every target token (the response words and its end token, as the authors' code) is
    predicted from the one latent position, regardless of order.

    :param bow_logits: ``(batch, vocab)``.
    :param targets: ``(batch, T)`` response token ids, ``padding_idx`` where absent.
    :param reduction: ``'mean'`` over all non-padding target tokens of the batch, or
        ``'none'`` for the ``(batch, T)`` per-token losses (0 at padding).
    """
    log_f = F.log_softmax(bow_logits.float(), dim=-1)  # (batch, vocab)
    valid = targets != padding_idx
    per_token = -log_f.gather(1, targets.masked_fill(~valid, 0)) * valid
    if reduction == 'none':
        return per_token
    if reduction != 'mean':
        raise ValueError(f'unknown reduction {reduction!r}')
    return per_token.sum() / valid.sum().clamp(min=1)


def coherence_pairs(
    context: torch.Tensor, response: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive and negative (context, response) pairs for Eq. 7.

    Example i keeps its own response (label 1) and is also paired with the response of
    example (i + 1) mod B (label 0): one random negative per positive, as the authors'
    ``mix_negative_sample`` (random when the batch is a random sample of the data).

    :return: contexts ``(2B, Lc)``, responses ``(2B, Lr)``, labels ``(2B,)``; a batch of one
        example gives only the positive pair.
    """
    batch = context.shape[0]
    if batch < 2:
        labels = torch.ones(batch, dtype=torch.long, device=context.device)
        return context, response, labels
    negatives = response.roll(-1, dims=0)  # row i gets row (i + 1) mod B
    labels = torch.cat(
        [
            torch.ones(batch, dtype=torch.long, device=context.device),
            torch.zeros(batch, dtype=torch.long, device=context.device),
        ]
    )
    return torch.cat([context, context]), torch.cat([response, negatives]), labels


def coherence_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 7: -log p(l_r=1|c,r) - log p(l_r-=0|c,r-), as a mean over the pairs."""
    return F.cross_entropy(logits.float(), labels)


def mlm_corrupt(
    tokens: torch.Tensor,
    maskable: torch.Tensor,
    vocab_size: int,
    random_low: int = 0,
    prob: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """BERT masking for Eq. 8: select ``prob`` of the maskable tokens; of those 80% are shown
    as [MASK], 10% as a random token, 10% unchanged.

    :param maskable: ``(batch, L)`` bool, False at padding and special tokens.
    :param random_low: random replacements are drawn from ``[random_low, vocab_size)``
        (the first ids of a dictionary are its special tokens).
    :return: ``(inputs, replaced, selected)``: token ids with the random replacements,
        where [MASK] must be shown, and the positions to predict (their targets are
        ``tokens[selected]``).
    """
    device = tokens.device
    draw = torch.rand(tokens.shape, device=device, generator=generator)
    selected = maskable & (draw < prob)
    # split the selected positions 80 / 10 / 10 with a second draw
    kind = torch.rand(tokens.shape, device=device, generator=generator)
    replaced = selected & (kind < 0.8)
    randomised = selected & (kind >= 0.8) & (kind < 0.9)
    random_ids = torch.randint(
        random_low, vocab_size, tokens.shape, device=device, generator=generator
    )
    inputs = torch.where(randomised, random_ids, tokens)
    return inputs, replaced, selected


def mlm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 8: -mean log p(x_m | x_\\M) over the selected tokens (0 when none was selected).

    :param logits: ``(n_selected, vocab)``; :param targets: ``(n_selected,)``.
    """
    if targets.numel() == 0:
        return logits.sum() * 0.0  # keeps the graph (and DDP) intact
    return F.cross_entropy(logits.float(), targets)


def posterior_entropy(posterior_logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of p(z|c,r) per example: ``(batch,)``."""
    log_p = F.log_softmax(posterior_logits.float(), dim=-1)
    return -(log_p.exp() * log_p).sum(dim=-1)


def negative_entropy_loss(posterior_logits: torch.Tensor) -> torch.Tensor:
    """mean over the batch of sum_z p(z|c,r) log p(z|c,r), i.e. minus the mean entropy.

    The authors' ``use_entropy`` adds it to the loss (weight 1; here ``--entropy-coef``), so
    minimising the loss pushes the posterior towards higher entropy (more latent values used).
    """
    log_p = F.log_softmax(posterior_logits.float(), dim=-1)
    return (log_p.exp() * log_p).sum(dim=-1).mean()


def latent_counts(posterior_logits: torch.Tensor) -> torch.Tensor:
    """One-hot rows of the posterior's argmax: ``(batch, K)`` counts of the latent used."""
    n_latent = posterior_logits.shape[-1]
    return F.one_hot(posterior_logits.argmax(dim=-1), n_latent)
