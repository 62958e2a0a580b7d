"""CORAL's agents pinned by value (unofficial re-implementation of Santra et al.).

The mix-policy update end to end through ``CoralAgent.train_step`` (Algorithm 1): which
response is chosen (ground truth with probability p+, else a nucleus sample capped at
``--label-truncate``), which context and response the reward scores, the parameter update
against a hand-computed gradient of Eq. 3 for every normalisation, the sign; the nucleus
negatives against their exact distribution (χ², p = 0.9); the reward agents' training step,
metrics, evaluation pairs, candidate scoring and weight decay; the presets.
"""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent
from parlai.core.message import Message
from parlai.core.params import ParlaiParser
from parlai.scripts.train_model import setup_args as train_setup_args
from scipy.stats import chisquare
from test_coral import (
    GEN_ARGS,
    RESPONSES,
    TOPICS,
    fixture_observations,
    write_fixture,
)

from parlai_ext.agents.coral import CoralAgent, pad_rows

PRESETS = Path(__file__).resolve().parents[1] / 'projects' / 'coral'


@pytest.fixture(scope='module')
def dict_file(tmp_path_factory):
    from parlai.scripts.build_dict import BuildDict

    folder = tmp_path_factory.mktemp('coral_agents')
    data = write_fixture(folder / 'topics.txt')
    path = str(folder / 'topics.dict')
    BuildDict.main(task='fromfile:parlaiformat', fromfile_datapath=data, dict_file=path)
    return path


def make(dict_file: str, **kwargs):
    opt = ParlaiParser(True, True).parse_kwargs(**{**GEN_ARGS, 'dict_file': dict_file, **kwargs})
    return create_agent(opt)


def enable_metrics(agent) -> None:
    agent._local_metrics = {}
    agent._control_local_metrics(enabled=True)


def metric_values(agent, name: str) -> list[float | None]:
    """One value per example; None where the example does not count (denominator 0)."""
    out = []
    for metric in agent._local_metrics[name]:
        out.append(None if metric._denom == 0 else metric.value())
    return out


def pair_score(context: str, response: str) -> float:
    """A reward that depends on the pair: high when the response names the context's topic,
    with a pair-specific jitter, so that any mix-up of rows changes the values."""
    match = any(t in context.split() and t in response.split() for t in TOPICS)
    jitter = (sum(map(ord, context)) * 7 + sum(map(ord, response)) * 3) % 17 / 100
    return (0.7 if match else 0.1) + jitter


