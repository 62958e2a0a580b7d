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
