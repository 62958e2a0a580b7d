"""P2Bot self-play math, end to end through the world's own train step (in process, tiny models).

Each test checks a value that would differ if the math were wrong: the sampled replies and the
log-probabilities REINFORCE scores (capped replies included), the baseline (flat and per turn),
which response and which context each reward (RS.1, RS.2, RS.3) scores, Eq. 8's discounting of
the user's and the learner's persona scores, Eq. 10's weights, the sign of the update, and the
guard against NaN rewards; plus resuming (frozen user A, self-play log), the options of the
issue (−Persona, RS.1 warning, weight-decay exemption) and the persona pairing of Fig. 4. The
transmitter's own loss, ranking, context and distractors are in ``test_p2bot_transmitter.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent
from parlai.core.params import ParlaiParser
from parlai.core.worlds import create_task
from parlai.scripts.build_dict import build_dict
from parlai.scripts.build_dict import setup_args as build_dict_args
from test_p2bot import write_both

from parlai_ext.losses.p2bot import discounted_persona_reward, reinforce_baseline
from parlai_ext.losses.reinforce import NonFiniteRewardError
from parlai_ext.modules.p2bot import sample_responses
from parlai_ext.modules.sampling import sample

TINY = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']
GAMMA = 0.5


def save_user(root: Path) -> dict:
    """A data file, a saved (untrained) tiny transmitter = the frozen user A, and its opt."""
    data = write_both(root, 10)
    common = ['--personachat-file', str(data), '--p2bot-train-episodes', '8']
    common += ['--datapath', str(root / 'data')]
    opt = build_dict_args(ParlaiParser(True, True)).parse_args(
        ['-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay:supervised', *common, *TINY,
         '-mf', str(root / 'tx'), '--dict-file', str(root / 'tx.dict'), '--dropout', '0.3',
         '-dt', 'train']
    )  # fmt: skip
    build_dict(opt)
    torch.manual_seed(0)
    agent = create_agent(opt)
    agent.save(str(root / 'tx'))
    return {'root': root, 'common': common, 'user': str(root / 'tx')}


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    return save_user(tmp_path_factory.mktemp('p2sp'))


def make_world(setup, *extra: str, model_file: str | None = None):
    """The self-play world over a fresh learner initialised from the user; no receiver
    (RS.3 off unless a test puts a fake receiver in)."""
    args = [
        '-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay', *setup['common'],
        '--init-model', setup['user'], '-bs', '2', '--rs-lambda3', '0', '-dt', 'train',
        '--selfplay-max-len', '4', '-lr', '1e-2', '--optimizer', 'sgd',
        *(['-mf', model_file] if model_file else []), *extra,
    ]  # fmt: skip
    opt = ParlaiParser(True, True).parse_args(args)
    learner = create_agent(opt)
    world = create_task(opt, learner)
    assert type(world).__name__ == 'SelfPlayWorld'
    return world


def reply_vec(agent, text: str, end: bool = True) -> torch.Tensor:
    return torch.LongTensor(agent.dict.txt2vec(text) + ([agent.END_IDX] if end else []))


def eval_log_prob(agent, context: torch.Tensor, reply: torch.Tensor) -> float:
    """Σ_t log p(reply_t | context, reply_<t) under ``agent`` in eval mode, by hand."""
    model = agent._model()
    was = model.training
    model.eval()
    with torch.no_grad():
        logits = model.transmitter(context[None], reply[None]).lm_logits[0]
        logits = model.mask_logits(logits)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        value = sum(log_probs[t, reply[t]].item() for t in range(len(reply)))
    model.train(was)
    return value


# ------------------------------------------------------------------------------ sampling


def test_capped_samples_keep_their_tokens_and_reinforce_scores_only_those(setup):
    world = make_world(setup, '--rl-normalise', 'sum')
    learner = world.learner
    model = learner._model()
    end = learner.END_IDX
    context = learner.context_vec(['i keep bees in my garden.'], ['my bees made honey again .'])
    # END can never be drawn: every reply reaches the cap of 3 tokens
    model.banned = torch.cat([model.banned, torch.tensor([end])])
    capped = learner.sample_replies([context, context], 3)
    model.banned = model.banned[:-1]
    assert [len(r) for r in capped] == [3, 3]
    assert all(end not in r.tolist() for r in capped)
    # REINFORCE of one capped reply and one ending with END: Σ log p over exactly those tokens
    short = reply_vec(learner, 'honey')
    replies = [[capped[0]], [short]]
    contexts = [[context], [context]]
    expected_lp = [
        eval_log_prob(learner, context, capped[0]),
        eval_log_prob(learner, context, short),
    ]
    rewards = torch.tensor([[1.0], [-1.0]])
    loss = world.update(contexts, replies, rewards)
    # 'sum', flat baseline 0: −Σ R_i log p(a_i)
    assert loss == pytest.approx(-(expected_lp[0] - expected_lp[1]), rel=1e-4)


def test_sampled_replies_end_with_the_end_they_drew_and_come_from_eval_mode(setup):
    world = make_world(setup)
    learner = world.learner
    model = learner._model()
    logits = model.transmitter.backbone.logits
    bonus = torch.zeros(len(learner.dict))
    bonus[learner.END_IDX] = 5.0  # END frequent: most replies finish before the cap
    model.transmitter.backbone.logits = lambda hidden: logits(hidden) + bonus
    contexts = [learner.context_vec(['i play the cello.'], ['hello there .'])] * 8
    model.train()  # as during training: sampling itself must run without dropout
    replies = learner.sample_replies(contexts, 5, torch.Generator().manual_seed(2))
    assert model.training  # restored
    model.eval()
    with torch.no_grad():
        rows = sample_responses(
            model.transmitter, learner._pad_contexts(contexts), 5, model.banned,
            torch.Generator().manual_seed(2),
        )  # fmt: skip
    ended = 0
    for reply, row in zip(replies, rows):
        tokens = reply.tolist()
        if learner.END_IDX in tokens:  # the END it drew is kept, once, at the end
            ended += 1
            assert tokens.index(learner.END_IDX) == len(tokens) - 1
        assert tokens == row[: len(tokens)].tolist()
        assert all(t == learner.NULL_IDX for t in row[len(tokens) :].tolist())
    assert ended >= 6


def test_sampler_draws_from_the_models_distribution(setup):
    """χ² of 6000 first tokens against the softmax of the masked logits."""
    world = make_world(setup)
    learner = world.learner
    model = learner._model().eval()
    context = learner.context_vec(['i play the cello.'], ['hello there .'])
    n = 6000
    with torch.no_grad():
        rows = sample_responses(
            model.transmitter, context[None].expand(n, -1), 1, model.banned,
            torch.Generator().manual_seed(3),
        )  # fmt: skip
        start = torch.tensor([[learner.START_IDX]])
        hidden, _ = model.transmitter.backbone(context[None], start)
        probs = F.softmax(model.mask_logits(model.transmitter.backbone.logits(hidden[0, 0])), -1)
    counts = torch.bincount(rows[:, 0], minlength=len(probs)).float()
    expected = probs * n
    assert counts[probs == 0].sum() == 0  # banned tokens never drawn
    keep = expected >= 5
    chi2 = (((counts - expected) ** 2 / expected)[keep]).sum().item()
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof), (chi2, dof)  # ~ p > 0.003


def test_sampler_with_cache_equals_full_recomputation(setup):
    """Same generator, same draws: the cached loop samples token t from p(· | context, y_<t)."""
    world = make_world(setup)
    learner = world.learner
    model = learner._model().eval()
    contexts = [
        learner.context_vec(['i play the cello.'], ['hello there .']),
        learner.context_vec(['i bake bread every morning.', 'i have three cats.'], ['hi']),
    ]
    padded = learner._pad_contexts(contexts)
    with torch.no_grad():
        got = sample_responses(
            model.transmitter, padded, 6, model.banned, torch.Generator().manual_seed(1)
        )
        generator = torch.Generator().manual_seed(1)
        prefix = torch.full((2, 1), learner.START_IDX)
        done = torch.zeros(2, dtype=torch.bool)
        drawn = []
        for _ in range(got.shape[1]):
            hidden, _ = model.transmitter.backbone(padded, prefix)
            logits = model.mask_logits(model.transmitter.backbone.logits(hidden[:, -1]))
            token = sample(logits.float(), generator=generator).masked_fill(done, learner.NULL_IDX)
            drawn.append(token)
            done |= token == learner.END_IDX
            prefix = torch.cat([prefix, token[:, None]], dim=1)
    assert torch.equal(got, torch.stack(drawn, dim=1))


# ------------------------------------------------------------------------------ rewards


class FakeReceiver:
    """r(x, w) = len(x words) + 10 · (persona id): tells which text and persona were scored."""

    def perception_scores(self, texts, personas):
        return torch.tensor(
            [len(t.split()) + 10.0 * persona_id(p) for t, p in zip(texts, personas)]
        )


PERSONAS = {  # real words: contexts built from different personas differ
    'i keep bees in my garden.': 1,
    'i play the cello.': 2,
    'i bake bread every morning.': 3,
    'i have three cats.': 4,
}


def persona_id(persona: list[str]) -> int:
    return PERSONAS[persona[0]]


class FakeLM:
    def score(self, texts):
        return torch.tensor([0.5 * len(t.split()) + 0.01 * len(t) for t in texts])


def _episode(learner):
    """Two hand-made self-play dialogues x1 a1 x2 a2 x3 a3, with B's contexts and replies."""
    pairs = [
        {
            'user_persona': ['i keep bees in my garden.'],
            'agent_persona': ['i play the cello.'],
            'opener': 'hello there',
        },
        {
            'user_persona': ['i bake bread every morning.'],
            'agent_persona': ['i have three cats.'],
            'opener': 'my bees',
        },
    ]
    dialogues = [
        ['hello there', 'my bees made honey', 'i play the cello', 'cello', 'ok then', 'bees again'],
        ['my bees', 'the bread came out', 'i surf', 'my cats knocked', 'nice', 'a big dog'],
    ]
    contexts = [
        [learner.context_vec(p['agent_persona'], d[: 2 * n + 1]) for n in range(3)]
        for p, d in zip(pairs, dialogues)
    ]
    replies = [[reply_vec(learner, d[2 * n + 1]) for n in range(3)] for d in dialogues]
    return pairs, dialogues, contexts, replies


