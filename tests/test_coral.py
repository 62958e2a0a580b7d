"""CORAL (unofficial re-implementation): the loss against cross-entropy (Appendix A), the sign
of the update, the negative rate 1 − p+, the reward models (ESIM, cross-encoder from scratch
and from a local Hugging Face directory) learning a tiny fixture, the frozen reward model,
nucleus negatives from the current model, the generic reward interface, save → reload."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.params import ParlaiParser
from parlai.scripts.train_model import TrainModel

from parlai_ext.agents.coral import AucMetric, CoralAgent, pad_rows
from parlai_ext.losses.coral import (
    UtterancePool,
    choose_positives,
    coral_loss,
    r3,
    retrieval_bce_loss,
    roc_auc,
)
from parlai_ext.losses.reinforce import reward_weighted_nll, sequence_log_probs
from parlai_ext.modules.coral import CrossEncoder, Esim, pack_pairs
from parlai_ext.modules.transformer import TransformerEncoder
from parlai_ext.rewards import AgentReward, ConstantReward, load_reward_model

# --- the loss --------------------------------------------------------------------------------
PAD = 0


def _logits_and_targets(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 5, 11, generator=gen)
    targets = torch.randint(1, 11, (3, 5), generator=gen)
    targets[0, 3:] = PAD
    targets[2, 1:] = PAD
    return logits, targets


def test_coral_loss_is_token_summed_cross_entropy_when_m0_p1_reward1():
    """Appendix A: m = 0, only positives, f_R ≡ 1 -> CORAL is CE summed over tokens."""
    logits, targets = _logits_and_targets()
    log_probs, mask = sequence_log_probs(logits, targets, PAD)
    ones = torch.ones(3)
    ce_sum = F.cross_entropy(
        logits.view(-1, 11), targets.view(-1), ignore_index=PAD, reduction='sum'
    )
    n_tokens = int((targets != PAD).sum())
    assert torch.allclose(coral_loss(log_probs, mask, ones, 0.0, 'sum'), ce_sum, atol=1e-5)
    assert torch.allclose(coral_loss(log_probs, mask, ones, 0.0, 'token'), ce_sum / n_tokens)
    assert torch.allclose(coral_loss(log_probs, mask, ones, 0.0, 'mean'), ce_sum / 3)
    # per-response length normalisation is a different weighting
    per_row = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD, reduction='none')
    lengths = (targets != PAD).sum(dim=1)
    expected = (per_row.sum(dim=1) / lengths).mean()
    assert torch.allclose(coral_loss(log_probs, mask, ones, 0.0, 'length'), expected, atol=1e-6)
    # the reward weights each response: f = (1, 0.5, 0) and m = 0.25
    scores = torch.tensor([1.0, 0.5, 0.0])
    weighted = (per_row.sum(dim=1) * (scores - 0.25)).sum()
    assert torch.allclose(coral_loss(log_probs, mask, scores, 0.25, 'sum'), weighted, atol=1e-5)
    assert torch.equal(r3(scores, 0.25), scores - 0.25)


@pytest.mark.parametrize('score,margin,direction', [(0.9, 0.4, 1), (0.1, 0.4, -1), (0.4, 0.4, 0)])
def test_update_raises_log_prob_above_margin_and_lowers_it_below(score, margin, direction):
    logits, targets = _logits_and_targets(1)
    logits = logits[:1].clone().requires_grad_(True)
    targets = targets[:1]

    def sequence_log_prob():
        log_probs, mask = sequence_log_probs(logits, targets, PAD)
        return (log_probs * mask).sum()

    before = sequence_log_prob().item()
    loss = coral_loss(*sequence_log_probs(logits, targets, PAD), torch.tensor([score]), margin)
    loss.backward()
    with torch.no_grad():
        logits -= 0.5 * logits.grad  # one SGD step
    change = sequence_log_prob().item() - before
    if direction == 0:
        assert logits.grad.abs().max() == 0
    else:
        assert change * direction > 1e-3, change


def test_reinforce_gradient_and_detached_rewards():
    """∂L/∂ log p_t = −(R − b) / normaliser at real tokens, 0 at padding; no reward gradient."""
    log_probs = torch.randn(2, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    rewards = torch.tensor([0.8, 0.3], requires_grad=True)
    loss = reward_weighted_nll(log_probs, mask, rewards, baseline=0.5, normalise='token')
    loss.backward()
    expected = -(torch.tensor([0.3, -0.2])[:, None] * mask) / 5
    assert torch.allclose(log_probs.grad, expected)
    assert rewards.grad is None
    with pytest.raises(ValueError):
        reward_weighted_nll(log_probs, mask, rewards, normalise='batch')


def test_negatives_are_drawn_at_rate_one_minus_p_plus():
    torch.manual_seed(0)
    n = 20_000
    for p_plus in (0.8, 0.5):
        negative_rate = 1 - choose_positives(n, p_plus).float().mean().item()
        sigma = math.sqrt(p_plus * (1 - p_plus) / n)
        assert abs(negative_rate - (1 - p_plus)) < 4 * sigma, (p_plus, negative_rate)
    assert choose_positives(100, 1.0).all() and not choose_positives(100, 0.0).any()
    with pytest.raises(ValueError):
        choose_positives(3, 1.5)


def test_utterance_pool_is_a_uniform_reservoir_and_avoids_the_own_response():
    pool = UtterancePool(capacity=50, seed=0)
    pool.add([f'u{i}' for i in range(1000)], list(range(1000)))
    assert len(pool) == 50 and pool.seen == 1000
    # reservoir: each of the 1000 utterances is kept with probability 1/20; the kept mean
    # index is ~500 (a FIFO or first-50 pool would give ~975 or ~25)
    kept = [v for _, v in pool.items]
    assert 300 < sum(kept) / len(kept) < 700
    small = UtterancePool(seed=1)
    small.add(['a', 'b'], [0, 1])
    draws = small.sample(['a'] * 200)
    assert all(text == 'b' for text, _ in draws)
    with pytest.raises(ValueError):
        UtterancePool().sample(['x'])


def test_roc_auc_matches_sklearn_and_the_metric_adds_up():
    from sklearn.metrics import roc_auc_score

    rng = random.Random(0)
    pos = [rng.random() ** 0.5 for _ in range(300)] + [0.5, 0.5]
    neg = [rng.random() ** 2 for _ in range(200)] + [0.5]
    expected = roc_auc_score([1] * len(pos) + [0] * len(neg), pos + neg)
    assert roc_auc(pos, neg) == pytest.approx(expected, abs=1e-12)
    metric = AucMetric(pos[:100], neg[:50]) + AucMetric(pos[100:], []) + AucMetric([], neg[50:])
    assert metric.value() == pytest.approx(expected, abs=1e-12)
    assert math.isnan(roc_auc([0.3], []))


def test_retrieval_bce_loss_labels_positives_one_and_negatives_zero():
    good = retrieval_bce_loss(torch.tensor([5.0, 4.0]), torch.tensor([-5.0, -4.0]))
    bad = retrieval_bce_loss(torch.tensor([-5.0, -4.0]), torch.tensor([5.0, 4.0]))
    assert good < 0.02 < 4 < bad


# --- reward-model architectures ---------------------------------------------------------------
CTX = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
RESP = torch.tensor([[11, 12, 0], [13, 14, 15]])


def test_pack_pairs_layout_and_left_truncation():
    ids, types, valid = pack_pairs(CTX, RESP, pad=0, cls=1, sep=2)
    assert ids.tolist() == [[1, 5, 6, 7, 8, 2, 11, 12, 2], [1, 9, 10, 2, 13, 14, 15, 2, 0]]
    assert types.tolist() == [[0, 0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, 1, 1, 1, 1, 0]]
    assert valid.sum(dim=1).tolist() == [9, 8]
    ids, _, _ = pack_pairs(CTX, RESP, pad=0, cls=1, sep=2, max_len=7)
    assert ids[0].tolist() == [1, 7, 8, 2, 11, 12, 2]  # the context keeps its last tokens


@pytest.mark.parametrize('kind', ['esim', 'cross'])
def test_reward_models_ignore_padding_and_read_both_sides(kind):
    torch.manual_seed(0)
    if kind == 'esim':
        model = Esim(20, 16, 8, dropout=0.0).eval()
    else:
        encoder = TransformerEncoder(20, dim=16, n_layers=1, n_heads=2, ffn_dim=32, dropout=0.0)
        model = CrossEncoder(encoder, pad=0, cls=1, sep=2, mlp_hidden=8, dropout=0.0).eval()
    with torch.no_grad():
        base = model(CTX, RESP)
        padded = model(F.pad(CTX, (0, 3)), F.pad(RESP, (0, 2)))
        other_context = model(torch.tensor([[5, 6, 7, 3], [9, 4, 0, 0]]), RESP)
        other_response = model(CTX, torch.tensor([[11, 16, 0], [13, 14, 17]]))
    assert base.shape == (2,)
    assert torch.allclose(base, padded, atol=1e-5)
    assert not torch.allclose(base, other_context, atol=1e-4)
    assert not torch.allclose(base, other_response, atol=1e-4)


# --- a tiny fixture: a response must name the context's topic --------------------------------
TOPICS = ['cats', 'dogs', 'pizza', 'rain', 'music', 'soccer', 'books', 'coffee']
CONTEXTS = ['i really like {} .', 'tell me about {} ?', 'what do you think of {} ?']
RESPONSES = ['{} is great', 'i love {} too', 'yes {} makes me happy']


def write_fixture(path, n_examples: int = 96, seed: int = 0) -> str:
    """ParlAI-format file (``-t fromfile:parlaiformat``); consecutive topics always differ."""
    rng = random.Random(seed)
    lines, previous = [], None
    for _ in range(n_examples):
        topic = rng.choice([t for t in TOPICS if t != previous])
        previous = topic
        text = rng.choice(CONTEXTS).format(topic)
        label = rng.choice(RESPONSES).format(topic)
        lines.append(f'text:{text}\tlabels:{label}\tepisode_done:True')
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def write_word_fixture(path, n_examples: int = 480, seed: int = 0) -> str:
    """The bare matching task: context and response are one topic word each. A from-scratch
    cross-encoder (CLS pooling after a final LayerNorm) sits on a long plateau with templates
    around the topic word; on this fixture it leaves it after a few hundred updates."""
    rng = random.Random(seed)
    lines, previous = [], None
    for _ in range(n_examples):
        topic = rng.choice([t for t in TOPICS if t != previous])
        previous = topic
        lines.append(f'text:{topic}\tlabels:{topic}\tepisode_done:True')
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def tiny_bert_dir(tmp_path) -> str:
    """A tiny BERT (weights + WordPiece tokenizer) saved with ``transformers`` in tmp_path."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for s in CONTEXTS + RESPONSES for w in s.format('').split()} | set(TOPICS))
    vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *words]
    directory = tmp_path / 'tiny_bert'
    directory.mkdir()
    BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(directory)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(directory)
    return str(directory)


