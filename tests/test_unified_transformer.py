"""The shared transformer and the unified (prefix-LM) transformer: masks, caches, equivalence."""

import pytest
import torch

from parlai_ext.modules.transformer import causal_mask, prefix_lm_mask
from parlai_ext.modules.unified_transformer import UnifiedTransformer


def test_prefix_lm_mask_on_hand_built_example():
    # context: 2 valid tokens + 1 pad; response: 2 valid tokens + 1 pad
    context_valid = torch.tensor([[True, True, False]])
    response_valid = torch.tensor([[True, True, False]])
    mask = prefix_lm_mask(context_valid, response_valid)[0, 0].int()
    expected = torch.tensor(
        [
            # c0 c1 c2 r0 r1 r2   (c2 and r2 are padding)
            [1, 1, 0, 0, 0, 0],  # c0: both valid context tokens, no response
            [1, 1, 0, 0, 0, 0],  # c1
            [1, 1, 1, 0, 0, 0],  # c2 (pad row): context + itself, so no NaN
            [1, 1, 0, 1, 0, 0],  # r0: context + itself
            [1, 1, 0, 1, 1, 0],  # r1: context + r0, r1
            [1, 1, 0, 1, 1, 1],  # r2 (pad row)
        ]
    )
    assert torch.equal(mask, expected)


def test_causal_mask_with_past_keys():
    mask = causal_mask(2, 4, torch.device('cpu')).int()
    assert torch.equal(mask, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]))


@pytest.fixture
def model():
    torch.manual_seed(0)
    return UnifiedTransformer(
        vocab_size=30, dim=32, n_layers=2, n_heads=4, ffn_dim=64, n_positions=64, dropout=0.0
    ).eval()


def _batch():
    # right-padded contexts of lengths 5 and 3; responses start with token 1 (start)
    context = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    response = torch.tensor([[1, 13, 14, 15], [1, 16, 17, 0]])
    return context, response


def test_one_pass_equals_context_pass_then_decoding(model):
    context, response = _batch()
    with torch.no_grad():
        one_pass, state = model(context, response)
        context_state = model.encode_context(context)
        split, _ = model.decode(response, context_state)
    valid = response != 0
    assert torch.allclose(one_pass[valid], split[valid], atol=1e-5)
    for (k1, v1), (k2, v2) in zip(state.caches, context_state.caches):
        assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)


def test_incremental_decoding_equals_full_pass(model):
    context, response = _batch()
    with torch.no_grad():
        full, _ = model(context, response)
        state = model.encode_context(context)
        caches = None
        steps = []
        for t in range(response.shape[1]):
            hidden, caches = model.decode(response[:, t : t + 1], state, caches)
            steps.append(hidden)
    incremental = torch.cat(steps, dim=1)
    valid = response != 0
    assert torch.allclose(full[valid], incremental[valid], atol=1e-5)


def test_context_never_sees_the_response(model):
    context, response = _batch()
    other_response = response.clone()
    other_response[:, 1:] = torch.where(response[:, 1:] != 0, 20, 0)
    with torch.no_grad():
        _, state_a = model(context, response)
        _, state_b = model(context, other_response)
    for (ka, va), (kb, vb) in zip(state_a.caches, state_b.caches):
        assert torch.equal(ka, kb) and torch.equal(va, vb)


def test_response_depends_only_on_earlier_response_tokens(model):
    context, response = _batch()
    changed = response.clone()
    changed[0, 3] = 21  # change the last response token of the first example
    with torch.no_grad():
        a, _ = model(context, response)
        b, _ = model(context, changed)
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-6)
    assert not torch.allclose(a[0, 3], b[0, 3])


