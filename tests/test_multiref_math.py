"""The HRED / VHRED / VHRED-GMM / VHRED-LGM math pinned by value (multi-referenced training).

- the whole teacher-forced pass (utterance bi-GRU, floors, context GRU, prior and posterior
  heads, z, decoder context, attention decoder, tied output, bag-of-words head) against a
  reference written here one example at a time without padding, run on a padded batch of
  utterances and contexts of different lengths (the padding masks);
- the KL terms (Gaussian against a hand computation and in the direction KL(q || p), GMM Monte
  Carlo, LGM in both ``--lgm-kl`` modes) through the prior classes;
- reparameterised samples (values and gradients), which z the decoder reads (posterior in
  training, prior at inference);
- the loss terms (token NLL, BoW, the KL anneal schedule) by value, which parameters each
  term trains, and the two-layer encoders.

The agents' glue (``compute_loss``, metrics, generation, beam search) is in
``test_multiref_agent.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from parlai_ext.agents.vhred import pack_context
from parlai_ext.losses import multiref as L
from parlai_ext.modules.vhred import (
    Gaussian,
    GaussianPrior,
    GMMPrior,
    HierarchicalEncoderDecoder,
    LGMPrior,
    PriorParams,
    VHREDConfig,
)

V, E, H, Z, FLOOR, K = 23, 6, 5, 3, 2, 3
CONTEXTS = [  # different numbers of utterances and utterance lengths: padding everywhere
    [[3, 4, 5, 6], [7, 8], [9, 10, 11]],
    [[12, 13]],
    [[14], [15, 16, 17, 18, 19]],
]
RESPONSES = [[5, 6, 7, 2], [8, 2], [9, 10, 11, 12, 2]]  # 2 = end token
START, PAD = 1, 0


def _net(prior: str, attention: str = 'general', lgm_kl: str = 'exact', bow: bool = True):
    torch.manual_seed(0)
    config = VHREDConfig(
        vocab_size=V, embedding_size=E, hidden_size=H, latent_size=Z, floor_size=FLOOR,
        latent_prior=prior, n_components=K, dropout=0.0, attention=attention, lgm_kl=lgm_kl,
        bow=bow,
    )  # fmt: skip
    net = HierarchicalEncoderDecoder(config).double().eval()
    with torch.no_grad():  # larger weights than the init, so every nonlinearity matters
        for param in net.parameters():
            param.copy_(torch.randn_like(param) * 0.6)
        net.embedding.weight[PAD].zero_()
    return net


def _batch():
    utts, floors, n_utts = pack_context(CONTEXTS, PAD)
    longest = max(len(r) for r in RESPONSES)
    ys = torch.tensor([r + [PAD] * (longest - len(r)) for r in RESPONSES])
    decoder_input = torch.cat([torch.full((len(ys), 1), START), ys[:, :-1]], dim=1)
    return utts, floors, n_utts, decoder_input, ys


# --- the reference: one example, no padding, the paper's equations written out ----------------
def _gru(rnn: torch.nn.GRU, inputs: torch.Tensor, h: torch.Tensor, suffix: str = '') -> tuple:
    """One GRU layer/direction by its equations (torch's gate layout r, z, n), step by step."""
    w_ih, w_hh = getattr(rnn, f'weight_ih_l0{suffix}'), getattr(rnn, f'weight_hh_l0{suffix}')
    b_ih, b_hh = getattr(rnn, f'bias_ih_l0{suffix}'), getattr(rnn, f'bias_hh_l0{suffix}')
    outputs = []
    for x in inputs:
        gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
        r = torch.sigmoid(gi[:H] + gh[:H])
        u = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
        n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
        h = (1 - u) * n + u * h
        outputs.append(h)
    return torch.stack(outputs), h


def _utterance(net, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Bi-GRU over the tokens: states = mean of the two directions, encoding = mean of the
    two final states (B.1)."""
    rnn = net.utterance_encoder.rnn
    x = net.embedding.weight[tokens]
    zero = x.new_zeros(H)
    fwd, h_fwd = _gru(rnn, x, zero)
    bwd, h_bwd = _gru(rnn, x.flip(0), zero, '_reverse')
    return (fwd + bwd.flip(0)) / 2, (h_fwd + h_bwd) / 2


def _heads(heads, x: torch.Tensor):
    h = torch.tanh(heads.hidden.weight @ x + heads.hidden.bias)
    mu = (heads.mu.weight @ h + heads.mu.bias).view(heads.components, Z)
    var = F.softplus(heads.var.weight @ h + heads.var.bias).view(heads.components, Z) + 1e-6
    pi = torch.softmax(heads.pi.weight @ h + heads.pi.bias, -1) if heads.pi is not None else None
    return pi, mu, var


def _reference(net, context: list[list[int]], response: list[int], eps: torch.Tensor | None):
    """Everything the model computes for one example: c, prior, posterior, z (posterior
    mu + sigma * eps), decoder logits and BoW logits."""
    words, encodings = zip(*(_utterance(net, u) for u in context))
    n = len(context)
    floors = [(n - 1 - i) % 2 for i in range(n)]  # 1: the responder's own utterance
    ce = net.context_encoder
    inputs = torch.stack(
        [ce.merge.weight @ torch.cat([e, ce.floor_embedding.weight[f]]) + ce.merge.bias
         for e, f in zip(encodings, floors)]
    )  # fmt: skip
    _, c = _gru(ce.rnn, inputs, inputs.new_zeros(H))
    out = {'c': c}
    z = None
    if net.prior is not None:
        out['prior'] = _heads(net.prior.heads, c)
        _, response_encoding = _utterance(net, [t for t in response if t != PAD])
        _, mu_q, var_q = _heads(net.posterior.heads, torch.cat([response_encoding, c]))
        out['posterior'] = (mu_q[0], var_q[0])
        z = mu_q[0] + var_q[0].sqrt() * eps
        out['z'] = z
        if net.bow is not None:
            b1, _, _, b2 = net.bow
            out['bow'] = b2.weight @ torch.tanh(b1.weight @ torch.cat([c, z]) + b1.bias) + b2.bias
    dec_in = c if z is None else torch.cat([c, z])
    dec_context = torch.tanh(net.to_decoder.weight @ dec_in + net.to_decoder.bias)
    decoder = net.decoder
    h = torch.tanh(decoder.init_state.weight @ dec_context + decoder.init_state.bias)
    memory = torch.cat(words)  # every context word state, no padding
    tokens = [START] + response[:-1]
    steps = torch.stack([torch.cat([net.embedding.weight[t], dec_context]) for t in tokens])
    outputs, _ = _gru(decoder.rnn, steps, h)
    attention = decoder.attention
    logits = []
    for q in outputs:
        if attention.kind == 'general':
            scores = memory @ (attention.query.weight @ q)
        else:
            keys = memory @ attention.key.weight.T + attention.key.bias
            mixed = torch.tanh(attention.query.weight @ q + attention.query.bias + keys)
            scores = mixed @ attention.emit.weight[0] + attention.emit.bias
        attended = torch.softmax(scores, -1) @ memory
        combined = torch.tanh(
            attention.combine.weight @ torch.cat([attended, q]) + attention.combine.bias
        )
        feature = decoder.to_embedding.weight @ combined + decoder.to_embedding.bias
        logits.append(net.embedding.weight @ feature + net.output_bias)
    out['logits'] = torch.stack(logits)
    return out


@pytest.mark.parametrize(
    'prior,attention',
    [('none', 'general'), ('gaussian', 'general'), ('lgm', 'additive'), ('gmm', 'general')],
)
def test_teacher_forced_pass_equals_the_reference_on_a_padded_batch(prior, attention):
    net = _net(prior, attention)
    utts, floors, n_utts, decoder_input, ys = _batch()
    assert floors.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 0]]  # relative floors
    torch.manual_seed(7)
    out = net(utts, floors, n_utts, decoder_input=decoder_input, ys=ys)
    torch.manual_seed(7)
    eps = torch.randn(len(ys), Z, dtype=torch.float64)  # the posterior sample's noise
    logits = net.logits(out.features)
    for b, (context, response) in enumerate(zip(CONTEXTS, RESPONSES)):
        ref = _reference(net, context, response, eps[b])
        assert torch.allclose(out.encoded.context[b], ref['c'], atol=1e-10), b
        length = len(response)
        assert torch.allclose(logits[b, :length], ref['logits'], atol=1e-10), b
        if prior == 'none':
            assert out.z is None and out.kl is None and out.bow_logits is None
            continue
        assert torch.allclose(out.z[b], ref['z'], atol=1e-10), b  # posterior z in training
        assert torch.allclose(out.bow_logits[b], ref['bow'], atol=1e-10), b
        pi, mu, var = ref['prior']
        params = net.prior(out.encoded.context[b : b + 1])
        assert torch.allclose(params.mu[0], mu, atol=1e-10)
        assert torch.allclose(params.var[0], var, atol=1e-10)
        if pi is not None:
            assert torch.allclose(params.pi[0], pi, atol=1e-10)
            assert params.pi[0].sum().item() == pytest.approx(1.0)
        mu_q, var_q = ref['posterior']
        if prior == 'gaussian':
            expected = _hand_kl(mu_q.tolist(), var_q.tolist(), mu[0].tolist(), var[0].tolist())
        elif prior == 'lgm':
            mean = (pi[:, None] * mu).sum(0)
            expected = _hand_kl(
                mu_q.tolist(), var_q.tolist(), mean.tolist(), (pi[:, None] ** 2 * var).sum(0)
            )
        else:
            expected = _hand_log_normal(ref['z'], mu_q, var_q) - _hand_log_mixture(
                ref['z'], pi, mu, var
            )
        assert out.kl[b].item() == pytest.approx(float(expected), rel=1e-9), b


def test_padding_never_changes_an_example():
    """The same example alone and in a batch padded by longer ones: same c, z and scores."""
    net = _net('lgm')
    utts, floors, n_utts, decoder_input, ys = _batch()
    full = net(utts, floors, n_utts, decoder_input=decoder_input, ys=ys, z_source='prior_mean')
    one = [CONTEXTS[1]], [RESPONSES[1]]
    u1, f1, n1 = pack_context(one[0], PAD)
    y1 = torch.tensor(RESPONSES[1])
    d1 = torch.cat([torch.tensor([START]), y1[:-1]])[None]
    alone = net(u1, f1, n1, decoder_input=d1, ys=y1[None], z_source='prior_mean')
    assert torch.allclose(full.encoded.context[1], alone.encoded.context[0], atol=1e-12)
    assert torch.allclose(full.z[1], alone.z[0], atol=1e-12)
    assert torch.allclose(full.kl[1], alone.kl[0], atol=1e-9)  # posterior of a padded response
    n = len(RESPONSES[1])
    assert torch.allclose(
        net.logits(full.features)[1, :n], net.logits(alone.features)[0], atol=1e-10
    )
    # the attention mask: no weight on padding word states
    assert full.encoded.mask.sum(-1).tolist() == [sum(len(u) for u in c) for c in CONTEXTS]


# --- KL terms by value and direction ------------------------------------------------------------
def _hand_kl(mq, vq, mp, vp) -> float:
    """KL(N(mq, vq) || N(mp, vp)) of diagonal Gaussians, written out."""
    mq, vq, mp, vp = (
        torch.as_tensor(x, dtype=torch.float64).detach().tolist() for x in (mq, vq, mp, vp)
    )
    return sum(
        0.5 * (math.log(b / a) + (a + (m - n) ** 2) / b - 1) for m, a, n, b in zip(mq, vq, mp, vp)
    )


def _hand_log_normal(z, mu, var) -> float:
    z, mu, var = (torch.as_tensor(x, dtype=torch.float64).tolist() for x in (z, mu, var))
    return sum(
        -0.5 * math.log(2 * math.pi * v) - (x - m) ** 2 / (2 * v) for x, m, v in zip(z, mu, var)
    )


def _hand_log_mixture(z, pi, mu, var) -> float:
    return math.log(
        sum(w * math.exp(_hand_log_normal(z, m, v)) for w, m, v in zip(pi.tolist(), mu, var))
    )


def _t(x) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float64)


MQ, VQ, MP, VP = [0.3, -1.0, 2.0], [0.5, 2.0, 0.1], [0.0, 0.5, 1.0], [1.0, 0.25, 3.0]


def test_gaussian_kl_is_kl_q_to_p_not_p_to_q():
    q_to_p = _hand_kl(MQ, VQ, MP, VP)
    p_to_q = _hand_kl(MP, VP, MQ, VQ)
    assert abs(q_to_p - p_to_q) > 1.0  # the two directions differ a lot here
    assert L.gaussian_kl(_t(MQ), _t(VQ), _t(MP), _t(VP)).item() == pytest.approx(q_to_p)
    # and against torch.distributions
    q = torch.distributions.Normal(_t(MQ), _t(VQ).sqrt())
    p = torch.distributions.Normal(_t(MP), _t(VP).sqrt())
    expected = torch.distributions.kl_divergence(q, p).sum().item()
    assert L.gaussian_kl(_t(MQ), _t(VQ), _t(MP), _t(VP)).item() == pytest.approx(expected)
    # the prior class passes the posterior as q
    params = PriorParams(torch.ones(1, 1, dtype=torch.float64), _t([MP]), _t([VP]))
    got = GaussianPrior(4, 3).kl(Gaussian(_t(MQ), _t(VQ)), None, params).item()
    assert got == pytest.approx(q_to_p) and got != pytest.approx(p_to_q)
    assert L.gaussian_kl(_t(MQ), _t(VQ), _t(MQ), _t(VQ)).item() == pytest.approx(0, abs=1e-12)


def test_gaussian_and_mixture_log_densities_by_value():
    z, mu, var = _t([0.4, -0.2]), _t([0.1, 0.3]), _t([0.5, 2.0])
    normal = torch.distributions.Normal(mu, var.sqrt()).log_prob(z).sum().item()
    assert L.gaussian_log_prob(z, mu, var).item() == pytest.approx(normal)
    pi = _t([0.25, 0.75])
    mus, vars_ = _t([[0.1, 0.3], [-1.0, 1.0]]), _t([[0.5, 2.0], [1.5, 0.3]])
    expected = _hand_log_mixture(z[0], pi[0], mus[0].tolist(), vars_[0].tolist())
    assert L.gmm_log_prob(z, pi, mus, vars_).item() == pytest.approx(expected)


def test_gmm_prior_kl_is_log_q_minus_log_p_at_the_posterior_sample():
    z, mq, vq = _t([0.4, -0.2]), _t([0.1, 0.3]), _t([0.5, 2.0])
    pi = _t([0.25, 0.75])
    mus, vars_ = _t([[0.1, 0.3], [-1.0, 1.0]]), _t([[0.5, 2.0], [1.5, 0.3]])
    expected = _hand_log_normal(z[0], mq[0], vq[0]) - _hand_log_mixture(
        z[0], pi[0], mus[0].tolist(), vars_[0].tolist()
    )
    got = GMMPrior(4, 2, 2).kl(Gaussian(mq, vq), z, PriorParams(pi, mus, vars_))
    assert got.item() == pytest.approx(expected)


@pytest.mark.parametrize('mode', ['exact', 'authors'])
def test_lgm_prior_kl_both_modes_by_value(mode):
    pi = [0.2, 0.5, 0.3]
    mus = [[1.0, -2.0, 0.0], [0.5, 0.0, 1.0], [-1.0, 3.0, 0.5]]
    vars_ = [[0.5, 1.0, 2.0], [2.0, 0.1, 0.3], [1.5, 0.7, 0.9]]
    power = 2 if mode == 'exact' else 1
    mean = [sum(p * m[d] for p, m in zip(pi, mus)) for d in range(3)]
    var = [sum(p**power * v[d] for p, v in zip(pi, vars_)) for d in range(3)]
    prior = LGMPrior(4, 3, 3, kl_mode=mode)
    got = prior.kl(Gaussian(_t(MQ), _t(VQ)), None, PriorParams(_t(pi), _t(mus), _t(vars_)))
    assert got.item() == pytest.approx(_hand_kl(MQ, VQ, mean, var), rel=1e-12)
    assert got.item() != pytest.approx(_hand_kl(mean, var, MQ, VQ), rel=1e-3)  # direction
    net = _net('lgm', lgm_kl=mode)
    assert net.prior.kl_mode == mode  # the config reaches the prior


# --- sampling z: reparameterisation, LGM / GMM draws, which z the decoder reads ------------------
def test_gaussian_sample_is_reparameterised():
    mu = torch.tensor([[0.5, -1.0]], requires_grad=True)
    var = torch.tensor([[4.0, 0.25]], requires_grad=True)
    torch.manual_seed(3)
    z = Gaussian(mu, var).sample()
    torch.manual_seed(3)
    eps = torch.randn(1, 2)
    assert torch.allclose(z, mu + var.sqrt() * eps)
    z.sum().backward()
    assert torch.allclose(mu.grad, torch.ones(1, 2))  # dz/dmu = 1
    assert torch.allclose(var.grad, eps / (2 * var.detach().sqrt()))  # dz/dvar = eps/(2 sigma)


def test_lgm_sample_is_the_weighted_sum_of_component_samples():
    pi = torch.tensor([[0.2, 0.8]], requires_grad=True)
    mu = torch.tensor([[[1.0, 2.0], [-1.0, 0.5]]], requires_grad=True)
    var = torch.tensor([[[0.25, 4.0], [1.0, 9.0]]])
    prior = LGMPrior(4, 2, 2)
    torch.manual_seed(4)
    z = prior.sample(PriorParams(pi, mu, var))
    torch.manual_seed(4)
    eps = torch.randn(1, 2, 2)
    z_k = mu + var.sqrt() * eps
    assert torch.allclose(z, (pi[..., None] * z_k).sum(1))
    z.sum().backward()  # differentiable in the weights too
    assert torch.allclose(pi.grad, z_k.detach().sum(-1))
    # one variable only (§8.2)
    torch.manual_seed(4)
    z1 = prior.sample(PriorParams(pi.detach(), mu.detach(), var), component=1)
    assert torch.allclose(z1, z_k.detach()[:, 1])
    with pytest.raises(ValueError, match='component 2'):
        prior.sample(PriorParams(pi.detach(), mu.detach(), var), component=2)


def test_gmm_sample_spread_is_the_component_standard_deviation():
    torch.manual_seed(5)
    n = 40_000
    pi = torch.tensor([[0.5, 0.5]]).expand(n, 2)
    mu = torch.tensor([[[-10.0], [10.0]]]).expand(n, 2, 1)
    var = torch.tensor([[[0.25], [4.0]]]).expand(n, 2, 1)
    z = GMMPrior(4, 1, 2).sample(PriorParams(pi, mu, var))
    assert z[z < 0].var().item() == pytest.approx(0.25, rel=0.05)
    assert z[z > 0].var().item() == pytest.approx(4.0, rel=0.05)
    forced = GMMPrior(4, 1, 2).sample(PriorParams(pi, mu, var), component=0)
    assert (forced < 0).all()


@pytest.mark.parametrize('prior', ['gaussian', 'gmm', 'lgm'])
def test_prior_mean_is_the_mixture_mean(prior):
    net = _net(prior)
    context = torch.randn(2, H, dtype=torch.float64)
    params = net.prior(context)
    expected = (params.pi[..., None] * params.mu).sum(1)
    assert torch.allclose(net.prior_sample(context, 'mean'), expected)
    if prior != 'gaussian':
        one = net.prior_sample(context, 'mean', component=2)
        assert torch.allclose(one, params.mu[:, 2])


def test_decoder_reads_posterior_z_in_training_and_prior_z_at_inference():
    net = _net('lgm')
    utts, floors, n_utts, decoder_input, ys = _batch()
    args = (utts, floors, n_utts)
    torch.manual_seed(8)
    post = net(*args, decoder_input=decoder_input, ys=ys, z_source='posterior')
    mean = net(*args, decoder_input=decoder_input, ys=ys, z_source='prior_mean')
    context = post.encoded.context
    assert torch.allclose(mean.z, net.prior.mean(net.prior(context)))
    torch.manual_seed(8)
    prior = net(*args, decoder_input=decoder_input, ys=ys, z_source='prior')
    torch.manual_seed(8)
    z_post = net.posterior(net.encode_response(ys), context).sample()
    expected_prior_z = net.prior.sample(net.prior(context))
    assert torch.allclose(post.z, z_post) and torch.allclose(prior.z, expected_prior_z)
    assert not torch.allclose(post.z, prior.z)
    # the KL is the same posterior's in every mode (drawn first)
    assert torch.allclose(post.kl, prior.kl)
    # each z reaches the decoder and the BoW head
    dec = net.decoder_context(context, expected_prior_z)
    features, _ = net.decode(decoder_input, prior.encoded, dec)
    assert torch.allclose(prior.features, features)
    bow = net.bow(torch.cat([context, expected_prior_z], -1))
    assert torch.allclose(prior.bow_logits, bow)
    with pytest.raises(ValueError, match='z_source'):
        net(*args, decoder_input=decoder_input, ys=ys, z_source='other')


# --- loss terms ---------------------------------------------------------------------------------
def test_elbo_loss_weights_each_term_and_averages_over_the_batch():
    nll, kl, bow = torch.tensor([3.0, 5.0]), torch.tensor([2.0, 4.0]), torch.tensor([1.0, 7.0])
    # ((3 + .25*2 + .5*1) + (5 + .25*4 + .5*7)) / 2
    assert L.elbo_loss(nll, kl, 0.25, bow, 0.5).item() == pytest.approx((4.0 + 9.5) / 2)
    assert L.elbo_loss(nll, None, 0.25, None).item() == pytest.approx(4.0)  # HRED
    assert L.elbo_loss(nll, kl, 0.0, None).item() == pytest.approx(4.0)  # beta 0: no KL
    assert L.elbo_loss(nll, None, 1.0, bow).item() == pytest.approx((4 + 12) / 2)


def test_token_nll_and_bow_loss_by_value_with_padding():
    logits = torch.tensor([[[0.0, 1.0, 2.0], [2.0, 0.0, 0.0], [5.0, 5.0, 5.0]]])
    targets = torch.tensor([[2, 1, 0]])  # 0 = padding
    log_z0, log_z1 = math.log(1 + math.e + math.e**2), math.log(math.e**2 + 2)
    nll = L.token_nll(logits, targets, 0)
    assert nll[0].tolist() == pytest.approx([log_z0 - 2, log_z1, 0.0])
    bow_logits = torch.tensor([[0.0, 1.0, 2.0]])
    expected = 2 * log_z0 - 2 - 1  # tokens 2 and 1 under one order-free distribution
    assert L.bow_loss(bow_logits, targets, 0).item() == pytest.approx(expected)
    assert L.bow_loss(bow_logits, torch.tensor([[2, 2, 1]]), 0).item() == pytest.approx(
        3 * log_z0 - 5
    )  # repeated tokens count each time


def test_kl_anneal_schedule_by_value():
    weights = [L.kl_anneal_weight(s, 40_000) for s in (-5, 0, 1, 4_000, 39_999, 40_000, 10**6)]
    assert weights == [0.0, 0.0, 1 / 40_000, 0.1, 39_999 / 40_000, 1.0, 1.0]
    assert L.kl_anneal_weight(3, 4) == 0.75 and L.kl_anneal_weight(7, -1) == 1.0


# --- gradients: which terms train which parameters ----------------------------------------------
def test_gmm_monte_carlo_kl_is_differentiable_through_the_posterior_sample():
    """With one component the mean gradient of log q(z) - log p(z), z = mu_q + sigma_q eps,
    is the closed-form KL's: d/dmu_q = (mu_q - mu_p) / var_p, d/dvar_q = (1/var_p - 1/var_q)/2
    (a z cut from the graph would give 0 and -1/(2 var_q) + ... on average)."""
    n = 50_000
    mu_q = torch.full((n, 1), 0.7, dtype=torch.float64, requires_grad=True)
    var_q = torch.full((n, 1), 0.5, dtype=torch.float64, requires_grad=True)
    mu_p, var_p = -0.3, 2.0
    torch.manual_seed(13)
    z = Gaussian(mu_q, var_q).sample()
    kl = L.gmm_kl_mc(
        z, mu_q, var_q, torch.ones(n, 1, dtype=torch.float64),
        torch.full((n, 1, 1), mu_p, dtype=torch.float64),
        torch.full((n, 1, 1), var_p, dtype=torch.float64),
    )  # fmt: skip
    kl.sum().backward()
    assert mu_q.grad.mean().item() == pytest.approx((0.7 - mu_p) / var_p, abs=0.02)
    assert var_q.grad.mean().item() == pytest.approx((1 / var_p - 1 / 0.5) / 2, abs=0.02)


def _grads(net, loss: torch.Tensor) -> dict[str, float]:
    net.zero_grad()
    loss.backward()
    return {
        name: 0.0 if p.grad is None else p.grad.abs().sum().item()
        for name, p in net.named_parameters()
    }


@pytest.mark.parametrize('prior', ['gaussian', 'gmm', 'lgm'])
def test_each_loss_term_trains_the_parts_it_should(prior):
    """Reconstruction and BoW reach the posterior through z (reparameterised, not detached);
    the KL reaches both the posterior and the prior; the NLL reaches the context encoder."""
    net = _net(prior)
    utts, floors, n_utts, decoder_input, ys = _batch()
    torch.manual_seed(14)
    out = net(utts, floors, n_utts, decoder_input=decoder_input, ys=ys)
    nll = L.token_nll(net.logits(out.features), ys, PAD).sum()
    grads = _grads(net, nll)
    assert grads['posterior.heads.mu.weight'] > 1e-6 and grads['posterior.heads.var.weight'] > 1e-6
    assert grads['context_encoder.rnn.weight_hh_l0'] > 1e-6
    assert grads['prior.heads.mu.weight'] == 0  # the prior does not decode in training
    torch.manual_seed(14)
    out = net(utts, floors, n_utts, decoder_input=decoder_input, ys=ys)
    grads = _grads(net, L.bow_loss(out.bow_logits, ys, PAD).sum())
    assert grads['posterior.heads.mu.weight'] > 1e-6 and grads['bow.3.weight'] > 1e-6
    assert grads['decoder.rnn.weight_hh_l0'] == 0  # order-free: no decoder
    torch.manual_seed(14)
    out = net(utts, floors, n_utts, decoder_input=decoder_input, ys=ys)
    grads = _grads(net, out.kl.sum())
    assert grads['posterior.heads.mu.weight'] > 1e-6 and grads['prior.heads.mu.weight'] > 1e-6
    assert grads['prior.heads.var.weight'] > 1e-6
    assert grads['utterance_encoder.rnn.weight_hh_l0'] > 1e-6  # response and context encodings
    if prior != 'gaussian':
        assert grads['prior.heads.pi.weight'] > 1e-6


def test_two_layer_encoders_read_the_top_layer():
    """With 2 GRU layers the utterance encoding and c come from the top layer's final states
    (both directions averaged for the utterance), whatever the padding."""
    torch.manual_seed(0)
    config = VHREDConfig(
        vocab_size=V, embedding_size=E, hidden_size=H, latent_size=Z, floor_size=FLOOR,
        latent_prior='none', dropout=0.0, n_layers=2,
    )  # fmt: skip
    net = HierarchicalEncoderDecoder(config).double().eval()
    utts, floors, n_utts, _, _ = _batch()
    encoded = net.encode(utts, floors, n_utts)
    ce = net.context_encoder
    for b, context in enumerate(CONTEXTS):
        encodings = []
        for tokens in context:
            _, h = net.utterance_encoder.rnn(net.embedding.weight[tokens][None])
            encodings.append(h.view(2, 2, 1, H)[-1, :, 0].mean(0))  # top layer, both directions
        floor = torch.tensor([(len(context) - 1 - i) % 2 for i in range(len(context))])
        inputs = ce.merge(torch.cat([torch.stack(encodings), ce.floor_embedding(floor)], -1))
        _, h = ce.rnn(inputs[None])
        assert torch.allclose(encoded.context[b], h[-1, 0], atol=1e-10), b
        assert not torch.allclose(h[0, 0], h[-1, 0], atol=1e-3)  # the layers differ
    # the 2-layer decoder's initial state is each example's own: batch = alone
    _, _, _, decoder_input, ys = _batch()
    batch = net.logits(net(utts, floors, n_utts, decoder_input=decoder_input, ys=ys).features)
    for b, context in enumerate(CONTEXTS):
        n = len(RESPONSES[b])
        one = net(
            *pack_context([context], PAD), decoder_input=decoder_input[b : b + 1, :n],
            ys=ys[b : b + 1, :n],
        )  # fmt: skip
        assert torch.allclose(batch[b, :n], net.logits(one.features)[0], atol=1e-10), b
