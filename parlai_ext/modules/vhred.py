"""HRED, VHRED, VHRED-GMM and VHRED-LGM in one hierarchical encoder-decoder (pure torch).

Paper: "Multi-Referenced Training for Dialogue Response Generation" (Zhao & Kawahara;
``../shared/papers/multiref_vhred_lgm.txt``), §4.1 (HRED, VHRED, VHRED-GMM), §6.3 (the linear
Gaussian model prior, LGM) and Appendix B.1 (sizes). Read top to bottom:

1. :class:`UtteranceEncoder`: a bidirectional GRU over the tokens of each context utterance
   (word states for attention, one encoding per utterance);
2. :class:`ContextEncoder`: a 30-d floor embedding (same speaker as the response or not)
   joined to every utterance encoding, then a unidirectional GRU over the utterances: the
   dialogue encoding ``c = E(X)`` (§4.1);
3. latent variables (VHREDs only): the unimodal Gaussian posterior q(z | x, y) of every VHRED
   (B.1) and one of three priors p(z | x), each a small class with ``forward`` (parameters from
   c), ``sample`` and ``kl`` (against the posterior):
   :class:`GaussianPrior` (VHRED), :class:`GMMPrior` (VHRED-GMM, K components) and
   :class:`LGMPrior` (VHRED-LGM, z = sum_k pi_k z_k);
4. :class:`AttentionDecoder`: a GRU decoder that reads ``tanh(W[c; z])`` at every step and
   attends over all context word states; the output layer is tied to the word embeddings;
5. :class:`HierarchicalEncoderDecoder`: the whole model, a bag-of-words head for VHREDs.

The KL/loss formulas themselves live in :mod:`parlai_ext.losses.multiref`. Defaults follow
Appendix B.1: GRUs of 1 layer x 500 units, 30-d floor embeddings, 200-d latents; dropout 0.2
(B.2). Where the paper is silent we follow the authors' code (see projects/multiref/README.md):
200-d word embeddings, the two directions of the utterance GRU averaged, Linear-tanh prior and
posterior networks with softplus variances, tied output embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from parlai_ext.losses.multiref import gaussian_kl, gmm_kl_mc, lgm_kl

LATENT_PRIORS = ('none', 'gaussian', 'gmm', 'lgm')
ATTENTION_KINDS = ('general', 'additive')
LGM_KL_MODES = ('exact', 'authors')
VAR_FLOOR = 1e-6  # keeps softplus variances away from 0 (log var in the KL)


@dataclass
class VHREDConfig:
    """Sizes and choices of the model family (defaults: Appendix B.1-B.2)."""

    vocab_size: int
    padding_idx: int = 0
    embedding_size: int = 200
    hidden_size: int = 500
    n_layers: int = 1
    floor_size: int = 30
    latent_size: int = 200
    latent_prior: str = 'gaussian'  # none (HRED) | gaussian | gmm | lgm
    n_components: int = 5
    dropout: float = 0.2
    attention: str = 'general'  # general (bilinear) | additive
    bow: bool = True
    lgm_kl: str = 'exact'  # exact | authors

    def __post_init__(self) -> None:
        if self.latent_prior not in LATENT_PRIORS:
            raise ValueError(f'latent_prior must be one of {LATENT_PRIORS}')
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f'attention must be one of {ATTENTION_KINDS}')
        if self.lgm_kl not in LGM_KL_MODES:
            raise ValueError(f'lgm_kl must be one of {LGM_KL_MODES}')
        if self.latent_prior in ('gmm', 'lgm') and self.n_components < 1:
            raise ValueError('n_components must be >= 1')


# --- 1. utterance encoder --------------------------------------------------------------------
class UtteranceEncoder(nn.Module):
    """Bidirectional GRU over one utterance's tokens (B.1: sentence-level encoders are bi-GRUs).

    Returns per-token states (the two directions averaged: H-dim) and the utterance encoding
    (the final forward and backward states of the top layer, averaged).
    """

    def __init__(self, embedding: nn.Embedding, hidden: int, n_layers: int, dropout: float):
        super().__init__()
        self.embedding = embedding
        self.hidden = hidden
        self.n_layers = n_layers
        self.rnn = nn.GRU(
            embedding.embedding_dim,
            hidden,
            n_layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if n_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` [N, L], ``lengths`` [N] (>= 1) -> states [N, L, H], encodings [N, H].

        Computes what ``self.rnn`` over a packed sequence computes (zeros at padding), as two
        unidirectional GRU calls over padded rows (:func:`padded_bidirectional_gru`): one
        fused kernel per direction instead of a loop over packed time steps."""
        n, max_len = tokens.shape
        embedded = self.dropout(self.embedding(tokens))
        outputs, final = padded_bidirectional_gru(self.rnn, embedded, lengths.clamp_min(1))
        states = outputs.view(n, max_len, 2, self.hidden).mean(dim=2)
        encodings = final.view(self.n_layers, 2, n, self.hidden)[-1].mean(dim=0)
        return states, encodings