def test_padding_in_context_changes_nothing(model):
    context, response = _batch()
    padded = torch.cat([context, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, _ = model(context, response)
        b, _ = model(padded, response)
    valid = response != 0
    assert torch.allclose(a[valid], b[valid], atol=1e-5)


def test_too_long_input_gives_a_clear_error(model):
    context = torch.ones(1, 70, dtype=torch.long)
    with pytest.raises(ValueError, match='n-positions'):
        model(context, torch.ones(1, 2, dtype=torch.long))


# --- inputs by value: positions, types, prefix slots, [MASK] replacement, tied output ------------
def _spy_embed(model):
    calls = []
    original = model.embed

    def spy(tokens, positions, types, *args, **kwargs):
        calls.append((tokens, positions, types))
        return original(tokens, positions, types, *args, **kwargs)

    model.embed = spy
    return calls


def test_positions_continue_after_the_valid_context_and_types_mark_the_response(model):
    context, response = _batch()
    calls = _spy_embed(model)
    with torch.no_grad():
        model(context, response)
    tokens, positions, types = calls[0]
    assert torch.equal(tokens, torch.cat([context, response], 1))
    assert positions.tolist() == [
        [0, 1, 2, 3, 4, 5, 6, 7, 8],  # 5 context tokens, the response from 5
        [0, 1, 2, 3, 4, 3, 4, 5, 6],  # 3 valid context tokens: the response starts at 3
    ]
    assert types.tolist() == [[0] * 5 + [1] * 4] * 2


def test_decoding_positions_and_types_continue_the_context(model):
    context, response = _batch()
    seen = []
    original = model.embeddings.forward
    model.embeddings.forward = lambda t, p, ty=None, **kw: (
        seen.append((p, ty)) or original(t, p, ty, **kw)
    )
    with torch.no_grad():
        state = model.encode_context(context)
        _, caches = model.decode(response[:, :2], state)
        model.decode(response[:, 2:3], state, caches)
    assert seen[0][0].tolist() == [[0, 1, 2, 3, 4]] * 2 and seen[0][1].tolist() == [[0] * 5] * 2
    assert seen[1][0].tolist() == [[5, 6], [3, 4]] and seen[1][1].tolist() == [[1, 1]] * 2
    assert seen[2][0].tolist() == [[7], [5]] and seen[2][1].tolist() == [[1], [1]]


def test_prefix_slots_carry_no_position_or_type_and_mask_replaces_token_embedding(model):
    tokens = torch.tensor([[5, 6, 7]])
    positions = torch.tensor([[0, 1, 2]])
    types = torch.tensor([[0, 0, 1]])
    prefix = torch.randn(1, 2, 32)
    emb = model.embeddings
    plain = emb.tokens(tokens) + emb.positions(positions) + emb.types(types)
    with torch.no_grad():
        x = model.embed(tokens, positions, types, prefix)
        assert torch.equal(x[:, :2], prefix) and torch.allclose(x[:, 2:], plain)
        replacement = torch.randn(32)
        replaced = torch.tensor([[False, True, False]])
        y = model.embed(tokens, positions, types, None, replaced, replacement)
    expected = plain.clone()
    expected[0, 1] = replacement + emb.positions.weight[1] + emb.types.weight[0]
    assert torch.allclose(y, expected, atol=1e-6)
    with pytest.raises(ValueError, match='n-positions'):
        model.embed(tokens, positions + 62, types, None, replaced, replacement)


def test_output_layer_is_tied_to_the_token_embeddings(model):
    hidden = torch.randn(2, 3, 32)
    assert torch.allclose(model.logits(hidden), hidden @ model.embeddings.tokens.weight.T)


def test_prefix_lm_pass_equals_its_mask_applied_by_hand(model):
    """encode(): [context; response] through the stack with prefix_lm_mask over valid tokens;
    bidirectional=True uses the full (padding-masked) mask instead."""
    context, response = _batch()
    from parlai_ext.modules.transformer import bidirectional_mask

    with torch.no_grad():
        tokens = torch.cat([context, response], 1)
        positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 3, 4, 5, 6]])
        types = torch.tensor([[0] * 5 + [1] * 4] * 2)
        x = model.embed(tokens, positions, types)
        causal, _ = model.stack(x, prefix_lm_mask(context != 0, response != 0))
        bidir, _ = model.stack(x, bidirectional_mask(tokens != 0))
        hidden, _ = model.encode(context, response)
        hidden_bidir, _ = model.encode(context, response, bidirectional=True)
    valid = tokens != 0
    assert torch.allclose(hidden[valid], causal[valid], atol=1e-5)
    assert torch.allclose(hidden_bidir[valid], bidir[valid], atol=1e-5)
    assert not torch.allclose(hidden[valid], hidden_bidir[valid], atol=1e-3)


def test_prefix_states_keys_values_and_dropout(model):
    """With a prefix, forward returns the response states after [prefix; context]; the context
    state's caches cover prefix + context, as encode_context's; the prefix gets dropout."""
    context, response = _batch()
    prefix = torch.randn(2, 2, 32)
    with torch.no_grad():
        hidden, state = model.encode(context, response, prefix)
        response_hidden, _ = model(context, response, prefix)
        alone = model.encode_context(context, prefix)
    assert torch.equal(response_hidden, hidden[:, 7:])
    assert state.valid.shape == (2, 7) and state.valid[:, :2].all()
    for (k1, v1), (k2, v2) in zip(state.caches, alone.caches):
        assert k1.shape == k2.shape and torch.allclose(k1, k2, atol=1e-5)
        assert torch.allclose(v1, v2, atol=1e-5)
    dropped = UnifiedTransformer(30, dim=32, n_layers=1, n_heads=4, ffn_dim=64, dropout=1.0)
    x = dropped.train().embed(context, torch.zeros_like(context), torch.zeros_like(context),
                              prefix)  # fmt: skip
    assert torch.equal(x, torch.zeros_like(x))


def test_default_truncation_fits_the_positions():
    from parlai.core.opt import Opt

    from parlai_ext.agents.unified_transformer import default_truncation

    def limits(**given):
        opt = default_truncation(Opt({'n_positions': 512, **given}))
        return opt['text_truncate'], opt['label_truncate']

    assert limits() == (382, 128)  # label: min(128, n/4); text: the rest - 2 specials
    assert limits(n_positions=64) == (46, 16)
    assert limits(text_truncate=100) == (100, 128)
    assert limits(truncate=50) == (50, 50)
    with pytest.raises(ValueError, match='exceed'):
        limits(text_truncate=400)


def test_generator_output_never_proposes_start_or_padding(model):
    from parlai.core.dict import DictionaryAgent
    from parlai.core.opt import Opt

    from parlai_ext.agents.unified_transformer import UnifiedTransformerGeneratorModel

    opt = Opt({'embedding_size': 32, 'n_layers': 1, 'n_heads': 4, 'ffn_size': 64,
               'n_positions': 64, 'dropout': 0.0, 'attention_dropout': 0.0,
               'activation': 'gelu'})  # fmt: skip
    dictionary = DictionaryAgent(Opt({'dict_file': None}))
    wrapper = UnifiedTransformerGeneratorModel(opt, dictionary)
    logits = wrapper.output(torch.randn(1, 2, 32))
    hand = torch.randn(1, 2, 32)
    assert (logits[..., wrapper.START_IDX] < -1e10).all()
    assert (logits[..., wrapper.NULL_IDX] < -1e10).all()
    raw = wrapper.transformer.logits(hand)
    assert torch.equal(wrapper.output(hand)[..., 4:], raw[..., 4:])
    assert wrapper.transformer.stack.layers[0].ffn.dropout.p == 0.0  # no relu_dropout in opt
