"""Self-attention's one ``qkv`` projection (issue #23) and the model files written before it.

Self-attention holds one ``qkv`` Linear (query rows, then key rows, then value rows: one GEMM);
cross-attention keeps ``query`` and ``key_value``. Model files written up to commit 0936f2a hold
self-attention as ``query.*`` + ``key_value.*``; ``MultiHeadAttention._load_from_state_dict``
stacks them into ``qkv.*``. These tests pin the seeded initialisation (the same weights as the
two separate layers), the old-layout load (identical outputs), the outputs of the code before
the change, and the ``query`` / ``key_value`` row views kept for callers of the old names.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from parlai_ext.modules.encoder_decoder import EncoderDecoder
from parlai_ext.modules.transformer import MultiHeadAttention, init_weights
from parlai_ext.modules.transformer_layout import join_legacy_rows
from parlai_ext.modules.unified_transformer import UnifiedTransformer


def _tiny_unified(seed: int = 0) -> UnifiedTransformer:
    torch.manual_seed(seed)
    return UnifiedTransformer(
        40, dim=16, n_layers=2, n_heads=2, ffn_dim=32, n_positions=32, dropout=0.0
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    context = torch.randint(4, 40, (3, 7), generator=generator)
    context[1, 4:] = 0
    response = torch.randint(4, 40, (3, 5), generator=generator)
    response[2, 2:] = 0
    return context, response


def _old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as the code before ``qkv`` saved it: every self-attention ``qkv.*`` split
    into ``query.*`` (the first ``dim`` rows) and ``key_value.*`` (the other ``2 * dim``)."""
    old = {}
    for name, tensor in state.items():
        if '.attention.qkv.' in name:
            dim = tensor.shape[0] // 3
            old[name.replace('.qkv.', '.query.')] = tensor[:dim].clone()
            old[name.replace('.qkv.', '.key_value.')] = tensor[dim:].clone()
        else:
            old[name] = tensor.clone()
    return old


def test_self_attention_has_one_qkv_and_cross_attention_query_and_key_value():
    assert sorted(MultiHeadAttention(8, 2).state_dict()) == [
        'out.bias', 'out.weight', 'qkv.bias', 'qkv.weight',
    ]  # fmt: skip
    assert MultiHeadAttention(8, 2).qkv.weight.shape == (24, 8)
    assert sorted(MultiHeadAttention(8, 2, cross=True).state_dict()) == [
        'key_value.bias', 'key_value.weight', 'out.bias', 'out.weight', 'query.bias',
        'query.weight',
    ]  # fmt: skip


def test_seeded_weights_equal_the_separate_query_and_key_value_layers():
    """PyTorch's default initialisation and init_weights' Xavier-normal, part by part: a
    seeded model gets the weights the separate layers had (Xavier's scale depends on each
    part's output size: dim for the query, 2 * dim for keys and values)."""
    torch.manual_seed(3)
    query, key_value, out = nn.Linear(8, 8), nn.Linear(8, 16), nn.Linear(8, 8)
    torch.manual_seed(3)
    mha = MultiHeadAttention(8, 2)
    assert torch.equal(mha.qkv.weight, torch.cat([query.weight, key_value.weight]))
    assert torch.equal(mha.qkv.bias, torch.cat([query.bias, key_value.bias]))
    assert torch.equal(mha.out.weight, out.weight)
    torch.manual_seed(4)
    for layer in (query, key_value, out):
        nn.init.xavier_normal_(layer.weight)
    torch.manual_seed(4)
    init_weights(mha)
    assert torch.equal(mha.qkv.weight, torch.cat([query.weight, key_value.weight]))
    assert torch.equal(mha.qkv.bias, torch.zeros(24))
    assert torch.equal(mha.out.weight, out.weight)


def test_outputs_equal_the_code_before_qkv():
    """Literals from the code at commit 0936f2a (separate query / key_value layers), same seed
    and batch: initialisation and forward unchanged."""
    model = _tiny_unified().eval()
    with torch.no_grad():
        hidden = model(*_batch())[0]
    before = {
        (1, 2): [-0.451388538, -1.553028464, 0.146327361, 0.550416768, 1.533179998, 0.744234383],
        (0, 4): [0.346645325, 0.168900445, 1.091643810, 0.009124473, 1.385868788, 0.622640312],
    }
    for (row, position), values in before.items():
        torch.testing.assert_close(hidden[row, position, :6], torch.tensor(values))
    assert hidden.abs().sum().item() == pytest.approx(155.554993, rel=1e-6)


