"""The HRED family's GRUs (``modules/hred_gru.py``) equal PyTorch's: the fused CPU loop
(``FusedGRU``, both directions at once, packed rows), the bidirectional GRU over padded rows
(fused and plain) against the packed-sequence ``nn.GRU`` they replaced, the unidirectional one
against ``nn.GRU`` with an initial state, ``ContextEncoder``: outputs (zeros at padding), final
states and every gradient, one and two layers; the packed layout by value; the VHRED pass that
encodes the response together with the context equals the two separate encodings."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from parlai_ext.modules.hred_gru import (
    FusedGRU,
    packed_indices,
    padded_bidirectional_gru_plain,
    unidirectional_gru,
)
from parlai_ext.modules.vhred import (
    ContextEncoder,
    HierarchicalEncoderDecoder,
    VHREDConfig,
    padded_bidirectional_gru,
)


def _packed_reference(rnn, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    outputs, final = rnn(packed)
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
    return outputs, final


@pytest.mark.parametrize('layers', [1, 2])
@pytest.mark.parametrize('gru', [padded_bidirectional_gru, padded_bidirectional_gru_plain])
def test_padded_bidirectional_gru_equals_the_packed_one(layers, gru):
    torch.manual_seed(0)
    rnn = nn.GRU(6, 5, layers, batch_first=True, bidirectional=True)
    x = torch.randn(4, 7, 6, requires_grad=True)
    lengths = torch.tensor([7, 3, 1, 5])
    out, final = gru(rnn, x, lengths)
    ref_out, ref_final = _packed_reference(rnn, x, lengths)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)  # zeros at padding too
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-6)
    # a loss that weights positions and directions differently
    weights = torch.linspace(0.5, 2.0, out.shape[1] * out.shape[2]).view(1, *out.shape[1:])
    grads = torch.autograd.grad((out * weights).sum() + (final**2).sum(), [x, *rnn.parameters()])
    ref = torch.autograd.grad(
        (ref_out * weights).sum() + (ref_final**2).sum(), [x, *rnn.parameters()]
    )
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_context_encoder_reads_the_state_after_the_last_real_utterance():
    torch.manual_seed(0)
    encoder = ContextEncoder(hidden=5, floor_size=3, n_layers=2, dropout=0.0)
    utterances = torch.randn(3, 4, 5)
    floors = torch.tensor([[0, 1, 0, 1], [1, 0, 0, 0], [0, 1, 1, 0]])
    n_utts = torch.tensor([4, 1, 3])
    got = encoder(utterances, floors, n_utts)
    inputs = encoder.merge(torch.cat([utterances, encoder.floor_embedding(floors)], dim=-1))
    packed = pack_padded_sequence(inputs, n_utts, batch_first=True, enforce_sorted=False)
    _, final = encoder.rnn(packed)
    torch.testing.assert_close(got, final[-1], rtol=1e-5, atol=1e-6)
    # the padded utterances after the last real one do not move it
    utterances2 = utterances.clone()
    utterances2[1, 1:] = 100.0
    torch.testing.assert_close(encoder(utterances2, floors, n_utts)[1], got[1])


@pytest.mark.parametrize('per_row', [False, True])
@pytest.mark.parametrize('batch_sizes', [(3, 3, 3), (4, 3, 3, 1)])
def test_fused_gru_gradients_are_the_derivatives_of_its_outputs(batch_sizes, per_row):
    """Both directions' weights, biases, inputs and initial states (float64 gradcheck); packed
    rows (4, 3, 3, 1: rows ending at different steps get no carry) and the plain layout; the
    input bias shared by every row or one per row (the decoder's constant input term)."""
    torch.manual_seed(1)
    double = {'dtype': torch.float64, 'requires_grad': True}
    rows, hidden = sum(batch_sizes), 3
    bias_rows = (batch_sizes[0],) if per_row else ()
    args = (
        torch.randn(2, rows, 4, **double),
        torch.randn(2, batch_sizes[0], hidden, **double),
        torch.randn(2, 3 * hidden, 4, **double),
        torch.randn(2, 3 * hidden, hidden, **double),
        torch.randn(2, *bias_rows, 3 * hidden, **double),
        torch.randn(2, 3 * hidden, **double),
    )
    assert torch.autograd.gradcheck(lambda *a: FusedGRU.apply(*a, batch_sizes), args)


def test_fused_gru_is_torchs_gru_cell_step_by_step():
    """Packed rows (3, 2, 1): each step updates the rows still running with nn.GRUCell's
    equations; the state a row ends with is the one its last step wrote."""
    torch.manual_seed(2)
    cell = nn.GRUCell(4, 3)
    x = torch.randn(6, 4)
    h0 = torch.randn(3, 3)
    params = [p.unsqueeze(0) for p in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)]
    out = FusedGRU.apply(x[None], h0[None], *params, (3, 2, 1))[0]
    h1 = cell(x[:3], h0)
    h2 = cell(x[3:5], h1[:2])
    h3 = cell(x[5:], h2[:1])
    torch.testing.assert_close(out, torch.cat([h1, h2, h3]), rtol=1e-5, atol=1e-6)