REWARD_TRAIN = dict(batchsize=16, num_epochs=10, validation_every_n_epochs=5, dict_file=None)

ESIM_ARGS = dict(
    model='coral_esim', embedding_size=24, hidden_size=24, dropout=0.0, learningrate=3e-3
)
SCRATCH_ARGS = dict(
    model='coral_cross_encoder',
    n_layers=1,
    embedding_size=32,
    n_heads=2,
    ffn_size=64,
    n_positions=64,
    text_truncate=30,
    label_truncate=20,
    mlp_hidden_size=32,
    dropout=0.0,
    learningrate=1e-3,
)


def train(model_file: str, task_file: str, **kwargs):
    args = dict(
        task='fromfile:parlaiformat',
        fromfile_datapath=task_file,
        model_file=model_file,
        log_every_n_secs=1000,
        short_final_eval=True,
        **kwargs,
    )
    args = {k: v for k, v in args.items() if v is not None}
    return TrainModel.main(**args)


@pytest.fixture(scope='module')
def fixture_file(tmp_path_factory):
    return write_fixture(tmp_path_factory.mktemp('coral_data') / 'topics.txt')


@pytest.fixture(scope='module')
def esim_file(tmp_path_factory, fixture_file):
    model_file = str(tmp_path_factory.mktemp('esim') / 'esim')
    torch.manual_seed(0)
    valid, _ = train(model_file, fixture_file, **REWARD_TRAIN, **ESIM_ARGS)
    return model_file, valid


