"""P2Bot (Liu et al., ACL 2020): the transmitter (§3.1) and the receiver (§4), pure torch.

Read top to bottom:

1. **Transmitter** - a persona-conditioned language model over
   ``[persona; history] -> [START] response [END] [CLS]``. Two interchangeable backbones with
   the same small interface (``forward``/``continue_from`` for training, ``encode_context`` /
   ``decode`` with a key/value cache for ParlAI's tree search):

   - :class:`UnifiedBackbone`: the project's prefix-LM transformer
     (:class:`~parlai_ext.modules.unified_transformer.UnifiedTransformer`, built from the shared
     pre-norm block). The paper's GPT is causal over the context too; ours sees the persona and
     history bidirectionally (the response part is causal, as in GPT).
   - :class:`HFCausalBackbone`: any local Hugging Face causal LM (GPT-2, Llama/SmolLM2, ...),
     causal over everything as the paper's GPT. Right-padded contexts are handled with an
     attention mask plus explicit positions, so context and response stay contiguous in
     position space.

   :class:`Transmitter` adds the next-utterance prediction (NUP) head on the hidden state of a
   ``[CLS]`` token appended after ``[END]`` (§3.1), and :func:`eq3_score` mixes the
   length-normalised log-likelihood (Eq. 2) with ``log p(y=1)`` (Eq. 3).
   :func:`sample_responses` draws the self-play replies (§3.2: multinomial, token by token;
   a reply cut by the length cap keeps its tokens). A Hugging Face model that returns no
   key/value cache (OpenAI-GPT) decodes through a :class:`PrefixCache` (prefix recomputed).

2. **Receiver** - an impression encoder and a persona encoder (:class:`SentenceEncoder` from
   scratch or :class:`HFSentenceEncoder` over a local HF encoder such as MiniLM), mean-pooled
   sentence vectors, the relevance matrix ``U = H Wᵀ / √d`` (Eq. 11), the temperature-weighted
   aggregate :func:`aggregate` (Eq. 13), the cumulative score :func:`cumulative_score`
   (Eq. 14) and the per-utterance inference score :meth:`Receiver.perception_scores` (Eq. 15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from parlai_ext.modules.sampling import sample
from parlai_ext.modules.transformer import TransformerEncoder, drop_unused_pooler, init_weights
from parlai_ext.modules.unified_transformer import ContextState, UnifiedTransformer

# =============================================================================== transmitter


def append_cls(
    targets: torch.Tensor, start_idx: int, cls_idx: int, padding_idx: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[START] y_1 .. y_n [CLS]`` rows from right-padded targets ``y`` (which end with END).

    :return: the sequences ``(B, T + 2)`` and the position of ``[CLS]`` in each row ``(B,)``.
        Because the backbone is causal over the response, the logits at positions ``0..T-1``
        are exactly the teacher-forced predictions of ``y`` (``[CLS]`` comes after them).
    """
    batch = targets.shape[0]
    lengths = (targets != padding_idx).sum(dim=1)
    start = targets.new_full((batch, 1), start_idx)
    pad = targets.new_full((batch, 1), padding_idx)
    sequence = torch.cat([start, targets, pad], dim=1)
    cls_position = lengths + 1
    sequence[torch.arange(batch, device=targets.device), cls_position] = cls_idx
    return sequence, cls_position


