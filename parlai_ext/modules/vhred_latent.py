"""Latent variables of the VHRED family (pure torch): the unimodal Gaussian posterior
q(z | x, y) of every VHRED and the three priors p(z | x).

Paper: "Multi-Referenced Training for Dialogue Response Generation" (Zhao & Kawahara;
``../shared/papers/multiref_vhred_lgm.txt``), §4.1 (VHRED, VHRED-GMM), §6.3 (the linear Gaussian
model prior, LGM) and Appendix B.1 (feed-forward tanh networks). Each prior is a small module
with ``forward`` (its parameters from the dialogue encoding c), ``sample``, ``mean`` and ``kl``
(against the posterior): :class:`GaussianPrior` (VHRED), :class:`GMMPrior` (VHRED-GMM, K
components) and :class:`LGMPrior` (VHRED-LGM, z = sum_k pi_k z_k). The KL formulas live in
:mod:`parlai_ext.losses.multiref`; the hierarchical encoder-decoder that uses these is
:mod:`parlai_ext.modules.vhred` (which re-exports every name here).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from parlai_ext.losses.multiref import gaussian_kl, gmm_kl_mc, lgm_kl

if TYPE_CHECKING:
    from parlai_ext.modules.vhred import VHREDConfig

VAR_FLOOR = 1e-6  # keeps softplus variances away from 0 (log var in the KL)


class Gaussian(NamedTuple):
    """A diagonal Gaussian by mean and variance ([B, Z] each)."""

    mu: torch.Tensor
    var: torch.Tensor

    def sample(self) -> torch.Tensor:
        """Reparameterised sample mu + sigma * eps (differentiable in mu and var)."""
        return self.mu + self.var.sqrt() * torch.randn_like(self.mu)


class PriorParams(NamedTuple):
    """K component means/variances [B, K, Z] and weights pi [B, K] (K = 1: one Gaussian)."""

    pi: torch.Tensor
    mu: torch.Tensor
    var: torch.Tensor


class GaussianHeads(nn.Module):
    """Linear -> tanh, then linear heads for K means and K softplus variances (B.1: prior and
    posterior networks are feed-forward with tanh), plus mixture logits when K > 1."""

    def __init__(self, in_size: int, latent: int, components: int = 1):
        super().__init__()
        self.latent, self.components = latent, components
        self.hidden = nn.Linear(in_size, latent)
        self.mu = nn.Linear(latent, components * latent)
        self.var = nn.Linear(latent, components * latent)
        self.pi = nn.Linear(latent, components) if components > 1 else None

    def forward(self, x: torch.Tensor) -> PriorParams:
        h = torch.tanh(self.hidden(x))
        shape = (x.size(0), self.components, self.latent)
        mu = self.mu(h).view(shape)
        var = F.softplus(self.var(h)).view(shape) + VAR_FLOOR
        if self.pi is None:
            pi = torch.ones(x.size(0), 1, dtype=mu.dtype, device=mu.device)
        else:
            pi = torch.softmax(self.pi(h), dim=-1)
        return PriorParams(pi, mu, var)


class Posterior(nn.Module):
    """q(z | x, y): a unimodal Gaussian from [response encoding; c] for every VHRED (B.1)."""

    def __init__(self, hidden: int, latent: int):
        super().__init__()
        self.heads = GaussianHeads(2 * hidden, latent)

    def forward(self, response: torch.Tensor, context: torch.Tensor) -> Gaussian:
        params = self.heads(torch.cat([response, context], dim=-1))
        return Gaussian(params.mu[:, 0], params.var[:, 0])


class GaussianPrior(nn.Module):
    """VHRED (§4.1): mu, sigma = MLP(c); z ~ N(mu, sigma^2 I); closed-form KL."""

    def __init__(self, hidden: int, latent: int):
        super().__init__()
        self.heads = GaussianHeads(hidden, latent)

    def forward(self, context: torch.Tensor) -> PriorParams:
        return self.heads(context)

    def sample(self, params: PriorParams, component: int | None = None) -> torch.Tensor:
        return Gaussian(params.mu[:, 0], params.var[:, 0]).sample()

    def mean(self, params: PriorParams) -> torch.Tensor:
        return params.mu[:, 0]

    def kl(self, posterior: Gaussian, z: torch.Tensor, params: PriorParams) -> torch.Tensor:
        return gaussian_kl(posterior.mu, posterior.var, params.mu[:, 0], params.var[:, 0])


def _forced(pi: torch.Tensor, component: int | None) -> torch.Tensor:
    """Mixture weights, or one-hot on ``component`` (decoding with one variable, §8.2)."""
    if component is None:
        return pi
    if not 0 <= component < pi.size(-1):
        raise ValueError(f'component {component} not in 0..{pi.size(-1) - 1}')
    return F.one_hot(torch.full_like(pi[:, 0], component, dtype=torch.long), pi.size(-1)).to(
        pi.dtype
    )


class GMMPrior(nn.Module):
    """VHRED-GMM (§4.1, Gu et al. 2019): z ~ sum_k pi_k N(mu_k, sigma_k^2 I).

    Sampling picks a component k ~ Cat(pi), then z ~ N(mu_k, sigma_k^2). The KL to the
    posterior has no closed form: a one-sample Monte-Carlo estimate with the posterior's
    reparameterised sample (:func:`~parlai_ext.losses.multiref.gmm_kl_mc`).
    """

    def __init__(self, hidden: int, latent: int, components: int):
        super().__init__()
        self.heads = GaussianHeads(hidden, latent, components)

    def forward(self, context: torch.Tensor) -> PriorParams:
        return self.heads(context)

    def sample(self, params: PriorParams, component: int | None = None) -> torch.Tensor:
        pi = _forced(params.pi, component)
        k = torch.multinomial(pi, 1)  # [B, 1]
        index = k.unsqueeze(-1).expand(-1, 1, params.mu.size(-1))
        mu = params.mu.gather(1, index)[:, 0]
        var = params.var.gather(1, index)[:, 0]
        return Gaussian(mu, var).sample()

    def mean(self, params: PriorParams) -> torch.Tensor:
        return (params.pi.unsqueeze(-1) * params.mu).sum(dim=1)

    def kl(self, posterior: Gaussian, z: torch.Tensor, params: PriorParams) -> torch.Tensor:
        return gmm_kl_mc(z, posterior.mu, posterior.var, params.pi, params.mu, params.var)


class LGMPrior(nn.Module):
    """VHRED-LGM (§6.3): z_k ~ N(mu_k, sigma_k^2 I) independently, z = sum_k pi_k z_k.

    pi = softmax(MLP(c)). The KL to the unimodal posterior is closed form because z is itself
    Gaussian: mean sum_k pi_k mu_k and variance sum_k pi_k^2 sigma_k^2 (``kl_mode='exact'``,
    the default). ``kl_mode='authors'`` reproduces the authors' code, which uses the variance
    sum_k pi_k sigma_k^2 while sampling as above (see
    :func:`~parlai_ext.losses.multiref.lgm_moments`).
    """

    def __init__(self, hidden: int, latent: int, components: int, kl_mode: str = 'exact'):
        super().__init__()
        self.heads = GaussianHeads(hidden, latent, components)
        self.kl_mode = kl_mode

    def forward(self, context: torch.Tensor) -> PriorParams:
        return self.heads(context)

    def sample(self, params: PriorParams, component: int | None = None) -> torch.Tensor:
        pi = _forced(params.pi, component)
        z_k = params.mu + params.var.sqrt() * torch.randn_like(params.mu)  # [B, K, Z]
        return (pi.unsqueeze(-1) * z_k).sum(dim=1)

    def mean(self, params: PriorParams) -> torch.Tensor:
        return (params.pi.unsqueeze(-1) * params.mu).sum(dim=1)

    def kl(self, posterior: Gaussian, z: torch.Tensor, params: PriorParams) -> torch.Tensor:
        return lgm_kl(posterior.mu, posterior.var, params.pi, params.mu, params.var, self.kl_mode)


def build_prior(config: VHREDConfig) -> nn.Module | None:
    """The prior network of ``config.latent_prior`` (None for HRED)."""
    hidden, latent = config.hidden_size, config.latent_size
    if config.latent_prior == 'gaussian':
        return GaussianPrior(hidden, latent)
    if config.latent_prior == 'gmm':
        return GMMPrior(hidden, latent, config.n_components)
    if config.latent_prior == 'lgm':
        return LGMPrior(hidden, latent, config.n_components, config.lgm_kl)
    return None
