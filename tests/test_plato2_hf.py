"""PLATO-2 and the unified transformer over pretrained Hugging Face models (issue #20).

Tiny GPT-2, Llama and BERT checkpoints (``test_hf``'s builders, a few thousand parameters):

- the math by value against hand-run HF passes: the generation pass is the prefix LM over
  ``[z; context; response]`` (bidirectional over ``[z; context]``, causal over the response),
  the posterior reads the ``[M]`` output of a fully bidirectional pass, the BOW the z output
  through the LM head; padding changes nothing; the context states do not depend on the
  response; cached decoding equals teacher forcing (with and without a key/value cache);
- the evaluator over BERT: coherence from ``[CLS]``, the checkpoint's own MLM head, the
  masked inputs and the packing of ``[CLS] context [SEP] response`` by value;
- the agents through ParlAI's training loop: stage 1 (LoRA) -> stage 2.1 -> and the evaluator
  train (losses fall), stage 2.1 starts from a stage-1 file (adapters or full weights) with the
  inherited options, model files reload to identical outputs without the training paths,
  greedy / beam / top-k / nucleus generation, PLATO-2's K candidates (one per latent, each the
  greedy decode under its latent) reranked by log-probability or by an evaluator with another
  tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip('peft')

from parlai.core.agents import create_agent, create_agent_from_model_file  # noqa: E402
from parlai.core.message import Message  # noqa: E402
from parlai.core.opt import Opt  # noqa: E402
from parlai.core.params import ParlaiParser  # noqa: E402
from parlai.scripts.train_model import TrainLoop, setup_args  # noqa: E402
from test_hf import tiny_checkpoint, word_tokenizer  # noqa: E402

from parlai_ext.agents import hf as glue  # noqa: E402
from parlai_ext.agents.plato2 import GENERATOR_FRESH  # noqa: E402
from parlai_ext.agents.plato2_evaluator import HF_EVALUATOR_FRESH  # noqa: E402
from parlai_ext.agents.plato2_stages import inherit_architecture, load_hf_with_fresh  # noqa: E402
from parlai_ext.agents.unified_transformer import causal_context, generation_banned_ids  # noqa: E402
from parlai_ext.candidates import CANDIDATES_FIELD  # noqa: E402
from parlai_ext.modules import hf  # noqa: E402
from parlai_ext.modules.plato2_hf import HfPlato2Evaluator, HfPlato2Generator  # noqa: E402

PAIRS = [
    ('hello how are you', 'i like my dog'),
    ('hi how are you today', 'good thanks'),
    ('the cat sat on the mat', 'yes no'),
    ('my dog', 'the cat sat'),
]


# ================================================================================ the math


def tiny_generator(
    tmp_path, style: str, n_latent: int = 3, tau: float = 0.67
) -> tuple[HfPlato2Generator, int]:
    """A tiny HF LM (one padding row added) under the PLATO-2 heads; returns it and the pad id."""
    lm = hf.load_causal_lm(tiny_checkpoint(tmp_path / style, style))
    pad = lm.get_input_embeddings().weight.shape[0]
    hf.resize_embeddings(lm, pad + 1)
    torch.manual_seed(1)
    return HfPlato2Generator(lm, pad + 1, pad, n_latent=n_latent, tau=tau).eval(), pad


def hand_pass(lm, embeds: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The HF body over one unpadded row with a hand-written ``(L, L)`` attention pattern."""
    length = embeds.shape[1]
    out = lm.base_model(
        inputs_embeds=embeds,
        attention_mask=hf.mask_for(lm, allowed[None, None], embeds.dtype),
        position_ids=torch.arange(length)[None],
        use_cache=False,
    )
    return out.last_hidden_state