def _eq8_by_hand(user, agent, gamma):
    """Eq. 8 written out for N = 3."""
    g = gamma
    return [
        agent[0] + g * user[1] + g**2 * agent[1] + g**3 * user[2] + g**4 * agent[2],
        agent[1] + g * user[2] + g**2 * agent[2],
        agent[2],
    ]


def test_rs3_scores_each_speakers_own_utterances_with_its_own_persona(setup):
    world = make_world(setup, '--rs-lambda1', '0', '--rs-lambda2', '0')
    world.receiver, world.lambdas = FakeReceiver(), (0.0, 0.0, 0.5)
    pairs, dialogues, contexts, replies = _episode(world.learner)
    total, (r1, r2, r3) = world.rewards(pairs, dialogues, contexts, replies)
    for i, (pair, d) in enumerate(zip(pairs, dialogues)):
        user_id = persona_id(pair['user_persona'])
        agent_id = persona_id(pair['agent_persona'])
        agent = [len(d[2 * n + 1].split()) + 10.0 * agent_id for n in range(3)]
        user = [len(d[2 * n].split()) + 10.0 * user_id for n in range(3)]
        expected = _eq8_by_hand(user, agent, GAMMA)
        assert r3[i].tolist() == pytest.approx(expected)
        assert total[i].tolist() == pytest.approx([0.5 * e for e in expected])
    assert float(r1.abs().sum() + r2.abs().sum()) == 0.0


