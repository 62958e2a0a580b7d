"""The shared transformer block: its math by value (attention, pre-norm block, dropouts, masks,
embeddings) and the initialisation that made from-scratch matching models learnable."""

import pytest
import torch
import torch.nn.functional as F

from parlai_ext.modules.transformer import (
    Embeddings,
    FeedForward,
    MultiHeadAttention,
    TransformerBlock,
    TransformerEncoder,
    TransformerStack,
    bidirectional_mask,
    causal_mask,
    init_weights,
    prefix_lm_mask,
)


def test_token_type_and_position_tables_start_on_one_scale():
    embeddings = Embeddings(vocab_size=500, dim=64, n_positions=128, n_types=2)
    scales = [t.weight.std().item() for t in (embeddings.tokens, embeddings.positions)]
    scales.append(embeddings.types.weight.std().item())  # only 2 x 64 values: loose bound
    assert all(abs(scale - 64**-0.5) < 0.4 * 64**-0.5 for scale in scales), scales


def _matching_batch(generator: torch.Generator, n: int = 32, vocab: int = 100):
    """[CLS] context (10 tokens) response (3 tokens): label 1 when the response's tokens are
    taken from the context, 0 when they are random."""
    context = torch.randint(4, vocab, (n, 10), generator=generator)
    picks = torch.randint(0, 10, (n, 3), generator=generator)
    positive = torch.gather(context, 1, picks)
    negative = torch.randint(4, vocab, (n, 3), generator=generator)
    cls = torch.ones(n, 1, dtype=torch.long)
    ids = torch.cat(
        [torch.cat([cls, context, positive], 1), torch.cat([cls, context, negative], 1)]
    )
    types = torch.cat([torch.zeros(2 * n, 11), torch.ones(2 * n, 3)], 1).long()
    labels = torch.cat([torch.ones(n), torch.zeros(n)]).long()
    return ids, types, labels


def test_from_scratch_cross_encoder_learns_to_match_response_to_context():
    """With the type table at N(0, 1) (30x the tokens) or N(0, 0.02) linear layers at this
    size, the [CLS] state ignored the tokens and this stayed at 50% accuracy."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    encoder = TransformerEncoder(100, dim=64, n_layers=2, n_heads=4, ffn_dim=256, dropout=0.0)
    head = torch.nn.Linear(64, 2)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()], lr=1e-3)
    for _ in range(STEPS):
        ids, types, labels = _matching_batch(generator)
        loss = F.cross_entropy(head(encoder(ids, types)[:, 0]), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    ids, types, labels = _matching_batch(torch.Generator().manual_seed(1), n=256)
    with torch.no_grad():
        accuracy = (head(encoder(ids, types)[:, 0]).argmax(-1) == labels).float().mean().item()
    assert accuracy > 0.65, accuracy


STEPS = 600


def test_hf_encoder_drops_the_unused_pooler_so_every_parameter_gets_a_gradient(tmp_path):
    """DDP stops on a parameter without gradient: BERT's pooler is never used by our encoders.

    Checkpoints saved with the pooler still load (its weights are ignored).
    """
    from transformers import BertConfig, BertModel

    from parlai_ext.modules.transformer import HfEncoder

    config = BertConfig(
        vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    BertModel(config).save_pretrained(tmp_path)
    with_pooler = {f'model.{k}': v for k, v in BertModel(config).state_dict().items()}
    assert any('pooler' in k for k in with_pooler)

    encoder = HfEncoder(str(tmp_path))
    assert not any('pooler' in name for name, _ in encoder.named_parameters())
    ids = torch.randint(1, 20, (2, 5))
    encoder(ids, None, torch.ones_like(ids, dtype=torch.bool)).sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())

    encoder.load_state_dict(with_pooler)  # strict: only the pooler keys are dropped
    assert torch.equal(
        encoder.model.embeddings.word_embeddings.weight,
        with_pooler['model.embeddings.word_embeddings.weight'],
    )


# --- the block's math, pinned by value (issue #18) ------------------------------------------------


def _randomise_norms(module: torch.nn.Module) -> None:
    """LayerNorms away from (1, 0), so that using the wrong one (or none) changes values."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.LayerNorm):
            torch.nn.init.normal_(sub.weight, 1.0, 0.5)
            torch.nn.init.normal_(sub.bias, 0.0, 0.5)
        if isinstance(sub, torch.nn.Linear) and sub.bias is not None:
            torch.nn.init.normal_(sub.bias, 0.0, 0.3)


