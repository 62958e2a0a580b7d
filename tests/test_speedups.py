"""The speed-ups of docs/speed.md §5 change no value: each is pinned against the computation it
replaced (output layer at real tokens only, bans by a fused bias, ``max`` for predictions, no
identity cache reorder while sampling, preallocated key/value caches, no host sync in the
position check, fused Adam)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from parlai.core.torch_generator_agent import TorchGeneratorAgent
from parlai.utils.torch import neginf

from parlai_ext.agents.encoder_decoder import EncoderDecoderGeneratorModel
from parlai_ext.agents.optim import use_fused_adam
from parlai_ext.losses.multiref import bow_loss, elbo_loss, token_nll
from parlai_ext.modules.encoder_decoder import EncoderDecoder
from parlai_ext.modules.transformer import (
    Embeddings,
    KVCache,
    TransformerEncoder,
    TransformerStack,
    banned_bias,
    banned_linear,
    causal_mask,
    padded_from_flat,
)

EXAMPLES = [  # labels of 6, 2 and 4 tokens with END: a padded batch
    ('hello , who are you ?', 'i am anna , hi'),
    ('good morning !\nmorning ! i am ben .\ndo you have pets ?', 'yes'),
    ('where do you live ?', 'in oslo , norway'),
]


def _agent(tmp_path, name: str, *extra: str, fit_steps: int = 0, partly_fitted: bool = False):
    parser = ParlaiParser(True, True)
    args = ['-m', name, '-mf', str(tmp_path / name), '--dict-file', str(tmp_path / 'dict')]
    opt = parser.parse_args([*args, *extra])
    dictionary = DictionaryAgent(opt)
    for context, response in EXAMPLES:
        dictionary.add_to_dict(dictionary.tokenize(f'{context} {response}'))
    dictionary.save(opt['dict_file'], sort=True)
    torch.manual_seed(0)
    agent = create_agent(opt)
    with torch.no_grad():  # away from the init: bans, predictions and losses all matter
        for param in agent.model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    if fit_steps:  # partly fitted: some predictions right, some wrong
        batch = _batch(agent)
        for _ in range(fit_steps):
            agent._local_metrics = {}
            agent.train_step(batch)
    if partly_fitted:
        _fit_until_partly_right(agent)
    return agent


def _fit_until_partly_right(agent, max_steps: int = 40) -> None:
    """Train on the batch until some examples are entirely right and some tokens are wrong.

    Stops on the metrics, not after a step count, so the state does not depend on how the
    parameters are laid out (which noise each weight drew in ``_agent``).
    """
    batch = _batch(agent)
    for _ in range(max_steps):
        agent._local_metrics = {}
        with torch.no_grad():
            agent.compute_loss(batch)
        metrics = _metrics(agent)
        if sum(metrics['token_em']) >= 1 and sum(metrics['token_acc']) < 3:
            agent._local_metrics = {}
            return
        agent._local_metrics = {}
        agent.train_step(batch)
    raise AssertionError(f'not partly fitted after {max_steps} steps: {metrics}')


def _batch(agent, key: str = 'labels'):
    observations = []
    for text, label in EXAMPLES:
        observations.append(agent.observe({'text': text, key: [label], 'episode_done': True}))
        agent.self_observe({})
    batch = agent.batchify(observations)
    assert (batch.label_vec == agent.NULL_IDX).any()  # padding to skip
    return batch


def _metrics(agent) -> dict[str, list[float]]:
    return {k: [m.value() for m in v] for k, v in agent._local_metrics.items()}


def _loss_metrics_grads(agent, compute, batch, seed: int = 5):
    agent._local_metrics = {}
    agent.model.zero_grad()
    torch.manual_seed(seed)
    loss = compute(batch)
    if loss.requires_grad:
        loss.backward()
    grads = {n: p.grad.clone() for n, p in agent.model.named_parameters() if p.grad is not None}
    return loss.detach(), _metrics(agent), grads


def _assert_same(new, old):
    (loss, metrics, grads), (loss0, metrics0, grads0) = new, old
    assert torch.allclose(loss, loss0, rtol=1e-5, atol=1e-6), (loss, loss0)
    assert metrics.keys() == metrics0.keys()
    for key in metrics0:
        assert metrics[key] == pytest.approx(metrics0[key], rel=1e-5, abs=1e-6), key
    assert grads.keys() == grads0.keys() and grads0
    for name in grads0:
        assert torch.allclose(grads[name], grads0[name], rtol=1e-4, atol=1e-6), name


# --- shared pieces (modules/transformer.py) ----------------------------------------------------
def test_padded_from_flat_keeps_row_major_order_and_fill():
    mask = torch.tensor([[True, True, False], [True, False, False]])
    flat = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = padded_from_flat(flat, mask, fill=-7)
    assert out.tolist() == [[1.0, 2.0, -7.0], [3.0, -7.0, -7.0]]
    (out * torch.tensor([[1.0, 10.0, 5.0], [100.0, 5.0, 5.0]])).sum().backward()
    assert flat.grad.tolist() == [1.0, 10.0, 100.0]


def _banned_reference(hidden, weight, bias, banned):
    logits = F.linear(hidden, weight, bias)
    for index in banned:
        logits[..., index] = neginf(logits.dtype)
    return logits


@pytest.mark.parametrize('with_bias', [True, False])
def test_banned_linear_equals_in_place_bans_in_values_and_gradients(with_bias):
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    weight = torch.randn(11, 8, requires_grad=True)
    bias = torch.randn(11, requires_grad=True) if with_bias else None
    target = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 10, 2, 3]])
    ban = banned_bias(11, (0, 1))
    assert torch.equal(ban, torch.tensor([-1e20, -1e20] + [0.0] * 9))
    results = []
    for fn in (
        lambda: banned_linear(hidden, weight, bias, ban),
        lambda: _banned_reference(hidden, weight, bias, (0, 1)),
    ):
        logits = fn()
        loss = F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1))
        params = [hidden, weight] + ([bias] if with_bias else [])
        results.append((logits.detach(), torch.autograd.grad(loss, params)))
    (new, new_grads), (old, old_grads) = results
    assert torch.equal(new[..., :2], old[..., :2]) and (new[..., :2] == -1e20).all()
    assert torch.allclose(new, old, rtol=1e-6, atol=1e-6)
    for a, b in zip(new_grads, old_grads):
        assert torch.allclose(a, b, atol=1e-7)
    assert (new_grads[1][:2] == 0).all()  # the banned rows of the weight get no gradient


def test_banned_linear_under_bf16_autocast_and_in_fp16():
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(3, 8), torch.randn(11, 8), torch.randn(11)
    ban = banned_bias(11, (0, 4))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        new = banned_linear(hidden, weight, bias, ban)
        old = _banned_reference(hidden, weight, bias, (0, 4))
    assert new.dtype == torch.bfloat16 and torch.equal(new, old)
    half = banned_linear(hidden.half(), weight.half(), bias.half(), ban.half())
    assert half[:, [0, 4]].eq(-65504).all()  # neginf(fp16), not -inf
    plain = F.linear(hidden.half(), weight.half(), bias.half())
    keep = [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert torch.equal(half[:, keep], plain[:, keep]) and torch.isfinite(half).all()


def test_embeddings_position_check_from_shapes():
    emb = Embeddings(10, 4, n_positions=5, n_types=0)
    tokens = torch.ones(1, 3, dtype=torch.long)
    emb(tokens, torch.tensor([[2, 3, 4]]), max_position=4)  # largest allowed
    with pytest.raises(ValueError, match='position 5 >= --n-positions 5'):
        emb(tokens, torch.tensor([[0, 1, 2]]), max_position=5)  # the caller's bound decides
    with pytest.raises(ValueError, match='position 5 >= --n-positions 5'):
        emb(tokens, torch.tensor([[3, 4, 5]]))  # no bound: the tensor's maximum
    seq2seq = EncoderDecoder(10, dim=8, n_heads=2, ffn_dim=8, n_positions=4).eval()
    state = seq2seq.encode(torch.tensor([[3, 4, 5, 6]]))  # positions 0..3: fits
    _, caches = seq2seq.decode(torch.tensor([[1, 3, 4]]), state)
    seq2seq.decode(torch.tensor([[5]]), state, caches)  # position 3
    _, caches = seq2seq.decode(torch.tensor([[1, 3, 4, 5]]), state)
    with pytest.raises(ValueError, match='position 4 >= --n-positions 4'):
        seq2seq.decode(torch.tensor([[6]]), state, caches)
    with pytest.raises(ValueError, match='position 4 >= --n-positions 4'):
        seq2seq.encode(torch.tensor([[3, 4, 5, 6, 7]]))
    encoder = TransformerEncoder(10, dim=8, n_layers=1, n_heads=2, ffn_dim=8, n_positions=4)
    assert encoder(torch.tensor([[3, 4, 5, 6]])).shape == (1, 4, 8)
    with pytest.raises(ValueError, match='position 4 >= --n-positions 4'):
        encoder(torch.tensor([[3, 4, 5, 6, 7]]))


def _stack():
    torch.manual_seed(0)
    return TransformerStack(2, 8, n_heads=2, ffn_dim=16).eval()


def _decode_steps(stack, x, reserve, caches=None, start=0):
    stack.reserve_cache(reserve)
    outputs = []
    for t in range(start, x.shape[1]):
        past = 0 if caches is None else caches[0][0].shape[2]
        mask = causal_mask(1, past + 1, x.device)
        out, caches = stack(x[:, t : t + 1], mask, caches)
        outputs.append(out)
    return torch.cat(outputs, dim=1), caches


@pytest.mark.parametrize('reserve', [1, 2, 16])
def test_preallocated_cache_gives_the_cat_cache_outputs_in_place(reserve):
    stack = _stack()
    x = torch.randn(3, 7, 8)
    with torch.no_grad():
        full, _ = stack(x, causal_mask(7, 7, x.device))
        plain, plain_caches = _decode_steps(stack, x, 0)
        buffered, caches = _decode_steps(stack, x, reserve)
    assert not isinstance(plain_caches[0], KVCache)
    assert all(isinstance(c, KVCache) for c in caches)
    assert torch.allclose(buffered, plain, atol=1e-6) and torch.allclose(full, plain, atol=1e-5)
    for (k, v), (k0, v0) in zip(caches, plain_caches):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    if reserve == 16:  # one buffer for all 7 steps: appended in place, never copied
        assert caches[0].store.capacity == 1 + reserve and caches[0].store.filled == 7
    else:  # full buffers were copied into larger ones
        assert caches[0].store.capacity <= 7 + reserve


def test_two_continuations_of_one_cache_do_not_overwrite_each_other():
    stack = _stack()
    x = torch.randn(2, 4, 8)
    other = torch.randn(2, 1, 8)
    with torch.no_grad():
        _, prefix = _decode_steps(stack, x[:, :3], 8)
        mask = causal_mask(1, 4, x.device)
        out_a, caches_a = stack(x[:, 3:4], mask, prefix)  # extends the buffer in place
        out_b, caches_b = stack(other, mask, prefix)  # must not write over a's position
        again_a, _ = stack(torch.randn(2, 1, 8), causal_mask(1, 5, x.device), caches_a)
        ref_a, ref_caches_a = _decode_steps(stack, x, 0)
        ref_b, _ = stack(other, mask, [(k[:, :, :3], v[:, :, :3]) for k, v in ref_caches_a])
    assert caches_b[0].store is not caches_a[0].store
    for (k, v), (k0, v0) in zip(caches_a, ref_caches_a):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    assert torch.allclose(out_a, ref_a[:, 3:4], atol=1e-6)
    assert torch.allclose(out_b, ref_b, atol=1e-6)
    assert not torch.allclose(out_a, out_b)


def test_preallocated_cache_is_off_under_autograd():
    stack = _stack()
    stack.reserve_cache(8)
    x = torch.randn(2, 3, 8, requires_grad=True)
    out, caches = stack(x, causal_mask(3, 3, x.device))
    assert type(caches[0]) is tuple
    out2, _ = stack(x[:, :1], causal_mask(1, 4, x.device), caches)
    (out.sum() + out2.sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError):
        stack.reserve_cache(-1)


def test_kv_cache_copies_keep_their_buffer():
    store_cache = KVCache.allocate(torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4), 5)
    twin = copy.copy(store_cache)
    assert isinstance(twin, KVCache) and twin.length == 3 and torch.equal(twin[0], store_cache[0])


# --- encoder-decoder agent -----------------------------------------------------------------------
ED = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32',
      '--dropout', '0', '--n-positions', '32']  # fmt: skip


@pytest.fixture
def ed_agent(tmp_path):
    return _agent(tmp_path, 'encoder_decoder', *ED)


def test_encoder_decoder_loss_metrics_and_gradients_equal_parlai(tmp_path):
    agent = _agent(tmp_path, 'encoder_decoder', *ED, '-lr', '0.01', partly_fitted=True)
    agent.model.train()
    batch = _batch(agent)
    per_token = []  # what a subclass's record_per_token_metrics gets: (batch, time) losses
    agent.record_per_token_metrics = lambda b, losses: per_token.append(losses.detach())
    new = _loss_metrics_grads(agent, agent.compute_loss, batch)
    old = _loss_metrics_grads(agent, lambda b: TorchGeneratorAgent.compute_loss(agent, b), batch)
    _assert_same(new, old)
    assert per_token[0].shape == batch.label_vec.shape
    assert torch.allclose(per_token[0], per_token[1], atol=1e-6)
    assert set(new[1]) == {'loss', 'ppl', 'token_acc', 'token_em'}
    # some examples entirely right (token_em counts no padding), some tokens wrong
    assert sum(new[1]['token_em']) >= 1 and sum(new[1]['token_acc']) < 3
    # padding to skip: the model ran its output layer at the real tokens only
    scores, preds, _ = agent.model(*agent._model_input(batch), ys=batch.label_vec, real_tokens=True)
    n_tokens = int(batch.label_vec.ne(agent.NULL_IDX).sum())
    assert scores.shape == (n_tokens, len(agent.dict)) and preds.shape == (n_tokens,)


def test_encoder_decoder_return_output_keeps_padded_scores(ed_agent):
    agent = ed_agent
    agent.model.eval()
    batch = _batch(agent, 'eval_labels')
    with torch.no_grad():
        loss, (scores, preds, _) = agent.compute_loss(batch, return_output=True)
        agent._local_metrics = {}
        loss_fast = agent.compute_loss(batch)
    assert scores.shape == (*batch.label_vec.shape, len(agent.dict))
    assert preds.shape == batch.label_vec.shape
    assert torch.allclose(loss, loss_fast, rtol=1e-5)


def test_encoder_decoder_bans_and_checkpoint_keys(ed_agent):
    model = ed_agent.model
    state = [(torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8))]
    inds = torch.tensor([2, 0, 1])
    model.identity_reorder = True  # sampling: the cache is passed on, not copied
    assert model.reorder_decoder_incremental_state(state, inds) is state
    model.identity_reorder = False
    ((keys, _),) = model.reorder_decoder_incremental_state(state, inds)
    assert torch.equal(keys, state[0][0][inds])
    assert 'banned_bias' not in model.state_dict()  # old model files load unchanged
    hidden = torch.randn(2, 3, 16)
    logits = model.output(hidden)
    reference = F.linear(hidden, model.seq2seq.embeddings.tokens.weight)
    reference[..., model.START_IDX] = neginf(reference.dtype)
    reference[..., model.NULL_IDX] = neginf(reference.dtype)
    assert torch.allclose(logits, reference, atol=1e-6)


def _generate(agent, batch, inference, beam_size, **opts):
    agent.opt['inference'] = inference
    agent.opt.update(opts, beam_size=beam_size)
    agent.beam_size = beam_size
    agent.model.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        results, _ = agent._generate(batch, beam_size, 8)
    return [(tokens.tolist(), float(score)) for tokens, score, *_ in results]


@pytest.mark.parametrize(
    'inference,beam_size,opts',
    [('greedy', 1, {}), ('topk', 3, {'topk': 5}), ('nucleus', 2, {'topp': 0.9}),
     ('beam', 3, {})],
)  # fmt: skip
def test_generation_unchanged_by_skipped_reorders_and_preallocated_caches(
    ed_agent, monkeypatch, inference, beam_size, opts
):
    agent = ed_agent
    batch = _batch(agent, 'eval_labels')
    model: EncoderDecoderGeneratorModel = agent.model
    reorders = []
    original = EncoderDecoderGeneratorModel.reorder_decoder_incremental_state

    def counting(self, incr_state, inds):
        reorders.append(self.identity_reorder)
        if self.identity_reorder:
            assert torch.equal(inds, torch.arange(len(inds)))  # skipping is exact
        return original(self, incr_state, inds)

    monkeypatch.setattr(EncoderDecoderGeneratorModel, 'reorder_decoder_incremental_state', counting)
    fast = _generate(agent, batch, inference, beam_size, **opts)
    assert reorders and all(reorders) == (inference != 'beam')
    reserve = model.seq2seq.decoder.layers[0].attention.cache_reserve
    assert reserve == (0 if inference == 'beam' else agent.opt['label_truncate'] + 1)
    # reference: every reorder done, caches grown by torch.cat
    monkeypatch.setattr(type(agent), '_treesearch_factory', TorchGeneratorAgent._treesearch_factory)
    model.identity_reorder = False
    model.seq2seq.decoder.reserve_cache(0)
    slow = _generate(agent, batch, inference, beam_size, **opts)
    assert [t for t, _ in fast] == [t for t, _ in slow]
    assert [s for _, s in fast] == pytest.approx([s for _, s in slow], abs=1e-5)


# --- VHRED family ----------------------------------------------------------------------------------
VH = ['--embedding-size', '8', '--hidden-size', '10', '--latent-size', '4', '--floor-size', '3',
      '--n-components', '3', '--dropout', '0', '--kl-anneal-steps', '4']  # fmt: skip


def _old_vhred_compute_loss(agent, batch, return_output=False):
    """``VhredAgent.compute_loss`` before the speed-ups (padded pass, as committed in 7ed298c)."""
    from parlai.core.metrics import AverageMetric
    from parlai.core.torch_generator_agent import PPLMetric

    ys = batch.label_vec
    notnull = ys.ne(agent.NULL_IDX)
    n_tokens = notnull.long().sum(dim=-1)
    xs = agent._model_input(batch)
    post_output = agent.model(*xs, ys=ys, z_source='posterior')
    post = post_output[3]
    nll_post_tok = token_nll(post_output[0], ys, agent.NULL_IDX)
    nll_post = nll_post_tok.sum(dim=-1)
    training = agent.model.training
    model_output, nll_tok = post_output, nll_post_tok
    if agent.latent and not training:
        source = 'prior_mean' if agent.opt.get('test_z') == 'mean' else 'prior'
        model_output = agent.model(*xs, ys=ys, z_source=source, encoded=post.encoded)
        nll_tok = token_nll(model_output[0], ys, agent.NULL_IDX)
    preds = model_output[0].argmax(dim=-1)
    agent.record_local_metric('loss', AverageMetric.from_mask(nll_tok, notnull))
    agent.record_local_metric('ppl', PPLMetric.from_mask(nll_tok, notnull))
    agent.record_local_metric('token_acc', AverageMetric.from_mask(ys == preds, notnull))
    correct = ((ys == preds) & notnull).sum(dim=-1)
    agent.record_local_metric('token_em', AverageMetric.many(correct == n_tokens))
    kl, bow = post.kl, None
    bound = nll_post if kl is None else nll_post + kl
    agent.record_local_metric('elbo_loss', AverageMetric.many(bound, n_tokens))
    agent.record_local_metric('elbo_ppl', PPLMetric.many(bound, n_tokens))
    kl_weight = agent.kl_weight() if training else 1.0
    if kl is not None:
        agent.record_local_metric('post_ppl', PPLMetric.many(nll_post, n_tokens))
        agent.record_local_metric('kl', AverageMetric.many(kl))
        if training:
            agent.record_local_metric('kl_weight', AverageMetric.many([kl_weight] * len(kl)))
    if post.bow_logits is not None:
        bow = bow_loss(post.bow_logits, ys, agent.NULL_IDX)
        agent.record_local_metric('bow_loss', AverageMetric.many(bow, n_tokens))
    loss = elbo_loss(nll_post, kl, kl_weight, bow, agent.opt['bow_weight'])
    return (loss, model_output[:3]) if return_output else loss


@pytest.mark.parametrize('name', ['mr_hred', 'vhred_lgm'])
@pytest.mark.parametrize('mode', ['train', 'eval'])
def test_vhred_loss_every_metric_and_gradients_equal_the_padded_pass(tmp_path, name, mode):
    agent = _agent(tmp_path, name, *VH, '-lr', '0.02', fit_steps=12)
    agent._number_training_updates = 1
    agent.model.train(mode == 'train')
    batch = _batch(agent, 'labels' if mode == 'train' else 'eval_labels')
    new = _loss_metrics_grads(agent, agent.compute_loss, batch)
    old = _loss_metrics_grads(agent, lambda b: _old_vhred_compute_loss(agent, b), batch)
    # the mixture weights pi_k / pi_max (added later, not in the old pass) aside, all equal
    loss, metrics, grads = new
    _assert_same((loss, {k: v for k, v in metrics.items() if not k.startswith('pi_')}, grads), old)
    expected = {'loss', 'ppl', 'token_acc', 'token_em', 'elbo_loss', 'elbo_ppl'}
    if name == 'vhred_lgm':
        expected |= {'post_ppl', 'kl', 'bow_loss'} | ({'kl_weight'} if mode == 'train' else set())
        expected |= {'pi_0', 'pi_1', 'pi_2', 'pi_max'}  # the prior's K = 3 mean weights
    assert set(new[1]) == expected
    assert 0 < sum(new[1]['token_acc']) < 3


@pytest.mark.parametrize('name', ['mr_hred', 'vhred_lgm'])
def test_vhred_return_output_keeps_padded_scores_and_argmax_predictions(tmp_path, name):
    agent = _agent(tmp_path, name, *VH)
    agent.model.eval()
    batch = _batch(agent, 'eval_labels')
    with torch.no_grad():
        torch.manual_seed(2)
        loss, (scores, preds, _) = agent.compute_loss(batch, return_output=True)
        torch.manual_seed(2)
        agent._local_metrics = {}
        loss0, (scores0, preds0, _) = _old_vhred_compute_loss(agent, batch, return_output=True)
    assert scores.shape == (*batch.label_vec.shape, len(agent.dict))
    assert torch.allclose(scores, scores0) and torch.equal(preds, scores0.argmax(dim=-1))
    assert torch.allclose(loss, loss0)
    model = agent.model
    features = torch.randn(2, 3, 8)
    reference = model.net.logits(features)
    reference[..., model.START_IDX] = neginf(reference.dtype)
    reference[..., model.NULL_IDX] = neginf(reference.dtype)
    assert torch.allclose(model.output(features), reference, atol=1e-6)
    assert 'banned_bias' not in model.state_dict()


# --- fused Adam (agents/optim.py) -------------------------------------------------------------------
def _train(optimizer_cls, fused: bool, steps: int = 4, state=None, **kwargs):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    optimizer = optimizer_cls(model.parameters(), lr=0.05, **kwargs)
    if state is not None:
        optimizer.load_state_dict(copy.deepcopy(state))
    if fused:
        assert use_fused_adam(optimizer)
        assert all(g['fused'] for g in optimizer.param_groups)
    data = torch.randn(8, 4)
    for _ in range(steps):
        optimizer.zero_grad()
        model(data).pow(2).sum().backward()
        optimizer.step()
    return model, optimizer


@pytest.mark.parametrize(
    'optimizer_cls,kwargs',
    [(torch.optim.Adam, {'amsgrad': True}), (torch.optim.AdamW, {'weight_decay': 0.1})],
)
def test_fused_adam_updates_equal_the_loop(optimizer_cls, kwargs):
    fused, _ = _train(optimizer_cls, True, **kwargs)
    loop, loop_optimizer = _train(optimizer_cls, False, **kwargs)
    initial, _ = _train(optimizer_cls, False, steps=0, **kwargs)
    for a, b, c in zip(fused.parameters(), loop.parameters(), initial.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
        assert not torch.allclose(a, c)  # the parameters did move
    # a saved (unfused) state resumes under the fused kernel, with the same updates
    _, resumed = _train(optimizer_cls, True, steps=2, state=loop_optimizer.state_dict(), **kwargs)
    _, reference = _train(
        optimizer_cls, False, steps=2, state=loop_optimizer.state_dict(), **kwargs
    )
    for sa, sb in zip(resumed.state.values(), reference.state.values()):
        assert float(sa['step']) == float(sb['step']) == 6
        assert torch.allclose(sa['exp_avg'], sb['exp_avg'], atol=1e-6)


def test_fused_adam_only_where_it_applies():
    params = [torch.nn.Parameter(torch.randn(3))]
    assert not use_fused_adam(torch.optim.SGD(params, lr=0.1))
    assert not use_fused_adam(torch.optim.Adam([torch.nn.Parameter(torch.randn(3).double())]))
    assert not use_fused_adam(torch.optim.Adam(params, differentiable=True))


@pytest.mark.parametrize('name,extra', [('mr_hred', VH), ('encoder_decoder', ED)])
def test_agents_build_fused_optimizers(tmp_path, name, extra):
    agent = _agent(tmp_path, name, *extra)
    assert type(agent.optimizer) in (torch.optim.Adam, torch.optim.AdamW)
    assert all(group['fused'] for group in agent.optimizer.param_groups)
    batch = _batch(agent)
    before = [p.detach().clone() for p in agent.model.parameters()]
    agent.train_step(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.model.parameters()))


# --- unified_transformer and PLATO-2 ---------------------------------------------------------------
UT = [*ED, '--text-truncate', '16', '--label-truncate', '8']


@pytest.mark.parametrize('extra', [[], ['--lm-head', 'knover', '--knover-layout', 'true']])
def test_unified_loss_metrics_and_gradients_equal_parlai(tmp_path, extra):
    agent = _agent(tmp_path, 'unified_transformer', *UT, *extra, '-lr', '0.02', partly_fitted=True)
    agent.model.train()
    batch = _batch(agent)
    new = _loss_metrics_grads(agent, agent.compute_loss, batch)
    old = _loss_metrics_grads(agent, lambda b: TorchGeneratorAgent.compute_loss(agent, b), batch)
    _assert_same(new, old)
    assert set(new[1]) == {'loss', 'ppl', 'token_acc', 'token_em'}
    assert sum(new[1]['token_em']) >= 1 and sum(new[1]['token_acc']) < 3
    scores, preds, _ = agent.model(*agent._model_input(batch), ys=batch.label_vec, real_tokens=True)
    n_tokens = int(batch.label_vec.ne(agent.NULL_IDX).sum())
    assert scores.shape == (n_tokens, len(agent.dict)) and preds.shape == (n_tokens,)
    # evaluation keeps ParlAI's padded (batch, time, vocab) scores
    agent._local_metrics = {}
    with torch.no_grad():
        _, (padded, padded_preds, _) = agent.compute_loss(batch, return_output=True)
    assert padded.shape == (*batch.label_vec.shape, len(agent.dict))
    notnull = batch.label_vec.ne(agent.NULL_IDX)
    assert torch.allclose(padded[notnull], scores, atol=1e-5)
    assert torch.equal(padded_preds, padded.argmax(dim=-1))  # max(...).indices = argmax


def test_plato2_training_loss_metrics_and_gradients_equal_the_padded_pass(tmp_path):
    agent = _agent(tmp_path, 'plato2', *UT, '--n-latent', '3', '-lr', '0.01', fit_steps=6)
    agent.model.train()
    batch = _batch(agent)
    new = _loss_metrics_grads(agent, agent.compute_loss, batch)
    old = _loss_metrics_grads(agent, lambda b: agent.compute_loss(b, return_output=True)[0], batch)
    _assert_same(new, old)
    assert {'loss', 'ppl', 'token_acc', 'token_em', 'bow_loss', 'z_entropy'} <= set(new[1])


@pytest.mark.parametrize('knover_layout', [False, True])
def test_unified_bans_equal_in_place_writes(tmp_path, knover_layout):
    extra = ['--lm-head', 'knover'] if knover_layout else []
    agent = _agent(tmp_path, 'unified_transformer', *UT, *extra,
                   '--knover-layout', str(knover_layout).lower())  # fmt: skip
    model = agent.model
    assert 'banned_bias' not in model.state_dict()  # old model files load unchanged
    hidden = torch.randn(2, 3, 16, requires_grad=True)
    logits = model.output(hidden)
    reference = model.transformer.logits(hidden)
    if not knover_layout:  # Knover's layout does not ban the start token
        reference[..., model.START_IDX] = neginf(reference.dtype)
    reference[..., model.NULL_IDX] = neginf(reference.dtype)
    assert torch.equal(logits, reference)
    assert (logits[..., model.START_IDX] > -1e10).all() == knover_layout
    target = torch.randint(3, len(agent.dict), (6,))
    grad = torch.autograd.grad(F.cross_entropy(logits.view(6, -1), target), hidden)[0]
    grad0 = torch.autograd.grad(F.cross_entropy(reference.view(6, -1), target), hidden)[0]
    assert torch.allclose(grad, grad0, atol=1e-6)


def test_reorders_identically_only_for_arange_searches():
    from parlai.core.torch_generator_agent import BeamSearch, GreedySearch, TopKSampling

    from parlai_ext.agents.generation import reorders_identically
    from parlai_ext.candidates import latent_id_search

    args = dict(beam_size=2, device='cpu')
    assert reorders_identically(GreedySearch(beam_size=1, device='cpu'))
    assert reorders_identically(latent_id_search(TopKSampling)(5, **args))  # PLATO-2's
    assert not reorders_identically(BeamSearch(**args))

    class Shuffling(TopKSampling):
        def select_paths(self, logprobs, prior_scores, current_length):
            return super().select_paths(logprobs, prior_scores, current_length)

    assert not reorders_identically(Shuffling(5, **args))


def test_unified_decoding_position_check_needs_no_sync(tmp_path):
    agent = _agent(tmp_path, 'unified_transformer', *UT)
    transformer = agent.model.transformer
    batch = _batch(agent)
    seen = []
    original = transformer.embeddings.forward

    def spy(tokens, positions, types=None, max_position=None, **kwargs):
        seen.append((int(positions.max()), max_position))
        return original(tokens, positions, types, max_position=max_position, **kwargs)

    transformer.embeddings.forward = spy
    with torch.no_grad():
        state = transformer.encode_context(batch.text_vec)
        assert state.max_length == int(state.length.max()) < batch.text_vec.shape[1] + 1
        expanded = state.index_select(torch.tensor([0, 0, 1, 2]))
        caches = None
        for _step in range(3):
            _, caches = transformer.decode(torch.full((4, 1), 5), expanded, caches)
    assert len(seen) == 4 and all(largest == given for largest, given in seen)
    with pytest.raises(ValueError, match='position 32 >= --n-positions 32'):
        transformer.decode(torch.full((4, 32 - state.max_length - 2), 5), expanded, caches)


def _counting_reorders(monkeypatch, model_cls):
    reorders = []
    original = model_cls.reorder_decoder_incremental_state

    def counting(self, incr_state, inds):
        reorders.append(self.identity_reorder)
        if self.identity_reorder:
            assert torch.equal(inds, torch.arange(len(inds)))  # skipping is exact
        return original(self, incr_state, inds)

    monkeypatch.setattr(model_cls, 'reorder_decoder_incremental_state', counting)
    return reorders


@pytest.mark.parametrize(
    'name,inference,beam_size,opts',
    [('unified_transformer', 'greedy', 1, {}), ('unified_transformer', 'topk', 3, {'topk': 5}),
     ('unified_transformer', 'nucleus', 2, {'topp': 0.9}), ('unified_transformer', 'beam', 3, {}),
     ('plato2', 'topk', 3, {'topk': 5}), ('plato2', 'nucleus', 3, {'topp': 0.9}),
     ('plato2', 'greedy', 3, {})],
)  # fmt: skip
def test_unified_generation_unchanged_by_skipped_reorders_and_buffers(
    tmp_path, monkeypatch, name, inference, beam_size, opts
):
    from parlai_ext.agents.unified_transformer import UnifiedTransformerGeneratorModel

    extra = ['--n-latent', '3'] if name == 'plato2' else []
    agent = _agent(tmp_path, name, *UT, *extra)
    batch = _batch(agent, 'eval_labels')
    model = agent.model
    stack = model.transformer.stack
    reorders = _counting_reorders(monkeypatch, UnifiedTransformerGeneratorModel)
    reserves = []
    original_reserve = type(stack).reserve_cache
    monkeypatch.setattr(
        type(stack), 'reserve_cache', lambda s, n: reserves.append(n) or original_reserve(s, n)
    )
    fast = _generate(agent, batch, inference, beam_size, **opts)
    assert reorders and all(reorders) == (inference != 'beam')
    assert reserves[0] == (0 if inference == 'beam' else 8)  # max_ts positions
    assert reserves[-1] == 0 and not model.identity_reorder  # reset after the search
    # reference: every reorder done, caches grown by torch.cat
    monkeypatch.setattr(type(agent), '_prepare_decoding', lambda self, search: search)
    slow = _generate(agent, batch, inference, beam_size, **opts)
    assert not any(reorders[len(reorders) // 2 + 1 :])
    assert [t for t, _ in fast] == [t for t, _ in slow]
    assert [s for _, s in fast] == pytest.approx([s for _, s in slow], abs=1e-5)
    if name == 'plato2':
        assert len(fast) == 3 and len({tuple(t) for t, _ in fast}) > 1  # K candidates differ


def test_unified_reorder_and_hf_bans(tmp_path):
    agent = _agent(tmp_path, 'plato2', *UT, '--n-latent', '3')
    model = agent.model
    batch = _batch(agent)
    _, (scores, preds, _) = agent.compute_loss(batch, return_output=True)
    assert torch.equal(preds, scores.argmax(dim=-1))  # the first maximum, as argmax
    state = [(torch.randn(3, 2, 4, 8), torch.randn(3, 2, 4, 8))]
    inds = torch.tensor([2, 0, 1])
    model.identity_reorder = True  # sampling: the cache is passed on, not copied
    assert model.reorder_decoder_incremental_state(state, inds) is state
    model.identity_reorder = False  # beam: reordered
    ((keys, values),) = model.reorder_decoder_incremental_state(state, inds)
    assert torch.equal(keys, state[0][0][inds]) and torch.equal(values, state[0][1][inds])

    class HfLike(torch.nn.Module):  # a backbone with its own head (e.g. the HF LM's)
        def logits(self, hidden):
            return hidden @ torch.ones(hidden.shape[-1], len(agent.dict))

    model.transformer = HfLike()
    hidden = torch.randn(2, 3, 16)
    reference = hidden @ torch.ones(16, len(agent.dict))
    reference[..., [model.START_IDX, model.NULL_IDX]] = neginf(reference.dtype)
    assert torch.equal(model.output(hidden), reference)
