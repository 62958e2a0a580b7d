"""CORAL's response-retrieval reward models f_R(c, r) in (0, 1) (unofficial re-implementation).

CORAL (Santra et al., "CORAL: Contextual Response Retrievability Loss Function for Training
Dialog Generation Models") rewards a generated response with the score of a response
retrieval model trained on the same data with random negatives (§3.1, §4.1):

- :class:`Esim`: ESIM (Chen et al. 2017; Chen & Wang 2019 for dialogue): embeddings, a BiLSTM
  encoding of context and response, cross attention, a composition BiLSTM, mean + max
  pooling, an MLP and a sigmoid;
- :class:`CrossEncoder`: the paper's "BERT" reward: a transformer encoder over
  ``[CLS] context [SEP] response [SEP]``, the ``[CLS]`` state (or the mean), an MLP with two
  hidden layers and a sigmoid. The encoder is either the project's shared pre-norm transformer
  (:class:`~parlai_ext.modules.transformer.TransformerEncoder`, from scratch) or any local
  Hugging Face encoder (:class:`~parlai_ext.modules.hf.HfEncoder`, e.g. MiniLM).

Both take padded token rows ``context (N, Lc)`` and ``response (N, Lr)`` and return one logit
per pair; ``sigmoid(logit)`` is f_R. Pure torch.

:func:`sample_responses` draws the mix-policy negatives r− ~ Nucleus(c | θ) of Algorithm 1 from
any ParlAI ``TorchGeneratorModel`` (the encoder-decoder or a Hugging Face causal LM).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from parlai_ext.modules.sampling import nucleus_sample

NEG_FILL = -1e9  # masked attention logit (finite, so a fully masked row never gives NaN)


# --- shared helpers ---------------------------------------------------------------------------
def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over time of ``x (N, L, D)`` where ``valid (N, L)``; 0 for an empty row."""
    weights = valid.unsqueeze(-1).to(x.dtype)
    return (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def masked_max(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Max over time of ``x (N, L, D)`` where ``valid (N, L)``; 0 for an empty row."""
    filled = x.masked_fill(~valid.unsqueeze(-1), NEG_FILL).max(dim=1).values
    return torch.where(valid.any(dim=1, keepdim=True), filled, torch.zeros_like(filled))


class MlpHead(nn.Module):
    """Two hidden layers and one output logit (§4.1: "an MLP, with two hidden layers")."""

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.0, activation=nn.Tanh):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden),
            activation(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            activation(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).squeeze(-1)


# --- ESIM -------------------------------------------------------------------------------------
class BiLstm(nn.Module):
    """One bidirectional LSTM layer that ignores padding (packed sequences)."""

    def __init__(self, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(in_dim, hidden, batch_first=True, bidirectional=True)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        lengths = valid.sum(dim=1).clamp(min=1).cpu()
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out  # (N, L, 2 * hidden), zeros at padding


class Esim(nn.Module):
    """ESIM for response selection (Chen et al. 2017, §3; as used by CORAL §4.1).

    1. input encoding: ``c̄ = BiLSTM(E c)``, ``r̄ = BiLSTM(E r)`` (one shared BiLSTM);
    2. local inference (cross attention): ``e_ij = c̄_i · r̄_j``, ``c̃_i = Σ_j softmax_j(e_ij) r̄_j``,
       ``r̃_j = Σ_i softmax_i(e_ij) c̄_i``;
    3. enhancement ``m = [a; ã; a − ã; a ⊙ ã]``, projected by ``ReLU(W m)``;
    4. composition: a second BiLSTM over the projections;
    5. mean and max pooling of both sides, concatenated;
    6. MLP -> one logit; ``sigmoid`` gives f_R(c, r).

    The paper uses one-layer LSTMs and 2560-d Blenderbot token embeddings; here the sizes are
    options and the embeddings are trained from scratch.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 300,
        hidden_dim: int = 300,
        dropout: float = 0.1,
        padding_idx: int = 0,
    ) -> None:
        super().__init__()
        self.padding_idx = padding_idx
        self.embeddings = nn.Embedding(vocab_size, embedding_dim, padding_idx=padding_idx)
        self.dropout = nn.Dropout(dropout)
        self.encoding = BiLstm(embedding_dim, hidden_dim)
        self.projection = nn.Sequential(nn.Linear(8 * hidden_dim, hidden_dim), nn.ReLU())
        self.composition = BiLstm(hidden_dim, hidden_dim)
        self.classifier = nn.Sequential(
            nn.Linear(8 * hidden_dim, hidden_dim),
            nn.Tanh(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
        )

    @staticmethod
    def cross_attend(
        context: torch.Tensor,
        response: torch.Tensor,
        context_valid: torch.Tensor,
        response_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft alignments (ESIM Eq. 12-13): each context token's view of the response and back."""
        energy = context @ response.transpose(1, 2)  # (N, Lc, Lr)
        to_response = energy.masked_fill(~response_valid[:, None, :], NEG_FILL).softmax(dim=2)
        to_context = energy.masked_fill(~context_valid[:, :, None], NEG_FILL).softmax(dim=1)
        aligned_context = to_response @ response  # c̃: (N, Lc, D)
        aligned_response = to_context.transpose(1, 2) @ context  # r̃: (N, Lr, D)
        return aligned_context, aligned_response

    def _compose(self, x: torch.Tensor, aligned: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        enhanced = torch.cat([x, aligned, x - aligned, x * aligned], dim=-1)
        return self.composition(self.dropout(self.projection(enhanced)), valid)

    def forward(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """One logit per (context, response) row: ``(N,)``."""
        context_valid = context != self.padding_idx
        response_valid = response != self.padding_idx
        c_bar = self.encoding(self.dropout(self.embeddings(context)), context_valid)
        r_bar = self.encoding(self.dropout(self.embeddings(response)), response_valid)
        c_tilde, r_tilde = self.cross_attend(c_bar, r_bar, context_valid, response_valid)
        v_c = self._compose(c_bar, c_tilde, context_valid)
        v_r = self._compose(r_bar, r_tilde, response_valid)
        pooled = torch.cat(
            [
                masked_mean(v_c, context_valid),
                masked_max(v_c, context_valid),
                masked_mean(v_r, response_valid),
                masked_max(v_r, response_valid),
            ],
            dim=-1,
        )
        return self.classifier(pooled).squeeze(-1)


# --- cross-encoder ----------------------------------------------------------------------------
def pack_pairs(
    context: torch.Tensor,
    response: torch.Tensor,
    pad: int,
    cls: int,
    sep: int,
    max_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[CLS] context [SEP] response [SEP]`` per row, padding removed, right-padded.

    The context is cut from the left (its most recent tokens are kept) if the pair would
    exceed ``max_len``. Returns token ids, segment (type) ids (0 = context part, 1 = response
    part) and the validity mask, each ``(N, L)``.
    """
    rows, types = [], []
    for ctx, resp in zip(context, response):
        ctx, resp = ctx[ctx != pad], resp[resp != pad]
        if max_len is not None:
            resp = resp[: max(max_len - 3, 0)]
            ctx = ctx[max(len(ctx) - (max_len - 3 - len(resp)), 0) :]
        start, end = ctx.new_tensor([cls]), ctx.new_tensor([sep])
        rows.append(torch.cat([start, ctx, end, resp, end]))
        types.append(torch.cat([ctx.new_zeros(len(ctx) + 2), ctx.new_ones(len(resp) + 1)]))
    length = max(len(row) for row in rows)
    ids = context.new_full((len(rows), length), pad)
    type_ids = context.new_zeros((len(rows), length))
    valid = torch.zeros((len(rows), length), dtype=torch.bool, device=context.device)
    for i, (row, typ) in enumerate(zip(rows, types)):
        ids[i, : len(row)] = row
        type_ids[i, : len(row)] = typ
        valid[i, : len(row)] = True
    return ids, type_ids, valid


class CrossEncoder(nn.Module):
    """f_R(c, r) = sigmoid(MLP(pool(Encoder([CLS] c [SEP] r [SEP])))) (CORAL §4.1, "BERT")."""

    def __init__(
        self,
        encoder: nn.Module,
        pad: int,
        cls: int,
        sep: int,
        mlp_hidden: int = 256,
        dropout: float = 0.1,
        pooling: str = 'cls',
    ) -> None:
        super().__init__()
        if pooling not in ('cls', 'mean'):
            raise ValueError(f'pooling must be cls or mean, got {pooling!r}')
        self.encoder = encoder
        self.pad, self.cls, self.sep = pad, cls, sep
        self.pooling = pooling
        self.head = MlpHead(encoder.hidden_size, mlp_hidden, dropout)  # torch's default init

    def forward(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """One logit per (context, response) row: ``(N,)``."""
        ids, type_ids, valid = pack_pairs(
            context, response, self.pad, self.cls, self.sep, self.encoder.max_len
        )
        hidden = self.encoder(ids, type_ids, valid)
        pooled = hidden[:, 0] if self.pooling == 'cls' else masked_mean(hidden, valid)
        return self.head(pooled)


def reward_probability(logits: torch.Tensor) -> torch.Tensor:
    """f_R = sigmoid(logit) in (0, 1), computed in float32."""
    return torch.sigmoid(logits.float())


# --- mix-policy negatives ---------------------------------------------------------------------
@torch.no_grad()
def sample_responses(
    model: nn.Module,
    source: torch.Tensor,
    start_idx: int,
    end_idx: int,
    pad_idx: int,
    max_len: int,
    top_p: float,
    min_len: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One nucleus-sampled response per source row: r− ~ Nucleus(c | θ) (Algorithm 1, §3.3).

    ``model`` is a ParlAI ``TorchGeneratorModel`` (``encoder``, incremental ``decoder``,
    ``output``; its output layer may ban tokens with −inf). Each step draws from the nucleus
    of mass ``top_p`` of the next-token distribution (:func:`~parlai_ext.modules.sampling.
    nucleus_sample`); the end token is banned for the first ``min_len`` steps. The episode
    ends at the end token or after ``max_len`` tokens (§3.2's T).

    Returns ``(N, T)`` token ids, right-padded with ``pad_idx``: a row that ends within
    ``max_len`` ends with ``end_idx``; a row that reaches ``max_len`` holds the ``max_len``
    tokens actually sampled and no end token (ParlAI's tree search would overwrite its last
    sampled token with the end token, whose log-probability the loss would then train). Runs
    in the model's current mode; the caller puts it in evaluation mode.
    """
    if max_len < 1:
        raise ValueError(f'max_len must be >= 1, got {max_len}')
    batch = source.shape[0]
    device = source.device
    encoder_state = model.encoder(source)
    tokens = torch.full((batch, 1), start_idx, dtype=torch.long, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    incremental = None
    out = []
    for step in range(max_len):
        hidden, incremental = model.decoder(tokens, encoder_state, incremental)
        logits = model.output(hidden[:, -1:]).squeeze(1).float()
        if step < min_len:
            logits[:, end_idx] = float('-inf')
        chosen = nucleus_sample(logits, top_p, generator).masked_fill(done, pad_idx)
        out.append(chosen)
        done = done | (chosen == end_idx)
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)
        if bool(done.all()):
            break
    return torch.stack(out, dim=1)
