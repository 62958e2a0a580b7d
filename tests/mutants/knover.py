"""Mutants of the Knover checkpoint reader (parlai_ext/knover.py).

Converted from the Knover reader engineer's hand-made list (first occurrence where the text repeats), issue #18. Run: .venv/bin/python tests/mutants/run.py --system knover
"""

K = 'parlai_ext/knover.py'

TESTS = ['tests/test_knover.py']

MUTANTS = [
    # K: Knover checkpoint reader: name map, transposes, bf16, protobuf dims
    (
        K,
        "'latent_embedding': ('latent_embedding', True)",
        "'latent_embedding': ('latent_embedding', False)",
    ),
    (K, 'for t in (key, value)]', 'for t in (value, key)]'),
    (
        K,
        "ours['mask_embedding'] = ours['embeddings.tokens.weight'][config.mask_id].copy()",
        "ours['mask_embedding'] = ours['embeddings.tokens.weight'][1].copy()",
    ),
    (
        K,
        "'recognition.weight': ('recognition_fc.w_0', True)",
        "'recognition.weight': ('recognition_fc.w_0', False)",
    ),
    (
        K,
        "'bow_transform.0.weight': ('bow_trans_fc.w_0', True)",
        "'bow_transform.0.weight': ('bow_trans_fc.w_0', False)",
    ),
    (K, "'pooler.weight': ('pooled_fc.w_0', True)", "'pooler.weight': ('pooled_fc.w_0', False)"),
    (
        K,
        "'lm_transform.0.weight': ('mask_lm_trans_fc.w_0', True)",
        "'lm_transform.0.weight': ('mask_lm_trans_fc.w_0', False)",
    ),
    (
        K,
        "ours + 'norm_attention.weight': (theirs + 'pre_att_layer_norm_scale', False)",
        "ours + 'norm_attention.weight': (theirs + 'pre_ffn_layer_norm_scale', False)",
    ),
    (K, 'PAD_LOGIT = -1e4', 'PAD_LOGIT = 0.0'),
    (K, "(array.astype('<u4') << 16)", "(array.astype('<u4') << 8)"),
    (
        K,
        'dims.append(dim - (1 << 64) if dim >= 1 << 63 else dim)\n        elif field == 2 and wire == 2',
        'dims.insert(0, dim)\n        elif field == 2 and wire == 2',
    ),
    (
        K,
        'return {prefix + k: v for k, v in ours.items()}, config',
        "return {prefix + k: v for k, v in ours.items() if 'final_norm' not in k}, config",
    ),
    (K, '    for _ in range(levels):', '    for _ in range(0):'),
]