def test_rs3_discount_follows_gamma(setup):
    world = make_world(setup, '--rs-lambda1', '0', '--rs-lambda2', '0', '--rs-gamma', '0.3')
    world.receiver, world.lambdas = FakeReceiver(), (0.0, 0.0, 1.0)
    pairs, dialogues, contexts, replies = _episode(world.learner)
    _, (_, _, r3) = world.rewards(pairs, dialogues, contexts, replies)
    d, pair = dialogues[0], pairs[0]
    agent = [len(d[2 * n + 1].split()) + 20.0 for n in range(3)]
    user = [len(d[2 * n].split()) + 10.0 for n in range(3)]
    assert r3[0].tolist() == pytest.approx(_eq8_by_hand(user, agent, 0.3))
    assert persona_id(pair['agent_persona']) == 2


def test_rs1_under_a_separate_lm_scores_the_learners_replies(setup):
    world = make_world(setup, '--rs-lambda2', '0')
    world.lm, world.lambdas = FakeLM(), (0.4, 0.0, 0.0)
    pairs, dialogues, contexts, replies = _episode(world.learner)
    total, (r1, _, _) = world.rewards(pairs, dialogues, contexts, replies)
    expected = torch.tensor(
        [[FakeLM().score([d[2 * n + 1]]).item() for n in range(3)] for d in dialogues]
    )
    assert torch.allclose(r1, expected)
    assert torch.allclose(total, 0.4 * expected)