def _reference_attention(mha, x, mask, source=None):
    """softmax(Q K^T / sqrt(d_head), masked) V, per head, from the raw weight matrices."""
    source = x if source is None else source
    batch, time, dim = x.shape
    heads, d = mha.n_heads, dim // mha.n_heads
    if mha.cross:  # query; key_value = keys then values
        w_q, b_q = mha.query.weight, mha.query.bias
        w_kv, b_kv = mha.key_value.weight, mha.key_value.bias
    else:  # one qkv: query rows, key rows, value rows
        w_q, b_q = mha.qkv.weight[:dim], mha.qkv.bias[:dim]
        w_kv, b_kv = mha.qkv.weight[dim:], mha.qkv.bias[dim:]
    q = F.linear(x, w_q, b_q)
    k = F.linear(source, w_kv[:dim], b_kv[:dim])  # keys: the first half of key_value
    v = F.linear(source, w_kv[dim:], b_kv[dim:])

    def split(t):
        return t.view(batch, t.shape[1], heads, d).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / d**0.5
    scores = scores.masked_fill(~mask, float('-inf'))
    attended = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(batch, time, dim)
    return F.linear(attended, mha.out.weight, mha.out.bias)


def test_attention_equals_scaled_dot_product_by_hand():
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 4).eval()
    _randomise_norms(mha)
    x = torch.randn(2, 5, 16)
    mask = torch.rand(2, 1, 5, 5) > 0.4
    mask |= torch.eye(5, dtype=torch.bool)  # every row sees something
    out, (keys, values) = mha(x, mask)
    assert torch.allclose(out, _reference_attention(mha, x, mask), atol=1e-5)
    assert keys.shape == values.shape == (2, 4, 5, 4)
    # the cache holds the keys/values; with a cache, new keys/values are appended after it
    out2, (keys2, _) = mha(x[:, 3:], mask[:, :, 3:], cache=(keys[:, :, :3], values[:, :, :3]))
    assert torch.allclose(keys2, keys, atol=1e-6)
    assert torch.allclose(out2, out[:, 3:], atol=1e-5)
    # cross-attention reads the given memory
    cross = MultiHeadAttention(16, 4, cross=True).eval()
    _randomise_norms(cross)
    memory_source = torch.randn(2, 3, 16)
    memory = cross.project_key_value(memory_source)
    full = torch.ones(2, 1, 5, 3, dtype=torch.bool)
    crossed, returned = cross(x, full, memory=memory)
    assert returned is memory
    assert torch.allclose(crossed, _reference_attention(cross, x, full, memory_source), atol=1e-5)
    # each kind refuses the other's call
    with pytest.raises(ValueError, match='cross-attention needs a memory'):
        cross(x, mask)
    with pytest.raises(ValueError, match='self-attention takes none'):
        mha(x, full, memory=memory)


def test_feed_forward_and_its_inner_dropout():
    torch.manual_seed(0)
    for activation, act in (('gelu', F.gelu), ('relu', F.relu)):
        ffn = FeedForward(8, 16, activation).eval()
        _randomise_norms(ffn)
        x = torch.randn(3, 8)
        hand = F.linear(act(F.linear(x, ffn.fc_in.weight, ffn.fc_in.bias)), ffn.fc_out.weight)
        assert torch.allclose(ffn(x), hand + ffn.fc_out.bias, atol=1e-6)
    # inner dropout 1: the activations vanish, only fc_out's bias is left (training mode)
    ffn = FeedForward(8, 16, dropout=1.0).train()
    _randomise_norms(ffn)
    assert torch.allclose(ffn(torch.randn(3, 8)), ffn.fc_out.bias.expand(3, 8))


