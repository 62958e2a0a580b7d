"""The packed (real tokens only) transformer stack equals the padded one at every valid position.

``modules.transformer.Packing`` runs the projections, feed-forward, norms and residuals of a
stack on the valid positions only; attention still runs on the padded layout. These tests
pin that the states at valid positions, every parameter's gradient and the context keys /
values the decoder reuses are those of the padded computation, that padding positions come
back as zeros, and that the packed path is used only where it applies.
"""

from __future__ import annotations

import copy

import pytest
import torch

from parlai_ext.modules import transformer_layout
from parlai_ext.modules.transformer import (
    Packing,
    TransformerStack,
    bidirectional_mask,
    prefix_lm_mask,
)
from parlai_ext.modules.transformer_layout import split_sorted_lengths
from parlai_ext.modules.unified_transformer import UnifiedTransformer


def _close_gradients(got: torch.Tensor, want: torch.Tensor, name: str) -> None:
    """Equal up to float32 rounding at the gradient's own scale: grouped attention
    (``Packing.attention_groups``) sums over fewer (masked) keys than the padded pass, so
    every element may differ by a few ulps of the largest one."""
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * scale, msg=name)


def _batch(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    context = torch.randint(5, 50, (3, 9), generator=generator)
    context[0, 5:] = 0
    context[2, 2:] = 0
    response = torch.randint(5, 50, (3, 6), generator=generator)
    response[1, 3:] = 0
    response[2, 4:] = 0
    return context, response


def test_packing_round_trip_keeps_row_major_order_and_zero_padding():
    valid = torch.tensor([[True, False, True], [False, True, True]])
    packing = Packing(valid)
    padded = torch.arange(18.0).view(2, 3, 3)
    packed = packing.pack(padded)
    assert torch.equal(packed, padded[valid])  # the order of tensor[valid]
    back = packing.pad(packed)
    assert torch.equal(back[valid], padded[valid])
    assert torch.equal(back[~valid], torch.zeros(2, 3))
    assert packing.n_tokens == 4


def _unified(**kw):
    torch.manual_seed(0)
    model = UnifiedTransformer(
        50, dim=32, n_layers=2, n_heads=4, ffn_dim=64, n_positions=64, dropout=0.0, **kw
    )
    model.train()
    return model


def _packed_and_padded(**kw):
    """The same tiny model twice: packed (real tokens only) and padded (``packed = False``)."""
    packed = _unified(**kw)
    padded = copy.deepcopy(packed)
    padded.packed = False
    return packed, padded


@pytest.fixture(params=['one group', 'a group per length'])
def attention_groups(request, monkeypatch):
    """Grouped attention as configured (the tiny batches make one group) and with a group
    for every distinct row length (no overhead per group)."""
    if request.param != 'one group':
        monkeypatch.setattr(transformer_layout, 'GROUP_OVERHEAD', 0)
        monkeypatch.setattr(transformer_layout, 'MAX_ATTENTION_GROUPS', 8)
    return request.param


@pytest.mark.parametrize('lm_head', ['tied', 'knover'])
@pytest.mark.parametrize('bidirectional', [False, True])
def test_packed_unified_encode_equals_padded_states_gradients_and_caches(
    lm_head, bidirectional, attention_groups
):
    packed, padded = _packed_and_padded(lm_head=lm_head)
    context, response = _batch()
    prefix = torch.randn(3, 1, 32)  # PLATO-2's latent slot: always valid
    seen = []
    packed.stack.layers[1].ffn.fc_in.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    rows = {}
    for name, model in (('packed', packed), ('padded', padded)):
        hidden, state = model.encode(context, response, prefix, bidirectional=bidirectional)
        valid = torch.cat([state.valid, response != 0], dim=1)
        # a loss that weights every valid position differently
        weights = torch.linspace(0.5, 2.0, hidden.shape[1])[None, :, None]
        loss = (model.logits(hidden * weights)[valid].log_softmax(-1)[:, 7]).sum()
        loss.backward()
        rows[name] = (hidden, valid, state)
    hidden, valid, state = rows['packed']
    hidden_ref, _, state_ref = rows['padded']
    assert seen == [torch.Size([int(valid.sum()), 32])]  # the feed-forward saw real tokens only
    torch.testing.assert_close(hidden[valid], hidden_ref[valid], rtol=1e-5, atol=1e-6)
    assert torch.equal(hidden[~valid], torch.zeros_like(hidden[~valid]))
    for (name, p), (_, q) in zip(packed.named_parameters(), padded.named_parameters()):
        assert p.grad is not None, name
        _close_gradients(p.grad, q.grad, name)
    # the context keys/values a decoder continues from, at the valid context positions
    for (k, v), (k_ref, v_ref) in zip(state.caches, state_ref.caches):
        keep = state.valid[:, None, :, None].expand_as(k)
        torch.testing.assert_close(k[keep], k_ref[keep], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(v[keep], v_ref[keep], rtol=1e-5, atol=1e-6)


def test_packed_context_continues_to_the_same_decoding_logits():
    """A response decoded from a packed encode's context state equals the padded one's."""
    packed, padded = _packed_and_padded()
    packed.eval()
    padded.eval()
    context, response = _batch(1)
    with torch.no_grad():
        out = []
        for model in (packed, padded):
            _, state = model.encode(context, response[:, :2])
            hidden, _ = model.decode(response[:, :3], state)
            out.append(hidden)
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_packed_context_pass_equals_the_padded_one():
    """``encode_context`` (generation's context pass, packed: attention over real tokens only)
    gives the decoder the same keys/values as the padded pass, whose mask must hide the
    context's padding."""
    packed, padded = _packed_and_padded()
    packed.eval()
    padded.eval()
    context, response = _batch(1)
    with torch.no_grad():
        hidden = []
        for model in (packed, padded):
            state = model.encode_context(context)
            hidden.append(model.decode(response[:, :3], state)[0])
    torch.testing.assert_close(hidden[0], hidden[1], rtol=1e-5, atol=1e-6)


def test_stack_packs_only_self_attention_without_caches():
    torch.manual_seed(0)
    stack = TransformerStack(1, 16, n_heads=2, ffn_dim=32)
    seen = []
    stack.layers[0].ffn.fc_in.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    mask = bidirectional_mask(valid)
    out_packed, caches = stack(x, mask, valid=valid)
    out_padded, _ = stack(x, mask)
    assert seen == [torch.Size([8, 16]), torch.Size([2, 5, 16])]  # 8 real tokens, then all
    torch.testing.assert_close(out_packed[valid], out_padded[valid], rtol=1e-5, atol=1e-6)
    # an additive float mask (not grouped: one padded attention) gives the same states
    additive = torch.zeros(mask.shape).masked_fill(~mask, float('-inf'))
    out_float, _ = stack(x, additive, valid=valid)
    torch.testing.assert_close(out_float[valid], out_padded[valid], rtol=1e-5, atol=1e-6)
    # with caches (decoding) the padded path runs whatever ``valid`` says
    seen.clear()
    stack(x[:, :1], None, caches=caches, valid=valid[:, :1])
    assert seen == [torch.Size([2, 1, 16])]


def test_packed_block_refuses_cross_attention():
    torch.manual_seed(0)
    stack = TransformerStack(1, 16, n_heads=2, ffn_dim=32, cross_attention=True)
    x = torch.randn(2, 3, 16)
    packing = Packing(torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match='self-attention only'):
        stack.layers[0](packing.pack(x), None, packing=packing)


class _Recorder(torch.nn.Module):
    """Stands in for a dropout: records the shapes it is applied to, scales by 2."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return 2 * x


def test_packed_embedding_dropout_runs_once_on_the_real_tokens():
    """The input dropout acts once per token, prefix included, after packing (not on the
    padding); its effect on the states equals the padded path's."""
    packed, padded = _packed_and_padded()
    context, response = _batch()
    prefix = torch.randn(3, 1, 32)
    for model in (packed, padded):
        model.embeddings.dropout = _Recorder()
    hidden, state = packed.encode(context, response, prefix)
    hidden_ref, _ = padded.encode(context, response, prefix)
    valid = torch.cat([state.valid, response != 0], dim=1)
    assert packed.embeddings.dropout.shapes == [(int(valid.sum()), 32)]
    assert padded.embeddings.dropout.shapes == [(3, 15, 32), (3, 1, 32)]  # tokens, prefix
    torch.testing.assert_close(hidden[valid], hidden_ref[valid], rtol=1e-5, atol=1e-6)


def test_packed_encoder_and_encoder_decoder_equal_padded_states_and_gradients():
    """The shared bidirectional encoder (CORAL / PPG critics, P2Bot's sentence encoders) and
    the encoder of ``EncoderDecoder`` (CORAL / PPG generators): valid states, decoder
    outputs and every gradient as with the padded computation; zeros at padding."""
    from parlai_ext.modules.encoder_decoder import EncoderDecoder
    from parlai_ext.modules.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(50, dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.0)
    seq2seq = EncoderDecoder(50, 32, 2, 2, 4, 64, n_positions=64, dropout=0.0)
    context, response = _batch()
    seen = []
    for stack in (encoder.stack, seq2seq.encoder):
        stack.layers[0].ffn.fc_in.register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    for model, run in (
        (encoder, lambda m: m(context)),
        (seq2seq, lambda m: m(context, response)[0]),
    ):
        reference = copy.deepcopy(model)
        reference.packed = False
        model.train()
        reference.train()
        # the embedding dropout (a x2 stand-in) acts once per token in both paths
        model.embeddings.dropout = _Recorder()
        reference.embeddings.dropout = _Recorder()
        out, out_ref = run(model), run(reference)
        valid = (context if out.shape[1] == context.shape[1] else response) != 0
        if model is encoder:
            assert torch.equal(out[~valid], torch.zeros_like(out[~valid]))
        weights = torch.linspace(0.5, 2.0, out.shape[1])[None, :, None]
        (out * weights)[valid].sum().backward()
        (out_ref * weights)[valid].sum().backward()
        torch.testing.assert_close(out[valid], out_ref[valid], rtol=1e-5, atol=1e-6)
        n_real = int((context != 0).sum())
        assert seen[0] == torch.Size([n_real, 32])  # the packed run: real source tokens only
        seen.clear()
        for (name, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
            if q.grad is None:
                assert p.grad is None or not p.grad.any(), name
                continue
            _close_gradients(p.grad, q.grad, name)


def test_packed_encoder_at_evaluation_equals_the_padded_pass():
    """Evaluation and scoring (no gradients) pack too when at most 75 % of the batch is real
    tokens: the states at real tokens are the padded pass's, zeros at padding, and the
    token-wise work sees the real tokens only; a batch with less padding (or none) takes the
    padded pass (packing would cost more than it saves)."""
    from parlai_ext.modules.transformer import TransformerEncoder

    torch.manual_seed(0)
    encoder = TransformerEncoder(50, dim=32, n_layers=2, n_heads=4, ffn_dim=64, dropout=0.1)
    encoder.eval()
    reference = copy.deepcopy(encoder)
    reference.packed = False
    seen = []
    encoder.stack.layers[0].ffn.fc_in.register_forward_hook(
        lambda m, i, o: seen.append(tuple(i[0].shape))
    )
    context, _ = _batch()
    valid = context != 0
    assert int(valid.sum()) == 16 and valid.numel() == 27  # 59 % real tokens
    with torch.no_grad():
        out, out_ref = encoder(context), reference(context)
    assert seen == [(int(valid.sum()), 32)]  # packed: the real tokens only
    torch.testing.assert_close(out[valid], out_ref[valid], rtol=1e-5, atol=1e-6)
    assert torch.equal(out[~valid], torch.zeros_like(out[~valid]))
    assert out_ref[~valid].abs().sum() > 0  # the padded pass has states there
    seen.clear()
    full = context[1:2]  # the row without padding
    assert bool((full != 0).all())
    with torch.no_grad():
        assert torch.equal(encoder(full), reference(full))
    assert seen == [(1, 9, 32)]  # the padded layout: nothing to drop
    seen.clear()
    # 3 padding positions in 12 (75 % real): packed; 2 in 12 (83 % real): padded
    for pads, expected in ((3, [(9, 32)]), (2, [(2, 6, 32)])):
        ids = torch.arange(5, 17).view(2, 6)
        ids[1, 6 - pads :] = 0
        with torch.no_grad():
            encoder(ids)
        assert seen == expected, pads
        seen.clear()


def test_packed_attention_dropout_only_in_training():
    """Attention dropout follows ``training`` in the packed path as in the padded one."""
    torch.manual_seed(0)
    stack = TransformerStack(1, 16, n_heads=2, ffn_dim=32, attention_dropout=0.9).eval()
    x = torch.randn(2, 5, 16)
    valid = torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    mask = bidirectional_mask(valid)
    packed, _ = stack(x, mask, valid=valid)
    padded, _ = stack(x, mask)
    torch.testing.assert_close(packed[valid], padded[valid], rtol=1e-5, atol=1e-6)
    stack.train()
    torch.manual_seed(1)
    dropped, _ = stack(x, mask, valid=valid)
    assert not torch.allclose(dropped[valid], padded[valid], atol=1e-3)


def test_packed_masked_lm_embedding_dropout_runs_once():
    """The masked-LM path (``replaced`` tokens, Eq. 8) leaves its dropout to the packed stack
    too: once per real token."""
    packed = _unified()
    context, response = _batch()
    packed.embeddings.dropout = _Recorder()
    replaced = torch.zeros(3, context.shape[1] + response.shape[1], dtype=torch.bool)
    replaced[:, 1] = True
    _, state = packed.encode(context, response, replaced=replaced, replacement=torch.zeros(32))
    n_real = int(state.valid.sum() + (response != 0).sum())
    assert packed.embeddings.dropout.shapes == [(n_real, 32)]


def test_packed_context_pass_fills_preallocated_caches():
    """With ``reserve_cache`` (reorder-free decoding) the packed context pass returns
    ``KVCache`` buffers, so the first decoding step appends in place (no copy)."""
    from parlai_ext.modules.transformer import KVCache

    model = _unified().eval()
    model.stack.reserve_cache(4)
    context, _ = _batch()
    with torch.no_grad():
        state = model.encode_context(context)
    assert all(isinstance(cache, KVCache) for cache in state.caches)
    assert state.caches[0].store.capacity == context.shape[1] + 4


def test_split_sorted_lengths_minimises_padded_attention_work():
    # a group per length when groups cost nothing, two clusters when each costs 20 units,
    # one group when they are dear
    assert split_sorted_lengths([2, 2, 3, 10, 10], 4, 0.0) == [0, 2, 3, 5]
    assert split_sorted_lengths([2, 2, 3, 10, 10], 4, 20.0) == [0, 3, 5]
    assert split_sorted_lengths([2, 2, 3, 10, 10], 4, 1000.0) == [0, 5]
    assert split_sorted_lengths([2, 2, 3, 10, 10], 1, 0.0) == [0, 5]
    assert split_sorted_lengths([1, 2, 3], 3, 0.0) == [0, 1, 2, 3]
    assert split_sorted_lengths([], 4, 0.0) == [0]
    # the dynamic program's cost equals the best of every split into at most 3 groups
    lengths = [1, 3, 4, 4, 7, 9, 12]

    def cost(points):
        return sum(
            (hi - lo) * lengths[hi - 1] ** 2 + 5.0 for lo, hi in zip(points[:-1], points[1:])
        )

    from itertools import combinations

    best = min(
        cost([0, *inner, len(lengths)])
        for k in range(3)
        for inner in combinations(range(1, len(lengths)), k)
    )
    assert cost(split_sorted_lengths(lengths, 3, 5.0)) == best


def test_attention_groups_cover_each_real_token_once_with_the_gathered_mask(monkeypatch):
    monkeypatch.setattr(transformer_layout, 'GROUP_OVERHEAD', 0)
    context_valid = torch.tensor(
        [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool
    )
    response_valid = torch.tensor([[1, 1], [1, 0], [1, 1], [0, 0]], dtype=torch.bool)
    valid = torch.cat([context_valid, response_valid], dim=1)
    mask = prefix_lm_mask(context_valid, response_valid)
    packing = Packing(valid)
    groups, back = packing.attention_groups(mask)
    assert packing.attention_groups(mask)[0] is groups  # built once per mask
    # rows by real length (2, 5, 6; the empty row has none), one group each
    assert [(g.rows, g.length) for g in groups] == [(1, 2), (1, 5), (1, 6)]
    sources = torch.cat([g.source for g in groups])
    assert sorted(sources.tolist()) == list(range(packing.n_tokens))
    packed = torch.arange(float(packing.n_tokens))[:, None]
    assert torch.equal(packed[sources][back], packed)  # back to packed order
    positions = packing.index % valid.shape[1]
    for group in groups:
        length = group.length
        where = torch.zeros(group.rows * length, dtype=torch.long)
        where[group.target] = positions[group.source]
        row = int(packing.index[group.source[0]]) // valid.shape[1]
        where = where.view(group.rows, length)[0]
        # each real token's row and column of the mask, in compacted order
        torch.testing.assert_close(group.mask[0, 0], mask[row, 0][where][:, where])
    # row 0 (3 context + 2 response tokens): the first response token sees the context and
    # itself, not the next response token; context tokens never see the response
    first = groups[1].mask[0, 0]
    assert first[3].tolist() == [True, True, True, True, False]
    assert first[0].tolist() == [True, True, True, False, False]


def test_attention_group_padding_slots_see_only_themselves(monkeypatch):
    monkeypatch.setattr(transformer_layout, 'GROUP_OVERHEAD', 10**6)  # one group
    valid = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.bool)
    groups, _ = Packing(valid).attention_groups(bidirectional_mask(valid))
    (group,) = groups
    assert (group.rows, group.length) == (2, 3)
    # rows by length: slot 0 is batch row 1, one real token (its slots 1 and 2 are padding)
    assert group.mask[0, 0].tolist() == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
    ]
    assert group.mask[1, 0].all()


def test_packed_attention_runs_on_real_tokens_grouped_by_length(monkeypatch):
    """The packed stack attends over each row's real tokens (the context's padding in the
    middle of ``[context; response]`` dropped), not over the padded layout."""
    from parlai_ext.modules import transformer

    seen = []

    def recording_attend(query, keys, values, **kw):
        seen.append(tuple(keys.shape))
        return attend(query, keys, values, **kw)

    attend = transformer.attend
    monkeypatch.setattr(transformer, 'attend', recording_attend)
    model = _unified()
    context, response = _batch()
    model.encode(context, response)
    padded_time = context.shape[1] + response.shape[1]
    longest = int(((context != 0).sum(1) + (response != 0).sum(1)).max())
    assert len(seen) == 2  # one group per layer (tiny rows: one group pays)
    assert all(shape[2] == longest < padded_time for shape in seen)
