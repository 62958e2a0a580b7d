"""The shared generator over a Hugging Face causal LM (``HfGeneratorModel``; issue #20).

Tiny GPT-2 and Llama checkpoints (``test_hf``'s fixtures): the loss is the response's only,
training lowers it, a model file reloads to identical outputs (full weights, or LoRA adapters
over a base found by its short name), ParlAI's greedy equals a hand greedy loop over the HF
model, beam scores equal teacher-forced log-probabilities (the cache is reordered right), every
``--inference`` mode runs, models without a cache give the same replies, bf16 autocast.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('peft')

from parlai.core.agents import create_agent_from_model_file  # noqa: E402
from parlai.core.message import Message  # noqa: E402
from parlai.scripts.train_model import TrainLoop, setup_args  # noqa: E402
from test_hf import WORDS, tiny_checkpoint  # noqa: E402

from parlai_ext.agents import hf as glue  # noqa: E402
from parlai_ext.modules import hf, hf_source  # noqa: E402

AGENT = 'parlai_ext.agents.hf:HfGeneratorAgent'
PAIRS = [
    ('hello how are you', 'i like my dog'),
    ('hi how are you today', 'good thanks'),
    ('the cat sat on the mat', 'yes no'),
    ('my dog', 'the cat sat'),
]


@pytest.fixture(scope='module')
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp('hf_generator_bases')
    return {style: tiny_checkpoint(root / style, style) for style in ('gpt2', 'llama')}


def write_pairs(path, pairs=PAIRS, repeat: int = 4) -> str:
    """``pairs`` (``repeat`` times) as single-turn episodes of a ParlAI-format file at ``path``."""
    lines = [f'text:{a}\tlabels:{b}\tepisode_done:True' for a, b in pairs * repeat]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def train(tmp_path, base, name='model', **extra):
    """Train through ParlAI's own loop; returns the live agent, the model file, the stats."""
    model_file = str(tmp_path / name)
    kwargs = dict(
        model=AGENT,
        task='fromfile:parlaiformat',
        fromfile_datapath=write_pairs(tmp_path / 'pairs.txt'),
        hf_model_dir=base,
        model_file=model_file,
        batchsize=4,
        learningrate=1e-2,
        max_train_steps=16,
        validation_every_n_steps=3,
        short_final_eval=True,
        skip_generation=True,
        bf16=False,
        datapath=str(tmp_path / 'data'),
    )
    kwargs.update(extra)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    loop = TrainLoop(setup_args().parse_kwargs(**kwargs))
    loop.train()
    with open(model_file + '.trainstats') as f:
        stats = json.load(f)
    return loop.agent, model_file, stats


def batch_of(agent, pairs=PAIRS, key='labels'):
    observations = [
        agent.clone().observe(Message({'text': text, key: [label], 'episode_done': True}))
        for text, label in pairs
    ]
    return agent.batchify(observations)


@torch.no_grad()
def forced_logits(agent, batch):
    agent.model.eval()
    return agent.model(batch.text_vec, ys=batch.label_vec)[0]


@torch.no_grad()
def hand_greedy(agent, context: list[int], maxlen: int, min_length: int = 0) -> list[int]:
    """Greedy decoding over the bare HF model: ``context <start input>``, then argmax (the end
    token banned for the first ``min_length`` steps)."""
    model, d = agent.model.lm.model, agent.dict
    start, null, end = d[d.start_token], d[d.null_token], d[d.end_token]
    ids = list(context) + [glue.start_input_id(d)]
    out = []
    for step in range(maxlen):
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
        logits[[start, null]] = float('-inf')
        if step < min_length:
            logits[end] = float('-inf')
        token = int(logits.argmax())
        out.append(token)
        if token == end:
            break
        ids.append(token)
    out[-1] = end  # ParlAI's tree search ends a hypothesis at the length limit so
    return out