class PairReward:
    """Records every (context, response) it is asked to score."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def score(self, contexts, responses) -> torch.Tensor:
        self.calls.append((list(contexts), list(responses)))
        return torch.tensor([pair_score(c, r) for c, r in zip(contexts, responses)])


def record_choices(agent):
    chosen = []
    original = agent.choose_responses

    def wrapper(batch):
        out = original(batch)
        chosen.append(out)
        return out

    agent.choose_responses = wrapper
    return chosen


def sequence_log_probs_by_hand(model, text_vec, rows, pad, end=None):
    """Teacher-forced Σ_t log P(r_t | r_<t, c) of each row, one row at a time (no padding)."""
    out = []
    for source, row in zip(text_vec, rows):
        source = source[source != pad][None]
        logits, *_ = model(source, ys=row[None])
        log_probs = F.log_softmax(logits.float(), dim=-1)[0]
        out.append(sum(log_probs[t, row[t]] for t in range(len(row))))
    return out


# --- the fix: nucleus negatives never longer than --label-truncate ----------------------------
def test_nucleus_negatives_are_capped_at_label_truncate(dict_file):
    torch.manual_seed(0)
    agent = make(dict_file, reward_model_file='constant:1', label_truncate=5)
    assert agent.negative_max_len == 5  # the default: the ground truth's limit
    batch = agent.batchify(fixture_observations(agent))
    agent.model.eval()
    drawn = agent.sample_negatives(batch, [0, 1, 2, 3] * 8)
    assert not agent.model.training  # the caller's mode is restored, whichever it was
    lengths = Counter(len(tokens) for _, tokens in drawn)
    assert max(lengths) == 5 and lengths[5] > 0, lengths
    for text, tokens in drawn:  # a capped sample has no end token (none was sampled)
        assert (tokens == agent.END_IDX).sum() == (1 if len(tokens) < 5 else 0)
        assert text == agent._v2t(tokens)
    # the ground truth obeys the same limit
    assert max(int((row != agent.NULL_IDX).sum()) for row in batch.label_vec) <= 5
    assert make(dict_file, label_truncate=5, negative_max_len=3).negative_max_len == 3
    assert make(dict_file, label_truncate=5, negative_max_len=60).negative_max_len == 5


def test_options_are_checked_up_front(dict_file):
    for bad in (dict(p_positive=1.2), dict(negative_topp=0.0), dict(negative_max_len=0)):
        with pytest.raises(ValueError):
            make(dict_file, **bad)


# --- the fix: an off-policy preset with the ground truth only (§5.3) --------------------------
@pytest.mark.parametrize('name,margin', [('dailydialog_offp_gt', 0.0), ('ubuntu_offp_gt', 0.4)])
def test_ground_truth_only_presets(dict_file, name, margin):
    preset = json.loads((PRESETS / f'{name}.opt').read_text())
    assert preset['p_positive'] == 1.0 and preset['margin'] == margin
    opt = train_setup_args().parse_args(
        ['-o', str(PRESETS / f'{name}.opt'), '--dict-file', dict_file, '--n-layers', '1',
         '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32',
         '--reward-model-file', 'constant:1'],
    )  # fmt: skip
    agent = create_agent(opt)
    assert isinstance(agent, CoralAgent) and agent.opt['validation_metric'] == 'r3'

    def no_negatives(*args):
        raise AssertionError('p+ = 1 must never draw a negative')

    agent.sample_negatives = no_negatives
    agent.pool.sample = no_negatives
    for seed in range(5):
        batch = agent.batchify(fixture_observations(agent, seed=seed))
        texts, rows, positive = agent.choose_responses(batch)
        assert positive.all() and texts == list(batch.labels)
    assert len(agent.pool) == 0  # no pool is kept when it is never drawn from


# --- Algorithm 1 end to end through the agent's own train step --------------------------------
@pytest.mark.parametrize('normalise', ['token', 'mean', 'sum', 'length'])
def test_train_step_applies_eq3_to_the_chosen_responses_in_their_contexts(dict_file, normalise):
    """Mix-policy: half ground truths, half nucleus samples; the update equals one SGD step on
    −Σ_i (f_R(c_i, r_i) − m) Σ_t log P(r_it | r_i<t, c_i), normalised as asked, where c_i is
    row i's own context and r_i the response chosen for row i."""
    torch.manual_seed(1)
    lr, margin = 0.5, 0.3
    agent = make(
        dict_file, reward_model_file='constant:1', p_positive=0.5, margin=margin,
        coral_normalise=normalise, label_truncate=6, learningrate=lr,
    )  # fmt: skip
    agent.reward = PairReward()
    chosen = record_choices(agent)
    observations = fixture_observations(agent, n=8, seed=4)
    contexts = [obs['text'] for obs in observations]
    batch = agent.batchify(observations)
    before = copy.deepcopy(agent.model)
    enable_metrics(agent)
    agent.train_step(batch)

    ((texts, rows, positive),) = chosen
    assert 0 < int(positive.sum()) < 8  # both kinds in the batch
    for i, (text, row) in enumerate(zip(texts, rows)):
        if positive[i]:  # the ground truth, text and vector
            label = batch.label_vec[i]
            assert text == batch.labels[i] and torch.equal(row, label[label != agent.NULL_IDX])
        else:  # a sample: its own text, at most --label-truncate tokens
            assert text == agent._v2t(row) and 1 <= len(row) <= 6
            assert (row == agent.START_IDX).sum() == 0
    # the reward scored each chosen response in its own row's context
    assert agent.reward.calls == [(contexts, texts)]

    # Eq. 3 by hand on the weights before the step
    rewards = [pair_score(c, t) - margin for c, t in zip(contexts, texts)]
    before.train()
    log_probs = sequence_log_probs_by_hand(before, batch.text_vec, rows, agent.NULL_IDX)
    terms = [-r * lp for r, lp in zip(rewards, log_probs)]
    lengths = [len(row) for row in rows]
    loss = {
        'sum': sum(terms),
        'mean': sum(terms) / len(terms),
        'token': sum(terms) / sum(lengths),
        'length': sum(t / n for t, n in zip(terms, lengths)) / len(terms),
    }[normalise]
    loss.backward()
    for (name, old), new in zip(before.named_parameters(), agent.model.parameters()):
        expected = old - lr * old.grad if old.grad is not None else old
        assert torch.allclose(new, expected, atol=1e-5), name
    assert agent.global_metrics.report()['coral_loss'].value() == pytest.approx(loss.item(), 1e-4)

    # the metrics of what was trained on
    scores = [pair_score(c, t) for c, t in zip(contexts, texts)]
    is_pos = positive.tolist()
    assert metric_values(agent, 'positive') == [float(p) for p in is_pos]
    assert metric_values(agent, 'train_reward') == pytest.approx(scores)
    assert metric_values(agent, 'reward_pos') == [
        pytest.approx(s) if p else None for s, p in zip(scores, is_pos)
    ]
    assert metric_values(agent, 'reward_neg') == [
        None if p else pytest.approx(s) for s, p in zip(scores, is_pos)
    ]
    nll = [-lp.item() for lp in log_probs]
    assert metric_values(agent, 'nll_pos') == [
        pytest.approx(n, abs=1e-4) if p else None for n, p in zip(nll, is_pos)
    ]