@pytest.mark.parametrize('style', ['llama', 'gpt2'])
@torch.no_grad()
def test_generation_recognition_and_bow_by_value_against_hand_passes(tmp_path, style):
    g, pad = tiny_generator(tmp_path, style)
    lm = g.lm.model
    context, response = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 8, 9]])
    out = g(context, response)  # eval: z = the posterior's argmax
    embed = lm.get_input_embeddings()
    n_prefix = 1 + context.shape[1]  # [z; context]
    length = n_prefix + response.shape[1]
    rows, cols = torch.arange(length)[:, None], torch.arange(length)[None, :]
    # Eq. 3: the [M] output of one fully bidirectional pass over [M; context; response]
    recognition_in = torch.cat([g.mask_embedding[None, None], embed(context), embed(response)], 1)
    h_m = hand_pass(lm, recognition_in, torch.ones(length, length, dtype=torch.bool))[:, 0]
    posterior = F.linear(torch.tanh(g.recognition(h_m)), g.latent_embedding, g.recognition_bias)
    assert torch.allclose(out.posterior_logits, posterior, atol=1e-5)
    z = int(posterior.argmax())
    assert out.latent_weights[0].tolist() == F.one_hot(torch.tensor(z), 3).tolist()
    # Eq. 2: [z; context] bidirectional, the response causal (the prefix-LM mask)
    generation_in = torch.cat(
        [g.latent_embedding[z][None, None], embed(context), embed(response)], 1
    )
    hidden = hand_pass(lm, generation_in, (cols < n_prefix) | (cols <= rows))
    assert torch.allclose(out.response_hidden, hidden[:, n_prefix:], atol=1e-5)
    # Eq. 5: BOW from the z output, through the LM's own head, plus its bias
    bow = lm.get_output_embeddings()(g.bow_transform(hidden[:, 0])) + g.bow_bias
    assert torch.allclose(out.bow_logits, bow, atol=1e-5)
    assert torch.allclose(g.logits(hidden), lm.get_output_embeddings()(hidden), atol=1e-6)
    # the mask matters: a causal pass over the same inputs gives other context states
    causal = hand_pass(lm, generation_in, cols <= rows)
    assert not torch.allclose(causal[:, :n_prefix], hidden[:, :n_prefix], atol=1e-3)

    # padding (a longer row beside it) changes nothing; response padding neither
    contexts = torch.tensor([[5, 6, 7, pad, pad], [4, 5, 6, 7, 8]])
    responses = torch.tensor([[1, 8, 9, pad], [1, 4, 4, 4]])
    batched = g(contexts, responses)
    assert torch.allclose(batched.posterior_logits[0], out.posterior_logits[0], atol=1e-5)
    assert torch.allclose(batched.bow_logits[0], out.bow_logits[0], atol=1e-4)
    assert torch.allclose(batched.response_hidden[0, :3], out.response_hidden[0], atol=1e-5)


@pytest.mark.parametrize('style', ['llama', 'gpt2'])
@torch.no_grad()
def test_context_states_do_not_depend_on_the_response_and_decoding_equals_teacher_forcing(
    tmp_path, style
):
    g, pad = tiny_generator(tmp_path, style)
    context = torch.tensor([[5, 6, 7, pad], [8, 9, 10, 11]])
    first = torch.tensor([[1, 4, 5, pad], [1, 6, 7, 8]])
    second = torch.tensor([[1, 9, 9, 9], [1, 7, pad, pad]])
    z = g.latent_vectors(torch.eye(3)[[0, 2]])
    h1, state = g.encode(context, first, z)
    h2, _ = g.encode(context, second, z)
    n = state.valid.shape[1]
    assert n == 5 and torch.equal(h1[:, :n], h2[:, :n])  # [z; context] never sees the response
    assert not torch.allclose(h1[:, n:], h2[:, n:], atol=1e-3)
    # the context sees z (bidirectional), its first token sees the later ones
    h3, _ = g.encode(context, first, g.latent_vectors(torch.eye(3)[[1, 1]]))
    assert not torch.allclose(h3[0, 1], h1[0, 1], atol=1e-4)
    later = context.clone()
    later[1, 3] = 4
    h4, _ = g.encode(later, first, z)
    assert not torch.allclose(h4[1, 1], h1[1, 1], atol=1e-4)
    # the response is causal: changing a later response token leaves earlier ones alone
    third = first.clone()
    third[1, 3] = 4
    h5, _ = g.encode(context, third, z)
    assert torch.equal(h5[1, n : n + 3], h1[1, n : n + 3]) and not torch.equal(h5[1, -1], h1[1, -1])
    # generation: [z; context] once (key/value cache), then the response token by token
    valid = (first != pad)[..., None]
    for use_cache in (True, False):
        g.lm.use_cache = use_cache
        prefix = g.encode_latent_context(context, torch.tensor([0, 2]))
        assert (prefix.cache is not None) == use_cache
        steps, incr = [], None
        for t in range(first.shape[1]):
            hidden, incr = g.decode(first[:, t : t + 1], prefix, incr)
            steps.append(hidden)
        decoded = torch.cat(steps, dim=1)
        assert torch.allclose(decoded * valid, h1[:, n:] * valid, atol=1e-5)
        # reordering rows (beam search) moves the cache with them
        swapped = prefix.index_select(torch.tensor([1, 0]))
        hidden, _ = g.decode(first[[1, 0], :1], swapped)
        assert torch.allclose(hidden[:, 0], h1[[1, 0], n], atol=1e-5)
    g.lm.use_cache = True