# ============================================================================ format and loss


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
def test_the_loss_is_the_responses_only_over_context_start_response(tmp_path, bases, style):
    agent, _, stats = train(tmp_path, bases[style], max_train_steps=12)
    ppl = [report['ppl'] for report in stats['valid_reports']]
    assert len(ppl) >= 3 and all(b < a for a, b in zip(ppl, ppl[1:])), ppl  # loss falls
    d = agent.dict
    start_input = glue.start_input_id(d)
    if style == 'gpt2':  # DialoGPT: <|endoftext|> separates context and response
        assert d.start_token == '__start__' and start_input == d['<|endoftext|>']
    else:  # Llama has <s>: it is fed as it is
        assert start_input == d['<s>'] == d[d.start_token]
    batch = batch_of(agent)
    agent.model.eval()
    agent._control_local_metrics(disabled=True)
    with torch.no_grad():
        loss = agent.compute_loss(batch)
    # by hand: the HF model over "context <start> response <end>", cross-entropy on the
    # response and the end token only (never on the context)
    model = agent.model.lm.model.eval()
    total, count = 0.0, 0
    for text_vec, label_vec in zip(batch.text_vec, batch.label_vec):
        context = text_vec[text_vec != agent.NULL_IDX].tolist()
        target = label_vec[label_vec != agent.NULL_IDX].tolist()
        assert target[-1] == agent.END_IDX
        ids = torch.tensor([context + [start_input] + target[:-1]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(context) :].float()
        logits[:, [agent.START_IDX, agent.NULL_IDX]] = float('-inf')
        total += F.cross_entropy(logits, torch.tensor(target), reduction='sum').item()
        count += len(target)
    assert loss.item() == pytest.approx(total / count, rel=1e-5)


def test_a_prefix_lm_attends_over_the_whole_context(tmp_path, bases):
    agent, _, _ = train(tmp_path, bases['llama'], max_train_steps=1, hf_prefix_lm=True)
    assert agent.model.prefix_lm
    batch = batch_of(agent)
    logits = forced_logits(agent, batch)
    lm = agent.model.lm.eval()
    valid = batch.text_vec != agent.NULL_IDX
    inputs = torch.cat([batch.label_vec.new_full((4, 1), agent.START_IDX), batch.label_vec], 1)
    with torch.no_grad():
        for length, same in ((None, True), (0, False)):  # None: bidirectional over the context
            _, hidden = lm(
                lm.embed(batch.text_vec),
                valid,
                agent.model.embed(inputs[:, :-1]),
                prefix_length=length,
            )
            expected = lm.logits(hidden)
            kept = torch.ones(logits.shape[-1], dtype=torch.bool)
            kept[[agent.START_IDX, agent.NULL_IDX]] = False  # banned: never generated
            assert (logits[..., ~kept] < -1e19).all()
            close = torch.allclose(logits[..., kept], expected[..., kept], atol=1e-5)
            assert close is same


# ============================================================================= save / reload


def test_full_weights_reload_to_identical_outputs_without_the_base(tmp_path, bases):
    import shutil

    base = str(tmp_path / 'base')
    shutil.copytree(bases['gpt2'], base)
    agent, model_file, _ = train(tmp_path, base)
    agent.save(model_file)
    batch = batch_of(agent)
    trained = forced_logits(agent, batch)
    moved = str(tmp_path / 'elsewhere')
    shutil.move(base, moved)  # a full model file needs no base: config and tokenizer are saved
    again = create_agent_from_model_file(model_file, {'skip_generation': False})
    assert torch.equal(forced_logits(again, batch_of(again)), trained)
    pretrained = hf.load_causal_lm(moved).transformer.wte.weight
    reloaded = again.model.lm.model.transformer.wte.weight[: pretrained.shape[0]]
    assert not torch.allclose(pretrained, reloaded)  # the trained weights, not the pretrained
    again.observe(Message({'text': 'hello how are you', 'episode_done': True}))
    agent.observe(Message({'text': 'hello how are you', 'episode_done': True}))
    agent.opt['skip_generation'] = agent.skip_generation = False
    assert again.act()['text'] == agent.act()['text']


def test_lora_adapters_over_a_short_named_base_save_small_and_reload(tmp_path, bases, monkeypatch):
    monkeypatch.setitem(
        hf.PACKAGED_MODELS, 'tiny-llama', hf.PackagedModel('tiny_pkg', '', None, 'causal', 'x')
    )
    monkeypatch.setattr(hf_source, 'packaged_model_dir', lambda name: (bases['llama'], None))
    agent, model_file, stats = train(
        tmp_path,
        'tiny-llama',
        lora_rank=4,
        lora_alpha=8.0,
        lora_dropout=0.0,
        learningrate=3e-2,
        max_train_steps=12,
    )
    ppl = [report['ppl'] for report in stats['valid_reports']]
    assert ppl[-1] < ppl[0], ppl  # the adapters learn
    assert hf.has_lora(agent.model.lm.model)
    agent.save(model_file)
    saved = torch.load(model_file, weights_only=False)['model']
    assert hf.is_adapter_checkpoint(saved)
    full = sum(v.numel() for v in agent.model.state_dict().values())
    assert sum(v.numel() for v in saved.values()) < 0.5 * full
    assert not any(k.endswith('q_proj.base_layer.weight') for k in saved)  # no frozen base
    trained = forced_logits(agent, batch_of(agent))
    again = create_agent_from_model_file(model_file)
    assert again.opt['hf_model_dir'] == 'tiny-llama'
    assert torch.allclose(forced_logits(again, batch_of(again)), trained, atol=1e-6)
    # the adapted model differs from the bare base: the adapters were loaded
    bare = hf.load_causal_lm(bases['llama'])
    ids = batch_of(again).text_vec[:1, :3]
    with torch.no_grad():
        adapted = again.model.lm.model(input_ids=ids).logits[..., : bare.config.vocab_size]
        assert not torch.allclose(adapted, bare(input_ids=ids).logits, atol=1e-4)


# ================================================================================ generation


@pytest.fixture(scope='module')
def trained(tmp_path_factory, bases):
    tmp_path = tmp_path_factory.mktemp('hf_generator_trained')
    agents = {}
    for style in ('gpt2', 'llama'):
        agent, model_file, _ = train(tmp_path, bases[style], name=style, max_train_steps=8)
        agent.save(model_file)
        agents[style] = model_file
    return agents


def generator(model_file, **overrides):
    opt = {'skip_generation': False, 'label_truncate': 6, 'inference': 'greedy', 'beam_size': 1}
    opt.update(overrides)
    return create_agent_from_model_file(model_file, opt)


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
def test_parlai_greedy_equals_a_hand_greedy_loop_with_and_without_a_cache(trained, style):
    agent = generator(trained[style])
    batch = batch_of(agent, key='eval_labels')
    assert agent.model.encoder(batch.text_vec).cache is not None  # the context runs once
    # ParlAI's greedy search (no minimum length), and beam search of width 1 with a minimum
    # length (so every reply has several tokens)
    for min_length in (0, 3):
        agent.beam_min_length = min_length
        agent.opt['inference'] = 'greedy' if min_length == 0 else 'beam'
        for use_cache in (True, False):
            agent.model.lm.use_cache = use_cache
            results, _ = agent._generate(batch, 1, 6)
            for row, (tokens, _, _) in zip(batch.text_vec, results):
                context = row[row != agent.NULL_IDX].tolist()
                assert tokens[0] == agent.START_IDX  # ParlAI's hypotheses begin with it
                assert tokens[1:].tolist() == hand_greedy(agent, context, 6, min_length)
                assert len(tokens) > min_length + 1
    agent.model.lm.use_cache = True
    agent.opt['inference'] = 'greedy'
    agent.observe(Message({'text': PAIRS[0][0], 'episode_done': True}))
    expected = hand_greedy(agent, agent.dict.txt2vec(PAIRS[0][0]), 6)
    assert agent.act()['text'] == agent.dict.vec2txt(expected)


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
def test_beam_scores_are_the_teacher_forced_log_probabilities(trained, style):
    """With the cache reordered as ParlAI's beams move, each finished hypothesis's score is
    the sum of its tokens' log-probabilities under teacher forcing."""
    agent = generator(trained[style], inference='beam', beam_size=3, beam_length_penalty=0.0)
    batch = batch_of(agent, key='eval_labels')
    for use_cache in (True, False):
        agent.model.lm.use_cache = use_cache
        _, beams = agent._generate(batch, 3, 10)
        checked = 0
        for row, beam in zip(batch.text_vec, beams):
            for tokens, score, _ in beam.get_rescored_finished(n_best=3):
                if len(tokens) > 10:  # cut at the limit: scored by a token it no longer has
                    continue
                tokens = tokens[1:]  # without ParlAI's leading start token
                with torch.no_grad():
                    logits = agent.model(row[None], ys=tokens[None])[0]
                log_probs = logits.log_softmax(-1)[0].gather(1, tokens[:, None]).sum()
                assert score.item() == pytest.approx(log_probs.item(), abs=1e-4)
                checked += 1
        assert checked >= 6, checked


@pytest.mark.parametrize('inference', ['greedy', 'beam', 'topk', 'nucleus', 'delayedbeam'])
def test_every_inference_mode_replies_from_the_vocabulary(trained, inference):
    agent = generator(
        trained['llama'],
        inference=inference,
        beam_size=1 if inference == 'greedy' else 3,
        topk=3,
        topp=0.9,
        beam_delay=2,
    )
    replies = []
    for text, _ in PAIRS:
        agent.observe(Message({'text': text, 'episode_done': True}))
        replies.append(agent.act()['text'])
    assert all(reply and set(reply.split()) <= set(WORDS) for reply in replies), replies


def test_sampling_with_a_tiny_nucleus_is_greedy(trained):
    greedy = generator(trained['gpt2'])
    nucleus = generator(trained['gpt2'], inference='nucleus', topp=1e-6, beam_min_length=0)
    for agent in (greedy, nucleus):
        agent.observe(Message({'text': PAIRS[1][0], 'episode_done': True}))
    assert nucleus.act()['text'] == greedy.act()['text']


# ===================================================================================== bf16


def test_bf16_autocast_runs_the_lm_in_bf16_and_the_loss_in_fp32(tmp_path, bases):
    agent, _, stats = train(tmp_path, bases['gpt2'], bf16=True, max_train_steps=8)
    assert agent.model.bf16
    assert stats['valid_reports'][-1]['ppl'] < stats['valid_reports'][0]['ppl']
    seen = []
    layer = agent.model.lm.model.transformer.h[0].mlp.c_fc
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    try:
        logits = forced_logits(agent, batch_of(agent))
    finally:
        handle.remove()
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    agent.model.bf16 = False
    assert torch.allclose(forced_logits(agent, batch_of(agent)), logits, atol=0.1)


def test_the_generic_agent_needs_a_model_and_fits_truncation_to_the_positions(tmp_path, bases):
    from parlai.core.opt import Opt

    opt = Opt({'hf_model_dir': bases['gpt2'], 'dict_file': None, 'truncate': -1})
    fitted = glue.fit_truncation(opt, glue.max_positions(opt))
    assert (fitted['text_truncate'], fitted['label_truncate']) == (47, 16)  # 64 positions
    fits = glue.fit_truncation(Opt({**opt, 'text_truncate': 47, 'label_truncate': 16}), 64)
    assert fits['text_truncate'] == 47  # 47 + 16 + the start token = 64 positions
    with pytest.raises(ValueError, match='exceed the position limit 64'):
        glue.fit_truncation(Opt({**opt, 'text_truncate': 48, 'label_truncate': 16}), 64)
    with pytest.raises(ValueError, match='needs --hf-model-dir'):
        train(tmp_path, None)
    assert os.path.isdir(bases['gpt2'])


@pytest.mark.parametrize('decoder', ['batched', 'parlai'])
def test_pseudo_references_sample_from_a_fine_tuned_lm(tmp_path, trained, decoder):
    """The multi-reference teacher as the paper's fine-tuned GPT-2: ``parlai
    generate_pseudo_refs -mf <HfGeneratorAgent model>`` needs no change of its own."""
    from parlai_ext.scripts.generate_pseudo_refs import GeneratePseudoRefs

    outfile = tmp_path / 'hyps.jsonl'
    GeneratePseudoRefs.main(
        model_file=trained['gpt2'], task='fromfile:parlaiformat',
        fromfile_datapath=write_pairs(tmp_path / 'p.txt', repeat=1), outfile=str(outfile),
        num_hyps=3, hyp_max_len=5, hyp_decoder=decoder, datatype='valid', progress=False,
    )  # fmt: skip
    lines = [json.loads(line) for line in outfile.read_text().splitlines()]
    assert [line['context'][-1] for line in lines] == [text for text, _ in PAIRS]
    for line in lines:
        assert len(line['hypotheses']) == 3 and all(lp <= 0 for lp in line['logprobs'])
        assert all(set(h.split()) <= set(WORDS) for h in line['hypotheses']), line
