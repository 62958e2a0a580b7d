"""The query and key/value weights read as one matrix without a per-call copy (issue #23).

``MultiHeadAttention`` keeps its ``query`` and ``key_value`` parameters (same names, same state
dict), but places them end to end in one storage, so the packed path's single QKV GEMM reads
them through ``join_rows`` (a view whose backward splits the gradient) instead of a
``torch.cat`` per call. These tests pin that the layout holds after ``.to()``, copies, loads
and optimizer steps, that gradients and training equal the concatenating path, and that model
files in the old layout still load.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from parlai_ext.modules.transformer import MultiHeadAttention, join_rows, lie_end_to_end
from parlai_ext.modules.unified_transformer import UnifiedTransformer


def _fused(mha: MultiHeadAttention) -> bool:
    return lie_end_to_end(mha.query.weight, mha.key_value.weight) and lie_end_to_end(
        mha.query.bias, mha.key_value.bias
    )


def _unfuse(model: torch.nn.Module) -> None:
    """Give every query/key_value parameter its own storage (the old layout: join_rows then
    concatenates)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, MultiHeadAttention):
                for linear in (module.query, module.key_value):
                    for param in (linear.weight, linear.bias):
                        param.data = param.data.clone()


def test_query_and_key_value_join_without_a_copy():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    assert _fused(mha)
    weight = join_rows(mha.query.weight, mha.key_value.weight)
    assert weight.data_ptr() == mha.query.weight.data_ptr()  # a view, no copy
    assert torch.equal(weight, torch.cat([mha.query.weight, mha.key_value.weight]))
    bias = join_rows(mha.query.bias, mha.key_value.bias)
    assert bias.data_ptr() == mha.query.bias.data_ptr()
    assert torch.equal(bias, torch.cat([mha.query.bias, mha.key_value.bias]))
    # the parameters and their state-dict names are those of the two projections
    assert sorted(mha.state_dict()) == [
        'key_value.bias', 'key_value.weight', 'out.bias', 'out.weight', 'query.bias',
        'query.weight',
    ]  # fmt: skip
    # tensors that do not lie end to end are concatenated (a copy, same values)
    _unfuse(mha)
    assert not _fused(mha)
    joined = join_rows(mha.query.weight, mha.key_value.weight)
    assert joined.data_ptr() != mha.query.weight.data_ptr()
    assert torch.equal(joined, torch.cat([mha.query.weight, mha.key_value.weight]))


def test_lie_end_to_end_needs_adjacent_rows_in_order_of_one_dtype():
    base = torch.arange(16.0).view(8, 2)
    assert lie_end_to_end(base[2:4], base[4:7])
    # a view at a non-zero offset joins to the right rows
    assert torch.equal(join_rows(base[2:4], base[4:7]), base[2:7])
    assert not lie_end_to_end(base[2:4], base[5:7])  # a gap
    assert not lie_end_to_end(base[4:7], base[2:4])  # the wrong order
    assert not lie_end_to_end(base[:2], base[2:4].clone())  # another storage
    assert not lie_end_to_end(base[:2], base.view(16)[4:6])  # another trailing shape
    doubles = torch.arange(16.0, dtype=torch.float64).view(8, 2)
    assert not lie_end_to_end(base[:2], doubles[2:4].float())
    assert torch.equal(join_rows(base[2:4], base[5:7]), torch.cat([base[2:4], base[5:7]]))


def test_join_rows_gradient_splits_like_cat():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    reference = copy.deepcopy(mha)
    _unfuse(reference)
    x = torch.randn(5, 8)
    scale = torch.linspace(0.5, 2.0, 24)[:, None]  # every output row weighted differently
    for module in (mha, reference):
        weight = join_rows(module.query.weight, module.key_value.weight)
        bias = join_rows(module.query.bias, module.key_value.bias)
        (torch.nn.functional.linear(x, weight, bias).T * scale).pow(2).sum().backward()
    for name in ('query', 'key_value'):
        for kind in ('weight', 'bias'):
            got = getattr(getattr(mha, name), kind).grad
            want = getattr(getattr(reference, name), kind).grad
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6, msg=f'{name}.{kind}')


def test_layout_survives_conversion_copies_and_loads(tmp_path):
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    values = {k: v.clone() for k, v in mha.state_dict().items()}
    mha.double()  # _apply: new storages, fused again
    assert mha.query.weight.dtype == torch.float64 and _fused(mha)
    mha.float()
    assert _fused(copy.deepcopy(mha))  # __setstate__
    buffer = io.BytesIO()
    torch.save(mha, buffer)  # a whole-module pickle (the load hook is a plain function)
    buffer.seek(0)
    assert _fused(torch.load(buffer, weights_only=False))
    # a state dict of separately stored tensors (the old layout), copied in or assigned
    fresh = MultiHeadAttention(8, 2)
    fresh.load_state_dict(values)
    assert _fused(fresh) and torch.equal(fresh.key_value.weight, values['key_value.weight'])
    fresh.load_state_dict({k: v.clone() for k, v in values.items()}, assign=True)
    assert _fused(fresh) and torch.equal(fresh.query.bias, values['query.bias'])


def _tiny_unified() -> UnifiedTransformer:
    torch.manual_seed(0)
    model = UnifiedTransformer(
        40, dim=16, n_layers=2, n_heads=2, ffn_dim=32, n_positions=32, dropout=0.0
    )
    model.train()
    return model


def _batch():
    generator = torch.Generator().manual_seed(1)
    context = torch.randint(4, 40, (3, 7), generator=generator)
    context[1, 4:] = 0
    response = torch.randint(4, 40, (3, 5), generator=generator)
    response[2, 2:] = 0
    return context, response


def _train(model: UnifiedTransformer, steps: int) -> list[float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    context, response = _batch()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        hidden, _ = model(context, response)
        logits = model.logits(hidden[response != 0])
        loss = torch.nn.functional.cross_entropy(logits, response[response != 0])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_packed_training_with_the_joined_view_equals_the_concatenating_path():
    fused = _tiny_unified()
    concatenating = copy.deepcopy(fused)
    _unfuse(concatenating)
    attention = fused.stack.layers[0].attention
    pointer = attention.query.weight.data_ptr()
    losses = _train(fused, 3)
    assert losses == pytest.approx(_train(concatenating, 3), rel=1e-5, abs=1e-6)
    assert losses[-1] < losses[0]  # the optimizer's in-place steps reach the joined view
    # still the same storage: the optimizer updated the joined weights in place
    assert attention.query.weight.data_ptr() == pointer and _fused(attention)
    for (name, p), (_, q) in zip(fused.named_parameters(), concatenating.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_model_file_in_the_old_layout_loads_and_gives_the_same_outputs(tmp_path):
    old = _tiny_unified()
    _unfuse(old)  # the layout of model files written before the joined weights
    path = tmp_path / 'model.pt'
    torch.save(old.state_dict(), path)
    new = UnifiedTransformer(
        40, dim=16, n_layers=2, n_heads=2, ffn_dim=32, n_positions=32, dropout=0.0
    )
    new.load_state_dict(torch.load(path))
    assert all(_fused(layer.attention) for layer in new.stack.layers)
    old.eval()
    new.eval()
    context, response = _batch()
    with torch.no_grad():
        torch.testing.assert_close(new(context, response)[0], old(context, response)[0])
    # and a file written with the joined layout loads into a model with separate storages
    torch.save(new.state_dict(), path)
    _unfuse(old)
    old.load_state_dict(torch.load(path))
    for (name, p), (_, q) in zip(old.named_parameters(), new.named_parameters()):
        assert torch.equal(p, q), name