def test_p_plus_chooses_the_ground_truth_at_its_rate_with_nucleus_negatives(dict_file):
    torch.manual_seed(0)
    agent = make(dict_file, reward_model_file='constant:1', p_positive=0.25, label_truncate=4)
    batch = agent.batchify(fixture_observations(agent, n=8))
    positives = total = 0
    for _ in range(60):
        texts, rows, positive = agent.choose_responses(batch)
        for i in range(8):
            label = batch.label_vec[i]
            is_label = torch.equal(rows[i], label[label != agent.NULL_IDX])
            assert is_label or not positive[i]
        positives += int(positive.sum())
        total += 8
    rate, sigma = positives / total, math.sqrt(0.25 * 0.75 / total)
    assert abs(rate - 0.25) < 4 * sigma, rate


def test_mix_policy_moves_the_weights_toward_high_reward_responses(dict_file):
    """Each update raises log P of the responses it trained on with R3 > 0 (ground truths that
    name the context's topic) and lowers it for those with R3 < 0 (random negatives about
    another topic): Σ_i R3_i Δ log P_i > 0, the first-order effect of a REINFORCE step."""
    torch.manual_seed(0)
    margin = 0.45
    agent = make(
        dict_file, reward_model_file='constant:1', p_positive=0.5, negative_source='random',
        margin=margin, learningrate=0.05,
    )  # fmt: skip
    agent.reward = PairReward()
    chosen = record_choices(agent)
    agent._control_local_metrics(disabled=True)
    agent.pool.add(
        [r.format(t) for t in TOPICS for r in RESPONSES],
        [agent._vectorize_text(r.format(t), add_end=True) for t in TOPICS for r in RESPONSES],
    )
    for seed in range(3):
        observations = fixture_observations(agent, n=8, seed=10 + seed)
        batch = agent.batchify(observations)
        before = copy.deepcopy(agent.model).eval()
        agent.train_step(batch)
        texts, rows, _ = chosen[-1]
        rewards = torch.tensor(
            [pair_score(o['text'], t) - margin for o, t in zip(observations, texts)]
        )
        assert (rewards > 0).any() and (rewards < 0).any()
        agent.model.eval()
        with torch.no_grad():
            old = torch.stack(sequence_log_probs_by_hand(before, batch.text_vec, rows, 0))
            new = torch.stack(sequence_log_probs_by_hand(agent.model, batch.text_vec, rows, 0))
        change = new - old
        assert (rewards * change).sum() > 0, (rewards, change)
        assert change[rewards > 0].mean() > 0 > change[rewards < 0].mean(), (rewards, change)


def test_cross_entropy_warmup_then_coral(dict_file):
    torch.manual_seed(0)
    agent = make(dict_file, reward_model_file='constant:1', ce_warmup_updates=2)
    agent.reward = PairReward()
    agent._control_local_metrics(disabled=True)
    for seed in range(3):
        agent.train_step(agent.batchify(fixture_observations(agent, seed=seed)))
        assert len(agent.reward.calls) == max(0, seed - 1)  # updates 0 and 1: plain NLL
    assert agent._number_training_updates == 3


