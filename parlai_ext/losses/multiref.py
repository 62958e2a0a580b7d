"""Loss and KL terms of multi-referenced VHRED training (pure torch).

Paper: "Multi-Referenced Training for Dialogue Response Generation" (Zhao & Kawahara,
``../shared/papers/multiref_vhred_lgm.txt``). VHREDs are trained by maximising the variational
lower bound (Appendix B.2, after Sohn et al. 2015), per example::

    L = sum_t -log p(y_t | y_<t, x, z)  +  beta(step) * KL(q(z|x,y) || p(z|x))  +  L_bow

with z ~ q(z|x,y) (the unimodal Gaussian posterior, Appendix B.1), beta linearly annealed over
the first 40,000 steps (Appendix B.2) and the bag-of-words loss of Zhao et al. (2017) (§4.1).
The KL depends on the prior (§4.1 Gaussian, §4.1 GMM, §6.3 LGM); each has a function here.

All functions work on diagonal Gaussians given by mean and *variance* tensors whose last
dimension is the latent size, and return one value per example (summed over latent dims).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(
    mu_q: torch.Tensor, var_q: torch.Tensor, mu_p: torch.Tensor, var_p: torch.Tensor
) -> torch.Tensor:
    """Closed-form KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, per example.

    0.5 * sum_d [log var_p - log var_q + (var_q + (mu_q - mu_p)^2) / var_p - 1]
    (the VHRED term of §4.1; also the LGM term once the prior is one Gaussian, §6.3).
    """
    terms = torch.log(var_p) - torch.log(var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1.0
    return 0.5 * terms.sum(dim=-1)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(var)), summed over the last dimension."""
    return -0.5 * (LOG_2PI + torch.log(var) + (z - mu) ** 2 / var).sum(dim=-1)


def gmm_log_prob(
    z: torch.Tensor, pi: torch.Tensor, mu: torch.Tensor, var: torch.Tensor
) -> torch.Tensor:
    """log sum_k pi_k N(z; mu_k, diag(var_k)) of a Gaussian mixture (§4.1, VHRED-GMM).

    ``z``: [B, Z]; ``pi``: [B, K] (rows sum to 1); ``mu``, ``var``: [B, K, Z].
    """
    component = gaussian_log_prob(z.unsqueeze(-2), mu, var)  # [B, K]
    return torch.logsumexp(torch.log(pi.clamp_min(1e-30)) + component, dim=-1)


def gmm_kl_mc(
    z: torch.Tensor,
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    pi: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    """One-sample Monte-Carlo estimate of KL(q || GMM prior): log q(z) - log p(z), z ~ q.

    The KL between a Gaussian and a Gaussian mixture has no closed form (§4.1, VHRED-GMM).
    With ``z`` the reparameterised posterior sample this estimator is unbiased and
    differentiable in the posterior, the mixture weights and every component. (The authors'
    code instead picks one component with a hard Gumbel-softmax and uses the closed-form
    KL to that component; see projects/multiref/README.md.)
    """
    return gaussian_log_prob(z, mu_q, var_q) - gmm_log_prob(z, pi, mu, var)


def lgm_moments(
    pi: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, mode: str = 'exact'
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the LGM latent z = sum_k pi_k z_k, z_k ~ N(mu_k, var_k) (§6.3).

    ``mode='exact'``: for independent z_k the sum is exactly Gaussian with mean
    sum_k pi_k mu_k and variance sum_k pi_k^2 var_k (the law of what is sampled).
    ``mode='authors'``: the authors' code keeps the mean but uses sum_k pi_k var_k (the
    variance of a mixture's components averaged, not of the sum); this is larger than the true
    variance whenever two or more pi_k > 0, so its KL is not the KL of the sampled z.

    ``pi``: [B, K]; ``mu``, ``var``: [B, K, Z]. Returns ([B, Z], [B, Z]).
    """
    weights = pi.unsqueeze(-1)
    mean = (weights * mu).sum(dim=-2)
    if mode == 'exact':
        variance = (weights**2 * var).sum(dim=-2)
    elif mode == 'authors':
        variance = (weights * var).sum(dim=-2)
    else:
        raise ValueError(f'unknown LGM KL mode {mode!r} (exact, authors)')
    return mean, variance


def lgm_kl(
    mu_q: torch.Tensor,
    var_q: torch.Tensor,
    pi: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
    mode: str = 'exact',
) -> torch.Tensor:
    """KL(q || LGM prior) in closed form via :func:`lgm_moments` (§6.3)."""
    mean, variance = lgm_moments(pi, mu, var, mode)
    return gaussian_kl(mu_q, var_q, mean, variance)


def kl_anneal_weight(step: int, anneal_steps: int) -> float:
    """Linear KL annealing (Bowman et al. 2016; Appendix B.2: the first 40,000 steps).

    ``step`` counts optimizer updates from 1; the weight is min(1, step / anneal_steps), so
    it reaches 1 at ``anneal_steps``; ``anneal_steps <= 0`` disables annealing (weight 1).
    """
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, max(step, 0) / anneal_steps)


def bow_loss(bow_logits: torch.Tensor, targets: torch.Tensor, pad_idx: int) -> torch.Tensor:
    """Bag-of-words loss (Zhao et al. 2017; §4.1): -sum_t log p_bow(y_t), per example.

    ``bow_logits``: [B, V] predicted from [z; c] (order-free); ``targets``: [B, T] response
    token ids (padding ``pad_idx`` ignored; the end token counts, as in the authors' code).
    """
    log_probs = F.log_softmax(bow_logits.float(), dim=-1)
    picked = log_probs.gather(1, targets.clamp_min(0))
    return -(picked * targets.ne(pad_idx)).sum(dim=-1)


def token_nll(logits: torch.Tensor, targets: torch.Tensor, pad_idx: int) -> torch.Tensor:
    """-log p(y_t | ...) per token ([B, T]; 0 at padding)."""
    flat = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),
        targets.reshape(-1),
        ignore_index=pad_idx,
        reduction='none',
    )
    return flat.view(targets.shape)


def elbo_loss(
    nll_per_example: torch.Tensor,
    kl: torch.Tensor | None,
    kl_weight: float,
    bow: torch.Tensor | None,
    bow_weight: float = 1.0,
) -> torch.Tensor:
    """The negative (annealed) lower bound averaged over the batch (Appendix B.2).

    Per example: summed token NLL + kl_weight * KL + bow_weight * BoW; then the batch mean
    (the authors' normalisation: token losses summed per response, averaged over examples).
    HRED is the special case without KL and BoW.
    """
    total = nll_per_example
    if kl is not None:
        total = total + kl_weight * kl
    if bow is not None:
        total = total + bow_weight * bow
    return total.mean()