def _pairs():
    contexts = [c.format(t) for t in TOPICS for c in CONTEXTS]
    good = [RESPONSES[i % 3].format(t) for i, t in enumerate(TOPICS) for _ in CONTEXTS]
    shifted = TOPICS[1:] + TOPICS[:1]
    bad = [RESPONSES[i % 3].format(t) for i, t in enumerate(shifted) for _ in CONTEXTS]
    return contexts, good, bad


def _check_learned(valid, reward_file):
    assert valid['pair_acc'] > 0.9, valid
    assert valid['auc'] > 0.95, valid
    reward = load_reward_model(reward_file)
    contexts, good, bad = _pairs()
    pos, neg = reward.score(contexts, good), reward.score(contexts, bad)
    assert ((0 < pos) & (pos < 1) & (0 < neg) & (neg < 1)).all()
    assert (pos > neg).float().mean() > 0.9
    return reward, pos, neg


def test_esim_learns_the_fixture_and_reloads(esim_file):
    model_file, valid = esim_file
    reward, pos, _ = _check_learned(valid, model_file)
    again = create_agent_from_model_file(model_file, {'datatype': 'valid'})
    contexts, good, _ = _pairs()
    assert torch.allclose(again.score(contexts, good), pos)  # save -> reload: same scores
    assert isinstance(reward, AgentReward)
    assert not any(p.requires_grad for p in reward.module.parameters())


