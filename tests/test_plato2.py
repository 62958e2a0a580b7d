"""PLATO-2 (issue #6): masks, latent slot, losses, gradients, loading, generate-then-rank.

Tiny models built in-process (seeded); the CLI runs are in test_plato2_cli.py.
"""

import importlib.util
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from parlai.core.torch_generator_agent import NucleusSampling
from parlai.scripts.eval_model import EvalModel
from parlai.scripts.train_model import TrainModel
from parlai.utils.misc import str_to_msg

from parlai_ext.agents.plato2 import (
    LatentUsageMetric,
    Plato2Agent,
    Plato2EvaluatorAgent,
    copy_numbers,
    repetition_reason,
)
from parlai_ext.losses.plato2 import (
    bow_loss,
    coherence_loss,
    coherence_pairs,
    mlm_corrupt,
    mlm_loss,
)
from parlai_ext.modules.plato2 import Plato2Evaluator, Plato2Generator
from parlai_ext.modules.sampling import (
    gumbel_softmax,
    nucleus_sample,
    sample,
    top_k_filter,
    top_p_filter,
)
from parlai_ext.modules.unified_transformer import UnifiedTransformer

SIZES = dict(dim=32, n_layers=2, n_heads=4, ffn_dim=64, n_positions=64, dropout=0.0)
CLI_SIZES = ['--n-layers', '2', '--embedding-size', '32', '--n-heads', '4', '--ffn-size', '64']
SENTENCES = [
    'hi , how are you ?', 'i am fine , thanks . and you ?', 'what is your name ?',
    'my name is anna .', 'where do you live ?', 'i live in paris .', 'do you have any pets ?',
    'yes , i have a dog .', 'what do you like to eat ?', 'i love pizza .', 'good morning !',
]  # fmt: skip


def _batch():
    # right-padded contexts of lengths 5 and 3; responses start with token 1 (start)
    context = torch.tensor([[5, 6, 7, 8, 9], [10, 11, 12, 0, 0]])
    response = torch.tensor([[1, 13, 14, 15], [1, 16, 17, 0]])
    return context, response


@pytest.fixture
def generator():
    torch.manual_seed(0)
    return Plato2Generator(30, n_latent=5, **SIZES).eval()


def _capture_masks(model):
    """Record the attention masks that ``model.stack`` receives."""
    masks = []
    original = model.stack.forward

    def spy(x, mask, *args, **kwargs):
        masks.append(mask)
        return original(x, mask, *args, **kwargs)

    model.stack.forward = spy
    return masks


# --- masks and the latent slot -----------------------------------------------------------------
def test_generation_and_recognition_masks_on_hand_built_example(generator):
    context = torch.tensor([[5, 6, 0]])  # 2 valid tokens + 1 pad
    response = torch.tensor([[1, 7, 0]])  # 2 valid tokens + 1 pad
    masks = _capture_masks(generator)
    generator(context, response)
    recognition, generation = (m[0, 0].int() for m in masks)
    expected_generation = torch.tensor(
        [
            # z  c0 c1 c2 r0 r1 r2   (c2 and r2 are padding)
            [1, 1, 1, 0, 0, 0, 0],  # z: sees itself and the context (bidirectional prefix)
            [1, 1, 1, 0, 0, 0, 0],  # c0: z + context, never the response
            [1, 1, 1, 0, 0, 0, 0],  # c1
            [1, 1, 1, 1, 0, 0, 0],  # c2 (pad row): + itself, so no NaN
            [1, 1, 1, 0, 1, 0, 0],  # r0: z + context + itself
            [1, 1, 1, 0, 1, 1, 0],  # r1: causal over the response
            [1, 1, 1, 0, 1, 1, 1],  # r2 (pad row)
        ]
    )
    expected_recognition = torch.tensor(
        [
            # M  c0 c1 c2 r0 r1 r2
            [1, 1, 1, 0, 1, 1, 0],  # every row sees every valid position (Eq. 3 pass)
            [1, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 0],
            [1, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 0, 1, 1, 0],
            [1, 1, 1, 0, 1, 1, 1],
        ]
    )
    assert torch.equal(generation, expected_generation)
    assert torch.equal(recognition, expected_recognition)


