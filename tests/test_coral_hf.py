"""CORAL from pretrained Hugging Face backbones (issue #20): the generator from a causal LM
(``--hf-model-dir``, :class:`~parlai_ext.agents.hf.HfGeneratorModel`), the cross-encoder
reward from an encoder (:func:`~parlai_ext.agents.hf.build_encoder`). Tiny GPT-2 / Llama /
BERT checkpoints from ``test_hf``: training through ParlAI's loop, reload, LoRA, bf16, and the
mix-policy negatives (``sample_responses``) drawn from the HF generator."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

pytest.importorskip('peft')

from parlai.core.agents import create_agent, create_agent_from_model_file  # noqa: E402
from parlai.core.message import Message  # noqa: E402
from parlai.core.params import ParlaiParser  # noqa: E402
from parlai.scripts.train_model import TrainLoop, setup_args  # noqa: E402
from test_hf import tiny_checkpoint  # noqa: E402
from test_hf_generator import PAIRS, write_pairs  # noqa: E402

from parlai_ext.agents import hf as glue  # noqa: E402
from parlai_ext.agents.coral import CoralAgent, CoralCrossEncoderAgent  # noqa: E402
from parlai_ext.modules import hf  # noqa: E402
from parlai_ext.modules.coral import sample_responses  # noqa: E402
from parlai_ext.rewards import load_reward_model  # noqa: E402


@pytest.fixture(scope='module')
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp('coral_hf_bases')
    return {s: tiny_checkpoint(root / s, s) for s in ('gpt2', 'llama', 'bert')}


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp('coral_hf_data') / 'pairs.txt')


def train(model_file: str, data: str, **kwargs):
    """ParlAI's training loop (as ``parlai train_model``); the live agent and the stats."""
    args = dict(
        task='fromfile:parlaiformat',
        fromfile_datapath=data,
        model_file=model_file,
        batchsize=4,
        max_train_steps=12,
        validation_every_n_steps=3,
        short_final_eval=True,
        bf16=False,
    )
    args.update(kwargs)
    loop = TrainLoop(setup_args().parse_kwargs(**args))
    loop.train()
    with open(model_file + '.trainstats') as f:
        return loop.agent, json.load(f)


CROSS_ENCODER = dict(
    model='coral_cross_encoder',
    learningrate=1e-2,
    mlp_hidden_size=8,
    validation_metric='bce',
    dropout=0.0,
)


@pytest.fixture(scope='module')
def cross_encoder(tmp_path_factory, bases, data):
    """A cross-encoder reward trained a few steps from the tiny BERT (a copy of it, moved away
    after training: the model file must not need it)."""
    root = tmp_path_factory.mktemp('coral_hf_ce')
    base = str(root / 'bert')
    shutil.copytree(bases['bert'], base)
    model_file = str(root / 'ce')
    agent, stats = train(model_file, data, hf_model_dir=base, **CROSS_ENCODER)
    contexts, responses = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    scores = agent.score(contexts, responses)
    shutil.move(base, str(root / 'moved'))
    return model_file, stats, scores, str(root / 'moved')


def test_cross_encoder_starts_from_the_encoder_trains_and_reloads_without_it(cross_encoder, bases):
    model_file, stats, scores, _ = cross_encoder
    bce = [report['bce'] for report in stats['valid_reports']]
    assert len(bce) >= 3 and bce[-1] < bce[0], bce  # it learns positives vs random negatives
    again = create_agent_from_model_file(model_file)
    assert isinstance(again, CoralCrossEncoderAgent)
    assert again.dict.null_token == '[PAD]' and again.dict.start_token == '[CLS]'
    contexts, responses = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    assert torch.equal(again.score(contexts, responses), scores)  # the trained weights
    reward = load_reward_model(model_file)
    assert torch.equal(reward.score(contexts, responses), scores)
    pretrained = hf.load_encoder(bases['bert']).state_dict()
    trained = again.model.encoder.model.state_dict()
    assert any(not torch.equal(trained[k], pretrained[k]) for k in pretrained)


def test_a_new_cross_encoder_has_the_pretrained_weights_and_the_old_option_name(bases):
    opt = ParlaiParser(True, True).parse_args(
        ['-m', 'coral_cross_encoder', '--hf-encoder-path', bases['bert'], '--dict-file', '']
    )
    assert opt['hf_model_dir'] == bases['bert']
    agent = CoralCrossEncoderAgent(opt)
    assert agent.hf_fresh
    pretrained = hf.load_encoder(bases['bert']).state_dict()
    mine = agent.model.encoder.model.state_dict()
    assert all(torch.equal(mine[k], pretrained[k]) for k in pretrained)


def test_cross_encoder_lora_saves_adapters_and_reloads(tmp_path, bases, data):
    model_file = str(tmp_path / 'ce_lora')
    agent, _ = train(
        model_file, data, hf_model_dir=bases['bert'], lora_rank=2, lora_dropout=0.0,
        max_train_steps=3, **CROSS_ENCODER,
    )  # fmt: skip
    agent.save(model_file)
    saved = torch.load(model_file, weights_only=False)['model']
    assert hf.is_adapter_checkpoint(saved) and any(k.startswith('head.') for k in saved)
    assert not any('base_layer' in k for k in saved)  # the frozen encoder is not saved
    contexts, responses = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    again = create_agent_from_model_file(model_file)
    assert torch.allclose(again.score(contexts, responses), agent.score(contexts, responses))


# ================================================================================ generator


def coral_batch(agent, key='labels'):
    observations = [
        agent.clone().observe(Message({'text': text, key: [label], 'episode_done': True}))
        for text, label in PAIRS
    ]
    return agent.batchify(observations)