@torch.no_grad()
def test_causal_context_attention_as_pretrained_still_sees_z_and_decodes_as_forced(tmp_path):
    """--hf-context-attention causal: [z; context] causal (the LM's pretrained mask)."""
    g, pad = tiny_generator(tmp_path, 'llama')
    g.causal_context = True
    lm, embed = g.lm.model, g.lm.model.get_input_embeddings()
    context, response = (
        torch.tensor([[5, 6, 7, pad], [8, 9, 10, 11]]),
        torch.tensor([[1, 4, 5, 6]] * 2),
    )
    z = g.latent_vectors(torch.eye(3)[[0, 2]])
    h1, state = g.encode(context, response, z)
    n = state.valid.shape[1]
    # by value: the second row is one causal pass over [z; context; response]
    inputs = torch.cat([z[1:2].reshape(1, 1, -1), embed(context[1:]), embed(response[1:])], 1)
    rows, cols = torch.arange(9)[:, None], torch.arange(9)[None, :]
    assert torch.allclose(h1[1], hand_pass(lm, inputs, cols <= rows)[0], atol=1e-5)
    later = context.clone()
    later[1, 3] = 4  # a later context token leaves the earlier ones alone, z is seen
    h2, _ = g.encode(later, response, z)
    assert torch.equal(h2[1, :4], h1[1, :4]) and not torch.allclose(h2[1, 4], h1[1, 4])
    h3, _ = g.encode(context, response, g.latent_vectors(torch.eye(3)[[1, 1]]))
    assert not torch.allclose(h3[0, 1], h1[0, 1], atol=1e-4)
    prefix = g.encode_latent_context(context, torch.tensor([0, 2]))
    steps, incr = [], None
    for t in range(response.shape[1]):
        hidden, incr = g.decode(response[:, t : t + 1], prefix, incr)
        steps.append(hidden)
    assert torch.allclose(torch.cat(steps, dim=1), h1[:, n:], atol=1e-5)
    # stage 2.1 inherits the choice from the stage-1 model file
    (tmp_path / 's1').write_text('x')
    (tmp_path / 's1.opt').write_text(json.dumps({'hf_context_attention': 'causal'}))
    opt = Opt({'init_model': str(tmp_path / 's1'), 'model_file': str(tmp_path / 's2')})
    assert inherit_architecture(opt)['hf_context_attention'] == 'causal'
    assert causal_context(inherit_architecture(opt)) and not causal_context(Opt({}))


@torch.no_grad()
def test_training_draws_z_with_gumbel_softmax_at_the_given_temperature(tmp_path):
    from parlai_ext.modules.sampling import gumbel_softmax

    g, _ = tiny_generator(tmp_path, 'llama', tau=0.3)
    context, response = torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.tensor([[1, 8, 9], [1, 4, 5]])
    g.train()
    torch.manual_seed(4)
    out = g(context, response)
    torch.manual_seed(4)
    g.recognize(context, response)  # the same draws happen after the recognition pass
    expected = gumbel_softmax(out.posterior_logits, 0.3)
    assert torch.allclose(out.latent_weights, expected, atol=1e-6)
    assert not torch.allclose(out.latent_weights.max(-1).values, torch.ones(2))  # soft sample


@torch.no_grad()
def test_bf16_autocast_gives_fp32_outputs_close_to_fp32(tmp_path):
    g, _ = tiny_generator(tmp_path, 'llama')
    context, response = torch.tensor([[5, 6, 7]]), torch.tensor([[1, 8, 9]])
    full = g(context, response)
    g.bf16 = True
    half = g(context, response)
    for a, b in ((full.response_hidden, half.response_hidden), (full.bow_logits, half.bow_logits)):
        assert b.dtype == torch.float32 and torch.allclose(a, b, atol=0.1)
        assert not torch.equal(a, b)  # bf16 really ran