def test_latent_is_seen_by_context_and_response_and_response_is_never_seen_by_context(
    generator,
):
    context, response = _batch()
    z0 = generator.latent_vectors(F.one_hot(torch.tensor([0, 0]), 5).float())
    z1 = generator.latent_vectors(F.one_hot(torch.tensor([1, 1]), 5).float())
    with torch.no_grad():
        hidden_0, state_0 = generator.encode(context, response, z0)
        hidden_1, state_1 = generator.encode(context, response, z1)
        other = response.clone()
        other[:, 1:] = torch.where(response[:, 1:] != 0, 20, 0)
        _, state_other = generator.encode(context, other, z0)
    # z changes the context's keys/values (context attends to z) and the response states
    # (layer 0 keys are projections of the inputs; layer 1 keys have attended to z)
    assert not torch.allclose(state_0.caches[1][0][:, :, 1:], state_1.caches[1][0][:, :, 1:])
    assert not torch.allclose(hidden_0[:, 6:], hidden_1[:, 6:])
    # the response never changes anything before it (latent slot included)
    for (ka, va), (kb, vb) in zip(state_0.caches, state_other.caches):
        assert torch.equal(ka, kb) and torch.equal(va, vb)
    assert state_0.valid[:, 0].all() and state_0.valid.shape[1] == 1 + context.shape[1]


def test_training_pass_equals_latent_context_then_cached_decoding(generator):
    """The one-pass training graph (eval mode: z = posterior argmax) and inference agree."""
    context, response = _batch()
    with torch.no_grad():
        out = generator(context, response)
        latent_ids = out.latent_weights.argmax(dim=-1)
        state = generator.encode_latent_context(context, latent_ids)
        caches, steps = None, []
        for t in range(response.shape[1]):
            hidden, caches = generator.decode(response[:, t : t + 1], state, caches)
            steps.append(hidden)
    valid = response != 0
    assert torch.allclose(out.response_hidden[valid], torch.cat(steps, 1)[valid], atol=1e-5)


def test_k_latents_in_one_batch_equal_one_at_a_time(generator):
    context, _ = _batch()
    with torch.no_grad():
        tiled = generator.encode_latent_context(
            context.repeat_interleave(5, dim=0), torch.arange(5).repeat(2)
        )
        for z in range(5):
            single = generator.encode_latent_context(context, torch.full((2,), z))
            rows = torch.tensor([z, 5 + z])
            assert torch.allclose(tiled.caches[1][0][rows], single.caches[1][0], atol=1e-5)


def test_all_latents_in_one_pass_equal_one_latent_at_a_time(generator):
    context, response = _batch()
    with torch.no_grad():
        every = generator.response_hidden_per_latent(context, response)  # (B, K, Lr, dim)
        for z in range(5):
            weights = F.one_hot(torch.full((2,), z), 5).float()
            hidden, _ = generator.encode(context, response, generator.latent_vectors(weights))
            assert torch.allclose(every[:, z], hidden[:, 6:], atol=1e-5)


def test_copy_numbers_assigns_latent_values_per_copy():
    assert copy_numbers(torch.tensor([0, 0, 0, 1, 1, 1])).tolist() == [0, 1, 2, 0, 1, 2]
    assert copy_numbers(torch.tensor([3, 1, 3, 1])).tolist() == [0, 0, 1, 1]


# --- losses ------------------------------------------------------------------------------------
def test_bow_loss_equals_hand_computation():
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0]])  # vocabulary of 5, padding id 0
    targets = torch.tensor([[2, 3, 3, 0]])  # order-free words r_t, one pad
    log_z = math.log(sum(math.exp(v) for v in [0.0, 1.0, 2.0, 0.5, -1.0]))
    hand = -((2.0 - log_z) + 2 * (0.5 - log_z)) / 3  # mean over the 3 target tokens
    assert bow_loss(logits, targets, padding_idx=0).item() == pytest.approx(hand, abs=1e-6)
    per_token = bow_loss(logits, targets, 0, reduction='none')
    assert per_token[0, 3].item() == 0.0
    assert per_token[0, 0].item() == pytest.approx(-(2.0 - log_z), abs=1e-6)


