"""PLATO-2's equations pinned by value (issue #18).

Each test computes a quantity by hand (from the module's weights, outside the code under test)
and compares: which slot each head reads (BOW from z, posterior from [M], coherence from
[CLS]), the Gumbel-softmax sample and its temperature, the loss compositions of stage 2.1
(NLL + BOW [+ entropy]) and stage 2.2 (coherence + MLM on the ORIGINAL tokens), the
uniform-prior perplexity, the reranking (length averaging, penalties), the decoding limits and
what the stage-2 models inherit from stage 1. Tiny seeded models; no training.
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

import parlai_ext.agents.plato2_evaluator as plato2_evaluator_agent
import parlai_ext.modules.sampling as sampling
from parlai_ext.agents.plato2 import PENALTY, repetition_reason
from parlai_ext.agents.plato2_stages import inherit_architecture
from parlai_ext.losses.plato2 import (
    bow_loss,
    coherence_pairs,
    latent_counts,
    mlm_loss,
    negative_entropy_loss,
    posterior_entropy,
)
from parlai_ext.modules.plato2 import Plato2Evaluator, Plato2Generator

SIZES = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=64, n_positions=64, dropout=0.0)
SENTENCES = [
    'hi , how are you ?', 'i am fine , thanks . and you ?', 'what is your name ?',
    'my name is anna .', 'where do you live ?', 'i live in paris .', 'good morning !',
]  # fmt: skip


def _randomise(module: torch.nn.Module) -> None:
    """LayerNorms and biases away from (1, 0): using the wrong one (or none) changes values."""
    for sub in module.modules():
        if isinstance(sub, torch.nn.LayerNorm):
            torch.nn.init.normal_(sub.weight, 1.0, 0.5)
            torch.nn.init.normal_(sub.bias, 0.0, 0.5)
        elif isinstance(sub, torch.nn.Linear) and sub.bias is not None:
            torch.nn.init.normal_(sub.bias, 0.0, 0.3)


def _inputs():
    # right-padded contexts of lengths 5 and 3; responses start with token 1 (start)
    context = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    response = torch.tensor([[1, 13, 14, 15], [1, 16, 17, 0]])
    return context, response


@pytest.fixture
def generator():
    torch.manual_seed(0)
    model = Plato2Generator(30, n_latent=5, **SIZES)
    _randomise(model)
    with torch.no_grad():
        model.recognition_bias.normal_()
        model.bow_bias.normal_()
        model.latent_embedding.normal_()
    return model.eval()


# --- which slot each head reads -----------------------------------------------------------------
def test_posterior_reads_the_mask_slot_of_a_bidirectional_pass(generator):
    """Eq. 3: p(z|c,r) = softmax(E tanh(fc(h_[M])) + b1), h from a bidirectional pass over
    [M; c; r]; E = the latent embedding table (tied)."""
    context, response = _inputs()
    prefix = generator.mask_embedding.expand(2, 1, -1)
    with torch.no_grad():
        hidden, _ = generator.encode(context, response, prefix, bidirectional=True)
        pooled = torch.tanh(F.linear(hidden[:, 0], generator.recognition.weight,
                                     generator.recognition.bias))  # fmt: skip
        hand = pooled @ generator.latent_embedding.T + generator.recognition_bias
        assert torch.allclose(generator.recognize(context, response), hand, atol=1e-5)
        # the posterior reads the response (bidirectional): another response, other logits
        other = torch.where(response > 1, 20, response)
        assert not torch.allclose(generator.recognize(context, other), hand, atol=1e-3)


def test_bow_head_reads_the_latent_slot_of_the_generation_pass(generator):
    """Eq. 5: f = softmax(W2 LN(gelu(fc(h_z))) + b2), W2 = the token embeddings (tied)."""
    context, response = _inputs()
    with torch.no_grad():
        out = generator(context, response)  # eval: z = the posterior's argmax
        z = generator.latent_vectors(out.latent_weights)
        hidden, _ = generator.encode(context, response, z)
        fc, _, norm = generator.bow_transform
        h = F.layer_norm(F.gelu(fc(hidden[:, 0])), (32,), norm.weight, norm.bias)
        hand = h @ generator.embeddings.tokens.weight.T + generator.bow_bias
        assert torch.allclose(out.bow_logits, hand, atol=1e-5)
        assert torch.allclose(generator.bow_logits(hidden[:, 0]), hand, atol=1e-5)
        assert torch.allclose(out.response_hidden, hidden[:, 6:], atol=1e-6)
        # h_z never sees the response (z is part of the context segment)
        other_hidden, _ = generator.encode(context, torch.where(response > 1, 20, response), z)
        assert torch.allclose(other_hidden[:, 0], hidden[:, 0], atol=1e-6)


def test_generator_needs_a_latent_value():
    with pytest.raises(ValueError, match='n_latent'):
        Plato2Generator(30, n_latent=0, **SIZES)


def test_latent_vector_is_the_weighted_sum_of_latent_embeddings(generator):
    weights = torch.tensor([[0.2, 0.0, 0.8, 0.0, 0.0]])
    hand = 0.2 * generator.latent_embedding[0] + 0.8 * generator.latent_embedding[2]
    assert torch.allclose(generator.latent_vectors(weights)[0, 0], hand, atol=1e-6)
    state = generator.encode_latent_context(torch.tensor([[5, 6]]), torch.tensor([3]))
    reference = generator.encode_context(torch.tensor([[5, 6]]),
                                         generator.latent_embedding[3][None, None])  # fmt: skip
    assert torch.allclose(state.caches[1][0], reference.caches[1][0], atol=1e-6)


# --- the latent sample: Gumbel-softmax of the posterior in training, argmax in evaluation --------
def test_training_uses_a_gumbel_softmax_sample_of_the_posterior_at_its_temperature(
    generator, monkeypatch
):
    context, response = _inputs()
    noise = torch.tensor([[0.3, -1.0, 2.0, 0.1, 0.5], [1.5, 0.2, -0.4, 0.0, 0.9]])
    monkeypatch.setattr(sampling, 'gumbel_noise', lambda *args, **kwargs: noise.clone())
    generator.train()
    entropies = {}
    for tau in (0.1, 0.67, 5.0):
        generator.tau = tau
        with torch.no_grad():
            out = generator(context, response)
        expected = F.softmax((out.posterior_logits + noise) / tau, dim=-1)
        assert torch.allclose(out.latent_weights, expected, atol=1e-6), tau
        # the generation pass is conditioned on exactly that mixture of latent embeddings
        hidden, _ = generator.encode(context, response, generator.latent_vectors(expected))
        assert torch.allclose(out.response_hidden, hidden[:, 6:], atol=1e-5)
        p = out.latent_weights
        entropies[tau] = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
        if tau == 0.1:
            assert (p.max(-1).values > 0.99).all()  # nearly one-hot
    # a lower temperature gives a sharper (lower-entropy) sample
    assert entropies[0.1] < entropies[0.67] < entropies[5.0]
    assert entropies[5.0] > 0.8 * math.log(5)


def test_evaluation_uses_the_posterior_argmax_one_hot(generator):
    context, response = _inputs()
    with torch.no_grad():
        out = generator(context, response)
    one_hot = F.one_hot(out.posterior_logits.argmax(-1), 5).float()
    assert torch.equal(out.latent_weights, one_hot)


def test_gradient_of_the_nll_reaches_the_posterior_through_the_soft_sample(generator):
    generator.train()
    context, response = _inputs()
    out = generator(context, response)
    out.response_hidden.sum().backward()
    assert generator.recognition_bias.grad.abs().sum() > 0  # no detach on the sample


# --- the evaluator: [CLS] slot, [MASK] vector, tied MLM head --------------------------------------
def test_evaluator_classifies_the_cls_slot_and_predicts_masked_tokens_with_tied_weights():
    torch.manual_seed(0)
    model = Plato2Evaluator(30, **SIZES)
    _randomise(model)
    model.eval()
    context, response = _inputs()
    replaced = torch.zeros(2, 9, dtype=torch.bool)
    replaced[0, 6] = True
    with torch.no_grad():
        logits, token_hidden = model(context, response, replaced)
        prefix = model.cls_embedding.expand(2, 1, -1)
        hidden, _ = model.encode(context, response, prefix, bidirectional=True,
                                 replaced=replaced, replacement=model.mask_embedding)  # fmt: skip
        pooled = torch.tanh(F.linear(hidden[:, 0], model.pooler.weight, model.pooler.bias))
        hand = F.linear(pooled, model.classifier.weight, model.classifier.bias)
        assert torch.allclose(logits, hand, atol=1e-5)
        assert torch.allclose(token_hidden, hidden[:, 1:], atol=1e-6)
        assert torch.allclose(model.mlm_logits(token_hidden),
                              token_hidden @ model.embeddings.tokens.weight.T)  # fmt: skip
        # coherence = p(l = 1 | c, r): the second class, without masking
        plain, _ = model(context, response)
        assert torch.allclose(model.coherence(context, response), plain.softmax(-1)[:, 1])
        # the response is seen by the [CLS] slot (bidirectional)
        other, _ = model(context, torch.where(response > 1, 20, response))
        assert not torch.allclose(other, plain, atol=1e-4)


# --- losses by hand -------------------------------------------------------------------------------
def test_posterior_entropy_and_the_entropy_term_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 1.0, 1.0]])
    p = [[math.exp(v) for v in row] for row in logits.tolist()]
    p = [[v / sum(row) for v in row] for row in p]
    entropy = [-sum(v * math.log(v) for v in row) for row in p]
    assert posterior_entropy(logits).tolist() == pytest.approx(entropy, abs=1e-6)
    # the authors' entropy "loss": mean of sum p log p = minus the mean entropy
    assert negative_entropy_loss(logits).item() == pytest.approx(-sum(entropy) / 2, abs=1e-6)
    assert latent_counts(logits).tolist() == [[0, 0, 1], [1, 0, 0]]


def test_mlm_loss_is_the_mean_cross_entropy_of_the_selected_tokens():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    targets = torch.tensor([0, 1])
    log_z = [math.log(math.exp(2) + 2), math.log(1 + math.e + math.exp(3))]
    hand = ((log_z[0] - 2.0) + (log_z[1] - 1.0)) / 2
    assert mlm_loss(logits, targets).item() == pytest.approx(hand, abs=1e-6)


def test_coherence_pairs_of_two_examples_swap_their_responses():
    context, response = torch.tensor([[1], [2]]), torch.tensor([[10], [20]])
    ctx, resp, labels = coherence_pairs(context, response)
    assert resp.squeeze(1).tolist() == [10, 20, 20, 10] and labels.tolist() == [1, 1, 0, 0]
    one = coherence_pairs(context[:1], response[:1])
    assert one[1].tolist() == [[10]] and one[2].tolist() == [1]


def test_bow_loss_ignores_padding_in_every_row():
    logits = torch.tensor([[0.0, 1.0, 2.0], [2.0, 0.0, 1.0]])
    targets = torch.tensor([[1, 2, 0], [2, 0, 0]])  # padding 0
    log_p = F.log_softmax(logits, -1)
    hand = -(log_p[0, 1] + log_p[0, 2] + log_p[1, 2]) / 3
    assert bow_loss(logits, targets, 0).item() == pytest.approx(hand.item(), abs=1e-6)
    with pytest.raises(ValueError):
        bow_loss(logits, targets, 0, reduction='sum')


# --- agents ---------------------------------------------------------------------------------------
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
    _randomise(agent.model.transformer)
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
    _randomise(agent.model.transformer)
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
    _randomise(agent.model.transformer)
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