def test_rs1_under_the_user_is_the_length_normalised_reply_log_prob(setup):
    world = make_world(setup, '--rs-lambda2', '0')
    world.lambdas = (1.0, 0.0, 0.0)
    user = world.user
    pairs, dialogues, contexts, replies = _episode(world.learner)
    _, (r1, _, _) = world.rewards(pairs, dialogues, contexts, replies)
    empty = user.context_vec([], [])
    for i in range(2):
        for n in range(3):
            reply = replies[i][n]
            expected = eval_log_prob(user, empty, reply) / len(reply)  # Eq. 6 with END
            assert r1[i, n].item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize('scorer', ['user', 'learner'])
def test_rs2_scores_b_reply_in_b_context_with_the_chosen_nup_head(setup, scorer):
    world = make_world(setup, '--rs-lambda1', '0', '--rs2-model', scorer)
    world.lambdas = (0.0, 1.0, 0.0)
    with torch.no_grad():  # make learner and user differ
        world.learner._model().transmitter.nup_head.bias.add_(torch.tensor([0.7, -0.7]))
    agent = world.user if scorer == 'user' else world.learner
    pairs, dialogues, contexts, replies = _episode(world.learner)
    _, (_, r2, _) = world.rewards(pairs, dialogues, contexts, replies)
    model = agent._model().eval()
    for i, (pair, d) in enumerate(zip(pairs, dialogues)):
        for n in range(3):
            context = agent.context_vec(pair['agent_persona'], d[: 2 * n + 1])
            with torch.no_grad():
                nup = model.transmitter(context[None], replies[i][n][None]).nup_logits
            expected = F.log_softmax(nup.float(), -1)[0, 1].item()  # Eq. 7: log p(y=1)
            assert r2[i, n].item() == pytest.approx(expected, abs=1e-5)


def test_total_reward_weights_each_part_by_its_lambda(setup):
    world = make_world(setup)
    world.receiver, world.lm, world.lambdas = FakeReceiver(), FakeLM(), (0.3, 0.2, 0.7)
    pairs, dialogues, contexts, replies = _episode(world.learner)
    total, (r1, r2, r3) = world.rewards(pairs, dialogues, contexts, replies)
    assert float(r1.abs().min()) > 0 and float(r2.abs().min()) > 0 and float(r3.min()) > 0
    assert torch.allclose(total, 0.3 * r1 + 0.2 * r2 + 0.7 * r3)


# ------------------------------------------------------------------------------- update


def _loss_by_hand(agent, contexts, replies, rewards, baseline):
    lps = torch.tensor(
        [[eval_log_prob(agent, c, r) for c, r in zip(cs, rs)] for cs, rs in zip(contexts, replies)]
    )
    return (-(rewards - baseline) * lps).mean().item()