def test_coherence_pairs_use_the_next_examples_response_as_negative():
    context = torch.tensor([[1], [2], [3]])
    response = torch.tensor([[10], [20], [30]])
    ctx, resp, labels = coherence_pairs(context, response)
    assert ctx.squeeze(1).tolist() == [1, 2, 3, 1, 2, 3]
    assert resp.squeeze(1).tolist() == [10, 20, 30, 20, 30, 10]
    assert labels.tolist() == [1, 1, 1, 0, 0, 0]
    logits = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    hand = -(F.log_softmax(logits[0], 0)[1] + F.log_softmax(logits[1], 0)[0]) / 2
    assert coherence_loss(logits, torch.tensor([1, 0])).item() == pytest.approx(hand.item())


def test_mlm_corrupt_selects_15_percent_split_80_10_10():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(4, 100, (200, 100), generator=generator)
    maskable = torch.ones_like(tokens, dtype=torch.bool)
    maskable[:, :10] = False  # e.g. special tokens
    inputs, replaced, selected = mlm_corrupt(tokens, maskable, 100, 4, 0.15, generator)
    n = maskable.sum().item()
    assert selected.sum().item() / n == pytest.approx(0.15, abs=0.01)
    assert not selected[:, :10].any() and not (replaced & ~selected).any()
    assert replaced.sum().item() / selected.sum().item() == pytest.approx(0.8, abs=0.03)
    changed = (inputs != tokens) & selected & ~replaced
    kept = selected & ~replaced & (inputs == tokens)
    assert changed.sum().item() / selected.sum().item() == pytest.approx(0.1, abs=0.03)
    assert kept.sum().item() / selected.sum().item() == pytest.approx(0.1, abs=0.03)
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert inputs.min().item() >= 4
    assert mlm_loss(torch.zeros(0, 100), torch.zeros(0, dtype=torch.long)).item() == 0.0


# --- gradients ---------------------------------------------------------------------------------
def test_gradients_reach_recognition_latents_and_bow_head():
    torch.manual_seed(0)
    model = Plato2Generator(30, n_latent=5, **SIZES).train()
    context, response = _batch()
    labels = torch.cat([response[:, 1:], torch.tensor([[2], [0]])], dim=1)
    labels[1, 2] = 2
    out = model(context, response)
    logits = model.logits(out.response_hidden)
    nll = F.cross_entropy(logits.reshape(-1, 30), labels.reshape(-1), ignore_index=0)
    (nll + bow_loss(out.bow_logits, labels, 0)).backward()
    for name in ('recognition.weight', 'recognition_bias', 'latent_embedding',
                 'mask_embedding', 'bow_transform.0.weight', 'bow_bias'):  # fmt: skip
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    # the NLL alone also trains the recognition network (through the Gumbel-softmax sample)
    model.zero_grad()
    out = model(context, response)
    F.cross_entropy(
        model.logits(out.response_hidden).reshape(-1, 30), labels.reshape(-1), ignore_index=0
    ).backward()
    assert model.recognition.weight.grad.abs().sum() > 0


def test_evaluator_mask_vector_replaces_only_masked_inputs():
    torch.manual_seed(0)
    model = Plato2Evaluator(30, **SIZES).eval()
    context, response = _batch()
    none = torch.zeros(2, 9, dtype=torch.bool)
    some = none.clone()
    some[0, 2] = True
    with torch.no_grad():
        plain, _ = model(context, response)
        unmasked, _ = model(context, response, none)
        masked, _ = model(context, response, some)
    assert torch.allclose(plain, unmasked)
    assert not torch.allclose(plain[0], masked[0]) and torch.allclose(plain[1], masked[1])