def test_model_file_in_the_old_layout_loads_and_gives_identical_outputs(tmp_path):
    new = _tiny_unified()
    path = tmp_path / 'model.pt'
    torch.save(_old_layout(new.state_dict()), path)
    loaded = _tiny_unified(seed=1)  # other weights until the load
    result = loaded.load_state_dict(torch.load(path))  # strict: every key has its place
    assert not result.missing_keys and not result.unexpected_keys
    for (name, p), (_, q) in zip(loaded.named_parameters(), new.named_parameters()):
        assert torch.equal(p, q), name
    context, response = _batch()
    for mode in ('eval', 'train'):  # the padded pass and the packed (training) one
        getattr(new, mode)(), getattr(loaded, mode)()
        assert torch.equal(loaded(context, response)[0], new(context, response)[0]), mode
    # assign=True takes the stacked tensor as the parameter: same values
    assigned = _tiny_unified(seed=2)
    assigned.load_state_dict(torch.load(path), assign=True)
    layer = assigned.stack.layers[1].attention
    assert torch.equal(layer.qkv.weight, new.stack.layers[1].attention.qkv.weight)


def test_encoder_decoder_old_layout_loads_its_cross_attention_unchanged():
    torch.manual_seed(0)
    new = EncoderDecoder(30, dim=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2,
                         ffn_dim=32, n_positions=16, dropout=0.0).eval()  # fmt: skip
    old = _old_layout(new.state_dict())
    assert 'decoder.layers.0.cross_attention.query.weight' in old  # untouched by the split
    torch.manual_seed(1)
    loaded = EncoderDecoder(30, dim=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2,
                            ffn_dim=32, n_positions=16, dropout=0.0).eval()  # fmt: skip
    loaded.load_state_dict(old)
    source = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    target = torch.tensor([[1, 12, 13], [1, 14, 0]])
    assert torch.equal(loaded(source, target)[0], new(source, target)[0])


def test_join_legacy_rows_stacks_in_order_and_skips_what_it_cannot_join():
    state = {'a.query.weight': torch.ones(2, 3), 'a.key_value.weight': torch.zeros(4, 3),
             'a.query.bias': torch.ones(2), 'a.key_value.bias': 2 * torch.ones(4)}  # fmt: skip
    join_legacy_rows(state, 'a.', ('query', 'key_value'), 'qkv')
    assert sorted(state) == ['a.qkv.bias', 'a.qkv.weight']
    assert state['a.qkv.weight'][:2].eq(1).all() and state['a.qkv.weight'][2:].eq(0).all()
    assert state['a.qkv.bias'].tolist() == [1, 1, 2, 2, 2, 2]
    # a missing part, or qkv already there: nothing changes
    partial = {'a.query.weight': torch.ones(2, 3)}
    join_legacy_rows(partial, 'a.', ('query', 'key_value'), 'qkv')
    assert sorted(partial) == ['a.query.weight']
    both = {'a.qkv.weight': torch.ones(6, 3), 'a.query.weight': torch.zeros(2, 3),
            'a.key_value.weight': torch.zeros(4, 3)}  # fmt: skip
    join_legacy_rows(both, 'a.', ('query', 'key_value'), 'qkv')
    assert both['a.qkv.weight'].eq(1).all() and 'a.query.weight' in both
    # a self-attention file missing key_value fails a strict load, naming qkv
    mha = MultiHeadAttention(8, 2)
    old = _old_layout({f'x.attention.{k}': v for k, v in mha.state_dict().items()})
    old = {k.removeprefix('x.attention.'): v for k, v in old.items() if 'key_value' not in k}
    with pytest.raises(RuntimeError, match='qkv.weight'):
        MultiHeadAttention(8, 2).load_state_dict(old)


def test_self_attention_has_only_qkv_and_copies_and_pickles():
    """Self-attention holds one ``qkv`` (no ``query`` / ``key_value`` layers beside it);
    copies and whole-module pickles give the same outputs and weights."""
    mha = MultiHeadAttention(8, 2)
    for old_name in MultiHeadAttention.LEGACY_SELF_ATTENTION:
        with pytest.raises(AttributeError):
            getattr(mha, old_name)
    x = torch.randn(2, 3, 8)
    mask = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    buffer = io.BytesIO()
    torch.save(mha, buffer)
    buffer.seek(0)
    for copied in (copy.deepcopy(mha), torch.load(buffer, weights_only=False)):
        assert torch.equal(copied(x, mask)[0], mha(x, mask)[0])
        assert torch.equal(copied.qkv.weight, mha.qkv.weight)