def tiny_bert_with_mlm_head(folder) -> str:
    """A tiny BERT saved with its MLM head (``cls.predictions``), as BERT checkpoints are."""
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = word_tokenizer('bert')
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=0,
    )  # fmt: skip
    model = BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
        model.cls.predictions.transform.LayerNorm.weight.normal_()
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@torch.no_grad()
def test_evaluator_cls_coherence_and_mlm_head_by_value(tmp_path):
    from transformers import BertForMaskedLM

    folder = tiny_bert_with_mlm_head(tmp_path / 'bert')
    reference = BertForMaskedLM.from_pretrained(folder).eval()
    tok = word_tokenizer('bert')
    pad, cls, sep, mask = (
        tok.convert_tokens_to_ids(t) for t in ('[PAD]', '[CLS]', '[SEP]', '[MASK]')
    )
    evaluator = HfPlato2Evaluator(
        hf.load_encoder(folder), len(tok), pad, cls_idx=cls, sep_idx=sep, mask_idx=mask
    ).eval()
    assert evaluator.load_pretrained_mlm_head(folder)  # the checkpoint's own head
    context = torch.tensor([[7, 8, 9, pad], [10, 11, 12, 13]])
    response = torch.tensor([[14, 15, sep, pad, pad], [16, 17, 18, 19, sep]])
    replaced = torch.zeros(2, 9, dtype=torch.bool)
    replaced[0, 1] = replaced[0, 5] = True  # context token 8 and response token 15 of row 0
    logits, hidden = evaluator(context, response, replaced)
    # row 0 by hand: [CLS] 7 8 9 [SEP] 14 15 [SEP], types 0 0 0 0 0 1 1 1, masks shown
    ids = torch.tensor([[cls, 7, mask, 9, sep, 14, mask, sep]])
    types = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    ref = reference(input_ids=ids, token_type_ids=types, output_hidden_states=True)
    h = ref.hidden_states[-1]
    assert torch.allclose(evaluator.classifier(torch.tanh(evaluator.pooler(h[:, 0]))), logits[:1],
                          atol=1e-5)  # fmt: skip
    # the token states come back in the [context; response] layout
    assert torch.allclose(hidden[0, [0, 1, 2, 4, 5, 6]], h[0, [1, 2, 3, 5, 6, 7]], atol=1e-5)
    # the MLM head is BERT's own (transform, decoder tied to the word embeddings, bias)
    mlm = evaluator.mlm_logits(hidden[replaced])
    assert torch.allclose(mlm, ref.logits[0, [2, 6]], atol=1e-4)
    # no masking, no padding: row 1 alone equals row 1 of the batch
    plain, _ = evaluator(context, response)
    alone, _ = evaluator(context[1:], response[1:])
    assert torch.allclose(plain[1], alone[0], atol=1e-5) and not torch.allclose(plain[0], logits[0])
    probability = evaluator.coherence(context, response)
    assert torch.allclose(probability, plain.softmax(-1)[:, 1])
    # without a [MASK] token a learned vector is injected at the masked inputs only
    learned = HfPlato2Evaluator(hf.load_encoder(folder), len(tok), pad, cls, sep, None).eval()
    embeds = learned.encoder.get_input_embeddings()
    with torch.no_grad():
        learned.mask_embedding.copy_(embeds.weight[mask])
    learned.pooler, learned.classifier = evaluator.pooler, evaluator.classifier
    assert torch.allclose(learned(context, response, replaced)[0], logits, atol=1e-5)


# ================================================================================ the agents


def write_pairs(path) -> str:
    lines = [f'text:{a}\tlabels:{b}\tepisode_done:True' for a, b in PAIRS * 4]
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def train(root, model: str, name: str, **extra) -> tuple[object, str, dict]:
    """ParlAI's own training loop in this process; the live agent, model file, stats."""
    model_file = str(root / name)
    kwargs = dict(
        model=model,
        task='fromfile:parlaiformat',
        fromfile_datapath=str(root / 'pairs.txt'),
        model_file=model_file,
        batchsize=4,
        learningrate=3e-2,
        max_train_steps=12,
        validation_every_n_steps=3,
        log_every_n_steps=4,
        short_final_eval=True,
        validation_metric='ppl',
        validation_metric_mode='min',
        bf16=False,
        datapath=str(root / 'data'),
    )
    if model != 'plato2_evaluator':
        kwargs['skip_generation'] = True
    kwargs.update(extra)
    torch.manual_seed(0)
    loop = TrainLoop(setup_args().parse_kwargs(**kwargs))
    loop.train()
    with open(model_file + '.trainstats') as f:
        return loop.agent, model_file, json.load(f)


