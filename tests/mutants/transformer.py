"""Mutants of the shared transformer block and the unified transformer (module and agent).

Converted from the PLATO-2 engineer's hand-made list, issue #18. Run: .venv/bin/python tests/mutants/run.py --system transformer
"""

T = 'parlai_ext/modules/transformer.py'
TL = 'parlai_ext/modules/transformer_layout.py'  # KVCache, Packing, StackedLinear (split from T)
U = 'parlai_ext/modules/unified_transformer.py'
UA = 'parlai_ext/agents/unified_transformer.py'

TR, UT = 'tests/test_transformer.py', 'tests/test_unified_transformer.py'
PK = 'tests/test_packing.py'  # the packed stack (#23): states/gradients equal the padded pass
FQ = 'tests/test_fused_qkv.py'  # self-attention's one qkv Linear, older model files (#23)
ED, MATH = 'tests/test_encoder_decoder.py', 'tests/test_plato2_math.py'
PA = 'tests/test_plato2_agents.py'  # the agent half of the old test_plato2_math (split 7330db9)
PL, OP = 'tests/test_plato2.py', 'tests/test_optim.py'
# the module-level tests of the speed-ups (#23): output-layer bans, padded_from_flat, KVCache
SPEEDUPS = [
    f'tests/test_speedups.py::{name}'
    for name in (
        'test_padded_from_flat_keeps_row_major_order_and_fill',
        'test_banned_linear_equals_in_place_bans_in_values_and_gradients',
        'test_banned_linear_under_bf16_autocast_and_in_fp16',
        'test_preallocated_cache_gives_the_cat_cache_outputs_in_place',
        'test_two_continuations_of_one_cache_do_not_overwrite_each_other',
        'test_preallocated_cache_is_off_under_autograd',
        'test_kv_cache_copies_keep_their_buffer',
    )
]
# the slow training tests are left out
FAST = [
    '-k',
    'not learns_to_rank and not cli_training and not from_scratch and not hf_encoder and not size_presets',
]
TESTS = {
    T: [TR, UT, ED, MATH, PA, PK, FQ, *SPEEDUPS, *FAST],
    TL: [TR, UT, ED, MATH, PA, PK, FQ, *SPEEDUPS, *FAST],
    U: [UT, MATH, PA, PL, PK, *FAST],
    UA: [UT, MATH, PA, OP, PL, *FAST],
}

