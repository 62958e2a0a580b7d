"""Mutants of the shared Hugging Face piece (modules/hf.py, hf_source.py, hf_lora.py,
agents/hf.py, agents/hf_dict.py, agents/hf_backbone.py).

Converted from the HF engineer's hand-made lists (exact duplicates dropped), issue #18. Run: .venv/bin/python tests/mutants/run.py --system hf
"""

M = 'parlai_ext/modules/hf.py'
S = 'parlai_ext/modules/hf_source.py'  # finding weights, the GGUF cache
L = 'parlai_ext/modules/hf_lora.py'  # LoRA, adapter-only checkpoints
A = 'parlai_ext/agents/hf.py'  # the generator glue
D = 'parlai_ext/agents/hf_dict.py'  # the Hugging Face dictionary
B = 'parlai_ext/agents/hf_backbone.py'  # options, model folders, building, checkpoints

TESTS = ['tests/test_hf.py', 'tests/test_hf_agents.py']

MUTANTS = [
    # M: HF piece: prefix-LM mask, positions, caches, LoRA, frozen keys
    (
        M,
        'in_prefix = key_index[None, None, :] < prefix[:, None, None]',
        'in_prefix = key_index[None, None, :] <= prefix[:, None, None]',
    ),
    (
        M,
        'causal = key_index[None, :] <= query_index[:, None]',
        'causal = key_index[None, :] < query_index[:, None]',
    ),
    (
        M,
        'allowed = (in_prefix | causal[None]) & valid[:, None, :]',
        'allowed = in_prefix | causal[None]',
    ),
    (M, 'allowed = allowed | (key_index[None, :] == query_index[:, None])[None]\n', '\n'),
    (
        M,
        'positions = valid.long().cumsum(dim=1) - 1 + offset_t',
        'positions = valid.long().cumsum(dim=1) + offset_t',
    ),
    (
        M,
        '    return torch.where(allowed, zero, torch.finfo(dtype).min)',
        '    return torch.where(allowed, torch.finfo(dtype).min, zero)',
    ),
    (
        M,
        '            inputs[old:] = inputs[:old].mean(dim=0)',
        '            inputs[old:] = inputs[:old].sum(dim=0)',
    ),
    (
        M,
        # re-matched: the prefix length moved into _lengths(valid, prefix_length)
        '        if prefix_length is None:\n            return valid.sum(dim=1)',
        '        if prefix_length is None:\n            return valid.sum(dim=1) - 1',
    ),
    (
        M,
        '            cache = copy_cache(state.cache)  # the prefix cache stays reusable',
        '            cache = state.cache',
    ),
    (
        M,
        '        return hidden[:, : prefix_embeds.shape[1]], hidden[:, prefix_embeds.shape[1] :]',
        '        return hidden[:, : prefix_embeds.shape[1]], hidden[:, prefix_embeds.shape[1] - 1 : -1]',
    ),
    (M, '            hidden = hidden[:, -new:]', '            hidden = hidden[:, -new - 1 : -1]'),
    (
        L,
        '            if not param.requires_grad:\n                keys.add(lead + name)',
        "            if not param.requires_grad and 'embed' not in name:\n                keys.add(lead + name)",
    ),
    (
        L,
        '            if merge:\n                module.merge()',
        '            if False:\n                module.merge()',
    ),
    (
        M,
        '    out[slots] = vectors.to(embeds.dtype)',
        '    out[slots] = vectors.to(embeds.dtype).detach()',
    ),
    (
        M,
        "                    return bool(flags & {'avx512_bf16', 'amx_bf16'})",
        "                    return bool(flags & {'avx512_bf16'})",
    ),
    (
        S,
        '    if os.path.isfile(os.path.join(target, GGUF_META)):\n        return target',
        '    if False:\n        return target',
    ),
    (
        S,
        "    key = f'{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}'",
        "    key = f'{os.path.realpath(path)}:{stat.st_size}'",
    ),
    (M, '        model.pooler = None\n    return model', '    return model'),
    (L, '    really_missing = [k for k in missing if k not in frozen]', '    really_missing = []'),
    # A/B: HF agents: dictionary specials, adapter loading, bf16, option aliases
    (
        D,
        "            pad = tok.pad_token if tok.pad_token not in (None, end, start) else '__null__'",
        "            pad = tok.pad_token if tok.pad_token not in (None,) else '__null__'",
    ),
    (
        D,
        "            start = tok.bos_token if tok.bos_token not in (None, end) else '__start__'",
        "            start = tok.bos_token if tok.bos_token is not None else '__start__'",
    ),
    (D, '        self.unk_token = tok.unk_token or end', '        self.unk_token = end'),
    (
        D,
        '        return list(range(self.base_vocab_size or len(self), len(self)))',
        '        return list(range(self.base_vocab_size or len(self), len(self) - 1))',
    ),
    (B, '    if fresh or adapter_only:', '    if fresh:'),
    (
        B,
        "                if self.opt.get('lora_merge'):",
        "                if not self.opt.get('lora_merge'):",
    ),
    # re-matched: bf16_enabled lost one indentation level; the aliases became a one-line dict
    (B, '    return hf.cpu_supports_bf16()', '    return True'),
    (B, "{'hf_encoder_path': 'hf_model_dir'}", "{'hf_encoder': 'hf_model_dir'}"),
    (B, '            if short and short != name:', '            if short and short == name:'),
    (B, '        model.config.pad_token_id = pad', '        pass'),
]
