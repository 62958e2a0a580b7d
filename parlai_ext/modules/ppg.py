"""PPG: partner personas generation for dialogue response generation (unofficial re-implementation).

Lu et al., "Partner Personas Generation for Dialogue Response Generation" (NAACL 2022; no
public code). The framework has three parts (§3): a partner personas generator (PPG, §3.1)
and a dialogue response generator (DRG, §3.2), both seq2seq models (here the project's
:class:`~parlai_ext.modules.encoder_decoder.EncoderDecoder`), and a critic (§3.3), a binary
classifier on (persona, response) pairs whose predicted label is the reward of a joint
REINFORCE stage. This module holds what is PPG-specific and pure (no ParlAI):

- the input layouts of both generators (:func:`ppg_source`, :func:`drg_source`);
- BM25 (Robertson and Walker, 1994) for the "top-3 partner personas" baseline of Table 1
  (:func:`bm25_top_k`);
- the critic's training pairs with speaker-swapped negatives (§3.3, :func:`critic_pairs`);
- the critic network (:class:`PersonaCritic` over :class:`~parlai_ext.modules.transformer.TransformerEncoder`
  or a local Hugging Face encoder, :class:`~parlai_ext.modules.transformer.HfEncoder`);
- sampling from an :class:`EncoderDecoder` for the RL stage (:func:`sample_sequences`);
- warm-starting an :class:`EncoderDecoder` from a GPT-2-family checkpoint such as DialoGPT,
  which the paper's generators start from (§5.1) (:func:`warm_start_from_gpt2`).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from parlai_ext.modules.encoder_decoder import EncoderDecoder
from parlai_ext.modules.sampling import sample
from parlai_ext.modules.transformer import init_weights
from parlai_ext.persona import PARTNER_PREFIX, SELF_PREFIX, split_persona_lines

SILENCE = '__SILENCE__'


# --- input layouts (§3.1, §3.2) ---------------------------------------------------------------
def persona_text(sentences: Sequence[str]) -> str:
    """A persona profile as one string: its sentences joined by spaces (the PPG target, §3.1)."""
    return ' '.join(s.strip() for s in sentences if s.strip())


def ppg_source(context: Sequence[str], self_persona: Sequence[str]) -> str:
    """PPG input: the dialogue context c, then the self personas s (§3.1: "concatenation of c
    and s"), one line each. The persona comes last so that ParlAI's left truncation of long
    inputs drops the oldest turns, never the persona."""
    return '\n'.join([*context, f'{SELF_PREFIX} {persona_text(self_persona)}'])


CHAT_ROLES = ('system', 'user', 'assistant')
_CHAT_ROLE = re.compile(r'^\s*(?:' + '|'.join(CHAT_ROLES) + r')(?:[ \t]*:|[ \t]*\n|[ \t]*$)\s*')


def strip_chat_role(text: str) -> str:
    """``text`` without a leading chat-template role (``assistant\\n...``, ``user: ...``).

    A chat-tuned base (SmolLM2-Instruct: ``<|im_start|>assistant\\n...``) fine-tuned for a few
    updates still starts some outputs with its template's role name after the start token; the
    role is not part of the reply or the persona. Only a whole word at the very start, followed
    by a colon, a line break or nothing, is removed.
    """
    return _CHAT_ROLE.sub('', text, count=1)


def chat_fields(turns: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(context, self_persona)`` of a free chat's turns (``parlai interactive``, self-chat).

    Lines that start with ``your persona:`` (ConvAI2's convention for giving the bot a persona;
    any case) are the self persona sentences, prefix removed. ``partner's persona:`` lines (a
    ``both``-view opener, e.g. ``parlai self_chat --seed-messages-from-task``) are dropped: on
    this path the partner persona is the PPG's to generate, and the gold one is no dialogue
    text. Every other non-empty line is a context turn, in order (a turn holding several lines
    gives several turns).
    """
    self_persona, _, lines = split_persona_lines(turns, ignore_case=True)
    return [line for kept in lines for line in kept], self_persona


def drg_source(
    context: Sequence[str], self_persona: Sequence[str], partner_persona: str | None
) -> str:
    """DRG input: context c, self personas s and partner personas p (or p̂) (§3.2).

    ``partner_persona`` is one string (a generated profile, or gold sentences joined with
    :func:`persona_text`), so gold and generated partner personas have the same layout;
    ``None`` leaves the partner line out (the "w/o partner personas" baselines, Table 1).
    """
    lines = [*context, f'{SELF_PREFIX} {persona_text(self_persona)}']
    if partner_persona is not None:
        # one line: a sampled persona may hold a newline token that would split it
        partner_persona = ' '.join(partner_persona.split('\n'))
        lines.append(f'{PARTNER_PREFIX} {partner_persona}')
    return '\n'.join(lines)


# --- BM25 (Table 1: "E2E w/ Partner Personas", top-3 retrieved sentences) ----------------------
# English function words: persona sentences are short and almost all start with "i" / "my",
# so without this list they would dominate the matches of such short documents.
STOPWORDS = frozenset(
    """a an the and or but if of to in on at by for with from as about into over after before
    i me my mine myself you your yours we our us he him his she her it its they them their
    am is are was were be been being do does did have has had having will would can could
    shall should may might must not no so than too very just also that this these those there
    here what which who whom when where why how all any some each other such own same only
    up down out off again then once s t don i'm i've i'd i'll it's that's ? , .""".split()
)


def bm25_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric words without English function words (BM25's bag of words)."""
    words = re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())
    return [w for w in words if w not in STOPWORDS]


def bm25_scores(
    query: str, documents: Sequence[str], k1: float = 1.5, b: float = 0.75
) -> list[float]:
    """Okapi BM25 score of each document for the query, with the documents as the corpus.

    ``idf(t) = ln(1 + (N - n_t + 0.5) / (n_t + 0.5))`` (the non-negative Lucene form), term
    frequency saturation ``k1`` and length normalisation ``b`` (Robertson and Walker, 1994).
    """
    docs = [bm25_tokens(d) for d in documents]
    if not docs:
        return []
    n_docs = len(docs)
    avg_len = sum(len(d) for d in docs) / n_docs or 1.0
    doc_freq = Counter(t for d in docs for t in set(d))
    query_terms = bm25_tokens(query)
    scores = []
    for doc in docs:
        tf = Counter(doc)
        norm = k1 * (1 - b + b * len(doc) / avg_len)
        score = 0.0
        for term in query_terms:
            if tf[term]:
                idf = math.log(1 + (n_docs - doc_freq[term] + 0.5) / (doc_freq[term] + 0.5))
                score += idf * tf[term] * (k1 + 1) / (tf[term] + norm)
        scores.append(score)
    return scores


def bm25_top_k(query: str, documents: Sequence[str], k: int = 3) -> list[int]:
    """Indices of the ``k`` best documents, best first (ties: earlier document first)."""
    scores = bm25_scores(query, documents)
    order = sorted(range(len(documents)), key=lambda i: (-scores[i], i))
    return order[:k]


def select_partner_persona(
    partner_persona: Sequence[str], context: Sequence[str], top_k: int = 0
) -> list[str]:
    """Gold partner persona sentences for the DRG: all (``top_k`` 0), or the ``top_k`` most
    relevant to the dialogue context by BM25, kept in their profile order."""
    if top_k <= 0 or len(partner_persona) <= top_k:
        return list(partner_persona)
    query = ' '.join(u for u in context if u != SILENCE)
    keep = sorted(bm25_top_k(query, partner_persona, top_k))
    return [partner_persona[i] for i in keep]


# --- critic data (§3.3) ---------------------------------------------------------------------
@dataclass(frozen=True)
class CriticPair:
    persona: tuple[str, ...]
    response: str
    label: int  # 1: the response is relevant to the persona (same speaker), 0: swapped


def critic_pairs(
    self_persona: Sequence[str],
    partner_persona: Sequence[str],
    turns: Sequence[tuple[str, str]],
    persona: str = 'self',
) -> list[CriticPair]:
    """The critic's training instances from one PersonaChat episode (§3.3).

    The episode is seen from speaker A: ``self_persona`` is s_A, ``partner_persona`` s_B,
    and each turn is (B's utterance r_B, A's reply r_A). With ``persona='self'`` (the paper's
    choice, footnote 3) every response is a positive with its own speaker's persona,
    (s_A, r_A, 1) and (s_B, r_B, 1), and a negative with the other speaker's,
    (s_A, r_B, 0) and (s_B, r_A, 0). With ``persona='partner'`` (the footnote's
    alternative) a response is positive with its speaker's *partner* persona, i.e. the same
    pairs with the labels swapped. Order: per turn, r_B's pairs then r_A's, positive first.
    ParlAI's ``__SILENCE__`` placeholder (no utterance) gives no pairs.
    """
    if persona not in ('self', 'partner'):
        raise ValueError(f"persona must be 'self' or 'partner', got {persona!r}")
    s_a, s_b = tuple(self_persona), tuple(partner_persona)
    pairs: list[CriticPair] = []
    for r_b, r_a in turns:
        for response, own, other in ((r_b, s_b, s_a), (r_a, s_a, s_b)):
            if response.strip() == SILENCE or not response.strip() or not own or not other:
                continue
            if persona == 'self':
                pairs += [CriticPair(own, response, 1), CriticPair(other, response, 0)]
            else:
                pairs += [CriticPair(other, response, 1), CriticPair(own, response, 0)]
    return pairs


def speaker_utterances(
    self_persona: Sequence[str], partner_persona: Sequence[str], turns: Sequence[tuple[str, str]]
) -> list[tuple[tuple[str, ...], str]]:
    """The episode's utterances in dialogue order, each with its speaker's persona.

    Seen from speaker A (``self_persona`` s_A), a turn (r_B, r_A) gives (s_B, r_B) then
    (s_A, r_A); ``__SILENCE__`` and empty utterances are left out. Both views of one
    dialogue give the same list, up to the last utterance that only one view holds.
    """
    s_a, s_b = tuple(self_persona), tuple(partner_persona)
    out = []
    for r_b, r_a in turns:
        for persona, response in ((s_b, r_b), (s_a, r_a)):
            if response.strip() and response.strip() != SILENCE:
                out.append((persona, response))
    return out


def unique_dialogues(
    episodes: Sequence[tuple[Sequence[str], Sequence[str], Sequence[tuple[str, str]]]],
) -> list[int]:
    """Indices of the episodes to keep when every dialogue should count once.

    ConvAI2's train file holds each dialogue twice, once from each speaker's side: the
    personas swapped and the turns shifted by one utterance (the side that spoke first
    starts with ``__SILENCE__``). Two episodes are one dialogue when their
    :func:`speaker_utterances` agree on every utterance both hold and differ by at most the
    last one; of such a group the episode with the most utterances is kept (its pairs contain
    all of the other's), at the place of the first one. Episodes are ``(self persona,
    partner persona, [(text, reply), ...])``.
    """
    utterances = [speaker_utterances(*episode) for episode in episodes]
    kept: list[int] = []
    groups: dict[tuple[tuple[str, ...], str], list[int]] = {}  # first utterance -> kept slots
    for index, own in enumerate(utterances):
        if not own:
            kept.append(index)
            continue
        slots = groups.setdefault(own[0], [])
        for slot in slots:
            other = utterances[kept[slot]]
            common = min(len(own), len(other))
            if abs(len(own) - len(other)) <= 1 and own[:common] == other[:common]:
                if len(own) > len(other):
                    kept[slot] = index
                break
        else:
            slots.append(len(kept))
            kept.append(index)
    return kept


# --- critic network (§3.3) ------------------------------------------------------------------
def pack_pair(
    persona_ids: Sequence[int],
    response_ids: Sequence[int],
    cls: int,
    sep: int,
    max_len: int,
    max_response: int = 64,
) -> list[int]:
    """``[CLS] persona [SEP] response [SEP]`` within ``max_len`` tokens: the response keeps up
    to ``max_response`` tokens (its start), the persona the rest (its start)."""
    response = list(response_ids)[: max(1, min(max_response, max_len - 4))]
    persona = list(persona_ids)[: max(0, max_len - len(response) - 3)]
    return [cls, *persona, sep, *response, sep]


def segment_ids(ids: torch.Tensor, sep: int) -> torch.Tensor:
    """0 up to and including the first [SEP], 1 after it (BERT's token types)."""
    seen = torch.cumsum((ids == sep).long(), dim=1)
    before = torch.cat([torch.zeros_like(seen[:, :1]), seen[:, :-1]], dim=1)
    return before.clamp(max=1)


class PersonaCritic(nn.Module):
    """P(L | s, r) of §3.3: encoder over ``[CLS] persona [SEP] response [SEP]``, the [CLS]
    state, dropout and a linear layer to two classes (index 1: "relevant")."""

    def __init__(self, encoder: nn.Module, padding_idx: int, sep: int, dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.padding_idx = padding_idx
        self.sep = sep
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.hidden_size, 2)
        init_weights(self.head)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (N, L)`` packed pairs (:func:`pack_pair`), padded: logits ``(N, 2)``."""
        valid = ids != self.padding_idx
        hidden = self.encoder(ids, segment_ids(ids, self.sep), valid)
        return self.head(self.dropout(hidden[:, 0]))


# --- generation for RL (§3.3) -----------------------------------------------------------------
@torch.no_grad()
def sample_sequences(
    seq2seq: EncoderDecoder | nn.Module,
    source: torch.Tensor,
    start_idx: int,
    end_idx: int,
    max_len: int,
    banned: Sequence[int] = (),
    greedy: bool = False,
    top_k: int = 0,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    with_log_probs: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Decode one sequence per source row: ancestral sampling (or greedy), with the cache.

    Each step draws from ``softmax(top_k(logits / temperature))`` over the ids not ``banned``
    (start, padding: never produced, as in the agents' output layer), with the shared
    :func:`parlai_ext.modules.sampling.sample`. Returns ``(N, T)`` token ids, each row ending
    with ``end_idx`` (if produced within ``max_len``: a capped row keeps the tokens actually
    drawn) and padded with ``seq2seq.padding_idx`` after it. ``with_log_probs`` also returns
    ``(N, T)`` log P(token) under the model's own distribution at sampling time (banned ids
    removed, no temperature or top-k: the policy whose log-probability REINFORCE
    differentiates, §3.3), 0 at padding.

    ``seq2seq`` is an :class:`EncoderDecoder` (``encode`` / ``decode`` / ``logits``) or any
    model with ParlAI's generator interface (``encoder`` / ``decoder`` / ``output`` and
    ``NULL_IDX``), e.g. the decoder-only ``HfGeneratorModel`` over a pretrained causal LM.
    """
    if hasattr(seq2seq, 'encode'):
        encode, decode, logits_of = seq2seq.encode, seq2seq.decode, seq2seq.logits
        pad = seq2seq.padding_idx
    else:  # ParlAI's interface: the decoder takes the tokens so far (the cache the rest)
        encode, logits_of = seq2seq.encoder, seq2seq.output
        pad = seq2seq.NULL_IDX

        def decode(tokens, state, caches):
            return seq2seq.decoder(tokens, state, caches)

    state = encode(source)
    batch = source.shape[0]
    tokens = torch.full((batch, 1), start_idx, dtype=torch.long, device=source.device)
    done = torch.zeros(batch, dtype=torch.bool, device=source.device)
    caches = None
    out, log_probs = [], []
    for _ in range(max_len):
        hidden, caches = decode(tokens, state, caches)
        logits = logits_of(hidden[:, -1]).float()
        if banned:
            logits[:, list(banned)] = float('-inf')
        if greedy:
            chosen = logits.argmax(dim=-1)
        else:
            chosen = sample(logits, top_k=top_k, temperature=temperature, generator=generator)
        chosen = chosen.masked_fill(done, pad)
        if with_log_probs:
            picked = F.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1)
            log_probs.append(picked.masked_fill(done, 0.0))
        out.append(chosen)
        done = done | (chosen == end_idx)
        tokens = chosen[:, None]
        if bool(done.all()):
            break
    sampled = torch.stack(out, dim=1)
    return (sampled, torch.stack(log_probs, dim=1)) if with_log_probs else sampled