def test_cross_encoder_from_scratch_learns_the_fixture(tmp_path):
    words = write_word_fixture(tmp_path / 'words.txt')
    model_file = str(tmp_path / 'ce')
    torch.manual_seed(0)
    valid, _ = train(
        model_file, words, batchsize=16, num_epochs=20, validation_every_n_epochs=20, **SCRATCH_ARGS
    )
    assert valid['pair_acc'] > 0.9 and valid['auc'] > 0.95, valid
    reward = load_reward_model(model_file)
    pos = reward.score(TOPICS, TOPICS)
    neg = reward.score(TOPICS, TOPICS[1:] + TOPICS[:1])
    assert (pos > neg).all() and pos.min() > 0.5 > neg.max()


def test_cross_encoder_from_a_local_hf_encoder(tmp_path, fixture_file):
    from transformers import AutoModel

    hf_dir = tiny_bert_dir(tmp_path)
    model_file = str(tmp_path / 'hf_ce')
    args = dict(SCRATCH_ARGS, hf_encoder_path=hf_dir)
    for key in ('n_layers', 'embedding_size', 'n_heads', 'ffn_size', 'n_positions'):
        args.pop(key)
    # the pretrained weights and the directory's tokenizer are used (all but the unused pooler)
    agent = create_agent(ParlaiParser(True, True).parse_kwargs(**args))
    pretrained = AutoModel.from_pretrained(hf_dir).state_dict()
    mine = agent.model.encoder.model.state_dict()
    assert set(pretrained) - set(mine) == {'pooler.dense.weight', 'pooler.dense.bias'}
    assert all(torch.equal(mine[k], pretrained[k]) for k in mine)
    tokenizer = agent.dict.hf_tokenizer
    assert agent.dict.txt2vec('i love cats') == tokenizer.convert_tokens_to_ids(
        ['i', 'love', 'cats']
    )
    assert agent.dict[agent.dict.null_token] == tokenizer.pad_token_id == agent.NULL_IDX
    ids, _, _ = pack_pairs(
        torch.tensor([agent.dict.txt2vec('i love cats')]),
        torch.tensor([agent.dict.txt2vec('cats')]),
        agent.NULL_IDX,
        agent.model.cls,
        agent.model.sep,
    )
    assert tokenizer.decode(ids[0]) == '[CLS] i love cats [SEP] cats [SEP]'
    # it trains through the stock loop (no data pass to build a dictionary), saves, reloads
    torch.manual_seed(0)
    valid, _ = train(model_file, fixture_file, batchsize=16, num_epochs=2, **args)
    assert valid['exs'] == 96 and 0 < valid['pos_score'] < 1
    first = load_reward_model(model_file).score(['i like cats .'], ['cats is great'])
    second = create_agent_from_model_file(model_file).score(['i like cats .'], ['cats is great'])
    assert torch.allclose(first, second)
    trained = create_agent_from_model_file(model_file).model.encoder.model.state_dict()
    assert any(not torch.equal(trained[k], pretrained[k]) for k in pretrained)


