"""HRED, VHRED, VHRED-GMM and VHRED-LGM in one hierarchical encoder-decoder (pure torch).

Paper: "Multi-Referenced Training for Dialogue Response Generation" (Zhao & Kawahara;
``../shared/papers/multiref_vhred_lgm.txt``), §4.1 (HRED, VHRED, VHRED-GMM), §6.3 (the linear
Gaussian model prior, LGM) and Appendix B.1 (sizes). Read top to bottom:

1. :class:`UtteranceEncoder`: a bidirectional GRU over the tokens of each context utterance
   (word states for attention, one encoding per utterance);
2. :class:`ContextEncoder`: a 30-d floor embedding (same speaker as the response or not)
   joined to every utterance encoding, then a unidirectional GRU over the utterances: the
   dialogue encoding ``c = E(X)`` (§4.1);
3. latent variables (VHREDs only; :mod:`parlai_ext.modules.vhred_latent`, re-exported here):
   the unimodal Gaussian posterior q(z | x, y) of every VHRED (B.1) and one of three priors
   p(z | x), each a small class with ``forward`` (parameters from c), ``sample`` and ``kl``
   (against the posterior): :class:`GaussianPrior` (VHRED), :class:`GMMPrior` (VHRED-GMM, K
   components) and :class:`LGMPrior` (VHRED-LGM, z = sum_k pi_k z_k);
4. :class:`AttentionDecoder`: a GRU decoder that reads ``tanh(W[c; z])`` at every step and
   attends over all context word states; the output layer is tied to the word embeddings;
5. :class:`HierarchicalEncoderDecoder`: the whole model, a bag-of-words head for VHREDs.

The KL/loss formulas themselves live in :mod:`parlai_ext.losses.multiref`; every GRU runs
through :mod:`parlai_ext.modules.hred_gru` (a fused CPU loop, the same equations as
``nn.GRU``). Defaults follow Appendix B.1: GRUs of 1 layer x 500 units, 30-d floor embeddings,
200-d latents; dropout 0.2 (B.2). Where the paper is silent we follow the authors' code (see
projects/multiref/README.md): 200-d word embeddings, the two directions of the utterance GRU
averaged, Linear-tanh prior and posterior networks with softplus variances, tied output
embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from parlai_ext.modules.hred_gru import padded_bidirectional_gru, unidirectional_gru
from parlai_ext.modules.vhred_latent import (  # noqa: F401 (re-exported)
    VAR_FLOOR,
    Gaussian,
    GaussianHeads,
    GaussianPrior,
    GMMPrior,
    LGMPrior,
    Posterior,
    PriorParams,
    _forced,
    build_prior,
)

LATENT_PRIORS = ('none', 'gaussian', 'gmm', 'lgm')
ATTENTION_KINDS = ('general', 'additive')
LGM_KL_MODES = ('exact', 'authors')


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
        outputs, _ = unidirectional_gru(self.rnn, inputs)
        last = (n_utts.clamp_min(1) - 1)[:, None, None].expand(-1, 1, outputs.shape[-1])
        return outputs.gather(1, last).squeeze(1)


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
        # input [word embedding; decoder context] at every step
        outputs, state = unidirectional_gru(self.rnn, embedded, state, constant=dec_context)
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
        return self.encode_with_response(utts, floors, n_utts)[0]

    def encode_with_response(
        self,
        utts: torch.Tensor,
        floors: torch.Tensor,
        n_utts: torch.Tensor,
        ys: torch.Tensor | None = None,
    ) -> tuple[Encoded, torch.Tensor | None]:
        """:meth:`encode`, and with ``ys`` also :meth:`encode_response` of it, in one call of
        the utterance encoder: the response rows join the context utterances' (padded to the
        longer of the two; padding after a row's tokens changes neither its states nor its
        encoding), so its GRU loop runs once for both (the posterior's input, §4.1)."""
        batch, n_max, length = utts.shape
        pad = self.config.padding_idx
        present = torch.arange(n_max, device=utts.device).unsqueeze(0) < n_utts.unsqueeze(1)
        lengths = utts.ne(pad).sum(dim=-1)
        rows, row_lengths = utts[present], lengths[present]
        n_rows = rows.size(0)
        if ys is not None:
            width = max(length, ys.size(1))
            rows = torch.cat(
                [
                    F.pad(rows, (0, width - length), value=pad),
                    F.pad(ys, (0, width - ys.size(1)), value=pad),
                ]
            )
            row_lengths = torch.cat([row_lengths, ys.ne(pad).sum(dim=-1)])
        states, encodings = self.utterance_encoder(rows, row_lengths)
        response = encodings[n_rows:] if ys is not None else None
        states, encodings = states[:n_rows, :length], encodings[:n_rows]
        hidden = self.config.hidden_size
        word_states = states.new_zeros(batch, n_max, length, hidden)
        word_states[present] = states
        utterance_encodings = encodings.new_zeros(batch, n_max, hidden)
        utterance_encodings[present] = encodings
        context = self.context_encoder(self.dropout(utterance_encodings), floors, n_utts)
        mask = utts.ne(pad) & present.unsqueeze(-1)
        encoded = Encoded(
            word_states.view(batch, n_max * length, hidden), mask.view(batch, -1), context
        )
        return encoded, response

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
        response = None
        if encoded is None:  # VHREDs: the response is encoded in the same pass (posterior)
            encoded, response = self.encode_with_response(
                utts, floors, n_utts, ys if self.prior is not None else None
            )
        z = kl = bow_logits = pi = None
        if self.prior is not None:
            params = self.prior(encoded.context)
            pi = params.pi if params.pi.size(-1) > 1 else None
            if response is None:
                response = self.encode_response(ys)
            posterior = self.posterior(response, encoded.context)
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