def test_packed_indices_by_value():
    """Rows of lengths 2, 3, 1 (L = 3): longest first at each step; the backward direction
    reads each row from its last real token; ``last`` is each row's final packed position."""
    batch_sizes, forward, backward, last = packed_indices(torch.tensor([2, 3, 1]), 3)
    assert batch_sizes == (3, 2, 1)
    # flat positions row * 3 + token; step 0: rows 1, 0, 2; step 1: rows 1, 0; step 2: row 1
    assert forward.tolist() == [3, 0, 6, 4, 1, 5]
    assert backward.tolist() == [5, 1, 6, 4, 0, 3]
    assert last.tolist() == [4, 5, 2]


@pytest.mark.parametrize('layers', [1, 2])
def test_unidirectional_gru_equals_nn_gru_with_a_state(layers):
    """With a per-row constant input (the decoder context): the same as nn.GRU over
    [x_t; constant] at every step, including the constant's gradient."""
    torch.manual_seed(3)
    rnn = nn.GRU(4 + 2, 5, layers, batch_first=True)
    x = torch.randn(3, 6, 4, requires_grad=True)
    constant = torch.randn(3, 2, requires_grad=True)
    state = torch.randn(layers, 3, 5, requires_grad=True)
    out, final = unidirectional_gru(rnn, x, state, constant=constant)
    ref_out, ref_final = rnn(torch.cat([x, constant[:, None].expand(-1, 6, -1)], -1), state)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(final, ref_final, rtol=1e-5, atol=1e-6)
    weights = torch.linspace(0.5, 2.0, 6 * 5).view(1, 6, 5)
    inputs = [x, constant, state, *rnn.parameters()]
    grads = torch.autograd.grad((out * weights).sum() + (final**3).sum(), inputs)
    ref = torch.autograd.grad((ref_out * weights).sum() + (ref_final**3).sum(), inputs)
    for got, want in zip(grads, ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('response_len', [2, 6])
def test_response_encoded_with_the_context_equals_the_separate_encodings(response_len):
    """One utterance-encoder call for the context utterances and the response (VHREDs): word
    states, mask, c and the response encoding equal encode + encode_response, whether the
    response is shorter or longer than the utterances (4 tokens), with their gradients."""
    torch.manual_seed(4)
    config = VHREDConfig(
        vocab_size=20, embedding_size=6, hidden_size=5, floor_size=2, latent_size=3,
        latent_prior='lgm', n_components=2, dropout=0.0,
    )  # fmt: skip
    net = HierarchicalEncoderDecoder(config)
    utts = torch.tensor([[[3, 4, 5, 6], [7, 8, 0, 0]], [[9, 0, 0, 0], [0, 0, 0, 0]]])
    floors = torch.tensor([[1, 0], [0, 0]])
    n_utts = torch.tensor([2, 1])
    ys = torch.tensor([[10, 11, 12, 13, 14, 2], [15, 2, 0, 0, 0, 0]])[:, :response_len]
    joint, response = net.encode_with_response(utts, floors, n_utts, ys)
    alone = net.encode(utts, floors, n_utts)
    alone_response = net.encode_response(ys)
    for got, want in zip([*joint, response], [*alone, alone_response]):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    loss = joint.words.pow(2).sum() + joint.context.sum() + (response * torch.arange(5.0)).sum()
    ref = alone.words.pow(2).sum() + alone.context.sum()
    ref = ref + (alone_response * torch.arange(5.0)).sum()
    params = list(net.utterance_encoder.parameters())
    for got, want in zip(torch.autograd.grad(loss, params), torch.autograd.grad(ref, params)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_runs_pytorchs_gru():
    """Under CPU bf16 autocast the fused fp32 loop steps aside (PyTorch's GRU runs, as
    nn.GRU would): same outputs as nn.GRU under the same autocast."""
    torch.manual_seed(5)
    rnn = nn.GRU(4, 5, batch_first=True)
    x = torch.randn(2, 3, 4)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out, final = unidirectional_gru(rnn, x)
        ref_out, ref_final = rnn(x)
    assert out.dtype == ref_out.dtype
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(final, ref_final)