def padded_bidirectional_gru(
    rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rnn`` (bidirectional, ``batch_first``) over right-padded rows of ``lengths`` tokens,
    equal to running it on the packed sequence: outputs ``[N, L, 2H]`` (zeros at padding),
    final states ``[layers * 2, N, H]`` (each row's state after its last real token).

    The forward direction reads the padded rows as they are (padding comes after the real
    tokens, so their states are unaffected); the backward direction reads each row's real
    tokens reversed (``reverse``: position t holds token ``len - 1 - t``), padding again last,
    and its outputs are put back in order. Both are plain (unpacked) GRU calls with the
    module's own weights, which the CPU runs as one fused kernel each (packed sequences run
    a loop over time steps: ≈ 2x slower forward + backward at the HRED benchmark sizes)."""
    n, length, _ = x.shape
    steps = torch.arange(length, device=x.device)
    valid = steps[None, :] < lengths[:, None]  # [N, L]
    source = lengths[:, None] - 1 - steps[None, :]
    reverse = torch.where(valid, source, steps[None, :].expand(n, length))  # an involution
    last = (lengths - 1)[:, None, None]
    finals = []
    inputs = x
    for layer in range(rnn.num_layers):
        directions = []
        for suffix in ('', '_reverse'):
            weights = [
                getattr(rnn, f'{name}_l{layer}{suffix}')
                for name in ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')
                if hasattr(rnn, f'{name}_l{layer}{suffix}')
            ]
            source_rows = inputs
            if suffix:
                source_rows = inputs.gather(1, reverse[..., None].expand_as(inputs))
            h0 = inputs.new_zeros(1, n, rnn.hidden_size)
            out, _ = torch._VF.gru(
                source_rows, h0, weights, rnn.bias, 1, 0.0, rnn.training, False, True
            )
            finals.append(out.gather(1, last.expand(n, 1, out.shape[-1])).squeeze(1))
            if suffix:
                out = out.gather(1, reverse[..., None].expand_as(out))
            directions.append(out)
        inputs = torch.cat(directions, dim=-1) * valid[..., None]
        if layer < rnn.num_layers - 1 and rnn.dropout > 0:
            inputs = F.dropout(inputs, rnn.dropout, rnn.training)
    return inputs, torch.stack(finals)


# --- 2. context encoder ----------------------------------------------------------------------
class ContextEncoder(nn.Module):
    """Floor embeddings + a unidirectional GRU over utterance encodings: c = E(X) (§4.1, B.1).

    ``floors`` are relative: 1 when the utterance's speaker is the one who will respond, 0
    otherwise (the 30-d "switch of floor" embeddings of B.1).
    """

    def __init__(self, hidden: int, floor_size: int, n_layers: int, dropout: float):
        super().__init__()
        self.floor_embedding = nn.Embedding(2, floor_size)
        self.merge = nn.Linear(hidden + floor_size, hidden)
        self.rnn = nn.GRU(
            hidden, hidden, n_layers, batch_first=True, dropout=dropout if n_layers > 1 else 0.0
        )

    def forward(
        self, utterances: torch.Tensor, floors: torch.Tensor, n_utts: torch.Tensor
    ) -> torch.Tensor:
        """``utterances`` [B, U, H], ``floors`` [B, U], ``n_utts`` [B] -> c [B, H]."""
        inputs = self.merge(torch.cat([utterances, self.floor_embedding(floors)], dim=-1))
        # right-padded utterances: the top layer's output after the last real one is what the
        # packed sequence's final state was (one fused GRU call instead of a packed loop)
        outputs, _ = self.rnn(inputs)
        last = (n_utts.clamp_min(1) - 1)[:, None, None].expand(-1, 1, outputs.shape[-1])
        return outputs.gather(1, last).squeeze(1)


# --- 3. latent variables ---------------------------------------------------------------------
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


# --- 4. decoder ------------------------------------------------------------------------------
class Attention(nn.Module):
    """Attention of decoder states over every context word state (B.1: attentional decoders).

    ``general``: score = (W q) . m (Luong et al. 2015; cheap on CPU); ``additive``: score =
    v . tanh(W_q q + W_m m) (Bahdanau-style, as the authors' code). Output:
    tanh(W_o [attended memory; q]).
    """

    def __init__(self, hidden: int, kind: str = 'general'):
        super().__init__()
        self.kind = kind
        if kind == 'general':
            self.query = nn.Linear(hidden, hidden, bias=False)
        else:
            self.query = nn.Linear(hidden, hidden)
            self.key = nn.Linear(hidden, hidden)
            self.emit = nn.Linear(hidden, 1)
        self.combine = nn.Linear(2 * hidden, hidden)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor):
        """``query`` [B, T, H], ``memory`` [B, S, H], ``mask`` [B, S] (True = a real token)."""
        if self.kind == 'general':
            scores = torch.bmm(self.query(query), memory.transpose(1, 2))
        else:
            mixed = self.query(query).unsqueeze(2) + self.key(memory).unsqueeze(1)
            scores = self.emit(torch.tanh(mixed)).squeeze(-1)
        scores = scores.masked_fill(~mask.unsqueeze(1), torch.finfo(scores.dtype).min)
        attended = torch.bmm(torch.softmax(scores, dim=-1), memory)
        return torch.tanh(self.combine(torch.cat([attended, query], dim=-1)))


class AttentionDecoder(nn.Module):
    """GRU decoder: input [word embedding; decoder context], initial state from the decoder
    context, attention over the context words, projection back to the embedding size (the
    output layer is the transposed word embedding)."""

    def __init__(
        self, embedding: nn.Embedding, hidden: int, n_layers: int, dropout: float, kind: str
    ):
        super().__init__()
        self.embedding = embedding
        self.hidden, self.n_layers = hidden, n_layers
        self.init_state = nn.Linear(hidden, n_layers * hidden)
        self.rnn = nn.GRU(
            embedding.embedding_dim + hidden,
            hidden,
            n_layers,
            batch_first=True,
            dropout=dropout if n_layers > 1 else 0.0,
        )
        self.attention = Attention(hidden, kind)
        self.to_embedding = nn.Linear(hidden, embedding.embedding_dim)
        self.dropout = nn.Dropout(dropout)

    def initial_state(self, dec_context: torch.Tensor) -> torch.Tensor:
        batch = dec_context.size(0)
        state = torch.tanh(self.init_state(dec_context)).view(batch, self.n_layers, self.hidden)
        return state.transpose(0, 1).contiguous()

    def forward(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        mask: torch.Tensor,
        dec_context: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``tokens`` [B, T] -> features [B, T, E] and the GRU state [layers, B, H]."""
        if state is None:
            state = self.initial_state(dec_context)
        embedded = self.dropout(self.embedding(tokens))
        steps = dec_context.unsqueeze(1).expand(-1, tokens.size(1), -1)
        outputs, state = self.rnn(torch.cat([embedded, steps], dim=-1), state)
        attended = self.attention(self.dropout(outputs), memory, mask)
        return self.to_embedding(self.dropout(attended)), state


# --- 5. the model ----------------------------------------------------------------------------
class Encoded(NamedTuple):
    """Context encoding: word states [B, S, H] with mask [B, S], dialogue encoding c [B, H]."""

    words: torch.Tensor
    mask: torch.Tensor
    context: torch.Tensor


class Output(NamedTuple):
    """What a teacher-forced pass returns (KL/BoW are None for HRED)."""

    features: torch.Tensor  # [B, T, E]: decoder features, ``logits()`` gives the scores
    encoded: Encoded
    z: torch.Tensor | None
    kl: torch.Tensor | None  # [B]
    bow_logits: torch.Tensor | None  # [B, V]
    pi: torch.Tensor | None = None  # [B, K]: the prior's component weights (GMM/LGM; §8.2)


class HierarchicalEncoderDecoder(nn.Module):
    """HRED (``latent_prior='none'``) or VHRED with a Gaussian, GMM or LGM prior.

    ``utts`` [B, U, L]: up to U context utterances per example, in order, left-aligned
    (``n_utts`` [B] real ones; padding = ``padding_idx``); ``floors`` [B, U] relative floors.
    """

    def __init__(self, config: VHREDConfig):
        super().__init__()
        self.config = config
        hidden, latent = config.hidden_size, config.latent_size
        self.embedding = nn.Embedding(
            config.vocab_size, config.embedding_size, padding_idx=config.padding_idx
        )
        self.utterance_encoder = UtteranceEncoder(
            self.embedding, hidden, config.n_layers, config.dropout
        )
        self.context_encoder = ContextEncoder(
            hidden, config.floor_size, config.n_layers, config.dropout
        )
        self.prior = build_prior(config)
        if self.prior is not None:
            self.posterior = Posterior(hidden, latent)
            self.to_decoder = nn.Linear(hidden + latent, hidden)
            self.bow = (
                nn.Sequential(
                    nn.Linear(hidden + latent, latent),
                    nn.Tanh(),
                    nn.Dropout(config.dropout),
                    nn.Linear(latent, config.vocab_size),
                )
                if config.bow
                else None
            )
        else:
            self.to_decoder = nn.Linear(hidden, hidden)
        self.decoder = AttentionDecoder(
            self.embedding, hidden, config.n_layers, config.dropout, config.attention
        )
        self.output_bias = nn.Parameter(torch.zeros(config.vocab_size))
        self.dropout = nn.Dropout(config.dropout)
        self.reset_parameters()

    @property
    def latent(self) -> bool:
        return self.prior is not None

    def reset_parameters(self) -> None:
        """Linear U(-0.08, 0.08) with zero biases, GRU Xavier (as the authors' code)."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.uniform_(module.weight, -0.08, 0.08)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.GRU):
                for name, param in module.named_parameters():
                    if 'weight' in name:
                        nn.init.xavier_uniform_(param)
                    else:
                        nn.init.zeros_(param)
        nn.init.normal_(self.embedding.weight, 0.0, self.config.embedding_size**-0.5)
        with torch.no_grad():
            self.embedding.weight[self.config.padding_idx].zero_()

    # -- encoding -----------------------------------------------------------------------------
    def encode(self, utts: torch.Tensor, floors: torch.Tensor, n_utts: torch.Tensor) -> Encoded:
        """c = E(X) (§4.1) and the word states the decoder attends to."""
        batch, n_max, length = utts.shape
        pad = self.config.padding_idx
        present = torch.arange(n_max, device=utts.device).unsqueeze(0) < n_utts.unsqueeze(1)
        lengths = utts.ne(pad).sum(dim=-1)
        states, encodings = self.utterance_encoder(utts[present], lengths[present])
        hidden = self.config.hidden_size
        word_states = states.new_zeros(batch, n_max, length, hidden)
        word_states[present] = states
        utterance_encodings = encodings.new_zeros(batch, n_max, hidden)
        utterance_encodings[present] = encodings
        context = self.context_encoder(self.dropout(utterance_encodings), floors, n_utts)
        mask = utts.ne(pad) & present.unsqueeze(-1)
        return Encoded(
            word_states.view(batch, n_max * length, hidden), mask.view(batch, -1), context
        )

    def encode_response(self, ys: torch.Tensor) -> torch.Tensor:
        """Encoding of the response for the posterior (the same utterance encoder)."""
        _, encoding = self.utterance_encoder(ys, ys.ne(self.config.padding_idx).sum(dim=-1))
        return encoding

    # -- latent -------------------------------------------------------------------------------
    def prior_sample(
        self, context: torch.Tensor, mode: str = 'sample', component: int | None = None
    ) -> torch.Tensor | None:
        """z from the prior for generation: a sample, or the prior mean (``mode='mean'``)."""
        if self.prior is None:
            return None
        params = self.prior(context)
        if mode == 'mean':
            if component is not None:
                params = params._replace(pi=_forced(params.pi, component))
            return self.prior.mean(params)
        return self.prior.sample(params, component)

    def decoder_context(self, context: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        """tanh(W [c; z]) (tanh(W c) for HRED), fed to the decoder at every step."""
        inputs = context if z is None else torch.cat([context, z], dim=-1)
        return self.dropout(torch.tanh(self.to_decoder(inputs)))

    # -- decoding -----------------------------------------------------------------------------
    def decode(
        self,
        tokens: torch.Tensor,
        encoded: Encoded,
        dec_context: torch.Tensor,
        state: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.decoder(tokens, encoded.words, encoded.mask, dec_context, state)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Scores over the vocabulary (output layer tied to the word embeddings)."""
        return F.linear(features, self.embedding.weight, self.output_bias)

    # -- teacher-forced pass ------------------------------------------------------------------
    def forward(
        self,
        utts: torch.Tensor,
        floors: torch.Tensor,
        n_utts: torch.Tensor,
        decoder_input: torch.Tensor,
        ys: torch.Tensor,
        z_source: str = 'posterior',
        encoded: Encoded | None = None,
    ) -> Output:
        """Decode ``ys`` given the context (``decoder_input`` = ys shifted right, with start).

        VHREDs: the KL(q || p) is computed from a posterior sample in every mode; the decoder
        reads z from the posterior (``z_source='posterior'``: training, Appendix B.2), a prior
        sample (``'prior'``: what generation does) or the prior mean (``'prior_mean'``).
        ``encoded`` reuses a previous :meth:`encode` of the same context.
        """
        if encoded is None:
            encoded = self.encode(utts, floors, n_utts)
        z = kl = bow_logits = pi = None
        if self.prior is not None:
            params = self.prior(encoded.context)
            pi = params.pi if params.pi.size(-1) > 1 else None
            posterior = self.posterior(self.encode_response(ys), encoded.context)
            z_post = posterior.sample()
            kl = self.prior.kl(posterior, z_post, params)
            if z_source == 'posterior':
                z = z_post
            elif z_source == 'prior':
                z = self.prior.sample(params)
            elif z_source == 'prior_mean':
                z = self.prior.mean(params)
            else:
                raise ValueError(f'unknown z_source {z_source!r}')
            if self.bow is not None:
                bow_logits = self.bow(torch.cat([encoded.context, z], dim=-1))
        features, _ = self.decode(decoder_input, encoded, self.decoder_context(encoded.context, z))
        return Output(features, encoded, z, kl, bow_logits, pi)
