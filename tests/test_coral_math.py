"""CORAL's math pinned by value (unofficial re-implementation of Santra et al.).

The loss (R3 = f_R − m, Eq. 2 and 3) against hand computations; the reward models ESIM and the
cross-encoder against per-row oracles written from the paper's description (no padding, one
row at a time), so any padding, position or composition error shows; the reward models' BCE,
the AUC, the random-negative pool (reservoir and exclusion) against their exact
distributions.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import chisquare
from torch import nn

from parlai_ext.losses.coral import (
    UtterancePool,
    coral_loss,
    r3,
    retrieval_bce_loss,
    roc_auc,
)
from parlai_ext.modules.coral import (
    CrossEncoder,
    Esim,
    MlpHead,
    masked_max,
    masked_mean,
    pack_pairs,
    reward_probability,
)
from parlai_ext.modules.transformer import TransformerEncoder

# --- the CORAL loss: Eq. 2 (one response), Eq. 3 (ground truth and negatives mixed) -----------
# two responses: r1 of 3 tokens (a ground truth, f_R = 0.9) and r2 of 1 token (a negative,
# f_R = 0.2); padding positions carry junk log-probabilities that must be ignored
LOG_PROBS = torch.tensor([[-1.0, -2.0, -3.0, -7.0], [-0.5, -9.0, -9.0, -9.0]])
MASK = torch.tensor([[True, True, True, False], [True, False, False, False]])
SCORES = torch.tensor([0.9, 0.2])


@pytest.mark.parametrize(
    'normalise,expected',
    [
        # R3 = (0.5, −0.2); −R3 · Σ_t log P = (−0.5 · −6, 0.2 · −0.5) = (3.0, −0.1)
        ('sum', 3.0 - 0.1),  # Eq. 3 literally
        ('mean', (3.0 - 0.1) / 2),  # per response
        ('token', (3.0 - 0.1) / 4),  # per target token of the batch (4 real tokens)
        ('length', (3.0 / 3 - 0.1 / 1) / 2),  # each response's mean, then the mean
    ],
)
def test_coral_loss_by_hand(normalise, expected):
    loss = coral_loss(LOG_PROBS, MASK, SCORES, margin=0.4, normalise=normalise)
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_coral_loss_eq2_single_response_and_appendix_a_weighted_ce():
    # Eq. 2: L = −(f_R − m) Σ_t log P(r_t | r_<t, c) for one response
    one = coral_loss(LOG_PROBS[:1], MASK[:1], torch.tensor([0.75]), 0.25, 'sum')
    assert one.item() == pytest.approx(-(0.75 - 0.25) * (-6.0))
    # Appendix A: m = 0 is CE weighted by f_R
    weighted = coral_loss(LOG_PROBS, MASK, SCORES, 0.0, 'sum')
    assert weighted.item() == pytest.approx(0.9 * 6.0 + 0.2 * 0.5)
    assert torch.equal(r3(torch.tensor([0.3, 0.9]), 0.4), torch.tensor([0.3, 0.9]) - 0.4)


def test_coral_loss_gradient_sign_and_detached_reward():
    """∂L/∂ log P(r_t) = −R3 / normaliser at real tokens (gradient descent raises log P when
    R3 > 0, lowers it when R3 < 0), 0 at padding; no gradient reaches the reward."""
    log_probs = LOG_PROBS.clone().requires_grad_(True)
    scores = SCORES.clone().requires_grad_(True)
    coral_loss(log_probs, MASK, scores, 0.4, 'sum').backward()
    expected = torch.tensor([[-0.5, -0.5, -0.5, 0.0], [0.2, 0.0, 0.0, 0.0]])
    assert torch.allclose(log_probs.grad, expected)
    assert scores.grad is None


# --- reward-model training loss and the AUC ---------------------------------------------------
def test_retrieval_bce_loss_by_hand():
    pos, neg = torch.tensor([2.0, -1.0]), torch.tensor([0.5])

    def log_sigmoid(x: float) -> float:
        return -math.log1p(math.exp(-x))

    # label 1 for the positives, 0 for the negatives, the mean over all three pairs
    expected = -(log_sigmoid(2.0) + log_sigmoid(-1.0) + log_sigmoid(-0.5)) / 3
    assert retrieval_bce_loss(pos, neg).item() == pytest.approx(expected, abs=1e-6)


def test_reward_probability_is_the_sigmoid():
    logits = torch.tensor([-2.0, 0.0, 3.0], dtype=torch.float16)
    probs = reward_probability(logits)
    assert probs.dtype == torch.float32
    assert probs.tolist() == pytest.approx([1 / (1 + math.exp(2)), 0.5, 1 / (1 + math.exp(-3))])


def test_roc_auc_by_hand_with_ties():
    # pairs (pos, neg): (0.9, 0.5) 1, (0.9, 0.1) 1, (0.5, 0.5) 1/2, (0.5, 0.1) 1, (0.2, 0.5) 0,
    # (0.2, 0.1) 1 -> 4.5 / 6
    assert roc_auc([0.9, 0.5, 0.2], [0.5, 0.1]) == pytest.approx(4.5 / 6)
    assert roc_auc([0.1], [0.9]) == 0.0 and roc_auc([0.9], [0.1]) == 1.0
    assert roc_auc([0.4, 0.4], [0.4]) == 0.5
    assert math.isnan(roc_auc([], [0.3]))


# --- the random-negative pool -----------------------------------------------------------------
def test_reservoir_keeps_every_utterance_with_equal_probability():
    """Algorithm R: after 12 utterances with capacity 3 each is kept with probability 1/4."""
    counts = Counter()
    trials = 3000
    for seed in range(trials):
        pool = UtterancePool(capacity=3, seed=seed)
        pool.add([f'u{i}' for i in range(12)], list(range(12)))
        assert len(pool) == 3 and pool.seen == 12
        counts.update(v for _, v in pool.items)
    observed = [counts[i] for i in range(12)]
    assert chisquare(observed, [trials / 4] * 12).pvalue > 1e-3, observed


def test_random_negative_is_uniform_over_the_other_utterances_and_never_the_positive():
    pool = UtterancePool(seed=0)
    texts = ['a', 'b', 'c', 'a', 'd', 'a', 'a', 'a']  # 'a' fills most of the pool
    pool.add(texts, list(range(len(texts))))
    draws = pool.sample(['a'] * 6000)
    assert all(text != 'a' for text, _ in draws)  # never the example's own response
    counts = Counter(v for _, v in draws)
    assert set(counts) == {1, 2, 4}
    assert chisquare([counts[1], counts[2], counts[4]]).pvalue > 1e-3, counts
    # a pool of only the positive: nothing else to draw
    only = UtterancePool(seed=0)
    only.add(['a', 'a'], [0, 1])
    assert {v for _, v in only.sample(['a'] * 50)} == {0, 1}
    # a pool of 1 positive among many: the scan after the rejection draws finds the other one
    almost = UtterancePool(seed=3)
    almost.add(['a'] * 500 + ['z'], list(range(501)))
    assert all(v == 500 for _, v in almost.sample(['a'] * 20))


# --- pooling helpers and ESIM's cross attention -----------------------------------------------
def test_masked_mean_and_max_by_value():
    x = torch.tensor(
        [[[1.0, -4.0], [3.0, -2.0], [100.0, 100.0]], [[5.0, -1.0], [7.0, 7.0], [9.0, 9.0]]]
    )
    valid = torch.tensor([[True, True, False], [False, False, False]])
    assert masked_mean(x, valid).tolist() == [[2.0, -3.0], [0.0, 0.0]]
    assert masked_max(x, valid).tolist() == [[3.0, -2.0], [0.0, 0.0]]
    neg = -torch.ones(1, 3, 2)  # all values negative: padding (0) must not win the max
    assert masked_max(neg, torch.tensor([[True, True, False]])).tolist() == [[-1.0, -1.0]]


def test_cross_attention_by_value():
    """ESIM Eq. 12-13 on one pair: e = c̄ r̄ᵀ, c̃ = softmax_j(e) r̄, r̃ = softmax_i(e)ᵀ c̄."""
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(1, 3, 4, generator=gen)
    r = torch.randn(1, 2, 4, generator=gen)
    c_valid = torch.tensor([[True, True, False]])
    r_valid = torch.tensor([[True, True]])
    aligned_c, aligned_r = Esim.cross_attend(c, r, c_valid, r_valid)
    cc, rr = c[0, :2], r[0]
    energy = cc @ rr.T
    assert torch.allclose(aligned_c[0, :2], energy.softmax(dim=1) @ rr, atol=1e-6)
    assert torch.allclose(aligned_r[0], energy.softmax(dim=0).T @ cc, atol=1e-6)


# --- ESIM and the cross-encoder against per-row oracles ---------------------------------------
# variable lengths: every row has its own context and response length, and padding
CTX = torch.tensor([[5, 6, 7, 8, 9], [9, 10, 0, 0, 0], [11, 5, 14, 0, 0]])
RESP = torch.tensor([[11, 12, 0, 0], [13, 14, 15, 16], [17, 0, 0, 0]])


def _real(row: torch.Tensor) -> torch.Tensor:
    return row[row != 0]


def esim_oracle(model: Esim, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
    """ESIM (Chen et al. 2017) on one unpadded pair, from the module's weights."""

    def bilstm(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
        return lstm(x[None])[0][0]

    c_bar = bilstm(model.encoding.lstm, model.embeddings(context))
    r_bar = bilstm(model.encoding.lstm, model.embeddings(response))
    energy = c_bar @ r_bar.T
    c_tilde = energy.softmax(dim=1) @ r_bar
    r_tilde = energy.softmax(dim=0).T @ c_bar
    projection = model.projection[0]

    def compose(a, a_tilde):
        m = torch.cat([a, a_tilde, a - a_tilde, a * a_tilde], dim=-1)
        return bilstm(model.composition.lstm, F.relu(projection(m)))

    v_c, v_r = compose(c_bar, c_tilde), compose(r_bar, r_tilde)
    pooled = torch.cat([v_c.mean(0), v_c.max(0).values, v_r.mean(0), v_r.max(0).values])
    first, last = model.classifier[0], model.classifier[3]
    return last(torch.tanh(first(pooled)))[0]


def mlp_oracle(head: MlpHead, x: torch.Tensor) -> torch.Tensor:
    """§4.1: two hidden layers (tanh) and one output logit."""
    l1, l2, l3 = head.layers[0], head.layers[3], head.layers[6]
    return l3(torch.tanh(l2(torch.tanh(l1(x)))))[..., 0]


def cross_oracle(model: CrossEncoder, context: torch.Tensor, response: torch.Tensor):
    """[CLS] c [SEP] r [SEP] alone (no padding), segment 0 up to the first [SEP], the [CLS]
    state, the MLP."""
    ids = torch.cat([torch.tensor([1]), context, torch.tensor([2]), response, torch.tensor([2])])
    types = torch.tensor([0] * (len(context) + 2) + [1] * (len(response) + 1))
    hidden = model.encoder(ids[None], types[None], torch.ones(1, len(ids), dtype=torch.bool))
    return mlp_oracle(model.head, hidden[0, 0])


def make_cross(pooling: str = 'cls') -> CrossEncoder:
    encoder = TransformerEncoder(20, dim=16, n_layers=1, n_heads=2, ffn_dim=32, dropout=0.0)
    return CrossEncoder(encoder, pad=0, cls=1, sep=2, mlp_hidden=8, dropout=0.0, pooling=pooling)


@pytest.mark.parametrize('kind', ['esim', 'cross'])
def test_reward_model_matches_its_per_row_oracle_under_padding(kind):
    """Each row of a padded batch scores as the same pair alone, computed from the paper's
    description; extra padding changes nothing."""
    torch.manual_seed(0)
    if kind == 'esim':
        model, oracle = Esim(20, 8, 6, dropout=0.0).eval(), esim_oracle
    else:
        model, oracle = make_cross().eval(), cross_oracle
    with torch.no_grad():
        batched = model(CTX, RESP)
        more_padding = model(F.pad(CTX, (0, 4)), F.pad(RESP, (0, 3)))
        expected = torch.stack([oracle(model, _real(c), _real(r)) for c, r in zip(CTX, RESP)])
        alone = torch.cat([model(_real(c)[None], _real(r)[None]) for c, r in zip(CTX, RESP)])
    assert torch.allclose(batched, expected, atol=1e-5), (batched, expected)
    assert torch.allclose(batched, more_padding, atol=1e-5)
    assert torch.allclose(batched, alone, atol=1e-5)
    assert batched.std() > 1e-3  # the rows differ: the comparison is not trivial


def test_esim_reads_the_pair_not_just_each_side():
    """Swapping responses between rows changes the scores (the cross attention couples them)."""
    torch.manual_seed(1)
    model = Esim(20, 8, 6, dropout=0.0).eval()
    with torch.no_grad():
        base = model(CTX, RESP)
        swapped = model(CTX, RESP[[1, 2, 0]])
        ordered = model(CTX[[1, 2, 0]], RESP[[1, 2, 0]])
    assert torch.allclose(base[[1, 2, 0]], ordered, atol=1e-5)  # rows are independent
    assert not torch.allclose(base, swapped, atol=1e-4)


class StubEncoder(nn.Module):
    """Hidden state = (position, token id, segment, valid): shows which position is pooled."""

    hidden_size = 4
    max_len = None

    def forward(self, ids, type_ids, valid):
        self.seen = (ids, type_ids, valid)
        positions = torch.arange(ids.shape[1]).expand_as(ids)
        return torch.stack([positions, ids, type_ids, valid.long()], dim=-1).float() / 10


@pytest.mark.parametrize('pooling', ['cls', 'mean'])
def test_cross_encoder_reads_the_cls_position_or_the_masked_mean(pooling):
    torch.manual_seed(0)
    model = CrossEncoder(StubEncoder(), pad=0, cls=1, sep=2, mlp_hidden=5, pooling=pooling).eval()
    with torch.no_grad():
        out = model(CTX, RESP)
    ids, types, valid = model.encoder.seen
    expected_ids, expected_types, expected_valid = pack_pairs(CTX, RESP, 0, 1, 2)
    assert torch.equal(ids, expected_ids) and torch.equal(types, expected_types)
    assert torch.equal(valid, expected_valid)
    hidden = model.encoder(ids, types, valid)
    if pooling == 'cls':
        pooled = hidden[:, 0]  # position 0, token [CLS]
        assert pooled[:, 0].eq(0).all() and pooled[:, 1].eq(0.1).all()
    else:
        pooled = torch.stack([hidden[i][valid[i]].mean(0) for i in range(len(ids))])
    assert torch.allclose(out, mlp_oracle(model.head, pooled), atol=1e-6)
    with pytest.raises(ValueError):
        CrossEncoder(StubEncoder(), pad=0, cls=1, sep=2, pooling='max')


def test_pack_pairs_truncation_keeps_the_response_start_and_the_context_end():
    ids, types, valid = pack_pairs(CTX[:1], RESP[1:2], pad=0, cls=1, sep=2, max_len=8)
    # the response (4 tokens) fits in 8 − 3 = 5; the context gets 5 − 4 = 1 token, its last
    assert ids.tolist() == [[1, 9, 2, 13, 14, 15, 16, 2]]
    assert types.tolist() == [[0, 0, 0, 1, 1, 1, 1, 1]] and valid.all()
    ids, _, _ = pack_pairs(CTX[:1], RESP[1:2], pad=0, cls=1, sep=2, max_len=5)
    assert ids.tolist() == [[1, 2, 13, 14, 2]]  # a long response keeps its first tokens
    ids, _, _ = pack_pairs(CTX[:1], RESP[:1], pad=0, cls=1, sep=2, max_len=9)
    assert ids.tolist() == [[1, 6, 7, 8, 9, 2, 11, 12, 2]]


def test_cross_encoder_truncates_to_the_encoder_positions():
    torch.manual_seed(0)
    encoder = TransformerEncoder(20, dim=16, n_layers=1, n_heads=2, ffn_dim=32, n_positions=6)
    model = CrossEncoder(encoder, pad=0, cls=1, sep=2, mlp_hidden=8, dropout=0.0).eval()
    with torch.no_grad():
        long = model(CTX[:1], RESP[:1])  # 5 + 2 + 3 = 10 tokens > 6 positions
        cut = model(torch.tensor([[9]]), RESP[:1])  # what remains: the context's last token
    assert torch.allclose(long, cut, atol=1e-6)


# --- the negative sampler's loop on a scripted model ------------------------------------------
class ScriptedLM(nn.Module):
    """A TorchGeneratorModel stand-in whose next-token logits depend on the source row's flag
    and the last token only: row flag 0 prefers START -> END, then 3; 3 -> END, then 4;
    4 -> END. Row flag 1 always prefers 5. PAD 0, START 1, END 2."""

    vocab = 6

    def encoder(self, source):
        return source[:, 0]

    def decoder(self, tokens, state, incremental):
        hidden = torch.stack([tokens[:, -1], state], dim=-1)[:, None, :].float()
        return hidden, (incremental or 0) + 1

    def output(self, hidden):
        last, flag = hidden[:, 0, 0].long(), hidden[:, 0, 1].long()
        logits = torch.zeros(len(last), 1, self.vocab)
        for i, (t, f) in enumerate(zip(last.tolist(), flag.tolist())):
            if f == 1:
                logits[i, 0, 5] = 9.0
            elif t == 1:
                logits[i, 0, 2], logits[i, 0, 3] = 9.0, 5.0
            elif t == 3:
                logits[i, 0, 2], logits[i, 0, 4] = 9.0, 5.0
            else:
                logits[i, 0, 2] = 9.0
        logits[:, :, [0, 1]] = float('-inf')  # as the generators' output layer
        return logits


def test_sample_responses_bans_end_only_first_pads_after_end_and_caps_without_end():
    from parlai_ext.modules.coral import sample_responses

    model, source = ScriptedLM(), torch.tensor([[0, 7], [1, 7]])
    tiny = 1e-6  # the nucleus is the most probable token
    out = sample_responses(model, source, 1, 2, 0, max_len=4, top_p=tiny)
    # row 0: END banned at the first step only -> 3, then END; padding after it
    # row 1: never ends -> the 4 tokens sampled, no END
    assert out.tolist() == [[3, 2, 0, 0], [5, 5, 5, 5]]
    out = sample_responses(model, source, 1, 2, 0, max_len=4, top_p=tiny, min_len=0)
    assert out[0].tolist() == [2, 0, 0, 0]
    out = sample_responses(model, source, 1, 2, 0, max_len=4, top_p=tiny, min_len=2)
    assert out[0].tolist() == [3, 4, 2, 0]
    assert sample_responses(model, source[:1], 1, 2, 0, max_len=1, top_p=tiny).tolist() == [[3]]
    with pytest.raises(ValueError):
        sample_responses(model, source, 1, 2, 0, max_len=0, top_p=0.9)