def test_reward_reads_the_whole_dialogue_history(dict_file):
    """The context given to the reward model is ParlAI's full history text, row by row."""
    agent = make(dict_file, reward_model_file='constant:1')
    observations = fixture_observations(agent, n=3)
    observations[0].force_set('full_text', 'an earlier turn\n' + observations[0]['text'])
    observations.insert(1, Message.padding_example())  # ParlAI skips it
    batch = agent.batchify(observations)
    assert batch.valid_indices.tolist() == [0, 2, 3]
    assert batch.context_texts == [
        'an earlier turn\n' + observations[0]['text'],
        observations[2]['text'],
        observations[3]['text'],
    ]


# --- nucleus negatives against their exact distribution ---------------------------------------
def nucleus_probs(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Holtzman et al.'s nucleus: the most probable tokens until their mass reaches p (a token
    is in when the mass before it is below p), renormalised."""
    probs = logits.float().softmax(dim=-1)
    order = probs.argsort(descending=True)
    before = probs[order].cumsum(0) - probs[order]
    keep = torch.zeros_like(probs, dtype=torch.bool)
    keep[order[before < p]] = True
    kept = probs * keep
    return kept / kept.sum()


def test_nucleus_negatives_follow_the_exact_two_token_distribution_at_p_0_9(dict_file):
    """χ² of (first, second) token of 6,000 samples against Π_t Nucleus_0.9(P(r_t | r_<t, c))
    with the end token banned at t = 1; tokens outside the nucleus never appear."""
    torch.manual_seed(0)
    agent = make(dict_file, reward_model_file='constant:1', negative_max_len=2, dropout=0.3)
    with torch.no_grad():  # a sharper model: the nucleus leaves a real tail out
        agent.model.seq2seq.embeddings.tokens.weight.mul_(3.0)
    batch = agent.batchify(fixture_observations(agent, n=2, seed=2))
    model, end = agent.model, agent.END_IDX
    model.eval()
    with torch.no_grad():
        source = batch.text_vec[:1]
        state = model.encoder(source)

        def next_logits(prefix):
            hidden, _ = model.decoder(torch.tensor([[agent.START_IDX, *prefix]]), state, None)
            return model.output(hidden[:, -1:])[0, 0]

        first = next_logits([])
        first[end] = float('-inf')
        q1 = nucleus_probs(first, 0.9)
        exact = {}
        for t1 in q1.nonzero().flatten().tolist():
            q2 = nucleus_probs(next_logits([t1]), 0.9)
            for t2 in q2.nonzero().flatten().tolist():
                exact[(t1, t2)] = (q1[t1] * q2[t2]).item()
    assert 3 < len(q1.nonzero()) < len(agent.dict) - 5  # a nucleus, not everything
    agent.model.train()  # sampling must switch dropout off by itself
    n = 6000
    drawn = agent.sample_negatives(batch, [0] * n)
    assert agent.model.training
    counts = Counter(tuple(tokens.tolist()) for _, tokens in drawn)
    assert set(counts) <= set(exact), set(counts) - set(exact)  # nothing outside the nucleus
    big = [cell for cell, prob in exact.items() if prob * n >= 5]
    observed = [counts[cell] for cell in big] + [n - sum(counts[cell] for cell in big)]
    expected = [exact[cell] * n for cell in big]
    expected.append(n - sum(expected))
    assert len(big) >= 8
    assert chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


# --- the reward agents ------------------------------------------------------------------------
def make_reward_agent(dict_file: str, kind: str, **kwargs):
    args = dict(
        dict_file=dict_file, dropout=0.0, batchsize=4, optimizer='sgd', learningrate=0.5,
        gradient_clip=-1,
    )  # fmt: skip
    if kind == 'esim':
        args.update(model='coral_esim', embedding_size=8, hidden_size=6)
    else:
        args.update(
            model='coral_cross_encoder', n_layers=1, embedding_size=16, n_heads=2, ffn_size=32,
            n_positions=64, text_truncate=30, label_truncate=20, mlp_hidden_size=8,
        )  # fmt: skip
    args.update(kwargs)
    return create_agent(ParlaiParser(True, True).parse_kwargs(**args))


@pytest.mark.parametrize('kind', ['esim', 'cross'])
def test_reward_agent_train_step_is_bce_of_positives_against_random_negatives(dict_file, kind):
    """One SGD step on −mean[log σ(f(c_i, r_i)) + log(1 − σ(f(c_i, r̃_i)))] over the pairs,
    r̃_i drawn from the pool for row i, each pair in its own context."""
    torch.manual_seed(0)
    agent = make_reward_agent(dict_file, kind)
    observations = fixture_observations(agent, n=4, seed=1)
    batch = agent.batchify(observations)
    for obs in observations:  # the agents add no start or end token
        assert agent.START_IDX not in obs['text_vec'].tolist()
        assert agent.END_IDX not in obs['labels_vec'].tolist()
    drawn = []
    original = agent.pool.sample

    def sample(excluded):
        out = original(excluded)
        drawn.append((list(excluded), out))
        return out

    agent.pool.sample = sample
    before = copy.deepcopy(agent.model)
    enable_metrics(agent)
    agent.train_step(batch)
    ((excluded, negatives),) = drawn
    assert excluded == list(batch.labels)
    assert all(text != label for (text, _), label in zip(negatives, batch.labels))
    before.train()
    total = 0.0
    for obs, (_, negative) in zip(observations, negatives):
        context = obs['text_vec'][None]
        total = total - F.logsigmoid(before(context, obs['labels_vec'][None]))[0]
        total = total - F.logsigmoid(-before(context, negative[None]))[0]
    loss = total / 8
    loss.backward()
    moved = 0.0
    for (name, old), new in zip(before.named_parameters(), agent.model.parameters()):
        expected = old - 0.5 * old.grad if old.grad is not None else old
        assert torch.allclose(new, expected, atol=2e-5), name
        moved = max(moved, (new - old).abs().max().item())
    assert moved > 5e-3  # the step is large next to the tolerance
    bce = metric_values(agent, 'bce')
    assert sum(bce) / len(bce) == pytest.approx(loss.item(), abs=1e-5)


def test_reward_metrics_by_value(dict_file):
    agent = make_reward_agent(dict_file, 'esim')
    enable_metrics(agent)
    pos = torch.tensor([2.0, -1.0, 0.5])
    neg = torch.tensor([-3.0, 1.0, 9.0])
    agent._record_pairs(pos, neg, [True, True, False])
    sig = torch.sigmoid
    assert metric_values(agent, 'pair_acc') == [1.0, 0.0, None]
    assert metric_values(agent, 'pos_score') == pytest.approx(sig(pos).tolist())
    assert metric_values(agent, 'neg_score') == [
        pytest.approx(sig(neg[0]).item()),
        pytest.approx(sig(neg[1]).item()),
        None,
    ]
    bce = [
        (-F.logsigmoid(pos[0]) - F.logsigmoid(-neg[0])).item() / 2,
        (-F.logsigmoid(pos[1]) - F.logsigmoid(-neg[1])).item() / 2,
        (-F.logsigmoid(pos[2])).item(),  # no negative: the positive's term alone
    ]
    assert metric_values(agent, 'bce') == pytest.approx(bce)
    assert metric_values(agent, 'loss') == pytest.approx(bce)
    auc = sum(agent._local_metrics['auc'][1:], agent._local_metrics['auc'][0])
    # the third example has no negative; pairs: (σ2, σ−3) 1, (σ2, σ1) 1, (σ−1, σ−3) 1,
    # (σ−1, σ1) 0, (σ.5, σ−3) 1, (σ.5, σ1) 0
    assert auc.value() == pytest.approx(4 / 6)


def observe(agent, pairs, train: bool = False):
    key = 'labels' if train else 'eval_labels'
    return [
        agent.clone().observe(Message({'text': c, key: [r], 'episode_done': True}))
        for c, r in pairs
    ]


def test_reward_evaluation_pairs_each_example_with_the_previous_response(dict_file):
    """Negative of example i = example i − 1's response (across batches); none for the very
    first example or when that response is the same text (it would be a positive)."""
    agent = make_reward_agent(dict_file, 'esim')
    seen = []

    def pair_logits(contexts, responses):
        seen.append((contexts.clone(), responses.clone()))
        return torch.zeros(contexts.shape[0])

    agent._pair_logits = pair_logits
    first = agent.batchify(
        observe(agent, [('i like cats', 'cats is great'), ('rain ?', 'i love rain too'),
                        ('more rain', 'i love rain too')])
    )  # fmt: skip
    second = agent.batchify(
        observe(agent, [('about dogs', 'dogs is great'), ('pizza ?', 'yes pizza makes me happy')])
    )
    enable_metrics(agent)
    agent._eval_pairs(first)
    # the third example's previous response is its own text: no negative there either
    assert metric_values(agent, 'neg_score') == [None, 0.5, None]
    assert [m._denom for m in agent._local_metrics['pair_acc']] == [0, 2, 0]
    enable_metrics(agent)
    agent._eval_pairs(second)
    assert metric_values(agent, 'neg_score') == [0.5, 0.5]
    rows = [agent._rows(b.label_vec) for b in (first, second)]
    negatives = (
        [rows[0][0], rows[0][0], rows[0][2]],  # no negative: the row's own response stands in
        [rows[0][2], rows[1][0]],
    )
    for (contexts, responses), batch, own, previous in zip(seen, (first, second), rows, negatives):
        n = len(own)
        assert torch.equal(contexts, torch.cat([batch.text_vec, batch.text_vec]))
        for i in range(n):
            assert torch.equal(responses[i][responses[i] != 0], own[i])
            assert torch.equal(responses[n + i][responses[n + i] != 0], previous[i])
    agent.reset()
    assert agent._previous_eval_response is None


def test_candidate_scores_and_text_scores_pair_each_context_with_each_response(dict_file):
    torch.manual_seed(0)
    agent = make_reward_agent(dict_file, 'esim', text_truncate=3, label_truncate=2, dropout=0.5)
    agent.model.eval()
    batch = agent.batchify(fixture_observations(agent, n=2, seed=7))
    cands = pad_rows([agent._vectorize_text(r.format('cats')) for r in RESPONSES], 0)
    with torch.no_grad():
        scores = agent.score_candidates(batch, cands)
        per_row = agent.score_candidates(batch, cands[None].expand(2, -1, -1))
        for i in range(2):
            for j in range(3):
                alone = agent.model(batch.text_vec[i : i + 1], cands[j : j + 1])
                assert scores[i, j].item() == pytest.approx(alone.item(), abs=1e-5)
    assert torch.allclose(scores, per_row)
    # texts: the context keeps its last 3 tokens, the response its first 2
    agent.model.train()  # score() switches dropout off by itself
    got = agent.score(['i really like cats .', 'what'], ['yes dogs makes me happy', 'pizza'])
    agent.model.eval()
    with torch.no_grad():
        expected = torch.sigmoid(
            torch.cat([
                agent.model(torch.tensor([agent.dict.txt2vec('like cats .')]),
                            torch.tensor([agent.dict.txt2vec('yes dogs')])),
                agent.model(torch.tensor([agent.dict.txt2vec('what')]),
                            torch.tensor([agent.dict.txt2vec('pizza')])),
            ])
        )  # fmt: skip
    assert torch.allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize('kind', ['esim', 'cross'])
def test_reward_agents_exempt_biases_and_norms_from_weight_decay(dict_file, kind):
    agent = make_reward_agent(dict_file, kind, optimizer='adamw', weight_decay=0.1)
    names = {id(p): n for n, p in agent.model.named_parameters()}
    decayed, exempt = [], []
    for group in agent.optimizer.param_groups:
        (decayed if group['weight_decay'] > 0 else exempt).extend(
            names[id(p)] for p in group['params']
        )
    assert decayed and exempt
    assert sorted(decayed + exempt) == sorted(names.values())
    assert all(agent.model.get_parameter(n).ndim >= 2 for n in decayed)
    assert all(agent.model.get_parameter(n).ndim < 2 for n in exempt)
    assert any('bias' in n for n in exempt)


def test_cross_encoder_checks_its_positions(dict_file):
    with pytest.raises(ValueError, match='n-positions'):
        make_reward_agent(dict_file, 'cross', text_truncate=50, label_truncate=20)
