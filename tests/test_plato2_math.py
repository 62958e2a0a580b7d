"""PLATO-2's module and loss equations pinned by value (issue #18).

Each test computes a quantity by hand (from the module's weights, outside the code under test)
and compares: which slot each head reads (BOW from z, posterior from [M], coherence from
[CLS]), the Gumbel-softmax sample and its temperature, the evaluator's tied MLM head, and the
loss pieces (entropy, MLM, coherence pairs, BOW with padding). Tiny seeded models; no training.

The agents' loss compositions (stage 2.1 NLL + BOW [+ entropy], stage 2.2 coherence + MLM on
the ORIGINAL tokens), the uniform-prior perplexity, the reranking, the decoding limits and what
the stage-2 models inherit from stage 1 are in ``test_plato2_agents.py``.
"""

import math

import pytest
import torch
import torch.nn.functional as F

import parlai_ext.modules.sampling as sampling
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


def randomise(module: torch.nn.Module) -> None:
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
    randomise(model)
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
    randomise(model)
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