@pytest.mark.parametrize('kind', ['batch', 'turn'])
def test_update_is_reinforce_with_the_chosen_baseline(setup, kind):
    world = make_world(setup, '--rl-baseline', kind)
    pairs, dialogues, contexts, replies = _episode(world.learner)
    replies[1][2] = replies[1][2][:-1]  # one capped reply (no END): variable lengths
    rewards = torch.tensor([[3.0, 1.0, 0.5], [1.0, 2.0, -0.5]])
    if kind == 'batch':
        baseline = torch.full_like(rewards, rewards.mean().item())
    else:
        baseline = torch.tensor([[2.0, 1.5, 0.0], [2.0, 1.5, 0.0]])
    expected = _loss_by_hand(world.learner, contexts, replies, rewards, baseline)
    assert world.update(contexts, replies, rewards) == pytest.approx(expected, rel=1e-4)
    assert world.learner._number_training_updates == 1


def test_per_turn_and_batch_baselines_by_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0], [3.0, 6.0, 5.0]])
    assert torch.allclose(reinforce_baseline(rewards, 'batch'), torch.full((2, 3), 10 / 3))
    assert reinforce_baseline(rewards, 'turn').tolist() == [[2.0, 4.0, 4.0]] * 2
    with pytest.raises(ValueError, match='baseline'):
        reinforce_baseline(rewards, 'episode')
    # RS.3's discounting makes the expected reward differ by turn (the issue's 1.9μ/1.75μ/μ)
    mu = torch.ones(1, 3)
    assert discounted_persona_reward(mu, mu, 0.5)[0].tolist() == [1.9375, 1.75, 1.0]


def test_update_moves_the_weights_toward_the_rewarded_reply(setup):
    world = make_world(setup)
    learner = world.learner
    context = learner.context_vec(['i keep bees in my garden.'], ['hello .'])
    good, bad = reply_vec(learner, 'my bees made honey'), reply_vec(learner, 'the cello', False)
    before = [eval_log_prob(learner, context, good), eval_log_prob(learner, context, bad)]
    world.update([[context], [context]], [[good], [bad]], torch.tensor([[1.0], [0.0]]))
    after = [eval_log_prob(learner, context, good), eval_log_prob(learner, context, bad)]
    assert after[0] > before[0] + 1e-3  # the rewarded reply became more likely
    assert after[1] < before[1] - 1e-3  # the one below the baseline less likely
    assert world.user is not learner
    assert eval_log_prob(world.user, context, good) == pytest.approx(before[0], rel=1e-5)