@pytest.fixture(scope='module')
def curriculum(tmp_path_factory):
    """Stage 1 over a tiny Llama with LoRA -> stage 2.1; the evaluator over a tiny BERT."""
    root = tmp_path_factory.mktemp('plato2_hf')
    write_pairs(root / 'pairs.txt')
    bases = {s: tiny_checkpoint(root / f'base_{s}', s) for s in ('llama', 'gpt2')}
    bases['bert'] = tiny_bert_with_mlm_head(root / 'base_bert')
    runs = {}
    runs['stage1'] = train(root, 'unified_transformer', 'stage1', hf_model_dir=bases['llama'],
                           lora_rank=4, lora_dropout=0.0)  # fmt: skip
    runs['stage21'] = train(
        root, 'plato2', 'stage21', init_model=runs['stage1'][1], n_latent=3,
        uniform_prior_ppl=True, entropy_coef=0.1,
    )  # fmt: skip
    runs['stage22'] = train(
        root, 'plato2_evaluator', 'stage22', hf_model_dir=bases['bert'], max_train_steps=16,
        validation_metric='hits@1', validation_metric_mode='max', learningrate=5e-3,
    )  # fmt: skip
    return root, bases, runs


def test_every_stage_trains_its_losses(curriculum):
    _, _, runs = curriculum
    for stage in ('stage1', 'stage21'):
        ppl = [report['ppl'] for report in runs[stage][2]['valid_reports']]
        assert len(ppl) >= 3 and all(b < a for a, b in zip(ppl, ppl[1:])), (stage, ppl)
        assert ppl[-1] < ppl[0] - 0.3, (stage, ppl)
    reports = runs['stage21'][2]['train_reports']
    assert reports[-1]['bow_loss'] < reports[0]['bow_loss']  # the fresh BOW head learns
    valid = runs['stage21'][2]['valid_reports'][-1]
    assert 1 <= valid['z_used'] <= 3 and 0 < valid['z_entropy'] <= 1.0987
    assert 1 < valid['uniform_z_ppl'] < 2 * valid['ppl'] * 3  # the uniform marginal is computed
    reports = runs['stage22'][2]['train_reports']
    assert reports[-1]['mlm_loss'] < reports[0]['mlm_loss'], reports
    assert 0 <= runs['stage22'][2]['final_valid_report']['hits@1'] <= 1


def test_stage2_starts_from_a_stage1_file_of_adapters_or_full_weights(curriculum, tmp_path):
    root, bases, runs = curriculum
    stage1_file = runs['stage1'][1]
    saved = torch.load(stage1_file, map_location='cpu', weights_only=False)['model']
    # adapters only (+ the added padding row): no frozen base weight was saved
    assert any('lora_A' in k for k in saved) and not any('base_layer' in k for k in saved)
    assert not any(k.endswith('embed_tokens.weight') for k in saved)
    options = ParlaiParser(True, True).parse_args(
        ['-m', 'plato2', '--init-model', stage1_file, '-mf', str(tmp_path / 'g'),
         '--n-latent', '4']
    )  # fmt: skip
    agent = create_agent(options)
    # the LM, its LoRA settings and the truncation limits come from the stage-1 .opt
    assert agent.opt['hf_model_dir'] == bases['llama'] and agent.opt['lora_rank'] == 4
    assert (agent.opt['text_truncate'], agent.opt['label_truncate']) == (46, 16)
    state = agent.model.state_dict()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    assert agent.model.transformer.latent_embedding.shape == (4, 16)
    assert not agent.model.transformer.causal_context  # the paper's prefix LM by default
    for model, init in (('plato2', ['--init-model', stage1_file]), ('unified_transformer', [])):
        causal = create_agent(
            ParlaiParser(True, True).parse_args(
                ['-m', model, *init, '-mf', str(tmp_path / model), '--hf-model-dir',
                 bases['llama'], '--hf-context-attention', 'causal']
            )
        )  # the option reaches both backbones  # fmt: skip
        assert causal.model.transformer.causal_context, model
    # full weights: a stage-1 GPT-2 fine-tuned without LoRA
    gpt2_agent, gpt2_file, _ = train(root, 'unified_transformer', 'stage1_gpt2',
                                     hf_model_dir=bases['gpt2'], max_train_steps=2)  # fmt: skip
    full = torch.load(gpt2_file, map_location='cpu', weights_only=False)['model']
    agent = create_agent(
        ParlaiParser(True, True).parse_args(
            ['-m', 'plato2', '--init-model', gpt2_file, '-mf', str(tmp_path / 'g2')]
        )
    )
    assert agent.opt['lora_rank'] == 0
    state = agent.model.state_dict()
    assert all(torch.equal(state[name], tensor) for name, tensor in full.items())
    # ... and a LoRA stage 2 over the full stage-1 weights: adapters are put on top of them
    lora = agent.model
    hf.apply_lora(lora.transformer.lm.model, hf.LoraSettings(rank=2), ())
    load_hf_with_fresh(lora, full, GENERATOR_FRESH)
    assert hf.frozen_base_keys(lora)
    merged = hf.merged_state_dict(lora)
    assert all(torch.equal(merged[name], tensor) for name, tensor in full.items())
    # an adapter file cannot load into a model without adapters
    with pytest.raises(RuntimeError, match='LoRA adapters'):
        load_hf_with_fresh(gpt2_agent.model, saved, ())


