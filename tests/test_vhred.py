"""HRED / VHRED / VHRED-GMM / VHRED-LGM: KL terms against hand computations, annealing, LGM
sampling, decoding consistency, context building, overfitting, save/reload, the stock CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_parlai
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.dict import DictionaryAgent
from parlai.core.exceptions import StopTrainException
from parlai.core.params import ParlaiParser

from parlai_ext.agents.vhred import VhredAgent, pack_context
from parlai_ext.losses.multiref import (
    bow_loss,
    gaussian_kl,
    gmm_kl_mc,
    kl_anneal_weight,
    lgm_kl,
    lgm_moments,
)
from parlai_ext.modules.vhred import (
    Gaussian,
    GMMPrior,
    HierarchicalEncoderDecoder,
    LGMPrior,
    PriorParams,
    VHREDConfig,
)

ONE_THREAD = {'OMP_NUM_THREADS': '1'}
AGENTS = ['mr_hred', 'vhred', 'vhred_gmm', 'vhred_lgm']
TINY = [
    '--embedding-size', '24', '--hidden-size', '32', '--latent-size', '8', '--floor-size', '4',
    '--n-components', '3', '--dropout', '0',
]  # fmt: skip


# --- KL terms against hand computations ----------------------------------------------------
def _hand_gaussian_kl(mq, vq, mp, vp):
    return sum(
        0.5 * (math.log(b_var / a_var) + (a_var + (a_mu - b_mu) ** 2) / b_var - 1)
        for a_mu, a_var, b_mu, b_var in zip(mq, vq, mp, vp)
    )


def test_gaussian_kl_matches_hand_computation():
    mq, vq, mp, vp = [0.3, -1.0], [0.5, 2.0], [0.0, 0.5], [1.0, 0.25]
    got = gaussian_kl(*(torch.tensor([x], dtype=torch.float64) for x in (mq, vq, mp, vp)))
    assert got.shape == (1,)
    assert got.item() == pytest.approx(_hand_gaussian_kl(mq, vq, mp, vp), rel=1e-12)
    same = torch.tensor([[0.2, 0.4]])
    assert gaussian_kl(same, same.exp(), same, same.exp()).item() == pytest.approx(0, abs=1e-7)


def test_lgm_kl_exact_and_authors_against_hand_computation():
    pi = [0.2, 0.5, 0.3]
    mu = [[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]
    var = [[0.5, 1.0], [2.0, 0.1], [1.5, 0.7]]
    mq, vq = [0.1, 0.4], [0.3, 0.9]
    mean = [sum(p * m[d] for p, m in zip(pi, mu)) for d in range(2)]
    exact_var = [sum(p * p * v[d] for p, v in zip(pi, var)) for d in range(2)]
    authors_var = [sum(p * v[d] for p, v in zip(pi, var)) for d in range(2)]
    t = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    m, v = lgm_moments(t(pi), t(mu), t(var), 'exact')
    assert m[0].tolist() == pytest.approx(mean) and v[0].tolist() == pytest.approx(exact_var)
    exact = lgm_kl(t(mq), t(vq), t(pi), t(mu), t(var), 'exact').item()
    authors = lgm_kl(t(mq), t(vq), t(pi), t(mu), t(var), 'authors').item()
    assert exact == pytest.approx(_hand_gaussian_kl(mq, vq, mean, exact_var), rel=1e-12)
    assert authors == pytest.approx(_hand_gaussian_kl(mq, vq, mean, authors_var), rel=1e-12)
    assert abs(exact - authors) > 0.1  # the two options really differ
    # the prior classes use them
    params = PriorParams(t(pi), t(mu), t(var))
    for mode, expected in (('exact', exact), ('authors', authors)):
        got = LGMPrior(4, 2, 3, kl_mode=mode).kl(Gaussian(t(mq), t(vq)), None, params)
        assert got.item() == pytest.approx(expected, rel=1e-12)


def test_lgm_sample_mean_and_variance_match_the_formula():
    torch.manual_seed(0)
    n = 200_000
    pi = torch.tensor([[0.2, 0.5, 0.3]]).expand(n, 3)
    mu = torch.tensor([[[1.0, -2.0], [0.5, 0.0], [-1.0, 3.0]]]).expand(n, 3, 2)
    var = torch.tensor([[[0.5, 1.0], [2.0, 0.1], [1.5, 0.7]]]).expand(n, 3, 2)
    z = LGMPrior(4, 2, 3).sample(PriorParams(pi, mu, var))
    mean, exact_var = lgm_moments(pi[:1], mu[:1], var[:1], 'exact')
    _, authors_var = lgm_moments(pi[:1], mu[:1], var[:1], 'authors')
    assert torch.allclose(z.mean(0), mean[0], atol=0.01)
    assert torch.allclose(z.var(0), exact_var[0], rtol=0.02)
    assert (authors_var[0] - z.var(0)).min() > 0.2  # the authors' variance is not what is drawn
    # one variable only (§8.2): z ~ N(mu_1, var_1)
    z1 = LGMPrior(4, 2, 3).sample(PriorParams(pi, mu, var), component=1)
    assert torch.allclose(z1.mean(0), mu[0, 1], atol=0.01)
    assert torch.allclose(z1.var(0), var[0, 1], rtol=0.02)


def test_gmm_kl_monte_carlo_estimate_matches_numerical_integration():
    torch.manual_seed(0)
    pi, mus, vars_ = [0.3, 0.7], [-1.5, 1.0], [0.4, 0.8]
    mq, vq = 0.5, 0.6

    def normal(x, m, v):
        return math.exp(-((x - m) ** 2) / (2 * v)) / math.sqrt(2 * math.pi * v)

    step, kl = 1e-3, 0.0
    for i in range(-12000, 12000):  # int q log(q / p) dx on [-12, 12]
        x = i * step
        q = normal(x, mq, vq)
        p = sum(w * normal(x, m, v) for w, m, v in zip(pi, mus, vars_))
        if q > 0:
            kl += q * math.log(q / p) * step
    n = 400_000
    mu_q, var_q = torch.full((n, 1), mq, dtype=torch.float64), torch.full((n, 1), vq)
    var_q = var_q.double()
    z = mu_q + var_q.sqrt() * torch.randn_like(mu_q)
    estimate = gmm_kl_mc(
        z,
        mu_q,
        var_q,
        torch.tensor([pi], dtype=torch.float64).expand(n, 2),
        torch.tensor(mus, dtype=torch.float64).view(1, 2, 1).expand(n, 2, 1),
        torch.tensor(vars_, dtype=torch.float64).view(1, 2, 1).expand(n, 2, 1),
    )
    assert estimate.mean().item() == pytest.approx(kl, abs=0.01)
    # one Gaussian component: the estimator averages to the closed form
    closed = _hand_gaussian_kl([mq], [vq], [mus[0]], [vars_[0]])
    one = gmm_kl_mc(
        z,
        mu_q,
        var_q,
        torch.ones(n, 1, dtype=torch.float64),
        torch.full((n, 1, 1), mus[0], dtype=torch.float64),
        torch.full((n, 1, 1), vars_[0], dtype=torch.float64),
    )
    assert one.mean().item() == pytest.approx(closed, abs=0.01)


def test_gmm_prior_samples_components_with_their_weights():
    torch.manual_seed(0)
    n = 50_000
    pi = torch.tensor([[0.25, 0.75]]).expand(n, 2)
    mu = torch.tensor([[[-10.0], [10.0]]]).expand(n, 2, 1)
    var = torch.full((n, 2, 1), 0.01)
    z = GMMPrior(4, 1, 2).sample(PriorParams(pi, mu, var))
    assert (z > 0).float().mean().item() == pytest.approx(0.75, abs=0.01)
    assert z[z > 0].mean().item() == pytest.approx(10.0, abs=0.01)


def test_kl_annealing_weights_at_given_steps():
    assert [kl_anneal_weight(s, 40000) for s in (0, 1, 10000, 20000, 40000, 90000)] == [
        0.0,
        1 / 40000,
        0.25,
        0.5,
        1.0,
        1.0,
    ]
    assert kl_anneal_weight(5, 0) == 1.0


def test_bow_loss_counts_every_response_token_but_padding():
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    targets = torch.tensor([[1, 2, 2, 0]])  # 0 = padding
    assert bow_loss(logits, targets, 0).item() == pytest.approx(3 * math.log(4))


# --- model ---------------------------------------------------------------------------------
@pytest.mark.parametrize('attention', ['general', 'additive'])
@pytest.mark.parametrize('prior', ['none', 'lgm'])
def test_incremental_decoding_equals_teacher_forcing(prior, attention):
    torch.manual_seed(0)
    config = VHREDConfig(
        vocab_size=30, embedding_size=8, hidden_size=12, latent_size=4, floor_size=3,
        latent_prior=prior, n_components=2, attention=attention, dropout=0.0, n_layers=2,
    )  # fmt: skip
    net = HierarchicalEncoderDecoder(config).eval()
    utts, floors, n_utts = pack_context([[[3, 4, 5], [6, 7]], [[8, 9, 10, 11]]], 0)
    encoded = net.encode(utts, floors, n_utts)
    z = net.prior_sample(encoded.context, 'mean')
    dec_context = net.decoder_context(encoded.context, z)
    tokens = torch.tensor([[1, 12, 13, 14], [1, 15, 16, 17]])
    full, _ = net.decode(tokens, encoded, dec_context)
    state, steps = None, []
    for t in range(tokens.size(1)):
        out, state = net.decode(tokens[:, t : t + 1], encoded, dec_context, state)
        steps.append(out)
    assert torch.allclose(full, torch.cat(steps, dim=1), atol=1e-6)
    # padding utterances/tokens do not change the encoding of a context
    alone = net.encode(*pack_context([[[8, 9, 10, 11]]], 0))
    assert torch.allclose(alone.context[0], encoded.context[1], atol=1e-6)


def test_utterance_encoder_sees_only_the_real_utterances():
    """E(X) encodes each dialogue's n_utts utterances, not its padding slots (§4.1)."""
    config = VHREDConfig(vocab_size=30, embedding_size=8, hidden_size=12, latent_size=4)
    net = HierarchicalEncoderDecoder(config).eval()
    rows = []
    net.utterance_encoder.register_forward_hook(lambda _m, args, _o: rows.append(args[0]))
    utts, floors, n_utts = pack_context([[[3, 4, 5], [6, 7], [8]], [[8, 9, 10, 11]]], 0)
    net.encode(utts, floors, n_utts)
    assert n_utts.tolist() == [3, 1] and rows[0].shape[0] == 4  # 3 + 1, not 2 x 3 slots
    assert rows[0][3].tolist() == [8, 9, 10, 11]