# --- the generator ----------------------------------------------------------------------------
GEN_ARGS = dict(
    model='coral',
    n_layers=1,
    embedding_size=32,
    n_heads=2,
    ffn_size=64,
    n_positions=64,
    dropout=0.0,
    learningrate=0.1,
    optimizer='sgd',
    gradient_clip=-1,
    batchsize=8,
    inference='beam',  # beam 1 with a minimum length of 1: greedy that never ends at once
    beam_size=1,
    beam_min_length=1,
)


def make_generator(dict_file: str, **kwargs) -> CoralAgent:
    parser = ParlaiParser(True, True)
    opt = parser.parse_kwargs(**{**GEN_ARGS, 'dict_file': dict_file, **kwargs})
    return create_agent(opt)


@pytest.fixture(scope='module')
def dict_file(tmp_path_factory, fixture_file):
    from parlai.scripts.build_dict import BuildDict

    path = str(tmp_path_factory.mktemp('dict') / 'topics.dict')
    BuildDict.main(task='fromfile:parlaiformat', fromfile_datapath=fixture_file, dict_file=path)
    return path


def fixture_observations(agent: CoralAgent, n: int = 8, seed: int = 0, train: bool = True):
    rng = random.Random(seed)
    observations = []
    for _ in range(n):
        topic = rng.choice(TOPICS)
        key = 'labels' if train else 'eval_labels'
        message = Message(
            {
                'text': rng.choice(CONTEXTS).format(topic),
                key: [rng.choice(RESPONSES).format(topic)],
                'episode_done': True,
            }
        )
        clone = agent.clone()
        observations.append(clone.observe(message))
    return observations


def fixture_batch(agent: CoralAgent, n: int = 8, seed: int = 0, train: bool = True):
    return agent.batchify(fixture_observations(agent, n, seed, train))


def test_agent_loss_with_constant_reward_one_equals_parlai_nll(dict_file):
    torch.manual_seed(0)
    agent = make_generator(dict_file, reward_model_file='constant:1', margin=0.0, p_positive=1.0)
    batch = fixture_batch(agent)
    agent.model.train()
    agent._control_local_metrics(disabled=True)  # called outside batch_act
    coral = agent.compute_coral_loss(batch)
    nll = agent.compute_loss(batch)
    assert torch.allclose(coral, nll, atol=1e-6)
    # with a reward of 0.5 and no margin the loss halves
    agent.reward = ConstantReward(0.5)
    assert torch.allclose(agent.compute_coral_loss(batch), nll / 2, atol=1e-6)


@pytest.mark.parametrize('reward,sign', [(0.9, -1), (0.1, 1)])
def test_agent_update_moves_ground_truth_likelihood_by_the_sign_of_r3(dict_file, reward, sign):
    torch.manual_seed(0)
    agent = make_generator(
        dict_file, reward_model_file=f'constant:{reward}', margin=0.5, p_positive=1.0
    )
    batch = fixture_batch(agent)
    agent._control_local_metrics(disabled=True)  # called outside batch_act
    with torch.no_grad():
        agent.model.eval()
        before = agent.compute_loss(batch).item()
    agent.train_step(batch)
    with torch.no_grad():
        agent.model.eval()
        after = agent.compute_loss(batch).item()
    assert (after - before) * sign > 1e-4, (before, after)