def batch_of(agent, pairs=PAIRS):
    observations = [
        agent.clone().observe(Message({'text': a, 'labels': [b], 'episode_done': True}))
        for a, b in pairs
    ]
    return agent.batchify(observations)


@torch.no_grad()
def forced(agent, batch):
    agent.model.eval()
    logits, _, out = agent.model(batch.text_vec, ys=batch.label_vec)
    return logits, out


def test_model_files_reload_to_identical_outputs_without_the_training_paths(curriculum, tmp_path):
    root, bases, runs = curriculum
    live, model_file, _ = runs['stage21']
    moved = str(tmp_path / 'elsewhere')
    shutil.copytree(bases['llama'], moved)
    base = bases['llama']
    os.rename(base, base + '.gone')  # the training machine's base folder is gone
    try:
        reloaded = create_agent_from_model_file(model_file, {'hf_model_dir': moved})
    finally:
        os.rename(base + '.gone', base)
    batch = batch_of(live)
    (a, out_a), (b, out_b) = forced(live, batch), forced(reloaded, batch)
    assert torch.equal(a, b) and torch.equal(out_a.posterior_logits, out_b.posterior_logits)
    assert torch.equal(out_a.bow_logits, out_b.bow_logits)
    # the evaluator: full fine-tuning builds from the saved config, no base needed
    evaluator_live, evaluator_file, _ = runs['stage22']
    evaluator = create_agent_from_model_file(evaluator_file, {'hf_model_dir': '/nowhere'})
    context, response = batch.text_vec, batch.label_vec
    tokens = [torch.tensor(evaluator.dict.txt2vec(t)) for t, _ in PAIRS]
    replies = [torch.tensor(evaluator.dict.txt2vec(r) + [evaluator.END_IDX]) for _, r in PAIRS]
    assert torch.equal(
        evaluator.coherence_scores(tokens, replies),
        evaluator_live.coherence_scores(tokens, replies),
    )
    assert context.shape[0] == response.shape[0] == 4
    assert HF_EVALUATOR_FRESH[0].startswith('transformer.')


def hand_greedy(agent, text: str, latent: int | None, maxlen: int) -> str:
    """Greedy decoding by teacher-forcing the whole response again at every step (no cache)."""
    transformer, d = agent.model.transformer, agent.dict
    context = torch.tensor([d.txt2vec(text)])
    prefix = None if latent is None else transformer.latent_embedding[[latent]][:, None]
    banned = [agent.START_IDX, agent.NULL_IDX, *agent.generation_banned]
    tokens = [agent.START_IDX]
    for step in range(maxlen):
        hidden, _ = transformer.encode(context, torch.tensor([tokens]), prefix)
        logits = transformer.logits(hidden[0, -1])
        logits[banned] = float('-inf')
        if step == 0 and latent is not None:
            logits[agent.END_IDX] = float('-inf')  # plato2: --beam-min-length 1
        tokens.append(int(logits.argmax()))
        if tokens[-1] == agent.END_IDX:
            break
    tokens[-1] = agent.END_IDX  # ParlAI's search ends a hypothesis at the length limit so
    return agent._v2t(torch.tensor(tokens[1:]))