def decoder_input(sample: torch.Tensor, start_idx: int) -> torch.Tensor:
    """Teacher-forcing input of ``sample``: start token, then the sample shifted right."""
    start = torch.full_like(sample[:, :1], start_idx)
    return torch.cat([start, sample[:, :-1]], dim=1)


# --- warm start from GPT-2 / DialoGPT (§5.1) ---------------------------------------------------
def gpt2_dimensions(path: str) -> dict:
    """Sizes of a local GPT-2-family checkpoint, as the project's option names."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    if config.model_type != 'gpt2':
        raise ValueError(
            f'{path}: generators warm-start from GPT-2-family checkpoints (e.g. DialoGPT); '
            f'got model_type {config.model_type!r}'
        )
    return dict(
        embedding_size=config.n_embd,
        n_layers=config.n_layer,
        n_encoder_layers=config.n_layer,
        n_decoder_layers=config.n_layer,
        n_heads=config.n_head,
        ffn_size=config.n_inner or 4 * config.n_embd,
        n_positions=config.n_positions,
        gelu_approximate='tanh' if config.activation_function != 'gelu' else 'none',
    )


def set_gelu_approximation(module: nn.Module, approximate: str) -> None:
    """Use GPT-2's tanh-approximated GELU (``gelu_new``) in every feed-forward layer."""
    if approximate == 'none':
        return
    for sub in module.modules():
        if hasattr(sub, 'fc_in') and hasattr(sub, 'activation'):
            sub.activation = partial(F.gelu, approximate=approximate)


