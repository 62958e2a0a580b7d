"""The multi-reference agents' glue pinned by value (HRED / VHRED / VHRED-GMM / VHRED-LGM).

- the training loss NLL + beta * KL + w * BoW through the agent's own ``compute_loss``, with
  the annealed beta by value; HRED's summed NLL averaged over examples;
- the metrics (posterior z in training, prior z in evaluation; the mixture weights pi_k);
- generation: z from the prior (mean or sample, one latent component), beam-search
  log-probabilities equal to teacher forcing;
- the context reader (blank utterances dropped) and the plateau scheduler's monitor.

The model and loss math (teacher-forced pass, priors, KL, samples, gradients) is in
``test_multiref_math.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
from parlai.core.agents import create_agent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser

from parlai_ext.losses import multiref as L

TINY = [
    '--embedding-size', '8', '--hidden-size', '10', '--latent-size', '4', '--floor-size', '3',
    '--n-components', '3', '--dropout', '0',
]  # fmt: skip
EXAMPLES = [
    ('hello , who are you ?', 'i am anna .'),
    ('good morning !\nmorning ! i am ben .\ndo you have pets ?', 'yes , a dog .'),
    ('where do you live ?', 'in oslo'),
]


def _agent(tmp_path, name: str, *extra: str):
    parser = ParlaiParser(True, True)
    args = ['-m', name, '-mf', str(tmp_path / name), '--dict-file', str(tmp_path / 'dict')]
    opt = parser.parse_args([*args, *TINY, *extra])
    dictionary = DictionaryAgent(opt)
    for context, response in EXAMPLES:
        dictionary.add_to_dict(dictionary.tokenize(f'{context} {response}'))
    dictionary.save(opt['dict_file'], sort=True)
    agent = create_agent(opt)
    with torch.no_grad():  # away from the init, so that KL and BoW are far from 0
        for param in agent.model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    return agent


def _agent_batch(agent, key: str = 'labels'):
    observations = []
    for text, label in EXAMPLES:
        observations.append(agent.observe({'text': text, key: [label], 'episode_done': True}))
        agent.self_observe({})
    return agent.batchify(observations)


def _terms(agent, batch, z_source: str = 'posterior', seed: int = 11):
    """Per-example summed token NLL, KL and BoW of one teacher-forced pass."""
    torch.manual_seed(seed)
    xs = agent._model_input(batch)
    scores, _, _, out = agent.model(*xs, ys=batch.label_vec, z_source=z_source)
    nll = L.token_nll(scores, batch.label_vec, agent.NULL_IDX).sum(-1)
    bow = L.bow_loss(out.bow_logits, batch.label_vec, agent.NULL_IDX)
    return nll, out.kl, bow


@pytest.mark.parametrize('name', ['vhred', 'vhred_gmm', 'vhred_lgm'])
def test_agent_training_loss_is_nll_plus_annealed_beta_kl_plus_weighted_bow(name, tmp_path):
    agent = _agent(tmp_path, name, '--kl-anneal-steps', '40', '--bow-weight', '0.5')
    agent.model.train()
    agent._number_training_updates = 9  # the coming update is the 10th: beta = 10 / 40
    assert agent.kl_weight() == pytest.approx(0.25)
    batch = _agent_batch(agent)
    torch.manual_seed(11)
    loss = agent.compute_loss(batch)
    nll, kl, bow = _terms(agent, batch)
    assert (kl.abs() > 1e-3).all() and (bow > 1).all()
    # metrics: the unweighted KL per example, the weight, BoW per token
    tokens = batch.label_vec.ne(agent.NULL_IDX).sum().item()
    assert _metric(agent, 'kl') == pytest.approx(kl.mean().item(), rel=1e-5)
    assert _metric(agent, 'kl_weight') == pytest.approx(0.25)
    assert _metric(agent, 'bow_loss') == pytest.approx(bow.sum().item() / tokens, rel=1e-5)
    expected = (nll + 0.25 * kl + 0.5 * bow).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for wrong in ((nll + kl + 0.5 * bow).mean(), (nll + 0.25 * kl + bow).mean(), nll.mean()):
        assert loss.item() != pytest.approx(wrong.item(), rel=1e-4)
    # evaluation: the full bound (beta = 1), still with the posterior's NLL
    agent.model.eval()
    agent._local_metrics.clear()
    torch.manual_seed(11)
    eval_loss = agent.compute_loss(_agent_batch(agent, 'eval_labels'))
    assert eval_loss.item() == pytest.approx((nll + kl + 0.5 * bow).mean().item(), rel=1e-5)


def test_agent_hred_loss_is_the_summed_nll_averaged_over_examples(tmp_path):
    agent = _agent(tmp_path, 'mr_hred')
    agent.model.train()
    batch = _agent_batch(agent)
    loss = agent.compute_loss(batch)
    scores = agent.model(*agent._model_input(batch), ys=batch.label_vec)[0]
    nll = L.token_nll(scores, batch.label_vec, agent.NULL_IDX).sum(-1)
    assert loss.item() == pytest.approx(nll.mean().item(), rel=1e-6)
    tokens = batch.label_vec.ne(agent.NULL_IDX).sum()
    assert loss.item() != pytest.approx((nll.sum() / tokens).item(), rel=1e-3)


def _metric(agent, key: str) -> float:
    return (
        agent._local_metrics[key][0].value()
        if len(agent._local_metrics[key]) == 1
        else sum(agent._local_metrics[key][1:], agent._local_metrics[key][0]).value()
    )


def test_agent_metrics_posterior_z_in_training_prior_z_in_evaluation(tmp_path):
    agent = _agent(tmp_path, 'vhred_lgm', '--test-z', 'mean', '--kl-anneal-steps', '0')
    batch = _agent_batch(agent)
    tokens = batch.label_vec.ne(agent.NULL_IDX).sum().item()
    agent.model.train()
    agent._local_metrics.clear()
    torch.manual_seed(11)
    agent.compute_loss(batch)
    nll_post, kl, _ = _terms(agent, batch)
    assert _metric(agent, 'loss') == pytest.approx(nll_post.sum().item() / tokens, rel=1e-5)
    assert _metric(agent, 'kl') == pytest.approx(kl.mean().item(), rel=1e-5)
    assert _metric(agent, 'kl_weight') == 1.0
    agent.model.eval()
    agent._local_metrics.clear()
    torch.manual_seed(11)
    agent.compute_loss(batch)
    nll_prior, _, _ = _terms(agent, batch, 'prior_mean')
    assert _metric(agent, 'loss') == pytest.approx(nll_prior.sum().item() / tokens, rel=1e-5)
    assert _metric(agent, 'ppl') == pytest.approx(
        math.exp(nll_prior.sum().item() / tokens), rel=1e-4
    )
    assert _metric(agent, 'post_ppl') == pytest.approx(
        math.exp(nll_post.sum().item() / tokens), rel=1e-4
    )
    assert _metric(agent, 'elbo_ppl') == pytest.approx(
        math.exp((nll_post + kl).sum().item() / tokens), rel=1e-4
    )
    assert abs(nll_prior.sum() - nll_post.sum()) > 1e-3  # the two z really differ
    assert 'kl_weight' not in agent._local_metrics


@pytest.mark.parametrize('test_z', ['mean', 'sample'])
def test_generation_draws_z_from_the_prior(tmp_path, test_z):
    agent = _agent(tmp_path, 'vhred_lgm', '--test-z', test_z)
    agent.model.eval()
    batch = _agent_batch(agent, 'eval_labels')
    xs = agent._model_input(batch)
    torch.manual_seed(12)
    state = agent.model.encoder(*xs)
    net = agent.model.net
    encoded = net.encode(*xs)
    params = net.prior(encoded.context)
    torch.manual_seed(12)
    z = net.prior.mean(params) if test_z == 'mean' else net.prior.sample(params)
    assert torch.allclose(state.dec_context, net.decoder_context(encoded.context, z), atol=1e-6)


@pytest.mark.parametrize('name', ['mr_hred', 'vhred_lgm'])
def test_beam_search_log_probabilities_equal_teacher_forcing(name, tmp_path):
    """ParlAI's beam search through our incremental decoder (GRU state reordered with the
    beams, z from the prior drawn once per context): every token log-probability of every
    returned hypothesis is the teacher-forced one of its prefix with the same z (the last
    token is ParlAI's forced END when a hypothesis reaches the length cap: left out)."""
    agent = _agent(tmp_path, name, '--test-z', 'mean', '--inference', 'beam', '--beam-size',
                   '3', '--beam-length-penalty', '0', '--beam-min-length', '0', '--verbose')  # fmt: skip
    agent.model.eval()
    with torch.no_grad():  # long hypotheses: END unlikely (still a choice of the search)
        agent.model.net.output_bias[agent.END_IDX] -= 4
    batch = _agent_batch(agent, 'eval_labels')
    with torch.no_grad():
        beam_preds, _ = agent._generate(batch, 3, 6)
    xs = agent._model_input(batch)
    for row, (tokens, score, details) in enumerate(beam_preds):
        beam_logprobs = torch.tensor([float(d['token_logprob']) for d in details[1:]])
        assert score.item() == pytest.approx(beam_logprobs.sum().item(), abs=1e-4)
        tokens = tokens[1:]  # without the start token
        one = tuple(x[row : row + 1] for x in xs)
        with torch.no_grad():
            scores = agent.model(*one, ys=tokens[None], z_source='prior_mean')[0]
        forced = torch.log_softmax(scores[0].float(), -1).gather(1, tokens[:, None])[:, 0]
        assert len(tokens) > 3
        assert torch.allclose(beam_logprobs[:-1], forced[:-1], atol=1e-4), row


def test_generation_with_one_latent_component(tmp_path):
    """--latent-component k (§8.2): pi one-hot on k, so the prior-mean z is mu_k."""
    agent = _agent(tmp_path, 'vhred_lgm', '--test-z', 'mean', '--latent-component', '1')
    agent.model.eval()
    xs = agent._model_input(_agent_batch(agent, 'eval_labels'))
    state = agent.model.encoder(*xs)
    net = agent.model.net
    context = net.encode(*xs).context
    mu_1 = net.prior(context).mu[:, 1]
    assert torch.allclose(state.dec_context, net.decoder_context(context, mu_1), atol=1e-6)


def test_context_drops_blank_utterances(tmp_path):
    agent = _agent(tmp_path, 'mr_hred')
    observed = agent.observe({'text': 'hello\n\n  \nwhere do you live ?', 'labels': ['x'],
                              'episode_done': True})  # fmt: skip
    texts = [agent.dict.vec2txt(u) for u in observed['context_utts']]
    assert texts == ['hello', 'where do you live ?']


def test_plateau_scheduler_watches_the_elbo_not_the_prior_z_loss(tmp_path):
    """The lr decays when elbo_loss stops improving (B.2's monitor), whatever ``loss`` does."""
    agent = _agent(tmp_path, 'vhred', '--lr-scheduler-patience', '0')
    lr = lambda: agent.optimizer.param_groups[0]['lr']  # noqa: E731
    start = lr()
    for step in range(4):  # elbo falls, the (prior-z) loss rises: no decay
        agent.receive_metrics({'elbo_loss': 5.0 - step, 'loss': 1.0 + step})
    assert lr() == start
    agent.receive_metrics({'elbo_loss': 9.0, 'loss': 0.1})  # elbo rises: decay by 0.75
    assert lr() == pytest.approx(start * 0.75)


@pytest.mark.parametrize('name', ['vhred_gmm', 'vhred_lgm'])
def test_agent_reports_the_mean_component_weights_of_the_prior(name, tmp_path):
    """pi_k = the prior's weight of component k averaged over examples (§8.2's pi-bar)."""
    agent = _agent(tmp_path, name, '--n-components', '3')
    agent.model.eval()
    batch = _agent_batch(agent, 'eval_labels')
    agent._local_metrics.clear()
    agent.compute_loss(batch)
    net = agent.model.net
    with torch.no_grad():
        pi = net.prior(net.encode(*agent._model_input(batch)).context).pi  # [B, K]
    assert pi.shape == (len(EXAMPLES), 3)
    assert (pi.max(dim=0).values - pi.min(dim=0).values).max() > 1e-3  # weights differ per row
    means = [_metric(agent, f'pi_{k}') for k in range(3)]
    assert means == pytest.approx(pi.mean(dim=0).tolist(), rel=1e-5)
    assert sum(means) == pytest.approx(1.0, rel=1e-5)
    assert _metric(agent, 'pi_max') == pytest.approx(pi.max(dim=-1).values.mean().item(), rel=1e-5)
    assert 'pi_3' not in agent._local_metrics


def test_agent_without_mixture_reports_no_component_weights(tmp_path):
    for name in ('vhred', 'mr_hred'):
        agent = _agent(tmp_path, name)
        agent.model.eval()
        agent._local_metrics.clear()
        agent.compute_loss(_agent_batch(agent, 'eval_labels'))
        assert 'pi_0' not in agent._local_metrics and 'pi_max' not in agent._local_metrics