def test_block_is_pre_norm_x_plus_f_of_layernorm_x():
    """x + Attn(LN1(x)), then h + FFN(LN2(h)); not LN(x + f(x)) (post-norm)."""
    torch.manual_seed(0)
    block = TransformerBlock(16, n_heads=4, ffn_dim=32).eval()
    _randomise_norms(block)
    x = torch.randn(2, 5, 16) * 3 + 1
    mask = causal_mask(5, 5, torch.device('cpu'))
    out, _ = block(x, mask)
    h = x + _reference_attention(block.attention, F.layer_norm(
        x, (16,), block.norm_attention.weight, block.norm_attention.bias), mask)  # fmt: skip
    ln2 = F.layer_norm(h, (16,), block.norm_ffn.weight, block.norm_ffn.bias, eps=1e-5)
    hand = h + block.ffn(ln2)
    assert torch.allclose(out, hand, atol=1e-5)


def test_decoder_block_cross_attends_between_self_attention_and_ffn():
    torch.manual_seed(0)
    block = TransformerBlock(16, n_heads=4, ffn_dim=32, cross_attention=True).eval()
    _randomise_norms(block)
    x, source = torch.randn(2, 4, 16), torch.randn(2, 3, 16)
    memory = block.cross_attention.project_key_value(source)
    memory_mask = torch.tensor([[True, True, False], [True, True, True]])[:, None, None, :]
    mask = causal_mask(4, 4, torch.device('cpu'))
    out, _ = block(x, mask, memory=memory, memory_mask=memory_mask)
    h = x + block.attention(block.norm_attention(x), mask)[0]
    h = h + _reference_attention(block.cross_attention, block.norm_cross(h),
                                 memory_mask.expand(2, 1, 4, 3), source)  # fmt: skip
    assert torch.allclose(out, h + block.ffn(block.norm_ffn(h)), atol=1e-5)