def test_parley_rewards_feed_the_update_of_the_same_rollout(setup, monkeypatch):
    """Through parley (N = 2): who says what with which persona, and the rollout whose reply
    the (stubbed) reward favours gains probability."""
    world = make_world(setup, '--selfplay-turns', '2')
    learner, user = world.learner, world.user
    seen = {}

    def rewards(pairs, dialogues, contexts, replies):
        seen.update(pairs=pairs, dialogues=dialogues, contexts=contexts, replies=replies)
        r = torch.zeros(len(pairs), 2)
        r[0, 0] = 1.0
        return r, (r, r, r)

    monkeypatch.setattr(world, 'rewards', rewards)
    world.rollouts = 3
    calls = []
    real_update = world.update
    monkeypatch.setattr(world, 'update', lambda c, r, w: calls.append(1) or real_update(c, r, w))
    drawn, answered = [], []
    real_sample, real_generate = learner.sample_replies, user.generate

    def spy_sample(contexts, max_len, generator=None):
        out = real_sample(contexts, max_len, generator)
        drawn.append((max_len, [c.tolist() for c in contexts], out))
        return out

    def spy_user(contexts, sample=False, max_len=None):
        answered.append((sample, [c.tolist() for c in contexts]))
        return real_generate(contexts, sample, max_len)

    monkeypatch.setattr(learner, 'sample_replies', spy_sample)
    monkeypatch.setattr(user, 'generate', spy_user)
    torch.manual_seed(5)
    world.parley()
    assert calls == [1]
    pairs, dialogues = seen['pairs'], seen['dialogues']
    contexts, replies = seen['contexts'], seen['replies']
    # B samples (multinomial, capped at --selfplay-max-len 4) at turns 1 and 2; A answers once,
    # with its normal decoding, between them (not after B's last turn)
    assert [m for m, _, _ in drawn] == [4, 4] and [s for s, _ in answered] == [False]
    for i, (pair, d) in enumerate(zip(pairs, dialogues)):
        assert len(d) == 4 and d[0] == pair['opener']
        for n in range(2):
            assert torch.equal(replies[i][n], drawn[n][2][i])
            assert d[2 * n + 1] == learner.decode_text(replies[i][n])  # B's text = its tokens
            # B's context: its own persona and the dialogue so far
            expected = learner.context_vec(pair['agent_persona'], d[: 2 * n + 1]).tolist()
            assert contexts[i][n].tolist() == expected == drawn[n][1][i]
        # A's context: A's persona, the opener and B's first reply
        assert answered[0][1][i] == user.context_vec(pair['user_persona'], d[:2]).tolist()
    assert world.last_dialogue == dialogues[0]
    # the rewarded reply (rollout 0, turn 1) is now more likely than under the frozen user (=
    # the start point), a zero-reward one less likely (baseline 1/6)
    now = eval_log_prob(learner, contexts[0][0], replies[0][0])
    assert now > eval_log_prob(user, contexts[0][0], replies[0][0])
    now = eval_log_prob(learner, contexts[1][1], replies[1][1])
    assert now < eval_log_prob(user, contexts[1][1], replies[1][1])