def test_agent_draws_negatives_at_rate_one_minus_p_plus(dict_file):
    torch.manual_seed(0)
    agent = make_generator(
        dict_file, reward_model_file='constant:1', p_positive=0.7, negative_source='random'
    )
    negatives, total = 0, 0
    agent.pool_texts_seen = set()
    for seed in range(150):
        batch = fixture_batch(agent, seed=seed)
        agent.pool_texts_seen.update(batch.labels)
        texts, rows, positive = agent.choose_responses(batch)
        for text, row, label, vec, pos in zip(texts, rows, batch.labels, batch.label_vec, positive):
            if pos:
                assert text == label and torch.equal(row, vec[vec != 0])
            else:  # a training response (text and the vector ParlAI made of it), not its own
                assert text in agent.pool_texts_seen and text != label
                expected = agent._vectorize_text(text, add_end=True, truncate_left=False)
                assert torch.equal(row, expected)
        negatives += int((~positive).sum())
        total += len(texts)
    rate, sigma = negatives / total, math.sqrt(0.7 * 0.3 / total)
    assert abs(rate - 0.3) < 4 * sigma, rate


def test_nucleus_negatives_come_from_the_current_model(dict_file):
    torch.manual_seed(0)
    # a tiny nucleus keeps only the most probable token: the sample is the greedy response
    agent = make_generator(
        dict_file, reward_model_file='constant:1', negative_topp=1e-9, negative_max_len=12
    )
    batch = fixture_batch(agent, train=False)
    agent.model.train()
    drawn = agent.sample_negatives(batch, [0, 3, 5])
    assert agent.model.training  # the mode is restored
    agent.model.eval()
    # ParlAI's greedy search one step longer: its first 12 tokens are the 12 we may sample
    # (ParlAI overwrites the last token of a search that reaches its cap with the end token)
    greedy, _ = agent._generate(batch, 1, 13)
    capped = 0
    for (text, tokens), row in zip(drawn, [0, 3, 5]):
        expected = greedy[row][0]
        expected = expected[expected != agent.START_IDX][:12]
        assert torch.equal(tokens, expected)
        assert (tokens == agent.START_IDX).sum() == 0 and (tokens == agent.NULL_IDX).sum() == 0
        if tokens[-1] != agent.END_IDX:  # reached the cap: the 12 tokens actually sampled
            assert len(tokens) == 12 and (tokens == agent.END_IDX).sum() == 0
            capped += 1
        assert text == agent._v2t(expected)
    assert capped  # this untrained model repeats itself: the cap case is exercised


def test_reward_model_is_frozen_during_generator_training(tmp_path, dict_file, esim_file):
    reward_file, _ = esim_file
    torch.manual_seed(0)
    agent = make_generator(
        dict_file,
        reward_model_file=reward_file,
        p_positive=0.5,
        negative_source='nucleus',
        negative_max_len=8,
        model_file=str(tmp_path / 'gen'),
    )
    reward_module = agent.reward.module
    before = {k: v.clone() for k, v in reward_module.state_dict().items()}
    optimised = {id(p) for group in agent.optimizer.param_groups for p in group['params']}
    assert not optimised & {id(p) for p in reward_module.parameters()}
    generator_before = [p.clone() for p in agent.model.parameters()]
    agent._control_local_metrics(disabled=True)  # called outside batch_act
    for seed in range(3):
        agent.train_step(fixture_batch(agent, seed=seed))
    assert not reward_module.training
    assert all(torch.equal(before[k], v) for k, v in reward_module.state_dict().items())
    assert all(p.grad is None for p in reward_module.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(generator_before, agent.model.parameters()))
    agent.save(str(tmp_path / 'gen'))
    saved = torch.load(str(tmp_path / 'gen'), map_location='cpu', weights_only=False)
    assert set(saved['model']) == set(agent.model.state_dict())  # no reward weights saved


def test_generator_save_reload_and_r3_metric(tmp_path, dict_file, esim_file):
    reward_file, _ = esim_file
    model_file = str(tmp_path / 'coral')
    torch.manual_seed(0)
    agent = make_generator(
        dict_file, reward_model_file=reward_file, maude_model_file='constant:0.25',
        model_file=model_file, skip_generation=False,
    )  # fmt: skip
    agent._control_local_metrics(disabled=True)  # called outside batch_act
    for seed in range(2):
        agent.train_step(fixture_batch(agent, seed=seed))
    agent.save(model_file)
    reloaded = create_agent_from_model_file(model_file, {'skip_generation': False})
    assert isinstance(reloaded, CoralAgent)
    assert reloaded.opt['reward_model_file'] == reward_file
    for a, b in zip(agent.model.state_dict().values(), reloaded.model.state_dict().values()):
        assert torch.equal(a, b)
    observations = fixture_observations(reloaded, train=False)
    batch = reloaded.batchify(observations)
    agent.model.eval()
    ours, _ = agent._generate(batch, 1, 12)
    theirs, _ = reloaded._generate(batch, 1, 12)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(ours, theirs))
    replies = reloaded.batch_act(observations)
    scores = reloaded.reward.score(batch.context_texts, [r['text'] for r in replies])
    assert [r['metrics']['r3'].value() for r in replies] == pytest.approx(scores.tolist())
    assert all(r['metrics']['maude'].value() == pytest.approx(0.25) for r in replies)