def hand_logprob(agent, text: str, latent: int, response: str) -> float:
    """log p(response, END | context, z) by teacher forcing (banned tokens excluded)."""
    transformer, d = agent.model.transformer, agent.dict
    targets = d.txt2vec(response) + [agent.END_IDX]
    inputs = torch.tensor([[agent.START_IDX, *targets[:-1]]])
    prefix = transformer.latent_embedding[[latent]][:, None]
    hidden, state = transformer.encode(torch.tensor([d.txt2vec(text)]), inputs, prefix)
    logits = transformer.logits(hidden[0, state.valid.shape[1] :])
    logits[:, [agent.START_IDX, agent.NULL_IDX, *agent.generation_banned]] = float('-inf')
    return float(logits.log_softmax(-1)[torch.arange(len(targets)), targets].sum().detach())


def reply(agent, text: str) -> Message:
    agent.reset()
    agent.observe(Message({'text': text, 'episode_done': True}))
    return agent.act()


@torch.no_grad()
def test_generation_through_parlai_search_with_the_hf_cache(curriculum):
    _, _, runs = curriculum
    text = 'hello how are you'
    # stage 1: greedy equals the hand loop; beam search with the cache equals recomputation
    stage1 = create_agent_from_model_file(
        runs['stage1'][1], {'skip_generation': False, 'inference': 'greedy'}
    )
    stage1.label_truncate = 6
    assert reply(stage1, text)['text'] == hand_greedy(stage1, text, None, 6)
    beam = create_agent_from_model_file(
        runs['stage1'][1], {'skip_generation': False, 'inference': 'beam', 'beam_size': 3}
    )
    beam.label_truncate = 6
    beams = reply(beam, text)['beam_texts']
    beam.model.transformer.lm.use_cache = False
    assert reply(beam, text)['beam_texts'] == beams and beams[0][1] < 0
    beam.model.transformer.lm.use_cache = True
    # ParlAI's reorders of the encoder state and of the decoding cache move whole rows
    model, batch = stage1.model, batch_of(stage1, PAIRS[:2])
    state = model.encoder(batch.text_vec)
    start = torch.full((2, 1), stage1.START_IDX)
    _, incr = model.decoder(start, state)
    steps = torch.cat([start, torch.tensor([[5], [6]])], dim=1)
    swap = torch.tensor([1, 0])
    moved, _ = model.decoder(
        steps[swap], model.reorder_encoder_states(state, swap),
        model.reorder_decoder_incremental_state(incr, swap),
    )  # fmt: skip
    fresh, _ = model.decoder(steps[swap], model.encoder(batch.text_vec[swap]))
    assert torch.allclose(moved[:, -1], fresh[:, -1], atol=1e-5)
    # plato2: one greedy candidate per latent value, each the hand greedy under its latent
    stage21 = create_agent_from_model_file(
        runs['stage21'][1],
        {'skip_generation': False, 'inference': 'greedy', 'max_dec_len': 10, 'rerank_penalties': False},
    )  # fmt: skip
    text = 'my dog'
    message = reply(stage21, text)
    candidates = message[CANDIDATES_FIELD]
    assert sorted(c['latent'] for c in candidates) == [0, 1, 2]
    for candidate in candidates:
        assert candidate['text'] == hand_greedy(stage21, text, candidate['latent'], 10)
    scores = [c['score'] for c in candidates]  # length-averaged log-probability, best first
    assert scores == sorted(scores, reverse=True) and message['text'] == candidates[0]['text']
    assert all(-20 < s < 0 for s in scores)
    # each record carries the logprob ranking's divisor (candidate_rankings.py re-ranks logs)
    assert [c['score'] for c in candidates] == [
        pytest.approx(c['logprob'] / c['n_tokens'], abs=1e-5) for c in candidates
    ]
    assert all(1 <= c['n_tokens'] <= 10 for c in candidates)
    # sampling: K candidates, reproducible under a seed
    for method in ('topk', 'nucleus'):
        stage21.opt['inference'] = method
        torch.manual_seed(5)
        first = reply(stage21, text)[CANDIDATES_FIELD]
        torch.manual_seed(5)
        assert reply(stage21, text)[CANDIDATES_FIELD] == first and 1 <= len(first) <= 3
        assert len({c['latent'] for c in first}) == len(first)
        for c in first:  # each candidate's score is its log-probability under its own latent
            assert len(stage21.dict.txt2vec(c['text'])) < 10
            expected = hand_logprob(stage21, text, c['latent'], c['text'])
            if method == 'topk':
                assert c['logprob'] == pytest.approx(expected, abs=1e-4)
            else:  # ParlAI scores nucleus samples under the renormalised nucleus
                assert c['logprob'] > expected