def test_pack_context_floors_alternate_and_last_utterance_is_the_other_speaker():
    utts, floors, n_utts = pack_context([[[5], [6, 7], [8]], [[9, 9]]], 0)
    assert utts.shape == (2, 3, 2) and n_utts.tolist() == [3, 1]
    assert floors.tolist() == [[0, 1, 0], [0, 0, 0]]
    assert utts[0, 1].tolist() == [6, 7] and utts[1, 1].tolist() == [0, 0]


def test_pack_context_equals_the_per_utterance_loop():
    """The one-write packing against the loop it replaced (#23): every token in its slot,
    padding elsewhere, floors (n - 1 - i) % 2 of the real utterances and 0 at padded ones
    (a 2-utterance example next to a 4-utterance one: its slot 2 would read floor 1)."""
    contexts = [[[5, 6], [7]], [[8], [9, 10, 11], [12], [13, 14]], [[15, 16, 17]]]
    utts = torch.zeros(3, 4, 3, dtype=torch.long)
    floors = torch.zeros(3, 4, dtype=torch.long)
    for b, context in enumerate(contexts):
        for i, utterance in enumerate(context):
            utts[b, i, : len(utterance)] = torch.tensor(utterance)
            floors[b, i] = (len(context) - 1 - i) % 2
    got = pack_context(contexts, 0)
    assert torch.equal(got[0], utts) and torch.equal(got[1], floors)
    assert got[1].tolist() == [[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]
    assert got[2].tolist() == [2, 4, 1]


# --- agents (in process) -------------------------------------------------------------------
FIXTURE = [  # (context utterances, response): every response is determined by its context
    (['hello , who are you ?'], 'i am anna from paris .'),
    (['hello , who are you ?', 'i am anna from paris .', 'what do you eat ?'], 'i eat soup .'),
    (['good morning !'], 'morning ! i am ben .'),
    (['good morning !', 'morning ! i am ben .', 'do you have pets ?'], 'yes , a small dog .'),
    (['where do you live ?'], 'i live in oslo .'),
    (['bye now'], 'see you later !'),
]


def _opt(name: str, tmp_path, *extra: str):
    parser = ParlaiParser(True, True)
    args = ['-m', name, '-mf', str(tmp_path / name), '--dict-file', str(tmp_path / 'dict')]
    opt = parser.parse_args([*args, *TINY, *extra])
    dictionary = DictionaryAgent(opt)
    for context, response in FIXTURE:
        for text in [*context, response]:
            dictionary.add_to_dict(dictionary.tokenize(text.lower()))
    dictionary.save(opt['dict_file'], sort=True)
    return opt


def _metric(replies, key: str) -> float:
    """A local metric of a batch, summed over its replies as ParlAI's teachers do."""
    return sum((r['metrics'][key] for r in replies[1:]), replies[0]['metrics'][key]).value()


def _observations(agent, label_key: str = 'labels'):
    observations = []
    for context, response in FIXTURE:
        message = {'text': '\n'.join(context), label_key: [response], 'episode_done': True}
        observations.append(agent.observe(message))
        agent.self_observe({})
    return observations


@pytest.mark.parametrize('name', AGENTS)
def test_each_model_overfits_the_tiny_fixture(name, tmp_path):
    torch.manual_seed(0)
    opt = _opt(name, tmp_path, '-lr', '1e-2', '--kl-anneal-steps', '50', '--test-z', 'mean')
    agent = create_agent(opt)
    expected_prior = {'mr_hred': 'none', 'vhred': 'gaussian'}.get(name, name.split('_')[-1])
    assert agent.opt['latent_prior'] == expected_prior
    batch = _observations(agent)
    for _ in range(150):
        replies = agent.batch_act(batch)
    assert _metric(replies, 'ppl') < 1.3
    if name != 'mr_hred':
        assert _metric(replies, 'kl_weight') == pytest.approx(1.0)  # annealing done at 50
        assert _metric(replies, 'elbo_ppl') >= _metric(replies, 'ppl')
    replies = agent.batch_act(_observations(agent, 'eval_labels'))
    assert [r['text'] for r in replies] == [response for _, response in FIXTURE]


def test_kl_weight_is_recorded_per_update(tmp_path):
    opt = _opt('vhred', tmp_path, '--kl-anneal-steps', '8')
    agent = create_agent(opt)
    batch = _observations(agent)
    weights = []
    for _ in range(3):
        weights.append(_metric(agent.batch_act(batch), 'kl_weight'))
    assert weights == pytest.approx([1 / 8, 2 / 8, 3 / 8])


def test_save_reload_gives_identical_sampled_generation(tmp_path):
    torch.manual_seed(0)
    opt = _opt('vhred_lgm', tmp_path, '-lr', '1e-2', '--inference', 'nucleus', '--topp', '0.9')
    agent = create_agent(opt)
    batch = _observations(agent)
    for _ in range(20):
        agent.batch_act(batch)
    agent.save(opt['model_file'])

    def generate(a, seed):
        a.model.eval()
        torch.manual_seed(seed)
        return [r['text'] for r in a.batch_act(_observations(a, 'eval_labels'))]

    reloaded = create_agent_from_model_file(opt['model_file'], {'inference': 'nucleus'})
    assert isinstance(reloaded, VhredAgent) and reloaded.opt['latent_prior'] == 'lgm'
    for key, value in agent.model.state_dict().items():
        assert torch.equal(value, reloaded.model.state_dict()[key]), key
    first, again = generate(agent, 7), generate(reloaded, 7)
    assert first == again
    assert generate(reloaded, 8) != first  # z and tokens really are sampled


def test_context_from_history_turns_equals_newline_joined_text(tmp_path):
    opt = _opt('mr_hred', tmp_path, '--max-context-utts', '3', '--max-utt-len', '4')
    agent = create_agent(opt)
    turns = [('a b c d e f', 'g h'), ('i j', 'k l'), ('m n', 'o p')]
    per_turn = []
    for i, (text, label) in enumerate(turns):
        message = {'text': text, 'labels': [label], 'episode_done': i == len(turns) - 1}
        per_turn.append(agent.observe(message)['context_utts'])
        agent.self_observe({})
    flat = agent.observe({'text': 'g h\ni j\nk l\nm n', 'labels': ['o p'], 'episode_done': True})
    agent.self_observe({})
    assert per_turn[-1] == flat['context_utts']
    assert len(per_turn[-1]) == 3  # the last 3 utterances
    assert len(per_turn[0]) == 1 and len(per_turn[0][0]) == 4  # cut to 4 tokens


def test_min_lr_stops_training(tmp_path):
    agent = create_agent(_opt('vhred', tmp_path, '--min-lr', '1e-4'))
    agent.receive_metrics({'elbo_loss': 1.0, 'loss': 5.0})  # lr 1e-3: nothing happens
    for group in agent.optimizer.param_groups:
        group['lr'] = 1e-5
    with pytest.raises(StopTrainException):
        agent.receive_metrics({'elbo_loss': 1.0, 'loss': 5.0})


# --- the stock CLI -------------------------------------------------------------------------
def test_cli_train_eval_with_paper_metrics(tmp_path):
    model_file = str(tmp_path / 'lgm')
    env = {'PARLAI_DATAPATH': str(tmp_path / 'data'), **ONE_THREAD}
    run_parlai(
        'train_model', '-m', 'vhred_lgm', *TINY, '-t', 'ext_demo', '-mf', model_file,
        '-bs', '16', '--max-train-steps', '30', '-vtim', '1000', '--short-final-eval', 'true',
        '--validation-max-exs', '16', '--kl-anneal-steps', '10', '--log-every-n-steps', '10',
        env=env,
    )  # fmt: skip
    stats = json.load(open(model_file + '.trainstats'))
    assert stats['train_reports'][-1]['kl_weight'] == 1.0  # annealed over 10 of 30 steps
    opt = json.load(open(model_file + '.opt'))
    assert opt['latent_prior'] == 'lgm' and opt['gradient_clip'] == 1.0
    assert opt['lr_scheduler_decay'] == 0.75 and opt['validation_metric'] == 'elbo_ppl'
    run_parlai(
        'eval_model', '-mf', model_file, '-t', 'ext_demo', '-dt', 'valid', '--num-examples',
        '12', '--inference', 'beam', '--beam-size', '3', '--metrics', 'ext_multiref',
        '--report-filename', model_file + '.eval.json', env=env,
    )  # fmt: skip
    report = json.load(open(model_file + '.eval.json'))['report']
    for key in ('ppl', 'post_ppl', 'kl', 'elbo_ppl', 'ext_sent_bleu-2', 'ext_emb_greedy'):
        assert key in report, key
    assert report['ext_dist_types-1'] >= 1
    assert report['elbo_ppl'] >= report['post_ppl']  # closed-form KL >= 0