@torch.no_grad()
def warm_start_from_gpt2(seq2seq: EncoderDecoder, path: str) -> None:
    """Initialise ``seq2seq`` from a local GPT-2-family checkpoint (e.g. DialoGPT).

    The paper builds both generators on DialoGPT (§5.1). Our generators are encoder-decoders,
    so we warm-start both stacks from the GPT-2 weights (as Rothe et al., 2020, do with GPT-2
    for seq2seq): token and position embeddings, every block's layer norms, self-attention
    and feed-forward layers, and the final layer norm go to the encoder and to the decoder.
    GPT-2 is pre-norm like our block, so the mapping is exact. Cross-attention is new; its
    output projection starts at zero, so before training the decoder computes exactly
    GPT-2's language model (the source has no effect until training). Token rows beyond
    GPT-2's vocabulary (added special tokens) keep their fresh initialisation.
    """
    from transformers import AutoModel

    gpt2 = AutoModel.from_pretrained(path)
    weights = {k.removeprefix('transformer.'): v for k, v in gpt2.state_dict().items()}
    wte = weights['wte.weight']
    seq2seq.embeddings.tokens.weight[: wte.shape[0]] = wte
    wpe = weights['wpe.weight']
    if wpe.shape != seq2seq.embeddings.positions.weight.shape:
        raise ValueError(f'position embeddings {tuple(wpe.shape)} do not fit our model')
    seq2seq.embeddings.positions.weight.copy_(wpe)

    def linear(target: nn.Linear, name: str) -> None:
        weight, bias = weights[f'{name}.weight'], weights[f'{name}.bias']  # Conv1D: (in, out)
        target.weight.copy_(weight.t())
        target.bias.copy_(bias)

    def norm(target: nn.LayerNorm, name: str) -> None:
        target.weight.copy_(weights[f'{name}.weight'])
        target.bias.copy_(weights[f'{name}.bias'])

    for stack in (seq2seq.encoder, seq2seq.decoder):
        if len(stack.layers) != gpt2.config.n_layer:
            raise ValueError('the number of layers differs from the checkpoint')
        for index, block in enumerate(stack.layers):
            prefix = f'h.{index}'
            norm(block.norm_attention, f'{prefix}.ln_1')
            linear(block.attention.qkv, f'{prefix}.attn.c_attn')  # query, key, value rows
            linear(block.attention.out, f'{prefix}.attn.c_proj')
            norm(block.norm_ffn, f'{prefix}.ln_2')
            linear(block.ffn.fc_in, f'{prefix}.mlp.c_fc')
            linear(block.ffn.fc_out, f'{prefix}.mlp.c_proj')
            if block.cross_attention is not None:
                nn.init.zeros_(block.cross_attention.out.weight)
                nn.init.zeros_(block.cross_attention.out.bias)
        norm(stack.final_norm, 'ln_f')