# --- sampling ----------------------------------------------------------------------------------
def test_gumbel_softmax_soft_and_straight_through():
    logits = torch.tensor([[2.0, 0.0, -1.0]] * 4000, requires_grad=True)
    gen = torch.Generator().manual_seed(0)
    soft = gumbel_softmax(logits, tau=0.67, generator=gen)
    assert torch.allclose(soft.sum(-1), torch.ones(4000))
    # argmax of logits + Gumbel noise is a sample of softmax(logits)
    freq = F.one_hot(soft.argmax(-1), 3).float().mean(0)
    assert torch.allclose(freq, F.softmax(logits[0].detach(), 0), atol=0.03)
    hard = gumbel_softmax(logits, tau=0.67, hard=True, generator=gen)
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0}
    (hard * torch.arange(3.0)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_top_k_and_top_p_filters():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[True, False, False, True]]
    torch.manual_seed(0)
    random_logits = torch.randn(50, 20)
    # the same tokens as ParlAI's NucleusSampling keeps
    probs = random_logits.softmax(-1)
    sprobs, order = probs.sort(-1, descending=True)
    parlai_drop = NucleusSampling(0.7, 1).get_mask(sprobs)
    ours_drop = torch.isinf(top_p_filter(random_logits, 0.7)).gather(1, order)
    assert torch.equal(parlai_drop, ours_drop)
    draws = sample(random_logits, top_k=1)
    assert torch.equal(draws, random_logits.argmax(-1))