class UnifiedBackbone(nn.Module):
    """The project's prefix-LM transformer as the transmitter's language model."""

    def __init__(self, transformer: UnifiedTransformer) -> None:
        super().__init__()
        self.transformer = transformer

    @property
    def dim(self) -> int:
        return self.transformer.embeddings.tokens.weight.shape[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.transformer.logits(hidden)

    def forward(
        self, context: torch.Tensor, sequence: torch.Tensor
    ) -> tuple[torch.Tensor, ContextState]:
        """Hidden states of ``sequence`` (response side) given ``context``; and a reusable state."""
        return self.transformer(context, sequence)

    def continue_from(self, state: ContextState, sequence: torch.Tensor) -> torch.Tensor:
        """Another response-side ``sequence`` after the same (already encoded) context."""
        hidden, _ = self.transformer.decode(sequence, state)
        return hidden

    def encode_context(self, context: torch.Tensor) -> ContextState:
        return self.transformer.encode_context(context)

    def decode(self, tokens: torch.Tensor, state: ContextState, cache: Any = None):
        return self.transformer.decode(tokens, state, cache)

    @staticmethod
    def reorder_state(state: ContextState, indices: torch.Tensor) -> ContextState:
        return state.index_select(indices)

    @staticmethod
    def reorder_cache(cache: Any, indices: torch.Tensor) -> Any:
        return [(k.index_select(0, indices), v.index_select(0, indices)) for k, v in cache]


@dataclass
class HFContext:
    """A right-padded context for the HF backbone (the model runs it with the first token)."""

    tokens: torch.Tensor  # (B, Lc)
    valid: torch.Tensor  # (B, Lc) bool
    length: torch.Tensor  # (B,) valid context tokens = first response position


@dataclass
class PrefixCache:
    """The response tokens decoded so far, for an HF model that returns no key/value cache."""

    tokens: torch.Tensor  # (B, t) every response token fed so far (START first)


class HFCausalBackbone(nn.Module):
    """A local Hugging Face causal LM (``AutoModelForCausalLM``) as the transmitter's LM.

    Contexts arrive right-padded (ParlAI's convention). The padding is masked out with the 2-D
    attention mask and the response continues at position ``context length``, so the model
    sees each row exactly as an unpadded ``context + response`` sequence.
    """

    def __init__(self, model: nn.Module, padding_idx: int) -> None:
        super().__init__()
        self.model = model
        self.padding_idx = padding_idx

    @property
    def dim(self) -> int:
        return self.model.get_output_embeddings().weight.shape[1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)

    def _run(self, tokens, valid, positions, cache=None, use_cache=False):
        out = self.model.base_model(
            input_ids=tokens,
            attention_mask=valid.long(),
            position_ids=positions,
            past_key_values=cache,
            use_cache=use_cache,
        )
        return out.last_hidden_state, getattr(out, 'past_key_values', None)

    def _joint(self, context: HFContext, sequence: torch.Tensor, use_cache: bool):
        batch, lc = context.tokens.shape
        ls = sequence.shape[1]
        device = sequence.device
        positions = torch.cat(
            [
                torch.arange(lc, device=device).expand(batch, lc),
                context.length[:, None] + torch.arange(ls, device=device)[None, :],
            ],
            dim=1,
        )
        valid = torch.cat([context.valid, sequence != self.padding_idx], dim=1)
        hidden, cache = self._run(
            torch.cat([context.tokens, sequence], dim=1), valid, positions, None, use_cache
        )
        return hidden[:, lc:], cache

    def encode_context(self, context: torch.Tensor) -> HFContext:
        valid = context != self.padding_idx
        return HFContext(context, valid, valid.sum(dim=1))

    def forward(self, context: torch.Tensor, sequence: torch.Tensor):
        state = self.encode_context(context)
        hidden, _ = self._joint(state, sequence, use_cache=False)
        return hidden, state

    def continue_from(self, state: HFContext, sequence: torch.Tensor) -> torch.Tensor:
        hidden, _ = self._joint(state, sequence, use_cache=False)
        return hidden

    @staticmethod
    def null_context(state: HFContext) -> HFContext:
        """Each row's first context token only (P2Bot's ``[PS]`` marker): the "no context" of
        the pointwise mutual information the NUP head can read (``--nup-pmi``)."""
        valid = state.valid[:, :1]
        return HFContext(state.tokens[:, :1], valid, valid.sum(dim=1))

    def decode(self, tokens: torch.Tensor, state: HFContext, cache: Any = None):
        """First call: context + tokens in one pass (fresh cache); later calls: new tokens.

        A model that keeps no key/value cache (OpenAI-GPT, the paper's backbone, returns
        none) gets a :class:`PrefixCache` instead: each later call recomputes the context and
        every response token so far, and returns the hidden states of the new tokens.
        """
        if cache is None:
            hidden, past = self._joint(state, tokens, use_cache=True)
            return hidden, (PrefixCache(tokens) if past is None else past)
        if isinstance(cache, PrefixCache):
            prefix = torch.cat([cache.tokens, tokens], dim=1)
            hidden, _ = self._joint(state, prefix, use_cache=False)
            return hidden[:, prefix.shape[1] - tokens.shape[1] :], PrefixCache(prefix)
        batch, new = tokens.shape
        past = cache.get_seq_length() - state.tokens.shape[1]  # response tokens decoded so far
        device = tokens.device
        positions = state.length[:, None] + past + torch.arange(new, device=device)[None, :]
        valid = torch.cat(
            [state.valid, torch.ones(batch, past + new, dtype=torch.bool, device=device)], dim=1
        )
        return self._run(tokens, valid, positions, cache, use_cache=True)

    @staticmethod
    def reorder_state(state: HFContext, indices: torch.Tensor) -> HFContext:
        return HFContext(
            state.tokens.index_select(0, indices),
            state.valid.index_select(0, indices),
            state.length.index_select(0, indices),
        )

    @staticmethod
    def reorder_cache(cache: Any, indices: torch.Tensor) -> Any:
        if isinstance(cache, PrefixCache):
            return PrefixCache(cache.tokens.index_select(0, indices))
        cache.reorder_cache(indices)  # in place; ParlAI never reuses the old order
        return cache


# the spread of the NUP logits at initialisation over a standardised (pretrained) [CLS] state
NUP_INIT_LOGIT_STD = 0.5


@dataclass
class TransmitterOutput:
    lm_logits: torch.Tensor  # (B, T, V): teacher-forced predictions of the targets
    nup_logits: torch.Tensor  # (B, 2): next-utterance prediction on [CLS]
    state: Any  # the encoded context (reusable for another response)


class Transmitter(nn.Module):
    """Language model + next-utterance prediction head on an appended ``[CLS]`` (§3.1)."""

    def __init__(
        self,
        backbone: UnifiedBackbone | HFCausalBackbone,
        start_idx: int,
        end_idx: int,
        cls_idx: int,
        padding_idx: int,
        dropout: float = 0.1,
        nup_norm: bool = False,
        nup_pmi: bool = False,
    ) -> None:
        """:param nup_norm: the NUP head reads the ``[CLS]`` state standardised (a layer norm
        without parameters), for pretrained backbones. SmolLM2's final states have norm ~50,
        carried by a few huge constant dimensions: a head with the usual initialisation on the
        raw state starts with logits of magnitude ~3 that vary from one example to the next
        (issue #21). On the standardised state the head starts small but not zero
        (:data:`NUP_INIT_LOGIT_STD`): a zero head passes no gradient to the backbone (∂L/∂h =
        Wᵀ·∂L/∂logits = 0), so the NUP loss never shaped the ``[CLS]`` state, the head stayed a
        linear probe of states that do not separate true replies from distractors, and it sat
        at chance (0.50-0.525 after 105 updates, issue #21).
        :param nup_pmi: the "is the next utterance" logit also gets ``a · PMI`` (a learned,
        starting at 1): ``PMI = log p(x|w,h)/|x| − log p(x|[PS])/|x|``, how much the context
        raises the reply's length-normalised likelihood (Eq. 2), computed without gradient
        (needs :meth:`HFCausalBackbone.null_context`). Not in the paper: over SmolLM2 + LoRA
        the ``[CLS]`` state alone stayed near chance after a few hundred updates."""
        super().__init__()
        self.backbone = backbone
        self.start_idx, self.end_idx = start_idx, end_idx
        self.cls_idx, self.padding_idx = cls_idx, padding_idx
        self.nup_norm = nup_norm
        self.nup_dropout = nn.Dropout(dropout)
        self.nup_head = nn.Linear(backbone.dim, 2)  # logit 1 = "is the next utterance"
        if nup_norm:
            # a standardised state has norm √d, so each logit starts with std NUP_INIT_LOGIT_STD
            std = NUP_INIT_LOGIT_STD / math.sqrt(backbone.dim)
            nn.init.normal_(self.nup_head.weight, std=std)
            nn.init.zeros_(self.nup_head.bias)
        else:
            init_weights(self.nup_head)
        self.nup_pmi = nup_pmi
        if nup_pmi:
            if not hasattr(backbone, 'null_context'):
                raise ValueError(f'--nup-pmi needs a Hugging Face backbone, not {backbone!r}')
            self.nup_pmi_scale = nn.Parameter(torch.ones(()))

    def _nup(self, hidden: torch.Tensor, cls_position: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        state = hidden[rows, cls_position]
        if self.nup_norm:
            state = F.layer_norm(state.float(), state.shape[-1:])
        return self.nup_head(self.nup_dropout(state))

    def forward(
        self, context: torch.Tensor, targets: torch.Tensor, state: Any = None
    ) -> TransmitterOutput:
        """One pass: LM logits of ``targets`` (Eq. 1) and NUP logits of ``(context, targets)``.

        :param targets: ``(B, T)`` right-padded responses ending with END.
        :param state: an already encoded context (from an earlier output) to reuse.
        """
        sequence, cls_position = append_cls(targets, self.start_idx, self.cls_idx, self.padding_idx)
        if state is None:
            hidden, state = self.backbone(context, sequence)
        else:
            hidden = self.backbone.continue_from(state, sequence)
        lm_logits = self.backbone.logits(hidden[:, : targets.shape[1]])
        nup_logits = self._nup(hidden, cls_position)
        if self.nup_pmi:
            pmi = self.pmi(state, sequence, lm_logits, targets)
            nup_logits = nup_logits + torch.stack(
                [torch.zeros_like(pmi), self.nup_pmi_scale * pmi], dim=-1
            )
        return TransmitterOutput(lm_logits, nup_logits, state)

    @torch.no_grad()
    def pmi(
        self, state: Any, sequence: torch.Tensor, lm_logits: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        """``log p(x|w,h)/|x| − log p(x|[PS])/|x|`` per row, without gradient (``nup_pmi``).

        :param sequence: ``[START] x [CLS]`` rows (:func:`append_cls`); ``lm_logits`` the
            predictions of ``targets`` after the full context.
        """
        steps = targets.shape[1]
        null_hidden = self.backbone.continue_from(
            self.backbone.null_context(state), sequence[:, :steps]
        )
        null_logits = self.backbone.logits(null_hidden)
        return length_normalised_log_prob(
            lm_logits, targets, self.padding_idx
        ) - length_normalised_log_prob(null_logits, targets, self.padding_idx)

    def score(self, context: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per response: ``log p(x|w,h) / |x|`` (Eq. 2) and ``log p(y=1|w,h,x)`` (Eq. 3).

        ``|x|`` counts the response tokens including END (the sequence the LM scores).
        """
        out = self.forward(context, targets)
        return length_normalised_log_prob(out.lm_logits, targets, self.padding_idx), (
            F.log_softmax(out.nup_logits.float(), dim=-1)[:, 1]
        )


def length_normalised_log_prob(
    logits: torch.Tensor, targets: torch.Tensor, padding_idx: int
) -> torch.Tensor:
    """``(1/|x|) Σ_t log p(x_t | x_<t, ...)`` per row (Eq. 2; Eq. 6 with an LM's logits)."""
    log_probs = F.log_softmax(logits.float(), dim=-1)
    mask = targets != padding_idx
    picked = log_probs.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


def eq3_score(
    length_normalised: torch.Tensor, nup_log_prob: torch.Tensor, alpha: float
) -> torch.Tensor:
    """``α · log p(x|w,h)/|x| + (1 − α) · log p(y=1|w,h,x)`` (Eq. 3; α = 1 gives Eq. 2)."""
    return alpha * length_normalised + (1.0 - alpha) * nup_log_prob


def sample_responses(
    transmitter: Transmitter,
    context: torch.Tensor,
    max_len: int,
    banned: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Multinomial sampling over the whole output distribution, token by token (§3.2).

    "The agent samples tokens one by one through multinomial sampling over the output
    distribution of B, until [EOS] is sampled or exceeding the maximum allowed decoding step."
    Unlike ParlAI's tree search, a row that reaches ``max_len`` without END keeps the tokens it
    sampled: no END is written over its last token, so REINFORCE never scores an END that was
    not drawn.

    :param context: ``(B, Lc)`` right-padded contexts.
    :param banned: token ids never produced (START, padding, the P2Bot markers).
    :return: ``(B, T ≤ max_len)`` sampled ids; after a row's END, ``transmitter.padding_idx``.
    """
    backbone = transmitter.backbone
    state = backbone.encode_context(context)
    batch = context.shape[0]
    pad, end = transmitter.padding_idx, transmitter.end_idx
    tokens = context.new_full((batch, 1), transmitter.start_idx)
    done = torch.zeros(batch, dtype=torch.bool, device=context.device)
    cache = None
    out = []
    for _ in range(max_len):
        hidden, cache = backbone.decode(tokens, state, cache)
        logits = backbone.logits(hidden[:, -1]).float()
        if banned is not None and len(banned):
            logits[:, banned] = float('-inf')
        chosen = sample(logits, generator=generator).masked_fill(done, pad)
        out.append(chosen)
        done = done | (chosen == end)
        tokens = chosen[:, None]
        if bool(done.all()):
            break
    if not out:
        return context.new_zeros((batch, 0))
    return torch.stack(out, dim=1)


# ================================================================================== receiver


class SentenceEncoder(TransformerEncoder):
    """The shared bidirectional encoder (no type embeddings) with mean pooling over tokens.

    ``activation`` and ``attention_dropout`` default to what every receiver saved before they
    were options here used (GELU, no attention dropout), so such models rebuild unchanged."""

    def __init__(
        self,
        vocab_size: int,
        dim: int = 256,
        n_layers: int = 2,
        n_heads: int = 4,
        ffn_dim: int = 1024,
        n_positions: int = 128,
        dropout: float = 0.1,
        padding_idx: int = 0,
        ffn_dropout: float = 0.0,
        activation: str = 'gelu',
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__(
            vocab_size, dim, n_layers, n_heads, ffn_dim, n_positions, n_types=0,
            dropout=dropout, attention_dropout=attention_dropout, activation=activation,
            padding_idx=padding_idx, ffn_dropout=ffn_dropout,
        )  # fmt: skip
        self.padding_idx = padding_idx
        self.dim = dim

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``(S, T)`` token ids -> ``(S, dim)`` mean of the last layer over valid tokens."""
        valid = tokens != self.padding_idx
        return mean_pool(super().forward(tokens, valid=valid), valid)


class HFSentenceEncoder(nn.Module):
    """A local Hugging Face encoder (``AutoModel``, e.g. MiniLM/BERT) with mean pooling."""

    def __init__(self, model: nn.Module, padding_idx: int) -> None:
        super().__init__()
        self.model = model
        drop_unused_pooler(self, model)  # unused (mean pooling), and it would stall DDP
        self.padding_idx = padding_idx
        self.dim = model.config.hidden_size

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        valid = tokens != self.padding_idx
        hidden = self.model(input_ids=tokens, attention_mask=valid.long()).last_hidden_state
        return mean_pool(hidden, valid)


def mean_pool(hidden: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Average of the token states (§4.1: "we average all the representations")."""
    weights = valid.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def relevance(impressions: torch.Tensor, personas: torch.Tensor) -> torch.Tensor:
    """``U = H Wᵀ / √d`` (Eq. 11).

    :param impressions: ``(..., N, d)`` utterance encodings ``H``.
    :param personas: ``(..., L, d)`` persona-sentence encodings ``W``.
    :return: ``(..., N, L)``.
    """
    return impressions @ personas.transpose(-1, -2) / math.sqrt(impressions.shape[-1])


def aggregate(scores: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``Agg(U_n,:) = Σ_k softmax(U_n,:/τ)_k U_n,k`` over the last dimension (Eq. 13).

    Large τ gives the mean over the (valid) entries, small τ their maximum. ``mask`` (bool,
    same shape) leaves out padding; a row with no valid entry aggregates to 0.
    """
    logits = scores / tau
    if mask is not None:
        logits = logits.masked_fill(~mask, float('-inf'))
    weights = torch.softmax(logits, dim=-1)
    if mask is not None:
        weights = torch.nan_to_num(weights, nan=0.0) * mask
    return (weights * scores).sum(dim=-1)


def cumulative_score(
    scores: torch.Tensor,
    tau: float,
    row_mask: torch.Tensor | None = None,
    column_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``c = (1/N) Σ_n Agg(U_n,:)`` (Eq. 14) over the valid utterances (rows).

    :param scores: ``(..., N, L)`` relevance matrices.
    :param row_mask: ``(..., N)`` valid utterances; ``column_mask``: ``(..., L)`` valid
        persona sentences.
    """
    mask = None
    if column_mask is not None:
        mask = column_mask.unsqueeze(-2).expand_as(scores)
    per_row = aggregate(scores, tau, mask)
    if row_mask is None:
        return per_row.mean(dim=-1)
    rows = row_mask.to(per_row.dtype)
    return (per_row * rows).sum(dim=-1) / rows.sum(dim=-1).clamp(min=1.0)


def linear_tau(step: int, start: float, end: float, steps: int) -> float:
    """τ annealed linearly from ``start`` to ``end`` over ``steps`` updates (§5.1: 10 → 0.5)."""
    if steps <= 0:
        return end
    fraction = min(max(step / steps, 0.0), 1.0)
    return start + (end - start) * fraction


def scatter_rows(vectors: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Place sentence vectors ``(S, d)`` into a padded grid by ``index`` (``-1`` = padding).

    :return: ``(*index.shape, d)`` vectors (zeros at padding) and the bool mask of real rows.
    """
    mask = index >= 0
    gathered = vectors[index.clamp(min=0)]
    return gathered * mask.unsqueeze(-1).to(gathered.dtype), mask


@dataclass
class ReceiverOutput:
    scores: torch.Tensor  # (B, C) cumulative scores c (Eq. 14)
    relevance: torch.Tensor  # (B, C, N, L) U (Eq. 11), 0 at padding
    mask: torch.Tensor  # (B, C, N, L) bool, valid entries of U


class Receiver(nn.Module):
    """Impression encoder + persona encoder + relevance / aggregation (§4, Fig. 5)."""

    def __init__(
        self,
        impression_encoder: nn.Module,
        persona_encoder: nn.Module,
        tau: float = 10.0,
    ) -> None:
        super().__init__()
        self.impression_encoder = impression_encoder
        self.persona_encoder = persona_encoder
        # the current temperature of Agg (annealed in training; saved with the model)
        self.register_buffer('tau', torch.tensor(float(tau)))

    def forward(
        self,
        utterance_tokens: torch.Tensor,
        utterance_index: torch.Tensor,
        persona_tokens: torch.Tensor,
        persona_index: torch.Tensor,
    ) -> ReceiverOutput:
        """Score every (dialogue, candidate persona) pair.

        :param utterance_tokens: ``(S_u, T)`` one row per utterance of all examples.
        :param utterance_index: ``(B, N)`` row of each example's n-th utterance (-1 = none).
        :param persona_tokens: ``(S_p, T)`` one row per persona sentence of all candidates.
        :param persona_index: ``(B, C, L)`` row of candidate c's k-th sentence (-1 = none).
        """
        impressions, row_mask = scatter_rows(
            self.impression_encoder(utterance_tokens), utterance_index
        )  # H: (B, N, d)
        personas, column_mask = scatter_rows(
            self.persona_encoder(persona_tokens), persona_index
        )  # W: (B, C, L, d)
        scores = relevance(impressions.unsqueeze(1), personas)  # (B, C, N, L)
        rows = row_mask.unsqueeze(1).expand(scores.shape[:-1])  # (B, C, N)
        mask = rows.unsqueeze(-1) & column_mask.unsqueeze(-2)
        scores = scores * mask
        c = cumulative_score(scores, float(self.tau), rows, column_mask)
        return ReceiverOutput(c, scores, mask)

    def perception_scores(
        self,
        utterance_tokens: torch.Tensor,
        persona_tokens: torch.Tensor,
        persona_index: torch.Tensor,
    ) -> torch.Tensor:
        """``score(x_n, w) = Agg(U_n,:)`` for one utterance per row (Eq. 15, used in Eq. 9).

        Eq. 15 writes ``Agg(H_n Wᵀ)/√d``; we aggregate the scaled row ``U_n,: = H_n Wᵀ/√d``
        of Eq. 11, i.e. the same quantity whose mean over n is ``c`` (Eq. 14) - putting √d
        outside Agg would silently change the softmax temperature by a factor √d.

        :param utterance_tokens: ``(B, T)`` one utterance per row.
        :param persona_tokens: ``(S_p, T)`` persona sentences; ``persona_index`` ``(B, L)``
            the rows of row b's persona (-1 = padding).
        :return: ``(B,)``.
        """
        impressions = self.impression_encoder(utterance_tokens)  # (B, d)
        personas, column_mask = scatter_rows(self.persona_encoder(persona_tokens), persona_index)
        scores = relevance(impressions.unsqueeze(1), personas).squeeze(1)  # (B, L)
        return aggregate(scores, float(self.tau), column_mask)