@torch.no_grad()
def test_candidates_reranked_by_an_evaluator_with_another_tokenizer(curriculum):
    _, _, runs = curriculum
    agent = create_agent_from_model_file(
        runs['stage21'][1],
        {'skip_generation': False, 'evaluator_model_file': runs['stage22'][1], 'max_dec_len': 4,
         'rerank_penalties': False},
    )  # fmt: skip
    assert agent.ranking == 'evaluator' and agent.evaluator.dict.tok2ind != agent.dict.tok2ind
    torch.manual_seed(3)
    candidates = reply(agent, 'hello how are you')[CANDIDATES_FIELD]
    texts = [c['text'] for c in candidates]
    evaluator = agent.evaluator
    expected = evaluator.coherence_scores(
        [torch.tensor(evaluator.dict.txt2vec('hello how are you'))] * len(texts),
        [torch.tensor(evaluator.dict.txt2vec(t) + [evaluator.END_IDX]) for t in texts],
    )
    assert [c['evaluator'] for c in candidates] == pytest.approx(expected.tolist(), abs=1e-6)
    assert [c['evaluator'] for c in candidates] == sorted(expected.tolist(), reverse=True)


def test_unk_ban_never_bans_the_end_token(tmp_path):
    base = tiny_checkpoint(tmp_path / 'gpt2', 'gpt2')
    d = glue.HfDictionaryAgent(
        Opt({'hf_model_dir': base, 'dict_file': str(tmp_path / 'd.dict'),
                  'datapath': str(tmp_path / 'data')})
    )  # fmt: skip
    assert d.unk_token == d.end_token  # GPT-2: <|endoftext|> is both
    assert d[d.end_token] not in generation_banned_ids(d)


def test_truncation_fits_the_lm_position_limit(tmp_path, monkeypatch):
    from parlai_ext.agents import unified_transformer
    from parlai_ext.agents.unified_transformer import fit_truncation

    base = tiny_checkpoint(tmp_path / 'llama', 'llama')  # max_position_embeddings 64
    opt = Opt({'hf_model_dir': base, 'datapath': str(tmp_path / 'data'), 'n_positions': 512})
    fitted = fit_truncation(opt)
    assert (fitted['text_truncate'], fitted['label_truncate']) == (46, 16)  # 46 + 16 + 2 = 64
    opt.update({'text_truncate': 48, 'label_truncate': 14})
    assert fit_truncation(opt)['text_truncate'] == 48  # exactly at the limit
    opt['text_truncate'] = 49
    with pytest.raises(ValueError, match='position limit 64'):
        fit_truncation(opt)
    # a long-context LM (SmolLM2: 8192): defaults fill 512 positions, given limits may exceed it
    monkeypatch.setattr(unified_transformer, 'hf_position_limit', lambda opt: 8192)
    opt.update({'text_truncate': None, 'label_truncate': None})
    fitted = fit_truncation(opt)
    assert (fitted['text_truncate'], fitted['label_truncate']) == (382, 128)
    opt.update({'text_truncate': 2000, 'label_truncate': 64})
    assert fit_truncation(opt)['text_truncate'] == 2000


def test_a_fresh_evaluator_takes_the_checkpoint_mlm_head_and_mask_token(curriculum, tmp_path):
    _, bases, runs = curriculum
    agent = create_agent(
        ParlaiParser(True, True).parse_args(
            ['-m', 'plato2_evaluator', '--hf-model-dir', bases['bert'], '-mf', str(tmp_path / 'e')]
        )
    )
    from safetensors.torch import load_file

    saved = load_file(os.path.join(bases['bert'], 'model.safetensors'))
    evaluator = agent.model.transformer
    assert torch.equal(evaluator.mlm_bias, saved['cls.predictions.bias'])
    assert torch.equal(
        evaluator.mlm_transform[0].weight, saved['cls.predictions.transform.dense.weight']
    )
    mask = agent.dict['[MASK]']
    assert evaluator.mask_idx == mask and not hasattr(evaluator, 'mask_embedding')
    assert agent._random_low() == mask + 1  # random MLM replacements never draw [MASK]
