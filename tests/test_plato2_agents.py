"""PLATO-2's agents pinned by value (issue #18): the stage-2.1 and stage-2.2 losses through
the agents' own ``compute_loss``, the uniform-prior perplexity, one hypothesis per latent in the
search, the reranking (length averaging, penalties), the decoding limits and what the stage-2
models inherit from stage 1. Tiny seeded models; no training.

The module and loss math (which slot each head reads, the Gumbel-softmax sample, the losses by
hand) is in ``test_plato2_math.py``.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.dict import DictionaryAgent
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch
from test_plato2 import write_stage1
from test_plato2_math import SIZES, randomise

import parlai_ext.agents.plato2_evaluator as plato2_evaluator_agent
import parlai_ext.modules.sampling as sampling
from parlai_ext.agents.plato2 import PENALTY, repetition_reason
from parlai_ext.agents.plato2_stages import inherit_architecture
from parlai_ext.losses.plato2 import (
    bow_loss,
    coherence_pairs,
    negative_entropy_loss,
    posterior_entropy,
)
from parlai_ext.modules.plato2 import Plato2Generator

SENTENCES = [
    'hi , how are you ?', 'i am fine , thanks . and you ?', 'what is your name ?',
    'my name is anna .', 'where do you live ?', 'i live in paris .', 'good morning !',
]  # fmt: skip


def _opt(*args):
    return ParlaiParser(True, True).parse_args(list(args))


def _stage1(tmp_path, *extra):
    """An (untrained) stage-1 unified_transformer model file with a small dictionary."""
    return write_stage1(tmp_path, SENTENCES, *extra)[0]


@pytest.fixture(scope='module')
def stage1_file(tmp_path_factory):
    return _stage1(tmp_path_factory.mktemp('stage1'))


def _plato2(stage1_file, tmp_path, *extra):
    torch.manual_seed(1)
    agent = create_agent(
        _opt('-m', 'plato2', '--init-model', stage1_file, '-mf', str(tmp_path / 'g'),
             '--n-latent', '3', *extra)
    )  # fmt: skip
    randomise(agent.model.transformer)
    with torch.no_grad():
        agent.model.transformer.bow_bias.normal_()
    return agent


def _batch(agent, pairs, labels_key='labels'):
    observations = []
    for text, label in pairs:
        agent.reset()
        observations.append(
            agent.observe({'text': text, labels_key: [label], 'episode_done': True})
        )
    return agent.batchify(observations)


PAIRS = [('where do you live ?', 'i live in paris .'), ('hi , how are you ?', 'i am fine .')]


def test_stage21_loss_is_nll_plus_bow_plus_weighted_entropy_term(stage1_file, tmp_path):
    """Eq. 6: token-mean NLL + token-mean BOW, equal weights; + c * mean sum p log p."""
    agent = _plato2(stage1_file, tmp_path, '--entropy-coef', '0.5')
    batch = _batch(agent, PAIRS)
    agent.model.eval()  # z = posterior argmax: deterministic
    with torch.no_grad():
        loss, (logits, _, out) = agent.compute_loss(batch, return_output=True)
    labels = batch.label_vec
    notnull = labels != agent.NULL_IDX
    assert notnull.sum(1).tolist() == [6, 5]  # variable lengths, end token included
    nll = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=agent.NULL_IDX,
                          reduction='sum') / notnull.sum()  # fmt: skip
    log_f = F.log_softmax(out.bow_logits, -1)
    bow = -(log_f.gather(1, labels) * notnull).sum() / notnull.sum()  # every target token
    entropy_term = negative_entropy_loss(out.posterior_logits)
    assert entropy_term.item() < 0
    assert loss.item() == pytest.approx((nll + bow + 0.5 * entropy_term).item(), abs=1e-5)
    # the logits are the generation pass's over [START, r_1 .. r_m] with z from the posterior
    model = agent.model.transformer
    inputs = torch.cat([torch.full((2, 1), agent.START_IDX), labels[:, :-1]], 1)
    inputs = inputs.masked_fill(inputs == agent.END_IDX, agent.NULL_IDX)
    with torch.no_grad():
        z = F.one_hot(model.recognize(batch.text_vec, inputs).argmax(-1), 3).float()
        hidden, state = model.encode(batch.text_vec, inputs, model.latent_vectors(z))
    hand_logits = agent.model.output(hidden[:, state.valid.shape[1] :])
    assert torch.allclose(logits[notnull], hand_logits[notnull], atol=1e-4)
    # the reported metrics are those terms
    agent.model.train()
    metrics = {}
    agent.record_local_metric = lambda name, values: metrics.setdefault(name, values)
    agent.model.eval()
    with torch.no_grad():
        agent.compute_loss(batch)
    per_example_bow = [float(m) for m in metrics['bow_loss']]
    hand_rows = [-(log_f[i].gather(0, labels[i][notnull[i]])).mean().item() for i in range(2)]
    assert per_example_bow == pytest.approx(hand_rows, abs=1e-5)
    entropies = [float(m) for m in metrics['z_entropy']]
    assert entropies == pytest.approx(posterior_entropy(out.posterior_logits).tolist(), abs=1e-5)


def test_entropy_coefficient_zero_by_default_and_training_sample_enters_the_loss(
    stage1_file, tmp_path, monkeypatch
):
    agent = _plato2(stage1_file, tmp_path)
    assert agent.opt['entropy_coef'] == 0.0
    batch = _batch(agent, PAIRS)
    noise = torch.tensor([[0.0, 3.0, -3.0], [-3.0, 0.0, 3.0]])
    monkeypatch.setattr(sampling, 'gumbel_noise', lambda *args, **kwargs: noise.clone())
    agent.model.train()
    loss, (logits, _, out) = agent.compute_loss(batch, return_output=True)
    expected = F.softmax((out.posterior_logits + noise) / 0.67, -1)
    assert torch.allclose(out.latent_weights, expected, atol=1e-6)
    notnull = batch.label_vec != agent.NULL_IDX
    nll = F.cross_entropy(logits.flatten(0, 1), batch.label_vec.flatten(),
                          ignore_index=agent.NULL_IDX)  # fmt: skip
    bow = bow_loss(out.bow_logits, batch.label_vec, agent.NULL_IDX)
    assert loss.item() == pytest.approx((nll + bow).item(), abs=1e-5)
    assert notnull.sum() == 11


def test_recognition_pass_never_sees_the_end_token(stage1_file, tmp_path):
    """Every row's response is fed without its end token (padded), so a row's posterior is the
    same in a batch with a longer row as alone (where ys[:, :-1] drops it anyway)."""
    agent = _plato2(stage1_file, tmp_path)
    agent.model.eval()
    batch = _batch(agent, PAIRS)
    alone = _batch(agent, PAIRS[1:])
    inputs = agent.model.response_inputs(batch.label_vec)
    assert (inputs != agent.END_IDX).all()
    assert inputs[1].tolist()[:6] == [agent.START_IDX, *batch.label_vec[1, :4].tolist(), 0]
    with torch.no_grad():
        together = agent.model(batch.text_vec, ys=batch.label_vec)[2].posterior_logits
        single = agent.model(alone.text_vec, ys=alone.label_vec)[2].posterior_logits
    assert torch.allclose(together[1], single[0], atol=1e-5)


def test_uniform_prior_ppl_is_the_marginal_over_all_latents(stage1_file, tmp_path):
    """uniform_z_ppl = exp(-log(1/K sum_z p(r|c,z)) / n_tokens), each z by its own pass;
    two examples of different lengths in one batch (padding must not count)."""
    agent = _plato2(stage1_file, tmp_path, '--uniform-prior-ppl', 'true')
    agent.model.eval()
    observations = []
    for text, label in PAIRS:
        agent.reset()
        observations.append(
            agent.observe({'text': text, 'eval_labels': [label], 'episode_done': True})
        )
    replies = agent.batch_act(observations)
    batch = agent.batchify(observations)
    model = agent.model.transformer
    labels = batch.label_vec
    inputs = agent.model.response_inputs(labels)
    per_z = torch.zeros(2, 3)
    with torch.no_grad():
        for z in range(3):
            latent = model.latent_embedding[z].expand(2, 1, -1)
            hidden, _ = model.encode(batch.text_vec, inputs, latent)
            log_p = F.log_softmax(agent.model.output(hidden[:, -labels.shape[1] :]), -1)
            token_ll = log_p.gather(2, labels[..., None])[..., 0]
            per_z[:, z] = (token_ll * (labels != agent.NULL_IDX)).sum(1)
    for i, reply in enumerate(replies):
        n_tokens = int((labels[i] != agent.NULL_IDX).sum())
        marginal = math.log(sum(math.exp(v) for v in per_z[i].tolist()) / 3)
        hand = math.exp(-marginal / n_tokens)
        assert float(reply['metrics']['uniform_z_ppl']) == pytest.approx(hand, rel=1e-4), i
        assert float(reply['metrics']['uniform_z_ppl']) != pytest.approx(
            float(reply['metrics']['ppl']), rel=1e-3
        )


def test_search_has_one_hypothesis_per_latent_and_no_length_penalty(stage1_file, tmp_path):
    from parlai.core.torch_generator_agent import NucleusSampling, TopKSampling

    for method, cls, attr, value in (
        ('topk', TopKSampling, 'k', 10), ('greedy', TopKSampling, 'k', 1),
        ('nucleus', NucleusSampling, 'p', 0.9),
    ):  # fmt: skip
        agent = _plato2(stage1_file, tmp_path, '--inference', method, '--topp', '0.9')
        search = agent._treesearch_factory('cpu')
        assert isinstance(search, cls) and getattr(search, attr) == value, method
        assert search.beam_size == 3 and search.length_penalty == 0.0


def test_each_candidate_is_decoded_with_its_own_latent_and_the_cache(stage1_file, tmp_path):
    """Greedy decoding (K candidates in one batch, key/value cache) gives each candidate the
    greedy continuation of a full teacher-forced pass with z = its latent value, and its
    score is the summed log-probability of that pass."""
    agent = _plato2(stage1_file, tmp_path, '--inference', 'greedy', '--skip-generation',
                    'false', '--rerank-penalties', 'false', '--max-dec-len', '5')  # fmt: skip
    agent.model.eval()
    captured = []
    rerank = agent._rerank_beams
    agent._rerank_beams = lambda b, cands: captured.append(cands) or rerank(b, cands)
    agent.observe({'text': 'where do you live ?', 'episode_done': True})
    agent.act()
    candidates = captured[0][0]  # the finished ones (ParlAI drops the others)
    assert 1 <= len(candidates) <= 3
    context = torch.tensor([agent.dict.txt2vec('where do you live ?')])
    model = agent.model.transformer
    for tokens, score, _ in candidates:
        # which latent: the candidate that the full pass reproduces exactly
        matches = []
        for z in range(3):
            with torch.no_grad():
                hidden, _ = model.encode(context, tokens[None, :-1],
                                         model.latent_embedding[z][None, None])  # fmt: skip
                logits = agent.model.output(hidden[:, context.shape[1] + 1 :])
            log_p = agent._generation_activation(logits)[0]
            best, greedy = log_p.max(-1)
            # the last token is END, or ParlAI's forced END after --max-dec-len tokens
            if torch.equal(greedy[:-1], tokens[1:-1]):
                matches.append(best.sum().item())
        assert any(abs(m - float(score)) < 1e-4 for m in matches), (tokens, score, matches)


# --- the evaluator's loss: coherence + MLM with the original tokens as targets --------------------
def test_stage22_loss_is_coherence_plus_mlm_on_the_original_tokens(
    stage1_file, tmp_path, monkeypatch
):
    torch.manual_seed(2)
    agent = create_agent(
        _opt('-m', 'plato2_evaluator', '--init-model', stage1_file, '-mf', str(tmp_path / 'e'),
             '--dropout', '0', '--mlm-prob', '0.3')
    )  # fmt: skip
    randomise(agent.model.transformer)
    calls = {}

    def fixed_corrupt(tokens, maskable, vocab_size, random_low, prob):
        calls.update(maskable=maskable, vocab=vocab_size, low=random_low, prob=prob)
        index = torch.arange(tokens.shape[1]).expand_as(tokens)
        selected = maskable & (index % 2 == 0)
        replaced = selected & (index % 4 == 0)
        shown = (tokens - 4 + 1) % (vocab_size - 4) + 4  # a different, non-special token
        inputs = torch.where(selected & ~replaced, shown, tokens)
        return inputs, replaced, selected

    monkeypatch.setattr(plato2_evaluator_agent, 'mlm_corrupt', fixed_corrupt)
    losses = []
    agent.backward = losses.append
    agent.update_params = lambda: None
    batch = _batch(agent, PAIRS + [('what is your name ?', 'my name is anna .')])
    agent.train_step(batch)
    context, response, labels = coherence_pairs(batch.text_vec, batch.label_vec)
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    tokens = torch.cat([context, response], 1)
    specials = (agent.NULL_IDX, agent.START_IDX, agent.END_IDX)
    assert torch.equal(calls['maskable'], ~torch.isin(tokens, torch.tensor(specials)))
    assert calls['prob'] == 0.3 and calls['vocab'] == len(agent.dict)
    assert calls['low'] == max(*specials, agent.dict[agent.dict.unk_token]) + 1
    inputs, replaced, selected = fixed_corrupt(tokens, calls['maskable'], len(agent.dict), 4, 0.3)
    assert (inputs[selected & ~replaced] != tokens[selected & ~replaced]).all()
    split = context.shape[1]
    with torch.no_grad():
        model = agent.model.transformer
        logits, hidden = model(inputs[:, :split], inputs[:, split:], replaced)
        rce = F.cross_entropy(logits, labels)
        mlm = F.cross_entropy(model.mlm_logits(hidden[selected]), tokens[selected])
    assert len(losses) == 1
    assert losses[0].item() == pytest.approx((rce + mlm).item(), abs=1e-5)
    report = {k: v.value() for k, v in agent.global_metrics.report().items()}
    assert report['rce_loss'] == pytest.approx(rce.item(), abs=1e-5)
    assert report['mlm_loss'] == pytest.approx(mlm.item(), abs=1e-5)
    accuracy = (logits.argmax(-1) == labels).float().mean().item()
    assert report['coherence_acc'] == pytest.approx(accuracy)


def test_evaluator_ranks_by_log_coherence(stage1_file, tmp_path):
    torch.manual_seed(3)
    agent = create_agent(
        _opt('-m', 'plato2_evaluator', '--init-model', stage1_file, '-mf', str(tmp_path / 'e'))
    )
    randomise(agent.model.transformer)
    agent.model.eval()
    batch = _batch(agent, PAIRS)
    cands = torch.stack([batch.label_vec[1], batch.label_vec[0]])
    with torch.no_grad():
        scores = agent.score_candidates(batch, cands)
        for i in range(2):
            for j in range(2):
                logits, _ = agent.model.transformer(batch.text_vec[i : i + 1], cands[j : j + 1])
                hand = F.log_softmax(logits, -1)[0, 1]
                assert scores[i, j].item() == pytest.approx(hand.item(), abs=1e-5)
        per_example = agent.score_candidates(batch, cands[None].expand(2, -1, -1))
        probs = agent.coherence_scores([batch.text_vec[0]], [cands[1]])
    assert torch.allclose(per_example, scores)
    assert probs[0].item() == pytest.approx(math.exp(scores[0, 1].item()), abs=1e-5)
    # reranking inputs are truncated as the evaluator's own: the last --text-truncate
    # context tokens, the first --label-truncate response tokens
    agent.opt['text_truncate'], agent.opt['label_truncate'] = 3, 2
    long_context = torch.tensor(agent.dict.txt2vec('hi , how are you ? where do you live ?'))
    with torch.no_grad():
        truncated = agent.coherence_scores([long_context], [cands[0]])
        hand = agent.model.transformer.coherence(long_context[None, -3:], cands[0][None, :2])
    assert truncated[0].item() == pytest.approx(hand[0].item(), abs=1e-6)


# --- reranking: length averaging and the authors' penalties ---------------------------------------
def test_rerank_length_averages_and_penalises_exactly(stage1_file, tmp_path):
    agent = _plato2(stage1_file, tmp_path)
    assert agent.ranking == 'logprob' and agent.opt['rerank_penalties']
    start, end = agent.START_IDX, agent.END_IDX

    def cand(text, score, finished=True):
        ids = agent.dict.txt2vec(text)
        return torch.tensor([start, *ids, *([end] if finished else [])]), torch.tensor(score)

    fine = cand('i live in paris .', -3.0)  # 5 words + end: 6 generated tokens
    short = cand('i am fine .', -2.0)  # 4 + end = 5
    echo = cand('where do you live', -0.1)  # a trigram of the context turn
    loop = cand('hi , how are hi , how', -0.1)  # in-turn repetition
    unfinished = cand('my name is anna , thanks . and you', -0.1, finished=False)  # max_ts 9
    glued = cand('my name is my name is', -0.4)  # repeated token ids (text without trigrams)
    texts = {tuple(glued[0].tolist()): 'mynameismyname'}
    plain_v2t = agent._v2t
    agent._v2t = lambda vec: texts.get(tuple(vec.tolist())) or plain_v2t(vec)
    agent._max_ts = 9
    batch = Batch(batchsize=1, observations=[{'text': 'where do you live ?'}])
    candidates = [fine, short, echo, loop, unfinished, glued]
    ranked = agent._rerank_beams(batch, [[(t, s, None) for t, s in candidates]])[0]
    scores = {agent._v2t(t): float(s) for t, s, _ in ranked}
    assert scores['i live in paris .'] == pytest.approx(-3.0 / 6)
    assert scores['i am fine .'] == pytest.approx(-2.0 / 5)
    assert scores['where do you live'] == pytest.approx(-0.1 / 5 - PENALTY)
    assert scores['hi , how are hi , how'] == pytest.approx(-0.1 / 8 - PENALTY)
    assert scores['my name is anna , thanks . and you'] == pytest.approx(-0.1 / 9 - PENALTY)
    assert scores['mynameismyname'] == pytest.approx(-0.4 / 7 - PENALTY)
    assert [agent._v2t(t) for t, _, _ in ranked][:2] == ['i am fine .', 'i live in paris .']
    assert [float(s) for _, s, _ in ranked] == sorted(scores.values(), reverse=True)
    # random ranking (z drawn uniformly): independent uniform scores, not the log-probabilities
    agent.ranking = 'random'
    random_scores = agent.candidate_scores(batch, [[(t, s, None) for t, s in candidates]])[0]
    assert len(set(random_scores)) == 6 and all(0 <= v < 1 for v in random_scores)
    agent.ranking = 'logprob'
    # without penalties: only the length-averaged log-probabilities
    agent.opt['rerank_penalties'] = False
    ranked = agent._rerank_beams(batch, [[(t, s, None) for t, s in candidates]])[0]
    plain = {agent._v2t(t): float(s) for t, s, _ in ranked}
    assert plain['where do you live'] == pytest.approx(-0.1 / 5)
    assert agent._v2t(ranked[0][0]) == 'my name is anna , thanks . and you'
    assert float(ranked[0][1]) == pytest.approx(-0.1 / 9)


def test_repetition_reason_checks_words_and_token_ids():
    assert repetition_reason('abcabc', [], [4, 5, 6, 4, 5, 6]) == 'in-turn token trigram repetition'
    assert repetition_reason('abcabc', [], [4, 5, 6, 4, 5, 7]) is None
    assert repetition_reason('abcabc', []) is None  # words alone: no trigram at all
    assert repetition_reason('a b c d a b c', [], [1, 2, 3, 4, 5, 6, 7]) is not None
    assert repetition_reason('x y z', ['w x y z'], [1, 2, 3]) == 'context trigram repetition'
    assert repetition_reason('x y z', ['X Y Z w'], [1, 2, 3]) is not None  # lower-cased
    assert repetition_reason('x y z', ['x y', 'z w'], [1, 2, 3]) is None  # per turn


# --- decoding: UNK banned, at most --max-dec-len tokens --------------------------------------------
def test_generation_bans_unk_before_the_softmax(stage1_file, tmp_path):
    agent = _plato2(stage1_file, tmp_path, '--skip-generation', 'false')
    unk = agent.dict[agent.dict.unk_token]
    assert agent.generation_banned == [unk]
    score = torch.randn(1, 3, len(agent.dict))
    score[..., unk] = 50.0
    out = agent._generation_activation(score)
    assert (out[..., unk] < -1e10).all()
    keep = torch.ones(len(agent.dict), dtype=torch.bool)
    keep[unk] = False
    assert torch.allclose(out[..., keep], F.log_softmax(score[..., keep], -1), atol=1e-5)
    assert score[0, 0, unk] == 50.0  # the input is left alone
    # end to end: a model that prefers UNK everywhere still never generates it
    output = agent.model.output

    def unk_loving(hidden):
        logits = output(hidden)
        logits[..., unk] += 100.0
        return logits

    agent.model.output = unk_loving
    agent.observe({'text': 'where do you live ?', 'episode_done': True})
    reply = agent.act()
    assert reply['beam_texts']
    assert all(agent.dict.unk_token not in text for text, _ in reply['beam_texts'])


def test_mask_tokens_are_banned_where_the_dictionary_has_them():
    from parlai_ext.agents.unified_transformer import generation_banned_ids

    parser = ParlaiParser(True, True)
    DictionaryAgent.add_cmdline_args(parser)
    dictionary = DictionaryAgent(parser.parse_args([]))
    dictionary.add_token('[MASK]')
    dictionary.add_token('hello')
    assert generation_banned_ids(dictionary) == sorted(
        [dictionary[dictionary.unk_token], dictionary['[MASK]']]
    )


def test_generation_stops_at_max_dec_len(stage1_file, tmp_path):
    agent = _plato2(stage1_file, tmp_path, '--skip-generation', 'false')
    assert agent.opt['max_dec_len'] == 64 and agent.opt['label_truncate'] == 128
    agent.observe({'text': 'hi , how are you ?', 'episode_done': True})
    agent.act()
    assert agent._max_ts == 64  # min(label_truncate 128, max_dec_len 64)
    agent = _plato2(stage1_file, tmp_path, '--skip-generation', 'false', '--max-dec-len', '3')
    steps = []
    decode = agent.model.transformer.decode
    agent.model.transformer.decode = lambda t, *a: steps.append(t.shape) or decode(t, *a)
    agent.observe({'text': 'hi , how are you ?', 'episode_done': True})
    reply = agent.act()
    assert agent._max_ts == 3 and 1 <= len(steps) <= 3
    # an unfinished candidate (3 tokens generated, no end) gets the penalty
    for text, score in reply['beam_texts']:
        n_generated = len(agent.dict.txt2vec(text)) + 1  # + the end token (or forced end)
        assert n_generated <= 3
        penalised = n_generated >= 3 or repetition_reason(text, ['hi , how are you ?'])
        assert (score < -500) == bool(penalised)
    with pytest.raises(ValueError, match='max-dec-len'):
        _plato2(stage1_file, tmp_path, '--max-dec-len', '0')


# --- stage 2 inherits stage 1's truncation; FFN dropout is its own option -------------------------
def test_stage2_inherits_the_truncation_limits_of_stage1(tmp_path):
    stage1 = _stage1(tmp_path, '--text-truncate', '20', '--label-truncate', '10')
    assert Opt.load(stage1 + '.opt')['text_truncate'] == 20
    for model in ('plato2', 'plato2_evaluator'):
        agent = create_agent(
            _opt('-m', model, '--init-model', stage1, '-mf', str(tmp_path / model))
        )
        assert (agent.opt['text_truncate'], agent.opt['label_truncate']) == (20, 10), model
        assert (agent.text_truncate, agent.label_truncate) == (20, 10), model
    given = inherit_architecture(
        _opt('-m', 'plato2', '--init-model', stage1, '-mf', str(tmp_path / 'x'),
             '--label-truncate', '7')
    )  # fmt: skip
    assert (given['text_truncate'], given['label_truncate']) == (20, 7)
    both = inherit_architecture(
        _opt('-m', 'plato2', '--init-model', stage1, '-mf', str(tmp_path / 'y'), '--truncate', '9')
    )
    assert both['text_truncate'] is None and both['label_truncate'] is None
    assert both['embedding_size'] == 32  # sizes still come from stage 1


def test_ffn_dropout_is_its_own_option_and_old_files_load(stage1_file, tmp_path):
    agent = _plato2(stage1_file, tmp_path, '--dropout', '0.2')
    block = agent.model.transformer.stack.layers[0]
    assert block.ffn.dropout.p == 0.0 and block.dropout.p == 0.2
    agent = _plato2(stage1_file, tmp_path, '--relu-dropout', '0.3', '--attention-dropout', '0.1')
    block = agent.model.transformer.stack.layers[1]
    assert block.ffn.dropout.p == 0.3 and block.attention.dropout == 0.1
    # a model file written before the option existed still loads (FFN dropout 0)
    opt = Opt.load(stage1_file + '.opt')
    del opt['relu_dropout']
    old = str(tmp_path / 'old')
    opt['model_file'] = old
    opt.save(old + '.opt')
    import shutil

    shutil.copy(stage1_file, old)
    shutil.copy(stage1_file + '.dict', old + '.dict')
    loaded = create_agent_from_model_file(old)
    assert loaded.model.transformer.stack.layers[0].ffn.dropout.p == 0.0


def test_recipes_select_stage21_checkpoints_on_uniform_z_ppl():
    """The posterior-z ppl reads z from the response itself; the recipes select on the
    uniform-prior marginal (the model as inference uses it)."""
    from pathlib import Path

    project = Path(__file__).resolve().parents[1] / 'projects' / 'plato2'
    for name in ('README.md', 'dailydialog_small.sh'):
        text = (project / name).read_text().replace('\\\n', ' ')
        commands = [line for line in text.splitlines() if 'train_model -m plato2 ' in line]
        assert commands, name
        for command in commands:
            # literally, or as the recipe's UNIFORM_PPL variable whose default is true
            literal = '--uniform-prior-ppl true' in command and '-vmt uniform_z_ppl' in command
            variable = (
                '--uniform-prior-ppl "${UNIFORM_PPL:-true}"' in command
                and '"${UNIFORM_PPL:-true}" = true ] && echo uniform_z_ppl' in command
            )
            assert literal or variable, command
            assert '-vmm min' in command


def test_defaults_are_the_papers_and_the_authors(stage1_file, tmp_path):
    """K = 20, Gumbel τ = 0.67, top-k 10 sampling, 64 tokens, no entropy term, MLM 15%."""
    opt = _opt('-m', 'plato2')
    assert (opt['n_latent'], opt['gumbel_tau'], opt['inference'], opt['topk']) == (
        20, 0.67, 'topk', 10)  # fmt: skip
    assert (opt['max_dec_len'], opt['entropy_coef'], opt['relu_dropout']) == (64, 0.0, 0.0)
    assert opt['rerank_penalties'] and opt['ranking_score'] == 'auto'
    assert _opt('-m', 'plato2_evaluator')['mlm_prob'] == 0.15
    assert Plato2Generator(30, **SIZES).tau == 0.67 and Plato2Generator(30, **SIZES).n_latent == 20


def test_stage2_loading_accepts_only_a_stage1_backbone(stage1_file, tmp_path):
    from parlai_ext.agents.plato2 import GENERATOR_FRESH
    from parlai_ext.agents.plato2_stages import load_with_fresh

    agent = _plato2(stage1_file, tmp_path)
    state = agent.model.state_dict()
    assert load_with_fresh(agent.model, state, GENERATOR_FRESH) == []
    backbone = {k: v for k, v in state.items() if not k.startswith(GENERATOR_FRESH)}
    fresh = load_with_fresh(agent.model, backbone, GENERATOR_FRESH)
    assert sorted(fresh) == sorted(k for k in state if k.startswith(GENERATOR_FRESH))
    incomplete = dict(backbone)
    del incomplete['transformer.stack.final_norm.weight']
    with pytest.raises(RuntimeError, match='does not match'):
        load_with_fresh(agent.model, incomplete, GENERATOR_FRESH)
    partial = dict(backbone, **{'transformer.bow_bias': state['transformer.bow_bias']})
    with pytest.raises(RuntimeError, match='does not match'):
        load_with_fresh(agent.model, partial, GENERATOR_FRESH)  # fresh ones all or none