def test_nan_reward_stops_the_update_and_leaves_the_weights(setup):
    world = make_world(setup)
    pairs, dialogues, contexts, replies = _episode(world.learner)
    before = {k: v.clone() for k, v in world.learner.model.state_dict().items()}
    rewards = torch.tensor([[1.0, math.nan, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(NonFiniteRewardError, match='NaN or infinite'):
        world.update(contexts, replies, rewards)
    after = world.learner.model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())


# ------------------------------------------------------------------------------ options


def test_rs1_user_warns_that_it_is_the_learners_own_model(setup, monkeypatch):
    import parlai_ext.tasks.p2bot_selfplay.worlds as worlds

    messages = []
    monkeypatch.setattr(worlds.logging, 'warning', lambda m, *a, **k: messages.append(m))
    make_world(setup)
    assert any('--rs1-lm user' in m and 'learner' in m for m in messages)
    messages.clear()
    make_world(setup, '--rs-lambda1', '0')
    assert not any('--rs1-lm' in m for m in messages)


def test_no_persona_ablation_leaves_the_persona_out(setup, tmp_path):
    world = make_world(setup)
    learner = world.learner
    persona, turns = ['i keep bees in my garden.'], ['hello there .']
    with_persona = learner.context_vec(persona, turns).tolist()
    bees = learner.dict['bees']
    assert bees in with_persona
    learner.opt['use_persona'] = False
    without = learner.context_vec(persona, turns).tolist()
    assert bees not in without and without[0] == learner.persona_idx
    assert without[1:] == [learner.partner_idx, *learner.dict.txt2vec('hello there .')]
    # saved with the model; a model initialised from it inherits the option
    learner.save(str(tmp_path / 'noper'))
    opt = ParlaiParser(True, True).parse_args(
        ['-m', 'p2bot_transmitter', '--init-model', str(tmp_path / 'noper')]
    )
    assert opt['use_persona'] is False


def test_weight_decay_exempts_biases_and_layer_norms(setup):
    world = make_world(setup, '--optimizer', 'adamw', '--weight-decay', '0.1')
    groups = world.learner.optimizer.param_groups
    assert [g['weight_decay'] for g in groups] == [0.1, 0.0]
    model = world.learner._model()
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = [names[id(p)] for p in groups[1]['params']]
    assert exempt and all(n.endswith('bias') or 'norm' in n.lower() for n in exempt)
    assert all(p.ndim >= 2 for p in groups[0]['params'])
    assert 'transmitter.nup_head.bias' in exempt and 'transmitter.nup_head.weight' not in exempt


# ------------------------------------------------------------------------------- resume


def test_user_model_comes_from_the_checkpoint_opt_not_the_checkpoint(setup, tmp_path):
    world = make_world(setup, model_file=str(tmp_path / 'sp'))
    world.parley()
    world.learner.save(str(tmp_path / 'sp.checkpoint'))  # what TrainLoop saves
    saved = json.loads(Path(str(tmp_path / 'sp.checkpoint.opt')).read_text())
    assert saved['selfplay_user_model'] == setup['user']
    # a restart: ParlAI points --init-model at the checkpoint; mf itself does not exist yet
    args = [
        '-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay', *setup['common'],
        '--init-model', str(tmp_path / 'sp.checkpoint'), '-mf', str(tmp_path / 'sp'),
        '-bs', '2', '--rs-lambda3', '0', '-dt', 'train', '--selfplay-max-len', '4',
        '--optimizer', 'sgd', '-lr', '1e-2',
    ]  # fmt: skip
    opt = ParlaiParser(True, True).parse_args(args)
    opt['load_from_checkpoint'] = True  # TrainLoop's option (default true)
    learner = create_agent(opt)
    resumed = create_task(opt, learner)
    assert resumed.user.opt['model_file'] == setup['user']
    assert learner.opt['selfplay_user_model'] == setup['user']
    assert learner._number_training_updates == 1
    # naming the learner's own checkpoint as the user is refused
    opt = ParlaiParser(True, True).parse_args(
        [*args, '--selfplay-user-model', str(tmp_path / 'sp.checkpoint')]
    )
    opt['load_from_checkpoint'] = True
    with pytest.raises(ValueError, match='learner itself'):
        create_task(opt, create_agent(opt))


def test_truncate_log_keeps_each_update_once(tmp_path):
    from parlai_ext.tasks.p2bot_selfplay.worlds import truncate_log

    log = tmp_path / 'sp.jsonl'
    lines = [json.dumps({'update': u, 'reward': u / 10}) for u in (1, 2, 3, 4)]
    log.write_text('\n'.join(lines) + '\n{"update": 5, "rew')  # cut by a kill
    truncate_log(str(log), 2)
    assert [json.loads(x)['update'] for x in log.read_text().splitlines()] == [1, 2]
    truncate_log(str(log), 2)  # nothing to drop: unchanged
    assert log.read_text() == '\n'.join(lines[:2]) + '\n'
    truncate_log(str(tmp_path / 'missing.jsonl'), 3)  # no log yet: nothing happens
    assert not (tmp_path / 'missing.jsonl').exists()


# ------------------------------------------------------------- personas (Fig. 4)


def test_personas_are_paired_as_in_fig4():
    """A: the episode's opener and partner persona; B: the persona of another episode."""
    import random

    from parlai_ext.tasks.p2bot_selfplay.worlds import _pair_personas

    episodes = [
        {'self_persona': [f's{i}'], 'partner_persona': [f'p{i}'], 'first_utterance': f'hi {i}'}
        for i in range(5)
    ]
    rng = random.Random(0)
    for index in range(5):
        for _ in range(4):
            pair = _pair_personas(episodes, rng, index)
            assert pair['opener'] == f'hi {index}' and pair['user_persona'] == [f'p{index}']
            other = int(pair['agent_persona'][0][1:])
            assert pair['agent_persona'][0].startswith('s') and other != index
    # a `self`-view file (no partner persona): A takes a third episode's own persona
    selfview = [dict(e, partner_persona=[]) for e in episodes]
    pair = _pair_personas(selfview, random.Random(1), 2)
    assert pair['user_persona'][0].startswith('s') and pair['user_persona'] != pair['agent_persona']
