"""PPG over pretrained Hugging Face backbones (issue #20): decoder-only generators from a tiny
GPT-2, a critic from a tiny BERT, the RL stage over them, and model files saved before."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from parlai.core.agents import create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.opt import Opt
from parlai.scripts.train_model import TrainLoop, setup_args
from test_hf import tiny_model
from test_ppg_agents import agent_from, sequence_log_prob, state_copy
from test_ppg_data import fbdialog_both, make_teacher, messages, write_both

from parlai_ext.agents import hf as glue
from parlai_ext.agents.ppg import PpgHfDictionaryAgent, generate_texts
from parlai_ext.modules import hf
from parlai_ext.modules.hf import HfEncoder
from parlai_ext.modules.ppg import (
    PARTNER_PREFIX,
    SELF_PREFIX,
    drg_source,
    ppg_source,
    sample_sequences,
)


def data_words() -> list[str]:
    text = fbdialog_both() + f' {SELF_PREFIX} {PARTNER_PREFIX} __SILENCE__'
    return sorted(set(text.split()))


def checkpoint(folder: Path, style: str) -> str:
    """A tiny GPT-2 (only ``<|endoftext|>``) or BERT checkpoint over the test data's words."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = {'gpt2': ['<|endoftext|>'], 'bert': ['[PAD]', '[UNK]', '[CLS]', '[SEP]']}[style]
    vocab = {t: i for i, t in enumerate(specials + data_words())}
    unk = specials[0] if style == 'gpt2' else '[UNK]'
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if style == 'gpt2':
        roles = dict(bos_token=unk, eos_token=unk, unk_token=unk)
    else:
        roles = dict(pad_token='[PAD]', unk_token=unk, cls_token='[CLS]', sep_token='[SEP]')
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **roles)
    tiny_model(style, len(tokenizer)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


COMMON = dict(
    batchsize=4, learningrate=1e-2, optimizer='adam', validation_every_n_steps=-1,
    bf16=False, text_truncate=40,
)  # fmt: skip


def train(folder: Path, data: Path, name: str, **kwargs) -> str:
    model_file = str(folder / name)
    kwargs = {**COMMON, **kwargs}
    kwargs.update(
        personachat_file=str(data), model_file=model_file, datapath=str(folder / 'parlai')
    )
    TrainLoop(setup_args().parse_kwargs(**kwargs)).train()
    return model_file


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp('ppg_hf')
    torch.manual_seed(0)  # the tiny checkpoints' random weights, whatever ran before
    random.seed(0)  # ParlAI's training order (Python's random is seeded anew in each process)
    data = write_both(folder)
    gpt2, bert = checkpoint(folder / 'gpt2', 'gpt2'), checkpoint(folder / 'bert', 'bert')
    ppg = train(folder, data, 'ppg', model='ppg_persona_generator', task='ppg_ext:persona',
                hf_model_dir=gpt2, label_truncate=16, max_train_steps=12, skip_generation=True)  # fmt: skip
    drg = train(folder, data, 'drg', model='ppg_response_generator', task='ppg_ext',
                hf_model_dir=gpt2, label_truncate=10, max_train_steps=12, skip_generation=True,
                partner_personas='generated', ppg_model_file=ppg)  # fmt: skip
    critic = train(folder, data, 'critic', model='ppg_critic', task='ppg_ext:critic',
                   hf_model_dir=bert, learningrate=1e-3, max_train_steps=4)  # fmt: skip
    return dict(folder=folder, data=data, gpt2=gpt2, bert=bert, ppg=ppg, drg=drg, critic=critic)


def observations(agent, data: Path, task: str, n: int = 4, datatype: str = 'train'):
    """The first ``n`` examples observed by ``agent``: with ``labels`` (``batch_act`` is a
    train step) or, for another datatype, ``eval_labels`` (an eval step)."""
    out = []
    for example in messages(make_teacher(task, data, datatype=datatype))[:n]:
        if datatype != 'train':  # as the teacher's act hands them out
            example = dict(example)
            example['eval_labels'] = example.pop('labels')
        agent.reset()
        out.append(agent.observe(Message(example)))
    agent.reset()
    return out


def loss_on(agent, obs) -> float:
    """Mean NLL of the label tokens (teacher forcing), padding masked."""
    agent.model.eval()
    batch = agent.batchify(obs)
    with torch.no_grad():
        scores, *_ = agent.model(batch.text_vec, ys=batch.label_vec)
    return float(torch.nn.functional.cross_entropy(
        scores.flatten(0, 1), batch.label_vec.flatten(), ignore_index=agent.NULL_IDX
    ))  # fmt: skip


@pytest.mark.parametrize('which,task', [('ppg', 'ppg_ext:persona'), ('drg', 'ppg_ext')])
def test_decoder_only_generators_learn_reload_identically_and_generate(trained, which, task):
    model_file = trained[which]
    overrides = {'datatype': 'valid', 'skip_generation': False}  # trained without generation
    agent = create_agent_from_model_file(model_file, overrides)
    assert isinstance(agent.model, glue.HfGeneratorModel)
    assert agent.opt['hf_architecture'] == 'decoder_only'
    # GPT-2's dictionary: its end token, and the added padding / start rows
    assert agent.dict.end_token == '<|endoftext|>'
    assert os.path.isdir(model_file + '.dict.hf')
    # the loss fell from the pretrained (random tiny) LM's
    base = agent_from('-m', agent.opt['model'], '-dt', 'valid', '--hf-model-dir', trained['gpt2'],
                      '--text-truncate', '40', '--label-truncate', '16', '--bf16', 'false',
                      '--personachat-file', str(trained['data']), '-t', task)  # fmt: skip
    obs = observations(agent, trained['data'], task)
    before = loss_on(base, observations(base, trained['data'], task))
    after = loss_on(agent, obs)
    assert after < before - 0.3, (before, after)
    # a second load gives identical teacher-forced scores and the same greedy replies
    again = create_agent_from_model_file(model_file, overrides)
    batch = agent.batchify(obs)
    with torch.no_grad():
        scores, *_ = agent.model(batch.text_vec, ys=batch.label_vec)
        scores_again, *_ = again.model(batch.text_vec, ys=batch.label_vec)
    assert torch.equal(scores, scores_again)
    # generation (an eval step: eval_labels) in each inference mode, identical after reload
    produced = []
    for inference in ('greedy', 'beam', 'topk', 'nucleus'):
        mode = dict(inference=inference, beam_size=2 if inference == 'beam' else 1, topk=3,
                    beam_min_length=2)  # fmt: skip
        replies = []
        for _ in range(2):
            model = create_agent_from_model_file(model_file, {**overrides, **mode})
            torch.manual_seed(0)
            acts = model.batch_act(observations(model, trained['data'], task, datatype='valid'))
            replies.append([r['text'] for r in acts])
        assert replies[0] == replies[1], inference
        # words of the data (a tiny 12-step LM may reply with tokens that decode to '')
        words = set(data_words())
        produced.extend(r for r in replies[0] if r.strip())
        assert all(set(r.split()) <= words for r in replies[0]), (inference, replies[0])
    assert produced  # some mode generated words


def test_sampling_over_a_decoder_only_model_matches_teacher_forced_log_probs(trained):
    agent = create_agent_from_model_file(trained['ppg'], {'datatype': 'valid'})
    model = agent.model.eval()
    source = torch.tensor([agent.dict.txt2vec('i keep bees'), agent.dict.txt2vec('hello my bees')])
    with torch.no_grad():
        sample, log_probs = sample_sequences(
            model, source, agent.START_IDX, agent.END_IDX, 6,
            banned=(agent.START_IDX, agent.NULL_IDX), with_log_probs=True,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        scores, *_ = model(source, ys=sample)
    forced = torch.log_softmax(scores, -1).gather(-1, sample[..., None]).squeeze(-1)
    mask = sample != agent.NULL_IDX
    assert torch.allclose(log_probs[mask], forced[mask], atol=1e-5)
    assert bool((log_probs[~mask] == 0).all())


def test_critic_from_a_bert_trains_and_reloads(trained):
    critic = create_agent_from_model_file(trained['critic'], {'datatype': 'valid'})
    assert isinstance(critic._module.encoder, HfEncoder)
    personas, responses = ['i keep bees .', 'i play the cello .'], ['my bees', 'red tractor']
    first = critic.positive_probability(personas, responses)
    again = create_agent_from_model_file(trained['critic'], {'datatype': 'valid'})
    assert torch.equal(first, again.positive_probability(personas, responses))
    # trained: the weights differ from the BERT it started from
    encoder = critic._module.encoder.model
    base = tiny_model('bert', encoder.config.vocab_size)
    moved = encoder.encoder.layer[0].attention.self.query.weight
    assert not torch.allclose(moved, base.encoder.layer[0].attention.self.query.weight)


@pytest.mark.parametrize('probability,direction', [(0.9, 1), (0.1, -1)])
def test_rl_over_decoder_only_generators_follows_the_reward(
    trained, tmp_path, probability, direction
):
    def rl(model_file):
        return agent_from(
            '-m', 'ppg_rl', '-t', 'ppg_ext', '--personachat-file', str(trained['data']),
            '-mf', str(model_file), '--init-model', trained['drg'],
            '--ppg-model-file', trained['ppg'], '--critic-model-file', trained['critic'],
            '-dt', 'train', '--learningrate', '1e-3', '--gradient-clip', '-1', '--bf16', 'false',
            '--rl-response-max-len', '6', '--rl-persona-max-len', '8',
        )  # fmt: skip

    agent = rl(tmp_path / 'rl')
    assert isinstance(agent.model, glue.HfGeneratorModel)
    assert isinstance(agent.model.ppg, glue.HfGeneratorModel)
    critic_before = state_copy(agent.critic.model)
    agent.critic.positive_probability = lambda personas, responses: torch.full(
        (len(responses),), probability
    )
    samples, original = [], agent._sample

    def recording(generator, sources, max_len):
        out = original(generator, sources, max_len)
        samples.append((out.source, out.sample, out.log_prob))
        return out

    agent._sample = recording
    obs = observations(agent, trained['data'], 'ppg_ext')
    torch.manual_seed(0)
    agent.batch_act(obs)
    (ppg_src, ppg_sample, ppg_lp), (drg_src, drg_sample, _) = samples
    fresh = rl(tmp_path / 'fresh')
    before_ppg = sequence_log_prob(fresh, fresh.model.ppg, ppg_src, ppg_sample)
    assert torch.allclose(before_ppg, ppg_lp, atol=1e-4)  # sampled = recomputed policy
    before_drg = sequence_log_prob(fresh, fresh.model, drg_src, drg_sample)
    after_ppg = sequence_log_prob(agent, agent.model.ppg, ppg_src, ppg_sample)
    after_drg = sequence_log_prob(agent, agent.model, drg_src, drg_sample)
    assert float((after_ppg - before_ppg).sum()) * direction > 0
    assert float((after_drg - before_drg).sum()) * direction > 0
    for key, value in agent.critic.model.state_dict().items():
        assert torch.equal(value, critic_before[key]), key


def test_old_encoder_decoder_model_files_keep_their_token_order(trained, tmp_path):
    """A GPT-2-warm-started generator saved before the shared piece (no ``hf_architecture``
    in its .opt, no ``.dict.hf``) loads as an encoder-decoder with ``__start__`` = V."""
    model_file = train(tmp_path, trained['data'], 'old', model='ppg_persona_generator',
                       task='ppg_ext:persona', hf_model_dir=trained['gpt2'], label_truncate=8,
                       hf_architecture='encoder_decoder', max_train_steps=2)  # fmt: skip
    new = create_agent_from_model_file(model_file, {'datatype': 'valid'})
    size = new.dict.base_vocab_size
    assert (new.NULL_IDX, new.START_IDX) == (size, size + 1)  # the shared order
    # make it an old file: its .opt without the key, its dictionary without the folder
    opt = Opt.load(model_file + '.opt')
    del opt['hf_architecture']
    opt.save(model_file + '.opt')
    shutil.rmtree(model_file + '.dict.hf')
    state = torch.load(model_file, map_location='cpu', weights_only=False)
    swapped = []
    for key, rows in state['model'].items():  # the old rows: start at V, null at V+1
        if rows.dim() and rows.shape[0] == size + 2:
            rows = rows.clone()
            rows[[size, size + 1]] = rows[[size + 1, size]]
            state['model'][key] = rows
            swapped.append(key)
    assert swapped
    # ParlAI's START buffer (the decoder's first input) held the old start id too
    assert int(state['model']['START']) == size + 1
    state['model']['START'] = torch.tensor([size])
    torch.save(state, model_file)
    old = create_agent_from_model_file(model_file, {'datatype': 'valid'})
    assert old.opt['hf_architecture'] == 'encoder_decoder'
    assert not isinstance(old.model, glue.HfGeneratorModel)
    assert (old.START_IDX, old.NULL_IDX) == (size, size + 1)  # the old order
    key = swapped[0]
    loaded = old.model.state_dict()[key]
    assert torch.equal(loaded[old.START_IDX], new.model.state_dict()[key][new.START_IDX])
    source = torch.tensor([new.dict.txt2vec('i keep bees')])
    new.model.eval(), old.model.eval()
    with torch.no_grad():
        a = new.model(source, ys=torch.tensor([new.dict.txt2vec('i drive')]))[0]
        b = old.model(source, ys=torch.tensor([old.dict.txt2vec('i drive')]))[0]
    keep = [i for i in range(a.shape[-1]) if i < size]  # the banned rows swapped places
    assert torch.allclose(a[..., keep], b[..., keep], atol=1e-5)
    # the banned rows: START and NULL are never produced, in either order
    for agent, scores in ((new, a), (old, b)):
        assert bool((scores[..., [agent.START_IDX, agent.NULL_IDX]] < -1e19).all())


def test_legacy_dictionary_order_only_without_the_saved_folder(trained, tmp_path):
    opt = Opt(hf_model_dir=trained['gpt2'], dict_file=str(tmp_path / 'm.dict'))
    shared_order = PpgHfDictionaryAgent(opt)
    v = shared_order.base_vocab_size
    assert (shared_order['__null__'], shared_order['__start__']) == (v, v + 1)
    (tmp_path / 'm.dict').write_text('x\t1\n')
    legacy = PpgHfDictionaryAgent(opt)
    assert (legacy['__start__'], legacy['__null__']) == (v, v + 1)
    assert legacy.base_vocab_size == v and len(legacy) == v + 2


def test_a_sampled_partner_persona_stays_on_its_line():
    text = drg_source(['hi'], ['i keep bees.'], 'i drive\na tractor.')
    lines = text.split('\n')
    assert lines[-1] == f'{PARTNER_PREFIX} i drive a tractor.'
    assert len(lines) == 3


def test_saved_meta_records_the_base(trained):
    with open(os.path.join(trained['drg'] + '.dict.hf', glue.SAVED_META)) as f:
        assert json.load(f)['special_tokens']['end'] == '<|endoftext|>'


def test_rl_takes_the_lora_adapters_of_its_drg(trained, tmp_path):
    """A LoRA DRG's model file holds only adapters: ``ppg_rl --init-model`` (given no
    ``--lora-rank``) builds the same adapters and loads the DRG's trained values into them
    (it used to build a plain model and fail on the adapter checkpoint)."""
    drg = train(tmp_path, trained['data'], 'drg_lora', model='ppg_response_generator',
                task='ppg_ext', hf_model_dir=trained['gpt2'], label_truncate=10,
                max_train_steps=2, skip_generation=True, lora_rank=2, lora_alpha=4,
                lora_dropout=0.2, lora_target_modules='c_attn,c_proj',
                partner_personas='generated', ppg_model_file=trained['ppg'])  # fmt: skip
    saved = torch.load(drg, map_location='cpu', weights_only=False)['model']
    lora_b = {k: v for k, v in saved.items() if 'lora_B' in k}
    assert lora_b and any(bool(v.abs().sum() > 0) for v in lora_b.values())  # trained
    agent = agent_from(
        '-m', 'ppg_rl', '-t', 'ppg_ext', '--personachat-file', str(trained['data']),
        '-mf', str(tmp_path / 'rl'), '--init-model', drg, '--ppg-model-file', trained['ppg'],
        '--critic-model-file', trained['critic'], '-dt', 'train', '--bf16', 'false',
    )  # fmt: skip
    assert agent.opt['lora_rank'] == 2 and agent.opt['lora_alpha'] == 4
    assert agent.opt['lora_dropout'] == 0.2 and agent.opt['lora_target_modules'] == 'c_attn,c_proj'
    assert any('c_proj.lora_B' in k for k in lora_b)  # beside peft's default (c_attn)
    state = agent.model.state_dict()
    for key, value in lora_b.items():
        assert torch.equal(state[key], value), key
    trainable = {n for n, p in agent.model.named_parameters() if p.requires_grad}
    adapters = ('lora_', 'token_adapter')  # GPT-2's added start row keeps its own adapter
    drg_trainable = {n for n in trainable if not n.startswith('ppg.')}
    assert drg_trainable and all(any(a in n for a in adapters) for n in drg_trainable)
    # M.drg holds the DRG's adapters only (it used to hold the whole frozen base as well)
    agent.save(str(tmp_path / 'rl'))
    drg_file = torch.load(tmp_path / 'rl.drg', map_location='cpu', weights_only=False)['model']
    base = {k for k in hf.frozen_base_keys(agent.model) if not k.startswith('ppg.')}
    assert base and not base & set(drg_file)
    assert set(drg_file) == {k for k in state if not k.startswith('ppg.')} - base
    reloaded = create_agent_from_model_file(str(tmp_path / 'rl.drg'), {'datatype': 'valid'})
    for key, value in reloaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_greedy_ppg_inference_overrides_a_beam_ppg(trained, tmp_path):
    """``--ppg-inference greedy`` on a PPG saved with beam search (beam size 3) decodes with one
    beam (ParlAI's greedy search refuses more) and gives the PPG's own greedy output."""
    beam_ppg = str(tmp_path / 'ppg_beam')
    for suffix in ('', '.dict'):
        shutil.copy(trained['ppg'] + suffix, beam_ppg + suffix)
    shutil.copytree(trained['ppg'] + '.dict.hf', beam_ppg + '.dict.hf')
    opt = Opt.load(trained['ppg'] + '.opt')
    opt.update(inference='beam', beam_size=3, model_file=beam_ppg, dict_file=beam_ppg + '.dict')
    opt.save(beam_ppg + '.opt')

    def personas(ppg_file: str, *extra: str) -> list[str]:
        drg = create_agent_from_model_file(trained['drg'], {'datatype': 'valid'})
        drg.opt.update(ppg_model_file=ppg_file, ppg_inference=None, ppg_beam_size=None)
        for key, value in zip(extra[::2], extra[1::2]):
            drg.opt[key] = value
        out = drg.generate_partner_personas(['i keep bees\nyour persona: i like zebra stamps'])
        return out, drg.persona_generator

    greedy, reference = personas(trained['ppg'])  # saved with greedy search
    assert reference.opt['inference'] == 'greedy'
    beam, beam_agent = personas(beam_ppg)
    assert beam_agent.beam_size == 3
    overridden, agent = personas(beam_ppg, 'ppg_inference', 'greedy')
    assert agent.opt['inference'] == 'greedy' and agent.beam_size == 1
    assert overridden == greedy


@pytest.mark.parametrize('truncate', [None, 12])
def test_generated_persona_input_reports_its_own_context_length(trained, truncate):
    """With generated partner personas the input is rebuilt after observe: ParlAI's context
    metrics (clen, ctrunc, ctrunclen) describe the rebuilt input, not the one without p̂, and
    a long one is cut from the left (the persona lines at its end survive)."""
    drg = create_agent_from_model_file(
        trained['drg'], {'datatype': 'valid', 'skip_generation': False}
    )
    assert drg.opt['partner_personas'] == 'generated'
    if truncate:
        drg.text_truncate = truncate
    obs = observations(drg, trained['data'], 'ppg_ext', datatype='valid')
    before = [o['context_original_length'] for o in obs]
    drg.batch_act(obs)
    for o, length in zip(obs, before):
        assert PARTNER_PREFIX in o['text']
        full = drg._vectorize_text(o['text']).tolist()
        kept = full[-drg.text_truncate :]
        assert o['context_original_length'] == len(full) > length
        assert o['context_truncate_rate'] == (len(full) > drg.text_truncate)
        assert o['context_truncated_length'] == len(full) - len(kept)
        assert o['text_vec'].tolist() == kept
        assert o['full_text_vec'].tolist() == full
    assert all(o['context_truncate_rate'] for o in obs) == bool(truncate)


def test_a_free_chat_gets_generated_partner_personas(trained):
    """``parlai interactive`` (text only) with ``--partner-personas generated``: the history
    (the bot's replies included) is the context, its ``your persona:`` line the self persona,
    a ``partner's persona:`` line is dropped, and the DRG answers from (c, s, p̂) with p̂ the
    PPG's own output for (c, s)."""
    drg = create_agent_from_model_file(
        trained['drg'],
        {'datatype': 'valid', 'skip_generation': False, 'inference': 'greedy', 'beam_size': 1},
    )
    first = (  # a both-view opener: the gold partner persona is no dialogue text
        "your persona: i keep bees in my garden.\npartner's persona: i drive a tractor.\n"
        'hello , my bees kept me busy today .'
    )
    drg.observe({'text': first, 'episode_done': False})
    reply = drg.batch_act([drg.observation])[0]  # act() without its self_observe: see below
    context, persona = ['hello , my bees kept me busy today .'], ['i keep bees in my garden.']
    expected = generate_texts(drg.persona_generator, [ppg_source(context, persona)])[0]
    assert reply['generated_partner_persona'] == expected
    assert drg.observation['text'] == drg_source(context, persona, expected)
    # the bot's turn enters the history by self_observe (act() calls it with the generated
    # reply; a fixed text here, so the context below does not hang on what the tiny model says)
    said = 'i spent the day on my red tractor .'
    drg.self_observe({**reply, 'text': said})
    drg.observe({'text': 'what colour is your tractor ?', 'episode_done': False})
    second = drg.act()
    context = [*context, said, 'what colour is your tractor ?']
    assert drg.observation['context'] == context
    assert drg.observation['self_persona'] == persona
    expected = generate_texts(drg.persona_generator, [ppg_source(context, persona)])[0]
    assert second['generated_partner_persona'] == expected
    assert drg.observation['text'] == drg_source(context, persona, expected)


@pytest.mark.parametrize('strip', [True, False])
def test_strip_chat_role_option_cleans_decoded_texts(trained, strip):
    """``--strip-chat-role`` (the zoo model's) drops a leading template role from what a
    decoder-only generator decodes; off (the recipes' measurements) the text is unchanged."""
    agent = create_agent_from_model_file(
        trained['ppg'], {'datatype': 'valid', 'strip_chat_role': strip}
    )
    agent.dict.vec2txt = lambda vec, **kwargs: 'assistant\ni drive a red tractor .'
    expected = 'i drive a red tractor .' if strip else 'assistant\ni drive a red tractor .'
    assert agent._v2t(torch.tensor([5, 6])) == expected
