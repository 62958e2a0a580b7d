"""PPG agents end to end: generated partner personas at inference, the RL stage, checkpoints."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy
import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.params import ParlaiParser
from parlai.scripts.train_model import TrainModel
from test_ppg_data import make_teacher, messages, write_both

from parlai_ext.agents.ppg import generate_texts, pad_rows
from parlai_ext.modules.ppg import PARTNER_PREFIX, drg_source, persona_text, ppg_source

TINY = dict(n_layers=1, embedding_size=16, n_heads=2, ffn_size=32, dropout=0.0, batchsize=4)
THREADS = {'OMP_NUM_THREADS': '1'}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A PPG, a DRG (ours: gold partner personas in training) and a critic, a few steps each."""
    torch.set_num_threads(1)
    # a module fixture is set up before conftest's per-test seeding: without its own seeds the
    # training order (Python's random) and so the models differed from run to run
    random.seed(0)
    numpy.random.seed(0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp('ppg_models')
    data = write_both(folder)
    common = dict(personachat_file=str(data), max_train_steps=3, validation_every_n_steps=-1)
    common.update(TINY, datapath=str(folder / 'parlai_data'))
    TrainModel.main(
        model='ppg_persona_generator',
        task='ppg_ext:persona',
        model_file=str(folder / 'ppg'),
        label_truncate=12,
        **common,
    )
    TrainModel.main(
        model='ppg_response_generator',
        task='ppg_ext',
        model_file=str(folder / 'drg'),
        label_truncate=8,
        partner_personas='generated',
        ppg_model_file=str(folder / 'ppg'),
        **common,
    )
    TrainModel.main(
        model='ppg_critic', task='ppg_ext:critic', model_file=str(folder / 'critic'), **common
    )
    return folder, data


def agent_from(*args: str):
    opt = ParlaiParser(True, True).parse_args(list(args))
    return create_agent(opt)


# --- the DRG and Table 1's partner-persona options -----------------------------------------------
def test_drg_receives_generated_not_gold_partner_personas_at_inference(trained):
    folder, data = trained
    drg = create_agent_from_model_file(str(folder / 'drg'), {'datatype': 'valid'})
    example = messages(make_teacher('ppg_ext', data))[7]  # zebra-stamps episode, turn 3
    gold = persona_text(example['partner_persona'])
    assert 'zebra' in gold
    # training: gold partner personas in the input
    train_obs = drg.observe(Message({**example, 'labels': example['labels']}))
    assert gold in train_obs['text']
    assert 'ppg_source' not in train_obs  # no PPG call in training: gold stays
    drg.reset()
    # inference: the PPG's output, computed from (context, self personas) only
    eval_msg = {k: v for k, v in example.items() if k != 'labels'}
    eval_msg['eval_labels'] = example['labels']
    obs = drg.observe(Message(eval_msg))
    reply = drg.batch_act([obs])[0]
    ppg = create_agent_from_model_file(str(folder / 'ppg'), {'datatype': 'valid'})
    expected = generate_texts(ppg, [ppg_source(example['context'], example['self_persona'])])[0]
    assert reply['generated_partner_persona'] == expected
    used = drg.dict.vec2txt(obs['text_vec'].tolist())
    assert "partner's persona" in obs['text'] and expected in obs['text']
    assert gold not in obs['text'] and 'collect zebra stamps' not in used
    # the partner-persona line is exactly the PPG's output (whatever words it generated)
    partner_line = drg.dict.vec2txt(drg.dict.txt2vec(obs['text'].split('\n')[-1]))
    assert partner_line.endswith(drg.dict.vec2txt(drg.dict.txt2vec(expected)))
    assert partner_line.startswith(drg.dict.vec2txt(drg.dict.txt2vec(PARTNER_PREFIX)))
    assert used == drg.dict.vec2txt(drg.dict.txt2vec(obs['text']))


@pytest.mark.parametrize(
    'mode,top_k,in_train,in_eval',
    [
        ('none', 0, None, None),
        ('train_only', 0, 'all', None),
        ('gold', 0, 'all', 'all'),
        ('gold', 1, 'top', 'top'),
    ],
)
def test_table1_partner_persona_options(tmp_path, mode, top_k, in_train, in_eval):
    data = write_both(tmp_path)
    example = messages(make_teacher('ppg_ext', data))[8]  # turn 4: "zebra stamps , a rare set"
    agent = agent_from(
        '-m', 'ppg_response_generator', '--partner-personas', mode,
        '--partner-top-k', str(top_k), '--dict-file', str(tmp_path / 'd.dict'),
        '--n-layers', '1', '--embedding-size', '8', '--n-heads', '2', '--ffn-size', '8',
    )  # fmt: skip
    # the context says "stamps" twice and "zebra": BM25's top-1 sentence is the stamps one
    variants = {
        'all': "partner's persona: i collect zebra stamps. i have a pet parrot.",
        'top': "partner's persona: i collect zebra stamps.",
    }
    for labels_key, expected in (('labels', in_train), ('eval_labels', in_eval)):
        msg = {k: v for k, v in example.items() if k != 'labels'}
        msg[labels_key] = example['labels']
        agent.reset()
        text = agent.observe(Message(msg))['text']
        last = text.split('\n')[-1]
        if expected is None:
            assert "partner's persona" not in text
        else:
            assert last == variants[expected]


def test_generated_personas_are_memoised_only_while_the_ppg_is_frozen(trained, tmp_path):
    folder, data = trained
    drg = create_agent_from_model_file(str(folder / 'drg'), {'datatype': 'valid'})
    sources = ['hi\nyour persona: i am a chef.', 'hello\nyour persona: i hate the cold.']
    first = drg.generate_partner_personas(sources)
    assert set(drg._persona_cache) == set(sources)
    assert drg.generate_partner_personas(sources[::-1]) == first[::-1]
    rl = rl_agent(folder, data, tmp_path / 'rl')  # the PPG trains: never a stale persona
    assert rl.generate_partner_personas(sources) and rl._persona_cache == {}


# --- the RL stage (§3.3) -----------------------------------------------------------------------
def rl_agent(folder: Path, data: Path, model_file: Path, *extra: str):
    return agent_from(
        '-m', 'ppg_rl', '-t', 'ppg_ext', '--personachat-file', str(data),
        '-mf', str(model_file), '--init-model', str(folder / 'drg'),
        '--ppg-model-file', str(folder / 'ppg'), '--critic-model-file', str(folder / 'critic'),
        '-dt', 'train', '--learningrate', '1e-3', '--gradient-clip', '-1',
        '--rl-response-max-len', '6', '--rl-persona-max-len', '8', *extra,
    )  # fmt: skip


def state_copy(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def sequence_log_prob(agent, model, source, sample) -> torch.Tensor:
    from parlai_ext.losses.reinforce import sequence_log_probs

    model.eval()
    with torch.no_grad():
        logits = agent._teacher_forced_logits(model, source, sample)
        per_token, mask = sequence_log_probs(logits, sample, model.NULL_IDX)
    return (per_token * mask).sum(-1)


@pytest.mark.parametrize('probability,direction', [(0.9, 1), (0.1, -1)])
def test_rl_step_moves_both_generators_by_the_critic_reward(
    trained, tmp_path, probability, direction
):
    folder, data = trained
    agent = rl_agent(folder, data, tmp_path / 'rl')
    # architecture and dropout taken from the DRG's .opt
    assert agent.opt['embedding_size'] == 16 and agent.opt['dropout'] == 0.0
    critic_before = state_copy(agent.critic.model)
    optimised = {id(p) for group in agent.optimizer.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in agent.critic.model.parameters()}
    assert {id(p) for p in agent.model.ppg.parameters()} <= optimised
    # a critic that says "relevant" (R = +1) or "not relevant" (R = -1) for every pair
    agent.critic.positive_probability = lambda personas, responses: torch.full(
        (len(responses),), probability
    )
    samples = []
    original = agent._sample

    def recording(generator, sources, max_len):
        out = original(generator, sources, max_len)
        samples.append((generator.model, out.source, out.sample))
        return out

    agent._sample = recording
    examples = messages(make_teacher('ppg_ext', data, datatype='train'))[:4]
    observations = []
    for example in examples:
        agent.reset()
        observations.append(agent.observe(Message(example)))
    agent.reset()
    torch.manual_seed(0)
    agent.batch_act(observations)
    (ppg_model, ppg_src, ppg_sample), (drg_model, drg_src, drg_sample) = samples
    assert ppg_model is agent.model.ppg and drg_model is agent.model
    # compare with the log-probs the same samples had before the update
    fresh = rl_agent(folder, data, tmp_path / 'rl_fresh')
    before_ppg = sequence_log_prob(fresh, fresh.model.ppg, ppg_src, ppg_sample)
    before_drg = sequence_log_prob(fresh, fresh.model, drg_src, drg_sample)
    after_ppg = sequence_log_prob(agent, agent.model.ppg, ppg_src, ppg_sample)
    after_drg = sequence_log_prob(agent, agent.model, drg_src, drg_sample)
    # one REINFORCE step raises (R = +1) or lowers (R = -1) the samples' total log-probability
    # (to first order; a single sample may move the other way)
    assert float((after_ppg - before_ppg).sum()) * direction > 0
    assert float((after_drg - before_drg).sum()) * direction > 0
    # the critic is frozen: not one weight moved
    for key, value in agent.critic.model.state_dict().items():
        assert torch.equal(value, critic_before[key]), key


# the joint REINFORCE step, against a hand computation -------------------------------------------
PROBABILITIES = [0.9, 0.2, 0.7, 0.4]  # the fake critic's P(L = 1) for examples 1-4


def boost_end(seq2seq, end_idx: int, amount: float = 3.0) -> None:
    """Add ``amount`` to END's logit (sampling and recomputation alike): rows end early."""
    original = seq2seq.logits

    def logits(hidden: torch.Tensor) -> torch.Tensor:
        out = original(hidden)
        return out + F.one_hot(torch.tensor(end_idx), out.shape[-1]).to(out.dtype) * amount

    seq2seq.logits = logits


def set_dropout(module: torch.nn.Module, p: float) -> None:
    for sub in module.modules():
        if isinstance(sub, torch.nn.Dropout):
            sub.p = p


def until_end(row: list[int], end: int) -> list[int]:
    return row[: row.index(end)] if end in row else row


def hand_log_prob(model, source, sample, start: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log P(sample | source) per row, written out (eval mode: no dropout), and its lengths."""
    model.eval()
    shifted = torch.cat([torch.full_like(sample[:, :1], start), sample[:, :-1]], dim=1)
    hidden, _ = model.seq2seq(source, shifted)
    logits = model.seq2seq.logits(hidden).float()
    logits = logits.index_fill(-1, torch.tensor([start, pad]), float('-inf'))  # never produced
    per_token = logits.log_softmax(-1).gather(-1, sample.unsqueeze(-1)).squeeze(-1)
    real = sample != pad
    return per_token.masked_fill(~real, 0.0).sum(-1), real.sum(-1)


def hand_surrogate(log_prob, lengths, rewards, normalise: str) -> torch.Tensor:
    per_sequence = -rewards * log_prob
    if normalise == 'sum':
        return per_sequence.sum()
    if normalise == 'mean':
        return per_sequence.sum() / len(rewards)
    if normalise == 'token':
        return per_sequence.sum() / lengths.sum()
    return (per_sequence / lengths).sum() / len(rewards)  # 'length'


def rl_step(agent, data: Path, dropout: float = 0.0, seed: int = 0):
    """One train step of ``agent`` on 4 examples with a fake critic; the optimizer step is
    replaced by a record of the gradients. Returns (gradients, rl_loss info, critic calls)."""
    set_dropout(agent.model.ppg, dropout)
    boost_end(agent.model.seq2seq, agent.END_IDX)
    boost_end(agent.model.ppg.seq2seq, agent.persona_generator.END_IDX)
    calls = []

    def critic(personas, responses):
        calls.append((list(personas), list(responses)))
        return torch.tensor(PROBABILITIES[: len(responses)])

    agent.critic.positive_probability = critic
    infos, grads = [], {}
    rl_loss = agent.rl_loss

    def recording_loss(observations):
        loss, info = rl_loss(observations)
        infos.append({**info, 'loss': loss.detach()})
        return loss, info

    def record_gradients():
        for name, param in agent.model.named_parameters():
            grads[name] = None if param.grad is None else param.grad.detach().clone()

    agent.rl_loss = recording_loss
    agent.update_params = record_gradients
    examples = messages(make_teacher('ppg_ext', data, datatype='train'))[:4]
    observations = []
    for example in examples:
        agent.reset()
        observations.append(agent.observe(Message(example)))
    agent.reset()
    torch.manual_seed(seed)
    agent.batch_act(observations)
    return grads, infos[0], calls, examples


@pytest.mark.parametrize(
    'normalise,reward_type,scale,train',
    [
        ('mean', 'label', 1.0, 'both'),
        ('sum', 'label', 1.0, 'both'),
        ('token', 'probability', 1.0, 'both'),
        ('length', 'label', 10.0, 'both'),
        ('mean', 'label', 1.0, 'ppg'),
        ('mean', 'probability', 1.0, 'drg'),
    ],
)
def test_rl_train_step_gradient_is_minus_reward_times_both_log_probs(
    trained, tmp_path, normalise, reward_type, scale, train
):
    """§3.3 end to end: the train step's gradient is that of
    −R_i log P(p̂_i | s_i, c_i) − R_i log P(r̂_i | s_i, p̂_i, c_i), normalised as asked, with
    R_i from the critic on (p̂_i, r̂_i), samples of different lengths (padding masked), in the
    sampling mode (dropout on in the options, off in the update)."""
    folder, data = trained
    agent = rl_agent(
        folder, data, tmp_path / 'rl', '--dropout', '0.3', '--rl-normalise', normalise,
        '--reward-type', reward_type, '--reward-scale', str(scale), '--rl-train', train,
    )  # fmt: skip
    grads, info, calls, examples = rl_step(agent, data, dropout=0.3)
    ppg, drg = agent.persona_generator, agent
    persona, response = info['persona_rollout'], info['response_rollout']
    # samples of different lengths, END kept, padding after it
    for rollout, gen in ((persona, ppg), (response, drg)):
        lengths = (rollout.sample != gen.NULL_IDX).sum(-1)
        assert len(set(lengths.tolist())) > 1, rollout.sample
        assert bool((rollout.sample == gen.NULL_IDX).any())
    # p̂_i is the decoded PPG sample of example i; the DRG input of example i ends with it
    personas = [ppg.dict.vec2txt(until_end(r, ppg.END_IDX)) for r in persona.sample.tolist()]
    responses = [drg.dict.vec2txt(until_end(r, drg.END_IDX)) for r in response.sample.tolist()]
    for i, example in enumerate(examples):
        drg_input = drg_source(example['context'], example['self_persona'], personas[i])
        expected = drg.dict.txt2vec(drg_input)[-drg.text_truncate :]
        assert [t for t in response.source[i].tolist() if t != drg.NULL_IDX] == expected
        expected = ppg.dict.txt2vec(ppg_source(example['context'], example['self_persona']))
        assert [t for t in persona.source[i].tolist() if t != ppg.NULL_IDX] == expected
    # the critic scored exactly (p̂_i, r̂_i), once, in example order
    assert calls == [(personas, responses)]
    probability = torch.tensor(PROBABILITIES)
    if reward_type == 'label':
        rewards = torch.tensor([1.0, -1.0, 1.0, -1.0]) * scale
    else:
        rewards = (2 * probability - 1) * scale
    assert torch.allclose(info['rewards'], rewards)
    # the gradient of the hand-written surrogate, on the same (unchanged) weights
    agent.model.zero_grad()
    total = torch.zeros(())
    if train in ('both', 'ppg'):
        log_prob, lengths = hand_log_prob(
            agent.model.ppg, persona.source, persona.sample, ppg.START_IDX, ppg.NULL_IDX
        )
        total = total + hand_surrogate(log_prob, lengths, rewards, normalise)
    if train in ('both', 'drg'):
        log_prob, lengths = hand_log_prob(
            agent.model, response.source, response.sample, drg.START_IDX, drg.NULL_IDX
        )
        total = total + hand_surrogate(log_prob, lengths, rewards, normalise)
    total.backward()
    assert torch.allclose(info['loss'], total.detach(), rtol=1e-5)  # only the trained terms
    compared = 0
    for name, param in agent.model.named_parameters():
        frozen = (train == 'ppg' and not name.startswith('ppg.')) or (
            train == 'drg' and name.startswith('ppg.')
        )
        assert param.requires_grad is not frozen, name  # --rl-train freezes the other one
        if frozen:
            assert grads[name] is None or not grads[name].any(), name
            continue
        expected = torch.zeros_like(param) if param.grad is None else param.grad
        assert grads[name] is not None, name
        assert torch.allclose(grads[name], expected, rtol=1e-4, atol=1e-6), name
        compared += int(bool(expected.any()))
    assert compared > 10


def test_rl_sampling_options_reach_the_sampler(trained, tmp_path, monkeypatch):
    import parlai_ext.agents.ppg_rl as ppg_rl

    folder, data = trained
    calls = []
    real = ppg_rl.sample_sequences

    def recording(seq2seq, source, start, end, max_len, **kwargs):
        calls.append((seq2seq, max_len, kwargs))
        return real(seq2seq, source, start, end, max_len, **kwargs)

    monkeypatch.setattr(ppg_rl, 'sample_sequences', recording)
    agent = rl_agent(folder, data, tmp_path / 'rl', '--rl-top-k', '3', '--rl-temperature', '0.7')
    rl_step(agent, data)
    (ppg_model, ppg_len, ppg_kw), (drg_model, drg_len, drg_kw) = calls
    assert ppg_model is agent.model.ppg.seq2seq and drg_model is agent.model.seq2seq
    assert (ppg_len, drg_len) == (8, 6)  # --rl-persona-max-len, --rl-response-max-len
    for kwargs, gen in ((ppg_kw, agent.persona_generator), (drg_kw, agent)):
        assert kwargs['top_k'] == 3 and kwargs['temperature'] == 0.7
        assert kwargs['greedy'] is False and kwargs['with_log_probs'] is True
        assert set(kwargs['banned']) == {gen.START_IDX, gen.NULL_IDX}
    calls.clear()
    greedy = rl_agent(folder, data, tmp_path / 'rl2', '--rl-decoding', 'greedy')
    rl_step(greedy, data)
    assert all(kwargs['greedy'] is True for _, _, kwargs in calls)


def test_rl_inputs_are_cut_on_the_left_keeping_the_personas(trained, tmp_path):
    folder, data = trained
    agent = rl_agent(folder, data, tmp_path / 'rl', '--text-truncate', '12')
    agent.persona_generator.text_truncate = 10
    _, info, _, examples = rl_step(agent, data)
    ppg, persona, response = (
        agent.persona_generator,
        info['persona_rollout'],
        info['response_rollout'],
    )
    for i, example in enumerate(examples):
        ppg_ids = ppg.dict.txt2vec(ppg_source(example['context'], example['self_persona']))
        assert len(ppg_ids) > 10
        assert [t for t in persona.source[i].tolist() if t != ppg.NULL_IDX] == ppg_ids[-10:]
        text = drg_source(example['context'], example['self_persona'], info['personas'][i])
        drg_ids = agent.dict.txt2vec(text)[-12:]
        assert [t for t in response.source[i].tolist() if t != agent.NULL_IDX] == drg_ids


def test_rl_recomputes_log_probs_in_the_sampling_mode(trained, tmp_path):
    """With dropout > 0 the recomputed log P of each sample equals its sampling-time value
    (both in eval mode), for both generators: the update is on-policy."""
    folder, data = trained
    agent = rl_agent(folder, data, tmp_path / 'rl', '--dropout', '0.3')
    assert agent.opt['dropout'] == 0.3
    _, info, _, _ = rl_step(agent, data, dropout=0.3)
    recomputed = info['recomputed_log_prob']
    for name, rollout in (('ppg', info['persona_rollout']), ('drg', info['response_rollout'])):
        assert torch.allclose(recomputed[name], rollout.log_prob, atol=1e-4), name
    assert agent.model.training  # ParlAI's train mode is restored after the step


def test_rl_checkpoints_both_generators_and_resumes(trained, tmp_path, parlai_cli):
    folder, data = trained
    model_file = tmp_path / 'rl'
    args = [
        'train_model', '-m', 'ppg_rl', '-t', 'ppg_ext', '--personachat-file', str(data),
        '--ppg-valid-episodes', '1', '-mf', str(model_file), '--init-model', str(folder / 'drg'),
        '--ppg-model-file', str(folder / 'ppg'), '--critic-model-file', str(folder / 'critic'),
        '-bs', '4', '--learningrate', '1e-2', '-vstep', '-1', '--rl-response-max-len', '6',
        '--rl-persona-max-len', '8', '--ppg-inference', 'greedy', '--label-truncate', '6',
    ]  # fmt: skip
    parlai_cli(*args, '--max-train-steps', '2', env=THREADS)
    for suffix in ('', '.opt', '.ppg', '.ppg.opt', '.ppg.dict', '.drg', '.drg.opt', '.drg.dict'):
        assert Path(f'{model_file}{suffix}').exists(), suffix
    saved = torch.load(model_file, map_location='cpu', weights_only=False)
    assert saved['optimizer']  # resumable: the optimizer of both generators
    joint = saved['model']
    # the standalone files hold exactly the two halves of the joint model
    ppg = create_agent_from_model_file(f'{model_file}.ppg', {'datatype': 'valid'})
    for key, value in ppg.model.state_dict().items():
        assert torch.equal(value, joint[f'ppg.{key}']), key
    drg = create_agent_from_model_file(f'{model_file}.drg', {'datatype': 'valid'})
    assert type(drg).__name__ == 'PpgResponseGeneratorAgent'
    assert drg.opt['ppg_model_file'] == f'{model_file}.ppg'
    for key, value in drg.model.state_dict().items():
        assert torch.equal(value, joint[key]), key
    # RL changed both generators
    initial_ppg = torch.load(folder / 'ppg', map_location='cpu', weights_only=False)['model']
    initial_drg = torch.load(folder / 'drg', map_location='cpu', weights_only=False)['model']
    assert any(not torch.equal(v, joint[f'ppg.{k}']) for k, v in initial_ppg.items())
    assert any(not torch.equal(v, joint[k]) for k, v in initial_drg.items())
    # resume: train_model continues from the checkpoint (steps and both generators' weights)
    resumed = rl_agent(folder, data, model_file)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, joint[key]), key
    # (a finished training is left alone unless asked: --overwrite-finished, compat fix 16)
    parlai_cli(*args, '--max-train-steps', '4', '--overwrite-finished', 'true', env=THREADS)
    stats = json.loads(Path(f'{model_file}.trainstats').read_text())
    assert stats['train_steps'] == 4
    again = torch.load(model_file, map_location='cpu', weights_only=False)['model']
    assert any(not torch.equal(v, joint[k]) for k, v in again.items() if k.startswith('ppg.'))


# --- cold start (§5.2) ----------------------------------------------------------------------
def test_cold_start_script_evaluates_each_number_of_visible_turns(trained, tmp_path, parlai_cli):
    folder, data = trained
    report = tmp_path / 'cold.json'
    proc = parlai_cli(
        'ppg_cold_start', '-mf', str(folder / 'drg'), '-t', 'ppg_ext',
        '--personachat-file', str(data), '-dt', 'valid', '--turns', '1,2,4',
        '--partner-personas', 'generated', '--ppg-model-file', str(folder / 'ppg'),
        '--skip-generation', 'true', '--cold-start-report', str(report),
        env=THREADS,
    )  # fmt: skip
    rows = json.loads(report.read_text())['rows']
    # every episode has turns 1 and 2; only the third (4 turns) has a 4th
    assert [rows[n]['exs'] for n in ('1', '2', '4')] == [3, 3, 1]
    assert all(rows[n]['ppl'] > 1 for n in rows)
    assert rows['1']['ppl'] != rows['2']['ppl']
    table = proc.stdout.split('   N')[-1].splitlines()
    assert [line.split()[0] for line in table[1:4]] == ['1', '2', '4']


# --- supervised losses of both generators (§3.1, §3.2), by hand -----------------------------------
def hand_nll(agent, sources: list[str], labels: list[str]) -> torch.Tensor:
    """Token-averaged −log P(label | source) over the batch, written out (labels with END,
    cut at ``--label-truncate`` as ParlAI does)."""
    model = agent.model.eval()
    source = pad_rows([agent.dict.txt2vec(s) for s in sources], agent.NULL_IDX)
    cut = agent.label_truncate
    rows = [(agent.dict.txt2vec(lab) + [agent.END_IDX])[:cut] for lab in labels]
    target = pad_rows(rows, agent.NULL_IDX)
    shifted = torch.cat([torch.full_like(target[:, :1], agent.START_IDX), target[:, :-1]], 1)
    with torch.no_grad():
        hidden, _ = model.seq2seq(source, shifted)
        logits = model.seq2seq.logits(hidden)
    banned = torch.tensor([agent.START_IDX, agent.NULL_IDX])
    log_probs = logits.index_fill(-1, banned, float('-inf')).log_softmax(-1)
    picked = log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    real = target != agent.NULL_IDX
    return -picked[real].sum() / real.sum()


@pytest.mark.parametrize('which', ['ppg', 'drg'])
def test_generators_teacher_forced_loss_by_hand(trained, which):
    folder, data = trained
    overrides = {'datatype': 'valid', 'label_truncate': 40}  # whole labels: padding differs
    agent = create_agent_from_model_file(str(folder / which), overrides)
    task = 'ppg_ext:persona' if which == 'ppg' else 'ppg_ext'
    examples = [messages(make_teacher(task, data))[i] for i in (0, 7)]  # labels of two lengths
    observations = []
    for example in examples:
        agent.reset()
        observations.append(agent.observe(Message(example)))
    agent.reset()
    if which == 'ppg':  # (c, s) -> the complete partner persona p (§3.1)
        sources = [ppg_source(e['context'], e['self_persona']) for e in examples]
        labels = [persona_text(e['partner_persona']) for e in examples]
    else:  # (c, s, gold p) -> the reply r (§3.2: gold partner personas in training)
        sources = [
            drg_source(e['context'], e['self_persona'], persona_text(e['partner_persona']))
            for e in examples
        ]
        labels = [e['response'] for e in examples]
    lengths = [min(len(agent.dict.txt2vec(lab)) + 1, agent.label_truncate) for lab in labels]
    assert lengths[0] != lengths[1]  # padding in the batch
    batch = agent.batchify(observations)
    agent.model.eval()
    with torch.no_grad():
        loss = agent.compute_loss(batch)
    assert torch.allclose(loss, hand_nll(agent, sources, labels), atol=1e-5)


# --- the generated partner personas reach the DRG at inference ------------------------------------
def test_generated_persona_changes_the_drg_output(trained):
    folder, data = trained
    drg = create_agent_from_model_file(str(folder / 'drg'), {'datatype': 'valid'})
    example = messages(make_teacher('ppg_ext', data))[7]
    eval_msg = {k: v for k, v in example.items() if k != 'labels'}
    eval_msg['eval_labels'] = example['labels']
    results, asked = {}, []
    for persona in ('i keep bees in my garden.', 'i drive a red tractor every morning.'):

        def fake_ppg(sources, p=persona):
            asked.extend(sources)
            return [p] * len(sources)

        drg.generate_partner_personas = fake_ppg
        drg.reset()
        obs = drg.observe(Message(eval_msg))
        reply = drg.batch_act([obs])[0]
        expected = drg_source(example['context'], example['self_persona'], persona)
        assert obs['text_vec'].tolist() == drg.dict.txt2vec(expected)
        assert reply['generated_partner_persona'] == persona
        results[persona] = float(reply['metrics']['loss'])
    # the PPG is asked with (context, self personas) only (§3.1)
    assert asked == [ppg_source(example['context'], example['self_persona'])] * 2
    # the same label scores differently under the two personas
    first, second = results.values()
    assert abs(first - second) > 1e-4