def test_generic_reward_interface():
    assert ConstantReward(0.3).score(['a', 'b'], ['c', 'd']).tolist() == pytest.approx([0.3] * 2)
    assert isinstance(load_reward_model('constant:1'), ConstantReward)
    with pytest.raises(FileNotFoundError):
        load_reward_model('/nonexistent/model')

    class TokenScorer:  # an agent with PLATO-2's token-level interface
        def _vectorize_text(self, text, truncate_left=True):
            return torch.tensor([len(w) for w in text.split()])

        def coherence_scores(self, contexts, responses):
            return torch.tensor([float(c.sum() > r.sum()) for c, r in zip(contexts, responses)])

    reward = AgentReward(TokenScorer(), 'coherence_scores')
    assert reward.score(['long words here', 'a'], ['hi', 'longer']).tolist() == [1.0, 0.0]


def test_pad_rows():
    rows = pad_rows([torch.tensor([3, 4]), torch.tensor([], dtype=torch.long)], 0)
    assert rows.tolist() == [[3, 4], [0, 0]]
    assert pad_rows([torch.tensor([], dtype=torch.long)], 0).shape == (1, 1)


def _reward_agent(dict_file: str, seed: int | None):
    opt = ParlaiParser(True, True).parse_kwargs(**SCRATCH_ARGS, dict_file=dict_file)
    opt['seed'] = seed  # train_model's --seed (its own parser adds the option)
    return create_agent(opt)


def test_reward_agents_apart_by_seed_draw_other_negatives_and_start_from_other_heads(dict_file):
    """Two reward models trained apart by ``--seed`` (the recipe's xenc / xind): the pool's
    draws and the new model's initialisation follow the seed (train_model seeds torch only
    after the agent is built, so without this both started alike and drew alike)."""
    torch.manual_seed(123)  # the same global state before each agent: only --seed differs
    first = _reward_agent(dict_file, 1)
    torch.manual_seed(123)
    again = _reward_agent(dict_file, 1)
    torch.manual_seed(123)
    other = _reward_agent(dict_file, 2)
    assert first.pool.random.getstate() == random.Random(1).getstate()
    assert other.pool.random.getstate() == random.Random(2).getstate()
    heads = [a.model.head.state_dict() for a in (first, again, other)]
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    assert not all(torch.equal(heads[0][k], heads[2][k]) for k in heads[0])
    texts = [f'reply {i}' for i in range(40)]
    vecs = [torch.tensor([i]) for i in range(40)]
    for agent in (first, again, other):
        agent.pool.add(texts, vecs)
    draws = [[t for t, _ in a.pool.sample(['reply 0'] * 8)] for a in (first, again, other)]
    assert draws[0] == draws[1] != draws[2]
    torch.manual_seed(123)
    unseeded = _reward_agent(dict_file, None)  # no --seed: torch's initial seed, as before
    assert unseeded.pool.random.getstate() == random.Random(torch.initial_seed()).getstate()


def test_generator_random_negatives_follow_the_seed(dict_file):
    """CORAL off-policy (random negatives) draws from a pool seeded by ``--seed`` when given."""
    opt = ParlaiParser(True, True).parse_kwargs(
        **{**GEN_ARGS, 'dict_file': dict_file, 'negative_source': 'random'}
    )
    torch.manual_seed(123)
    opt['seed'] = 5
    assert create_agent(opt).pool.random.getstate() == random.Random(5).getstate()
    opt['seed'] = None
    assert create_agent(opt).pool.random.getstate() == random.Random(123).getstate()