def test_nucleus_sample_draws_from_the_renormalised_nucleus():
    """Rejection sampling (no sort) must give top_p_filter's distribution, ParlAI's nucleus."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0], [0.0, 0.0, 5.0, 0.0, 1.0, 0.0]])
    generator = torch.Generator().manual_seed(0)
    draws = nucleus_sample(logits.repeat_interleave(50_000, 0).view(2, 50_000, 6), 0.8, generator)
    assert draws.shape == (2, 50_000)
    expected = top_p_filter(logits, 0.8).softmax(-1)
    observed = F.one_hot(draws, 6).float().mean(1)
    assert torch.allclose(observed, expected, atol=0.01)
    assert observed[expected == 0].sum() == 0  # never a token outside the nucleus
    # a tiny nucleus is greedy (the sorting fallback takes the rows rejection cannot)
    random_logits = torch.randn(64, 50)
    assert torch.equal(nucleus_sample(random_logits, 1e-9), random_logits.argmax(-1))
    again = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(nucleus_sample(random_logits, 0.9, again[0]),
                       nucleus_sample(random_logits, 0.9, again[1]))  # fmt: skip
    assert torch.equal(sample(random_logits, top_p=1e-9), random_logits.argmax(-1))


# --- agents: loading, saving, generate-then-rank -------------------------------------------------
def _opt(*args):
    return ParlaiParser(True, True).parse_args(list(args))


def write_stage1(tmp_path, sentences, *extra):
    """An (untrained) stage-1 unified_transformer model file with a dictionary of
    ``sentences``: ``(model_file, agent)``."""
    dict_file = str(tmp_path / 'stage1.dict')
    parser = ParlaiParser(True, True)
    DictionaryAgent.add_cmdline_args(parser)
    dictionary = DictionaryAgent(parser.parse_args(['--dict-file', dict_file]))
    for sentence in sentences:
        dictionary.add_to_dict(dictionary.tokenize(sentence))
    dictionary.save(dict_file, sort=True)
    model_file = str(tmp_path / 'stage1')
    torch.manual_seed(0)
    agent = create_agent(
        _opt('-m', 'unified_transformer', '-mf', model_file, '--dict-file', dict_file,
             *CLI_SIZES, '--dropout', '0', *extra)
    )  # fmt: skip
    agent.save(model_file)
    return model_file, agent


@pytest.fixture
def stage1(tmp_path):
    """An (untrained) stage-1 unified_transformer model file with a small dictionary."""
    return write_stage1(tmp_path, SENTENCES, '--dict-maxtokens', '77')


def test_stage1_file_loads_into_stage_2_1_and_2_2(stage1, tmp_path):
    model_file, stage1_agent = stage1
    backbone = stage1_agent.model.transformer.state_dict()
    generator = create_agent(
        _opt('-m', 'plato2', '--init-model', model_file, '-mf', str(tmp_path / 'g'),
             '--n-latent', '4')
    )  # fmt: skip
    evaluator = create_agent(
        _opt('-m', 'plato2_evaluator', '--init-model', model_file, '-mf', str(tmp_path / 'e'))
    )
    for agent in (generator, evaluator):
        # sizes and dictionary options came from the stage-1 .opt (not on the command line)
        assert agent.opt['embedding_size'] == 32 and agent.opt['ffn_size'] == 64
        assert agent.opt['dict_maxtokens'] == 77 and agent.opt['dict_file'] == model_file + '.dict'
        state = agent.model.transformer.state_dict()
        for name, tensor in backbone.items():
            assert torch.equal(state[name], tensor), name
    assert generator.model.transformer.latent_embedding.shape == (4, 32)
    # train_model may have built another dictionary at MODEL.dict (from the data): saving
    # writes the one the model uses (the stage-1 dictionary) over it
    for agent, name in ((generator, 'g'), (evaluator, 'e')):
        with open(str(tmp_path / f'{name}.dict'), 'w') as handle:
            handle.write('zebra\t1\n')
        agent.save()
        saved = open(str(tmp_path / f'{name}.dict')).read()
        assert saved == open(model_file + '.dict').read()
    # a checkpoint of the wrong kind is refused
    with pytest.raises(RuntimeError, match='does not match'):
        evaluator.load_state_dict(generator.model.state_dict())


def _act(agent, text):
    agent.reset()
    agent.observe({'text': text, 'episode_done': True})
    return agent.act()


def test_save_reload_gives_identical_generations(stage1, tmp_path):
    model_file, _ = stage1
    path = str(tmp_path / 'g')
    torch.manual_seed(1)
    agent = create_agent(
        _opt('-m', 'plato2', '--init-model', model_file, '-mf', path, '--n-latent', '4',
             '--skip-generation', 'false', '--inference', 'topk', '--topk', '5')
    )  # fmt: skip
    agent.save(path)
    reloaded = create_agent_from_model_file(path, {'skip_generation': False})
    replies = []
    for candidate in (agent, reloaded):
        torch.manual_seed(7)
        replies.append(_act(candidate, 'what is your name ?'))
    assert replies[0]['text'] == replies[1]['text']
    assert replies[0]['beam_texts'] == replies[1]['beam_texts']
    torch.manual_seed(8)  # and the seed matters (sampling really samples)
    other = _act(reloaded, 'what is your name ?')
    assert other['beam_texts'] != replies[0]['beam_texts']


def test_generate_then_rank_returns_the_highest_evaluator_score(stage1, tmp_path):
    model_file, _ = stage1
    torch.manual_seed(2)
    evaluator = create_agent(
        _opt('-m', 'plato2_evaluator', '--init-model', model_file, '-mf', str(tmp_path / 'e'))
    )
    evaluator.save(str(tmp_path / 'e'))
    agent = create_agent(
        _opt('-m', 'plato2', '--init-model', model_file, '-mf', str(tmp_path / 'g'),
             '--n-latent', '6', '--skip-generation', 'false', '--rerank-penalties', 'false',
             '--evaluator-model-file', str(tmp_path / 'e'))
    )  # fmt: skip
    assert isinstance(agent, Plato2Agent) and isinstance(agent.evaluator, Plato2EvaluatorAgent)
    # count the decoding passes: the K candidates must be one batch, not K calls
    transformer = agent.model.transformer
    calls = {'context': [], 'decode': []}
    encode, decode = transformer.encode_latent_context, transformer.decode
    transformer.encode_latent_context = lambda c, z: calls['context'].append(z) or encode(c, z)
    transformer.decode = lambda t, *a: calls['decode'].append(t.shape[0]) or decode(t, *a)
    torch.manual_seed(3)
    reply = _act(agent, 'where do you live ?')
    assert len(calls['context']) == 1 and calls['context'][0].tolist() == list(range(6))
    assert set(calls['decode']) == {6}
    candidates = [text for text, _ in reply['beam_texts']]
    assert 1 <= len(candidates) <= 6
    # score every candidate independently with the evaluator
    context = torch.tensor(agent.dict.txt2vec('where do you live ?'))
    responses = [
        torch.tensor([agent.START_IDX, *agent.dict.txt2vec(text), agent.END_IDX])
        for text in candidates
    ]
    probs = evaluator.coherence_scores([context] * len(responses), responses)
    assert reply['text'] == candidates[int(probs.argmax())]
    reported = [score for _, score in reply['beam_texts']]
    assert reported == pytest.approx(probs.tolist(), abs=1e-5)
    assert reported == sorted(reported, reverse=True)


def test_rerank_penalties_and_logprob_ranking(stage1, tmp_path):
    assert repetition_reason('i live in paris .', ['where do you live in paris ?'])
    assert repetition_reason('i am i am i am', ['hello'])
    assert repetition_reason('i live in lima .', ['where do you live ?']) is None
    model_file, _ = stage1
    torch.manual_seed(4)
    agent = create_agent(
        _opt('-m', 'plato2', '--init-model', model_file, '-mf', str(tmp_path / 'g'),
             '--n-latent', '5', '--skip-generation', 'false', '--label-truncate', '6')
    )  # fmt: skip
    assert agent.ranking == 'logprob'
    reply = _act(agent, 'hi , how are you ?')
    scores = [score for _, score in reply['beam_texts']]
    assert reply['text'] == reply['beam_texts'][0][0] and scores == sorted(scores, reverse=True)
    # -1000 exactly for candidates that reach the maximum length or repeat a trigram
    for text, score in reply['beam_texts']:
        n_generated = len(agent.dict.txt2vec(text)) + 1  # + the end token
        penalised = n_generated >= 6 or repetition_reason(text, ['hi , how are you ?'])
        assert (score < -500) == bool(penalised), (text, score)
        if not penalised:
            assert -20 < score < 0  # a length-averaged log-probability


def test_uniform_prior_ppl_with_one_latent_value_is_the_ppl(stage1, tmp_path):
    model_file, _ = stage1
    reports = {}
    for n_latent in ('1', '3'):
        agent = create_agent(
            _opt('-m', 'plato2', '--init-model', model_file, '-mf', str(tmp_path / n_latent),
                 '--n-latent', n_latent, '--uniform-prior-ppl', 'true')
        )  # fmt: skip
        agent.observe(
            {'text': 'where do you live ?', 'eval_labels': ['i live in paris .'],
             'episode_done': True}
        )  # fmt: skip
        metrics = agent.act()['metrics']  # per-example metrics, as the teacher receives them
        reports[n_latent] = {key: float(value) for key, value in metrics.items()}
    # K = 1: the posterior's z and the uniform prior's are the same single value
    assert reports['1']['uniform_z_ppl'] == pytest.approx(reports['1']['ppl'], rel=1e-5)
    assert 1 < reports['3']['uniform_z_ppl'] < 1e6 and reports['3']['z_used'] == 1


def test_latent_usage_metric_counts_values_used():
    a = LatentUsageMetric((1, 0, 0))
    b = LatentUsageMetric((0, 0, 2))
    assert (a + b).value() == 2.0 and (a + None).value() == 1.0
    assert (a + b).counts == (1, 0, 2)


def test_unified_transformer_forward_unchanged_by_the_prefix_extension():
    """Stage 1 (no prefix) is still the plain prefix-LM pass."""
    torch.manual_seed(0)
    model = UnifiedTransformer(30, **SIZES).eval()
    context, response = _batch()
    with torch.no_grad():
        hidden, state = model(context, response)
        full, _ = model.encode(context, response)
    assert torch.equal(hidden, full[:, 5:]) and state.valid.shape == context.shape


# --- the evaluator alone, as a response ranker ---------------------------------------------------
TOPICS = [
    ('what is your name ?', 'my name is {} .', ['anna', 'ben', 'carla', 'dev', 'emma']),
    ('where do you live ?', 'i live in {} .', ['paris', 'lima', 'oslo', 'cairo', 'perth']),
    ('what do you like to eat ?', 'i love {} .', ['pizza', 'sushi', 'pasta', 'soup']),
    ('do you have any pets ?', 'yes , i have a {} .', ['dog', 'cat', 'parrot', 'rabbit']),
    ('what do you do for work ?', 'i work as a {} .', ['teacher', 'nurse', 'baker', 'pilot']),
]
GREETINGS = ['hi !', 'hello !', 'good morning !', 'hey there !']


def _write_fixture(prefix: str) -> None:
    """Question -> answer pairs in ParlAI's text format; eval examples carry 1 true + 4 random
    candidates (answers to other questions)."""
    rng = random.Random(0)
    for split, size in (('train', 300), ('valid', 40), ('test', 8)):
        lines = []
        for _ in range(size):
            topic = rng.randrange(len(TOPICS))
            question, answer, fillers = TOPICS[topic]
            label = answer.format(rng.choice(fillers))
            fields = [f'text:{rng.choice(GREETINGS)}\\n{question}', f'labels:{label}']
            if split != 'train':
                others = rng.sample([t for t in range(len(TOPICS)) if t != topic], 4)
                cands = [TOPICS[t][1].format(rng.choice(TOPICS[t][2])) for t in others]
                cands.insert(rng.randrange(5), label)
                fields.append('label_candidates:' + '|'.join(cands))
            lines.append('\t'.join(fields + ['episode_done:True']))
        with open(f'{prefix}_{split}.txt', 'w') as handle:
            handle.write('\n'.join(lines) + '\n')


def test_evaluator_learns_to_rank_true_responses_above_random_ones(tmp_path):
    prefix = str(tmp_path / 'qa')
    _write_fixture(prefix)
    task = dict(
        task='fromfile:parlaiformat', fromfile_datapath=prefix, fromfile_datatype_extension=True
    )
    model_file = str(tmp_path / 'evaluator')
    torch.set_num_threads(1)  # a tiny model: threads only contend on shared cores
    TrainModel.main(
        model='plato2_evaluator', model_file=model_file, **task, n_layers=2, embedding_size=64,
        n_heads=4, ffn_size=128, dropout=0.0, batchsize=16, learningrate=5e-3,
        max_train_steps=800, validation_every_n_secs=1000, eval_candidates='inline',
        validation_metric='hits@1', validation_metric_mode='max', short_final_eval=True,
        validation_max_exs=8,
    )  # fmt: skip
    report = EvalModel.main(
        model_file=model_file, **task, datatype='valid', eval_candidates='inline',
        metrics='ext_plato2',
    )  # fmt: skip
    values = {key: float(value) for key, value in report.items()}
    # chance is 0.2 (P@1) and about 0.46 (MRR) with 5 candidates
    assert values['hits@1'] >= 0.8 and values['ext_p@1'] == pytest.approx(values['hits@1'])
    assert values['ext_mrr'] >= 0.85 and values['ext_map'] == pytest.approx(values['ext_mrr'])


PRESETS = Path(__file__).resolve().parents[1] / 'projects' / 'plato2'


@pytest.mark.parametrize(
    'preset, low, high', [('310M', 300e6, 320e6), ('1.6B', 1.55e9, 1.7e9), ('small', 4e6, 7e6)]
)
def test_size_presets_match_the_paper(preset, low, high):
    """The paper's 310M / 1.6B sizes (8K BPE + [MASK] = 8001 ids) and the CPU size."""
    path = str(PRESETS / f'{preset}.opt')
    for model in ('unified_transformer', 'plato2', 'plato2_evaluator'):
        opt = _opt('-m', model, '-o', path)  # every stage accepts the preset
        assert opt['text_truncate'] + opt['label_truncate'] + 2 <= opt['n_positions']
    with torch.device('meta'):  # no memory: count parameters only
        model = UnifiedTransformer(
            8001, dim=opt['embedding_size'], n_layers=opt['n_layers'], n_heads=opt['n_heads'],
            ffn_dim=opt['ffn_size'], n_positions=opt['n_positions'],
        )  # fmt: skip
    assert low <= sum(p.numel() for p in model.parameters()) <= high


def test_response_selection_file_has_one_true_and_n_random_candidates():
    spec = importlib.util.spec_from_file_location(
        'response_selection', PRESETS / 'response_selection.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    examples = [
        {'text': f'question {i}', 'labels': [f'answer {i % 7}'], 'episode_done': i % 3 == 2}
        for i in range(30)
    ]
    lines = module.selection_lines(examples, n_random=4, seed=0)
    assert lines == module.selection_lines(examples, n_random=4, seed=0)  # seeded
    for example, line in zip(examples, lines):
        message = str_to_msg(line)
        candidates = message['label_candidates']
        assert message['labels'] == example['labels'] and message['text'] == example['text']
        assert len(candidates) == 5 and len(set(candidates)) == 5
        assert candidates.count(example['labels'][0]) == 1
        assert bool(message.get('episode_done')) == example['episode_done']