@torch.no_grad()
def forced_logits(agent, batch):
    agent.model.eval()
    return agent.model(batch.text_vec, ys=batch.label_vec)[0]


@pytest.mark.parametrize(
    'style, extra',
    [('gpt2', {}), ('llama', {'lora_rank': 4, 'lora_dropout': 0.0, 'bf16': True})],
    ids=['gpt2-full', 'llama-lora-bf16'],
)
def test_coral_generator_from_a_causal_lm_with_mix_policy_negatives(
    tmp_path, bases, data, cross_encoder, style, extra
):
    model_file = str(tmp_path / 'coral')
    agent, stats = train(
        model_file, data, model='coral', hf_model_dir=bases[style],
        reward_model_file=cross_encoder[0], p_positive=0.5, negative_source='nucleus',
        negative_max_len=4, learningrate=1e-2, optimizer='adamw', skip_generation=True,
        validation_metric='ppl', validation_metric_mode='min', **extra,
    )  # fmt: skip
    assert isinstance(agent.model, glue.HfGeneratorModel) and agent.model.bf16 == ('bf16' in extra)
    assert hf.has_lora(agent.model.lm.model) == ('lora_rank' in extra)
    ppl = [report['ppl'] for report in stats['valid_reports']]
    assert len(ppl) >= 3 and ppl[-1] < ppl[0], ppl
    assert 0 < stats['train_reports'][-1]['positive'] < 1  # ground truth and negatives mixed
    # save -> reload: identical outputs (adapters over the base with LoRA)
    agent.save(model_file)
    trained = forced_logits(agent, coral_batch(agent))
    again = create_agent_from_model_file(model_file, {'skip_generation': False})
    assert isinstance(again, CoralAgent) and again.opt['hf_model_dir'] == bases[style]
    assert torch.allclose(forced_logits(again, coral_batch(again)), trained, atol=1e-6)
    again.observe(Message({'text': PAIRS[0][0], 'episode_done': True}))
    assert isinstance(again.act()['text'], str)


@pytest.mark.parametrize('style', ['gpt2', 'llama'])
def test_negatives_from_an_hf_generator_follow_its_own_distribution(tmp_path, bases, style):
    """``sample_responses`` over :class:`HfGeneratorModel`: a tiny nucleus is greedy decoding
    of the HF model (end banned at the first step, no end token at the cap), and the CORAL
    loss with f_R = 1, m = 0, p+ = 1 is ParlAI's NLL."""
    opt = ParlaiParser(True, True).parse_kwargs(
        model='coral', hf_model_dir=bases[style], reward_model_file='constant:1', margin=0.0,
        p_positive=1.0, dict_file=str(tmp_path / 'd.dict'), bf16=False,
        datapath=str(tmp_path / 'data'),
    )  # fmt: skip
    agent = CoralAgent(opt)
    batch = coral_batch(agent)
    agent._control_local_metrics(disabled=True)
    agent.model.eval()
    with torch.no_grad():
        assert torch.allclose(agent.compute_coral_loss(batch), agent.compute_loss(batch))
    samples = sample_responses(
        agent.model, batch.text_vec, agent.START_IDX, agent.END_IDX, agent.NULL_IDX, 5, 1e-6
    )
    model, d = agent.model.lm.model, agent.dict
    for row, sample in zip(batch.text_vec, samples):
        ids = row[row != agent.NULL_IDX].tolist() + [glue.start_input_id(d)]
        expected = []
        for step in range(5):
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1].clone()
            logits[[agent.START_IDX, agent.NULL_IDX]] = float('-inf')
            if step == 0:
                logits[agent.END_IDX] = float('-inf')
            token = int(logits.argmax())
            expected.append(token)
            if token == agent.END_IDX:
                break
            ids.append(token)
        got = sample[sample != agent.NULL_IDX].tolist()
        assert got == expected


def test_the_recipes_hf_ce_baseline_loads_into_the_coral_agent(tmp_path, bases, data):
    """dailydialog.sh with GEN_HF: the CE baseline is the generic HF generator; its model file
    is evaluated with ``-m coral`` (the same network, the same weights)."""
    model_file = str(tmp_path / 'ce')
    agent, _ = train(
        model_file, data, model='parlai_ext.agents.hf:HfGeneratorAgent', hf_model_dir=bases['gpt2'],
        learningrate=1e-2, max_train_steps=3, skip_generation=True,
    )  # fmt: skip
    agent.save(model_file)
    opt = ParlaiParser(True, True).parse_kwargs(
        model='coral', model_file=model_file, reward_model_file='constant:0.5'
    )  # as `parlai eval_model -mf MODEL -m coral ...` parses it
    coral = create_agent(opt)
    assert isinstance(coral, CoralAgent) and isinstance(coral.model, glue.HfGeneratorModel)
    assert torch.equal(
        forced_logits(coral, coral_batch(coral)), forced_logits(agent, coral_batch(agent))
    )


def test_a_cross_encoder_saved_before_the_shared_piece_still_loads(tmp_path, cross_encoder):
    """An old model file: ``hf_encoder_path`` in its .opt, no tokenizer folder beside it."""
    model_file, _, scores, base = cross_encoder
    old = str(tmp_path / 'old')
    for suffix in ('', '.dict'):
        shutil.copy(model_file + suffix, old + suffix)
    with open(model_file + '.opt') as f:
        opt = json.load(f)
    opt['hf_encoder_path'] = base
    del opt['hf_model_dir']
    with open(old + '.opt', 'w') as f:
        json.dump(opt, f)
    again = create_agent_from_model_file(old)
    assert glue.saved_folder(again.opt) is None  # the tokenizer comes from the old path
    contexts, responses = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    assert torch.equal(again.score(contexts, responses), scores)