MUTANTS = [
    # T: shared block
    (
        T,
        'keys, values = self.key_value(source).chunk(2, dim=-1)',
        'values, keys = self.key_value(source).chunk(2, dim=-1)',
    ),
    # occurrence 0: the plain cache (the preallocated KVCache path of #23 repeats the lines)
    (
        T,
        'keys = torch.cat([cache[0], keys], dim=2)',
        'keys = torch.cat([keys, cache[0]], dim=2)',
        0,
    ),
    (
        T,
        'values = torch.cat([cache[1], values], dim=2)',
        'values = torch.cat([values, cache[1]], dim=2)',
        0,
    ),
    # occurrence 0: the padded path; 1: the packed path (#23)
    (T, 'dropout_p=self.dropout if self.training else 0.0', 'dropout_p=self.dropout', 0),
    # the packed path (#23): its dropout, then the grouped attention (Packing.attention_groups)
    (T, 'dropout = self.dropout if self.training else 0.0', 'dropout = self.dropout'),
    (
        T,
        'attend(query, keys, values, attn_mask=group.mask, dropout_p=dropout)',
        'attend(query, keys, values, attn_mask=None, dropout_p=dropout)',
    ),
    (T, 'return torch.cat(parts).index_select(0, back)', 'return torch.cat(parts)'),
    (
        T,
        'key_value = packing.pad(projected[:, x.shape[-1] :])',
        'key_value = packing.pad(projected[:, : 2 * x.shape[-1]])',
    ),
    (T, 'if mask is not None and mask.dtype == torch.bool and packing.n_tokens:', 'if False:'),
    (
        TL,
        'group_mask = (picked & real[:, None, None, :] & real[:, None, :, None]) | eye',
        'group_mask = picked | eye',
    ),
    (
        TL,
        'picked = picked.gather(3, where[:, None, None, :].expand(-1, heads, length, -1))',
        'picked = picked[..., :length]',
    ),
    (
        TL,
        'cost = best[k - 1][i] + (j - i) * longest + overhead',
        'cost = best[k - 1][i] + longest + overhead',
    ),
    (
        TL,
        'order = sorted((row for row in range(batch) if counts[row]), key=counts.__getitem__)',
        'order = [row for row in range(batch) if counts[row]]',
    ),
    # T: fp32 attention kernel in CPU low-precision training (attend)
    (T, '        and torch.is_grad_enabled()\n', ''),
    (
        T,
        'query.float(), keys.float(), values.float(), attn_mask, dropout_p',
        'query, keys, values, attn_mask, dropout_p',
    ),
    (T, '            attn_mask=mask,\n', '            attn_mask=None,\n'),
    (
        T,
        'attended = attended.transpose(1, 2).reshape(batch, time, -1)',
        'attended = attended.reshape(batch, time, -1)',
    ),
    (
        T,
        'return self.fc_out(self.dropout(self.activation(self.fc_in(x))))',
        'return self.fc_out(self.activation(self.fc_in(x)))',
    ),
    (T, "{'gelu': F.gelu, 'relu': F.relu}", "{'gelu': F.relu, 'relu': F.relu}"),
    (
        T,
        # re-matched: the block passes the packing on (#23)
        'attended, new_cache = self.attention(self.norm_attention(x), mask, cache, packing=packing)',
        'attended, new_cache = self.attention(x, mask, cache, packing=packing)',
    ),
    (
        T,
        'x = x + self.dropout(self.ffn(self.norm_ffn(x)))',
        'x = self.norm_ffn(x + self.dropout(self.ffn(x)))',
    ),
    (
        T,
        'x = x + self.dropout(self.ffn(self.norm_ffn(x)))',
        'x = x + self.dropout(self.ffn(self.norm_attention(x)))',
    ),
    (T, 'x = x + self.dropout(attended)', 'x = self.dropout(x + attended)'),
    (
        T,
        'crossed, _ = self.cross_attention(self.norm_cross(x), memory_mask, memory=memory)',
        'crossed, _ = self.cross_attention(self.norm_cross(x), None, memory=memory)',
    ),
    (
        T,
        'crossed, _ = self.cross_attention(self.norm_cross(x), memory_mask, memory=memory)',
        'crossed, _ = self.cross_attention(x, memory_mask, memory=memory)',
    ),
    (
        T,
        'self.ffn = FeedForward(dim, ffn_dim, activation, ffn_dropout)',
        'self.ffn = FeedForward(dim, ffn_dim, activation, dropout)',
    ),
    # re-matched: the stack pads the packed states after the final norm (#23)
    (
        T,
        '        x = self.final_norm(x)\n        return (x if packing',
        '        return (x if packing',
    ),
    (T, 'None if caches is None else caches[index]', 'None if caches is None else caches[0]'),
    (T, 'x = self.tokens(tokens) + self.positions(positions)', 'x = self.tokens(tokens)'),
    (
        T,
        '            x = x + self.types(types)\n        return self.dropout(x)',
        '            x = x - self.types(types)\n        return self.dropout(x)',
    ),
    (
        T,
        # re-matched: the check reads max_position when the caller knows it (#23)
        'if largest >= self.n_positions:',
        'if largest > self.n_positions:',
    ),
    (T, 'nn.init.zeros_(sub.bias)', 'pass'),
    (
        T,
        'is_context_key = torch.arange(total, device=device) < context_len',
        'is_context_key = torch.arange(total, device=device) <= context_len',
    ),
    # the two prefix-LM mask entries below replace equivalent ones that survived: `key_index <
    # query_index` (the diagonal comes back through `mask | eye`) and dropping
    # `query_index >= context_len` (a context query's causal keys are all context keys)
    (
        T,
        '(query_index >= context_len) & (key_index <= query_index)',
        '(query_index >= context_len) & (key_index <= query_index + 1)',
    ),
    (
        T,
        'structure = is_context_key[None, :] | (',
        'structure = is_context_key[:, None] | (',
    ),
    (
        T,
        '    mask = structure[None, :, :] & key_valid[:, None, :]',
        '    mask = structure[None, :, :].expand(batch, -1, -1)',
    ),
    (T, '    offset = key_len - query_len', '    offset = 0'),
    (T, 'return valid[:, None, None, :] | eye', 'return valid[:, None, None, :] | True'),
    (
        T,
        # re-matched: the encoder names the length (#23)
        'positions = torch.arange(length, device=ids.device).expand_as(ids)',
        'positions = torch.zeros_like(ids)',
    ),
    (
        T,
        # re-matched: the padded (evaluation) path of the encoder (#23)
        'return self.stack(x, bidirectional_mask(valid))[0]',
        'return self.stack(x, None)[0]',
    ),
    (
        T,
        # the packed training path of the encoder (#23)
        'x, bidirectional_mask(valid), valid=valid, input_dropout=self.embeddings.dropout',
        'x, None, valid=valid, input_dropout=self.embeddings.dropout',
    ),
    (
        T,
        'ffn_dropout=ffn_dropout,\n        )\n        init_weights(self.stack)',
        'ffn_dropout=dropout,\n        )\n        init_weights(self.stack)',
    ),
    # U: unified transformer
    (
        U,
        'context_len[:, None] + torch.arange(lr, device=device)[None, :]',
        'lc + torch.arange(lr, device=device)[None, :]',
    ),
    (
        U,
        '[torch.full_like(context, CONTEXT_TYPE), torch.full_like(response, RESPONSE_TYPE)]',
        '[torch.full_like(context, CONTEXT_TYPE), torch.full_like(response, CONTEXT_TYPE)]',
    ),
    (
        U,
        'prefix_valid = torch.ones(batch, n_prefix, dtype=torch.bool, device=device)',
        'prefix_valid = torch.zeros(batch, n_prefix, dtype=torch.bool, device=device)',
    ),
    (
        U,
        '        if bidirectional:\n            mask = bidirectional_mask',
        '        if not bidirectional:\n            mask = bidirectional_mask',
    ),
    (U, 'split = n_prefix + lc', 'split = lc'),
    (
        U,
        'return hidden[:, state.valid.shape[1] :], state',
        'return hidden[:, context.shape[1] :], state',
    ),
    (
        U,
        # re-matched: the prefix dropout is left to the caller when dropout=False (#23)
        'x = torch.cat([self.embeddings.dropout(prefix) if dropout else prefix, x], dim=1)',
        'x = torch.cat([prefix, x], dim=1)',
    ),
    (
        U,
        'token_part = torch.where(replaced[..., None], replacement, emb.tokens(tokens))',
        'token_part = torch.where(replaced[..., None], emb.tokens(tokens), replacement)',
    ),
    (U, '            x = token_part + emb.positions(positions)', '            x = token_part'),
    (
        U,
        'positions = context.length[:, None] + start + torch.arange(new, device=device)[None, :]',
        'positions = context.length[:, None] + torch.arange(new, device=device)[None, :]',
    ),
    (
        U,
        'context_part = context.valid[:, None, :].expand(batch, new, lc)',
        'context_part = torch.ones(batch, new, lc, dtype=torch.bool, device=device)',
    ),
    (
        U,
        # re-matched: decode() embeds through embed() with a known largest position
        'tokens, positions, torch.full_like(tokens, RESPONSE_TYPE), max_position=largest',
        'tokens, positions, torch.full_like(tokens, CONTEXT_TYPE), max_position=largest',
    ),
    (
        U,
        'return F.linear(hidden, self.embeddings.tokens.weight)',
        'return F.linear(hidden, self.embeddings.tokens.weight) * 2',
    ),
    (
        U,
        # re-matched: the context pass is packed (#23)
        '_, caches = self.stack(x, bidirectional_mask(valid_all), valid=packed)',
        '_, caches = self.stack(x, bidirectional_mask(torch.ones_like(valid_all)), valid=packed)',
    ),
    # UA: agents
    (
        UA,
        '            score[..., self.generation_banned] = neginf(score.dtype)',
        '            pass',
    ),
    (
        UA,
        # re-matched: START is banned through the output GEMM's bias (banned_bias, #23)
        'banned = (self.START_IDX, self.NULL_IDX) if self.ban_start else (self.NULL_IDX,)',
        'banned = (self.NULL_IDX,) if self.ban_start else (self.NULL_IDX,)',
    ),
    (UA, 'label = min(128, n_positions // label_share)', 'label = min(128, n_positions // 2)'),
    (UA, 'text = n_positions - label - 2', 'text = n_positions - label'),
    (UA, "ffn_dropout=opt.get('relu_dropout') or 0.0,", "ffn_dropout=opt['dropout'],"),
    (UA, 'tokens = tokens[:, -1:]  # ParlAI passes', 'tokens = tokens  # ParlAI passes'),
    (
        UA,
        # re-matched: the class gained hf_glue.HfCheckpointMixin and wraps its bases
        'class UnifiedTransformerAgent(\n    hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchGeneratorAgent\n):',
        'class UnifiedTransformerAgent(\n    hf_glue.HfCheckpointMixin, TorchGeneratorAgent\n):',
    ),
    # T: shared pre-norm block: attention, KV cache, masks, FFN, embeddings
    (T, 'return self.out(attended), new_cache', 'return attended, new_cache'),
    (
        T,
        # re-matched: Embeddings.forward may leave its dropout to the caller (#23)
        'return self.dropout(x) if dropout else x',
        'return x',
    ),
    (T, 'valid = ids != self.embeddings.tokens.padding_idx', 'valid = ids >= 0'),
    # U: unified transformer: types, positions, prefix, caches, tied output
    (
        U,
        'context_len = context_valid.sum(dim=1)',
        'context_len = torch.full_like(context_valid.sum(dim=1), lc)',
    ),
    (U, 'start = past_len - lc  # response', 'start = past_len  # response'),
    (
        U,
        # re-matched: encode_context names the length (and its max) before the state
        '        length = valid.sum(dim=1)\n',
        '        length = valid_all.sum(dim=1)\n',
    ),
    # UA: unified transformer agent: bans, truncation, FFN dropout, decay exemption
    (
        UA,
        'banned += [dictionary.tok2ind[t] for t in MASK_TOKENS if t in dictionary.tok2ind]',
        'banned += []',
    ),
    (
        UA,
        # re-matched: NULL is banned through the output GEMM's bias (banned_bias, #23)
        'banned = (self.START_IDX, self.NULL_IDX) if self.ban_start else (self.NULL_IDX,)',
        'banned = (self.START_IDX,) if self.ban_start else ()',
    ),
    # T: the packed stack (#23): Packing, the fused q/k/v projection, where packing applies
    (
        TL,
        'self.index = valid.reshape(-1).nonzero().squeeze(1)',
        'self.index = (~valid).reshape(-1).nonzero().squeeze(1)',
    ),
    (
        TL,
        'out = packed.new_zeros(batch * time, packed.shape[-1])',
        'out = packed.new_ones(batch * time, packed.shape[-1])',
    ),
    (
        T,
        'query, keys, values = (self._split_heads(part) for part in qkv.chunk(3, dim=-1))',
        'keys, query, values = (self._split_heads(part) for part in qkv.chunk(3, dim=-1))',
    ),
    # T / TL: self-attention's one qkv Linear and the load of older model files (#23; these
    # replace the mutants of the joined query/key_value storage, fuse_qkv / join_rows)
    (T, 'projected = self.qkv(x)  #', 'projected = self.qkv(x.detach())  #'),
    (
        T,
        'query, keys, values = (self._split_heads(part) for part in self.qkv(x).chunk(3, -1))',
        'query, values, keys = (self._split_heads(part) for part in self.qkv(x).chunk(3, -1))',
    ),
    (
        T,
        'query, keys, values = (self._split_heads(part) for part in self.qkv(x).chunk(3, -1))',
        'keys, query, values = (self._split_heads(part) for part in self.qkv(x).chunk(3, -1))',
    ),
    (
        T,
        'self.qkv = StackedLinear(dim, (dim, 2 * dim))',
        'self.qkv = StackedLinear(dim, (2 * dim, dim))',
    ),
    (
        T,
        "LEGACY_SELF_ATTENTION = ('query', 'key_value')",
        "LEGACY_SELF_ATTENTION = ('key_value', 'query')",
    ),
    (
        T,
        "            join_legacy_rows(state_dict, prefix, self.LEGACY_SELF_ATTENTION, 'qkv')\n",
        '            pass\n',
    ),
    (
        T,
        '        if not self.cross:\n            join_legacy_rows',
        '        if self.cross:\n            join_legacy_rows',
    ),
    (T, 'if (memory is None) == self.cross:', 'if False:'),
    (T, 'for weight in part_weights(sub):', 'for weight in (sub.weight,):'),
    (TL, 'return linear.weight.split(linear.parts)', 'return (linear.weight,)'),
    (
        TL,
        'bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0',
        'bound = 1 / math.sqrt(weight.shape[0]) if weight.shape[0] > 0 else 0',
    ),
    (TL, 'nn.init.kaiming_uniform_(weight, a=math.sqrt(5))', 'nn.init.kaiming_uniform_(weight)'),
    (
        TL,
        "state_dict[f'{prefix}{new}.{kind}'] = torch.cat([state_dict.pop(n) for n in names])",
        "state_dict[f'{prefix}{new}.{kind}'] = torch.cat([state_dict.pop(n) for n in names[::-1]])",
    ),
    (
        TL,
        "state_dict[f'{prefix}{new}.{kind}'] = torch.cat([state_dict.pop(n) for n in names])",
        "state_dict[f'{prefix}{new}.{kind}'] = torch.cat([state_dict[n] for n in names])",
    ),
    (
        TL,
        "if f'{prefix}{new}.{kind}' in state_dict or not all(n in state_dict for n in names):",
        'if not all(n in state_dict for n in names):',
    ),
    (
        TL,
        "if f'{prefix}{new}.{kind}' in state_dict or not all(n in state_dict for n in names):",
        "if f'{prefix}{new}.{kind}' in state_dict or not any(n in state_dict for n in names):",
    ),
    (
        TL,
        "    for kind in ('weight', 'bias'):\n        names",
        "    for kind in ('weight',):\n        names",
    ),
    (
        T,
        'if valid is not None and caches is None and memories is None:',
        'if valid is not None and memories is None:',
    ),
    (T, '        if input_dropout is not None:\n            x = input_dropout(x)\n', ''),
    (
        T,
        'return (x if packing is None else packing.pad(x)), new_caches',
        'return (x if packing is None else packing.pad(x).detach()), new_caches',
    ),
    (T, 'return self.dropout(x) if dropout else x', 'return self.dropout(x)'),
    # TransformerEncoder packs in training, and at evaluation when there is padding (#23)
    (
        T,
        'return int(valid.sum()) <= EVAL_PACKING_MAX_FILL * valid.numel()',
        'return int(valid.sum()) < EVAL_PACKING_MAX_FILL * valid.numel()',
    ),
    (T, 'EVAL_PACKING_MAX_FILL = 0.75', 'EVAL_PACKING_MAX_FILL = 1.0'),
    (
        T,
        'if not (self.packed and (self.training or _mostly_padding(valid))):',
        'if not (self.packed or (self.training or _mostly_padding(valid))):',
    ),
    (
        T,
        'if not (self.packed and (self.training or _mostly_padding(valid))):',
        'if not (self.packed and self.training):',
    ),
    (
        T,
        'if not (self.packed and (self.training or _mostly_padding(valid))):',
        'if not (self.packed and (self.training or not _mostly_padding(valid))):',
    ),
    (
        T,
        'return self.out(attended), KVCache.allocate(keys, values, self.cache_reserve)',
        'return self.out(attended), (keys, values)',
    ),
    # T: output-layer bans folded into the bias, padded_from_flat, preallocated caches (#23)
    (
        T,
        'total = ban if bias is None else bias + ban',
        'total = ban if bias is None else bias',
    ),
    (T, 'return logits.masked_fill(ban < 0, -NEAR_INF_FP16)', 'return logits'),
    (
        T,
        'padded = torch.full(mask.shape, fill, dtype=flat.dtype, device=flat.device)',
        'padded = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)',
    ),
    (TL, 'store.filled == length\n', 'store.filled >= length\n'),
    (
        T,
        'if self.cache_reserve > 0 and not torch.is_grad_enabled():\n                new_cache',
        'if self.cache_reserve > 0:\n                new_cache',
    ),
    # U: the packed unified stack (#23)
    (
        U,
        'valid = torch.cat([context_valid, response_valid], dim=1) if self.packed else None',
        'valid = torch.cat([response_valid, context_valid], dim=1) if self.packed else None',
    ),
    (U, 'x = emb.dropout(x) if dropout else x', 'x = emb.dropout(x)'),
    (U, '                       dropout=not self.packed)', '                       dropout=True)'),
    # UA: the bans reach the logits (#23)
    (
        UA,
        'return self.transformer.banned_logits(hidden, self.banned_bias)',
        'return self.transformer.logits(hidden)',
    ),
]
