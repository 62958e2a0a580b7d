"""The HRED family's GRUs over padded rows equal the packed-sequence GRUs they replaced
(``modules/vhred.py``: ``padded_bidirectional_gru``, ``ContextEncoder``): outputs (zeros at
padding), final states and every gradient, one and two layers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from parlai_ext.modules.vhred import ContextEncoder, padded_bidirectional_gru


def _packed_reference(rnn, x, lengths):
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    outputs, final = rnn(packed)
    outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=x.shape[1])
    return outputs, final


@pytest.mark.parametrize('layers', [1, 2])
def test_padded_bidirectional_gru_equals_the_packed_one(layers):
    torch.manual_seed(0)
    rnn = nn.GRU(6, 5, layers, batch_first=True, bidirectional=True)
    x = torch.randn(4, 7, 6, requires_grad=True)
    lengths = torch.tensor([7, 3, 1, 5])
    out, final = padded_bidirectional_gru(rnn, x, lengths)
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