def test_block_dropouts_act_on_the_branches_only():
    """Residual dropout 1 zeroes both branches: the block is the identity. FFN dropout is its
    own option (default 0): with --dropout only, the FFN keeps its activations."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16)
    mask = causal_mask(4, 4, torch.device('cpu'))
    block = TransformerBlock(16, n_heads=4, ffn_dim=32, dropout=1.0).train()
    assert torch.equal(block(x, mask)[0], x)
    assert block.ffn.dropout.p == 0.0 and block.attention.dropout == 0.0
    block = TransformerBlock(16, 4, 32, ffn_dropout=1.0, attention_dropout=1.0).train()
    _randomise_norms(block)
    # attention weights all dropped: the attention branch is its output bias; FFN: fc_out bias
    h = x + block.attention.out.bias
    assert torch.allclose(block(x, mask)[0], h + block.ffn.fc_out.bias, atol=1e-6)
    # evaluation mode: no dropout anywhere (attention weights included)
    block.eval()
    attended = block.attention(x, mask)[0]
    assert torch.allclose(attended, _reference_attention(block.attention, x, mask), atol=1e-5)
    assert not torch.allclose(block(x, mask)[0], h + block.ffn.fc_out.bias, atol=1e-3)


def test_stack_runs_the_blocks_in_order_then_the_final_norm():
    torch.manual_seed(0)
    stack = TransformerStack(2, 16, n_heads=4, ffn_dim=32).eval()
    _randomise_norms(stack)
    x = torch.randn(2, 3, 16)
    mask = causal_mask(3, 3, torch.device('cpu'))
    out, caches = stack(x, mask)
    h = stack.layers[1](stack.layers[0](x, mask)[0], mask)[0]
    assert torch.allclose(out, stack.final_norm(h), atol=1e-6)
    assert len(caches) == 2 and caches[1][0].shape == (2, 4, 3, 4)


def test_embeddings_sum_token_type_position_and_check_range():
    torch.manual_seed(0)
    emb = Embeddings(10, 8, n_positions=6, n_types=2, padding_idx=0).eval()
    tokens = torch.tensor([[3, 4, 0]])
    positions = torch.tensor([[0, 1, 5]])
    types = torch.tensor([[0, 1, 1]])
    hand = emb.tokens.weight[tokens] + emb.positions.weight[positions] + emb.types.weight[types]
    assert torch.equal(emb(tokens, positions, types), hand)
    assert torch.equal(emb.tokens.weight[0], torch.zeros(8))  # the padding row
    no_types = Embeddings(10, 8, n_positions=6, n_types=0)
    assert no_types.types is None
    assert torch.equal(no_types(tokens, positions, types),
                       no_types.tokens(tokens) + no_types.positions(positions))  # fmt: skip
    with pytest.raises(ValueError, match='n-positions'):
        emb(tokens, torch.tensor([[0, 1, 6]]))


def test_init_weights_xavier_normal_with_zero_biases():
    torch.manual_seed(0)
    layer = torch.nn.Linear(400, 600)
    torch.nn.init.normal_(layer.bias)
    init_weights(layer)
    assert torch.equal(layer.bias, torch.zeros(600))
    assert layer.weight.std().item() == pytest.approx((2 / 1000) ** 0.5, rel=0.02)


def test_masks_with_variable_lengths_exact_values():
    context_valid = torch.tensor([[True, True, True], [True, False, False]])
    response_valid = torch.tensor([[True, True], [True, True]])
    mask = prefix_lm_mask(context_valid, response_valid)[:, 0].int()
    assert mask.shape == (2, 5, 5)
    assert mask[0].tolist() == [
        [1, 1, 1, 0, 0],  # context rows: all valid context, no response
        [1, 1, 1, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],  # response rows: context + causal response
        [1, 1, 1, 1, 1],
    ]
    assert mask[1].tolist() == [
        [1, 0, 0, 0, 0],  # one valid context token
        [1, 1, 0, 0, 0],  # padded rows see only what they must (themselves), no NaN
        [1, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],
        [1, 0, 0, 1, 1],
    ]
    bidir = bidirectional_mask(torch.tensor([[True, True, False]]))[0, 0].int()
    assert bidir.tolist() == [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert causal_mask(3, 3, torch.device('cpu')).int().tolist() == [
        [1, 0, 0], [1, 1, 0], [1, 1, 1]]  # fmt: skip


def test_encoder_reads_positions_from_zero_and_ignores_padding():
    torch.manual_seed(0)
    encoder = TransformerEncoder(30, dim=16, n_layers=1, n_heads=2, ffn_dim=32, dropout=0.0)
    encoder.eval()
    _randomise_norms(encoder)
    ids = torch.tensor([[5, 6, 7, 0]])
    types = torch.tensor([[0, 0, 1, 1]])
    out = encoder(ids, types)
    x = encoder.embeddings(ids, torch.arange(4)[None], types)
    hand, _ = encoder.stack(x, bidirectional_mask(ids != 0))
    assert torch.allclose(out[:, :3], hand[:, :3], atol=1e-6)
    assert torch.equal(out[:, 3], torch.zeros(1, 16))  # packed: zeros at the padding
    longer = encoder(torch.tensor([[5, 6, 7, 0, 0, 0]]), torch.tensor([[0, 0, 1, 1, 1, 1]]))
    assert torch.allclose(out[:, :3], longer[:, :3], atol=1e-5)


def test_embedding_dropout_acts_on_the_sum_in_training_only():
    emb = Embeddings(10, 8, n_positions=6, n_types=2, dropout=1.0)
    tokens, positions = torch.tensor([[3, 4]]), torch.tensor([[0, 1]])
    assert torch.equal(emb.train()(tokens, positions), torch.zeros(1, 2, 8))
    hand = emb.tokens(tokens) + emb.positions(positions)
    assert torch.equal(emb.eval()(tokens, positions), hand)


def test_attend_runs_the_fp32_kernel_in_cpu_bf16_training_only():
    """Under CPU bf16 autocast with gradients, attention runs in fp32 (the bf16 CPU backward
    is slower); without gradients (generation) it stays at bf16; outside autocast it is SDPA."""
    from parlai_ext.modules.transformer import attend

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8).bfloat16() for _ in range(3))
    mask = (torch.rand(2, 1, 5, 5) > 0.4) | torch.eye(5, dtype=torch.bool)
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    leaf = q.clone().requires_grad_()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        trained = attend(leaf, k, v, attn_mask=mask)
        with torch.no_grad():
            generated = attend(q, k, v, attn_mask=mask)
    assert trained.dtype == torch.float32 and generated.dtype == torch.bfloat16
    torch.testing.assert_close(trained, reference)
    assert not torch.equal(generated.float(), reference)  # the bf16 kernel rounds differently
    trained.pow(2).sum().backward()
    assert leaf.grad.dtype == torch.bfloat16 and leaf.grad.abs().sum() > 0
    plain = attend(q.float(), k.float(), v.float(), attn_mask=mask)
    assert torch.equal(plain, reference)
