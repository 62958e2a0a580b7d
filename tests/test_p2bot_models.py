"""P2Bot's module math by value: the NUP head's position, Eq. 2 and Eq. 6 with padding, the
receiver (Eq. 11-15) on variable-length batches, Eq. 12 with several distractors, τ's
annealing through the agent's train step, and an OpenAI-GPT backbone (no key/value cache)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_p2bot import _incremental_equals_full, _tiny_transmitter

from parlai_ext.losses.p2bot import nup_loss, receiver_loss
from parlai_ext.modules.p2bot import (
    HFCausalBackbone,
    PrefixCache,
    Receiver,
    SentenceEncoder,
    aggregate,
    append_cls,
    cumulative_score,
    length_normalised_log_prob,
    linear_tau,
    mean_pool,
    sample_responses,
)

# ------------------------------------------------------------------------------ transmitter


def test_nup_head_reads_the_cls_state_after_end():
    policy = _tiny_transmitter().eval()
    context = torch.tensor([[5, 6, 7], [5, 6, 0]])
    targets = torch.tensor([[8, 9, 2, 0], [10, 2, 0, 0]])
    with torch.no_grad():
        out = policy(context, targets)
        sequence, position = append_cls(targets, 1, 3, 0)
        hidden, _ = policy.backbone(context, sequence)
        expected = policy.nup_head(hidden[torch.arange(2), position])
        # the state of the token before [CLS] (END) would give other logits
        wrong = policy.nup_head(hidden[torch.arange(2), position - 1])
    assert torch.allclose(out.nup_logits, expected, atol=1e-6)
    assert not torch.allclose(out.nup_logits, wrong, atol=1e-3)
    # the NUP logits see the whole reply: another first token changes them
    with torch.no_grad():
        other = policy(context, torch.tensor([[4, 9, 2, 0], [10, 2, 0, 0]])).nup_logits
    assert not torch.allclose(other[0], out.nup_logits[0], atol=1e-4)
    assert torch.allclose(other[1], out.nup_logits[1], atol=1e-6)


def test_nup_loss_by_value():
    pos = torch.tensor([[0.2, 1.0], [1.5, -0.5]])
    neg = torch.tensor([[0.0, 2.0], [-1.0, 0.3]])
    got = nup_loss(pos, neg).item()
    lp, ln = F.log_softmax(pos, -1), F.log_softmax(neg, -1)
    expected = -(lp[0, 1] + lp[1, 1] + ln[0, 0] + ln[1, 0]).item() / 4
    assert got == pytest.approx(expected, rel=1e-6)


def test_length_normalised_log_prob_by_value_with_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7)
    targets = torch.tensor([[3, 4, 5, 6], [2, 6, 0, 0]])
    lp = F.log_softmax(logits, -1)
    expected = [
        sum(lp[0, t, targets[0, t]].item() for t in range(4)) / 4,
        (lp[1, 0, 2] + lp[1, 1, 6]).item() / 2,
    ]
    got = length_normalised_log_prob(logits, targets, 0)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)


def test_sampler_stops_rows_at_end_and_pads_after_it():
    policy = _tiny_transmitter().eval()
    logits = policy.backbone.logits
    bonus = torch.zeros(12)
    bonus[2] = 1.5  # END (id 2) frequent enough for both kinds of rows
    policy.backbone.logits = lambda hidden: logits(hidden) + bonus
    context = torch.tensor([[5, 6, 7]] * 64)
    with torch.no_grad():
        rows = sample_responses(policy, context, 5, torch.tensor([0, 1, 3]))
    assert rows.shape[1] <= 5
    for row in rows.tolist():
        assert 1 not in row and 3 not in row  # banned: START, [CLS]
        if 2 in row:  # after END only padding
            end = row.index(2)
            assert all(t == 0 for t in row[end + 1 :])
            assert 0 not in row[:end]
        else:  # capped: 5 sampled tokens, none of them padding
            assert len(row) == 5 and 0 not in row
    assert any(2 in row for row in rows.tolist())  # both kinds occur in 64 rows
    assert any(2 not in row for row in rows.tolist())


def _tiny_openai_gpt(directory: Path, words: list[str]) -> Path:
    """A 1-layer OpenAI-GPT (the paper's backbone family: returns no key/value cache)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OpenAIGPTConfig, OpenAIGPTLMHeadModel, PreTrainedTokenizerFast

    vocab = {'<unk>': 0}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token='<unk>').save_pretrained(
        directory
    )
    torch.manual_seed(0)
    config = OpenAIGPTConfig(vocab_size=len(vocab), n_positions=128, n_embd=16, n_layer=1, n_head=2)
    OpenAIGPTLMHeadModel(config).save_pretrained(directory)
    return directory


def test_openai_gpt_backbone_recomputes_the_prefix(tmp_path):
    from transformers import AutoModelForCausalLM

    directory = _tiny_openai_gpt(tmp_path / 'gpt', [f'w{i}' for i in range(12)])
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    backbone = HFCausalBackbone(model, padding_idx=0)
    context = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0]])
    with torch.no_grad():
        _, cache = backbone.decode(torch.tensor([[1], [1]]), backbone.encode_context(context))
    assert isinstance(cache, PrefixCache)  # the model keeps none
    response = torch.tensor([[1, 8, 9, 3], [1, 4, 5, 0]])
    _incremental_equals_full(backbone, context, response)
    # one reorder (as beam search does: here a swap and a duplicate), then one more step
    for order in ([1, 0], [0, 0]):
        index = torch.tensor(order)
        with torch.no_grad():
            state = backbone.encode_context(context)
            _, cache = backbone.decode(response[:, :2], state, None)
            state = backbone.reorder_state(state, index)
            cache = backbone.reorder_cache(cache, index)
            step, _ = backbone.decode(response[index, 2:3], state, cache)
            full, _ = backbone(context[index], response[index, :3])
        assert torch.allclose(step[:, 0], full[:, 2], atol=1e-5)


def test_transmitter_over_openai_gpt_generates_and_samples(tmp_path):
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser
    from test_p2bot import fixture_words, write_both

    directory = _tiny_openai_gpt(tmp_path / 'gpt', fixture_words())
    data = write_both(tmp_path, 6)
    opt = ParlaiParser(True, True).parse_args(
        ['-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay:supervised',
         '--personachat-file', str(data), '--hf-model-dir', str(directory),
         '-mf', str(tmp_path / 'tx'), '--label-truncate', '6', '--datapath', str(tmp_path)]
    )  # fmt: skip
    agent = create_agent(opt)
    context = agent.context_vec(['i keep bees in my garden.'], ['my bees made honey again .'])
    beam = agent.generate([context, context])  # ParlAI's beam search (reorders the cache)
    assert len(beam) == 2 and all(1 <= len(r) <= 6 for r in beam)
    sampled = agent.sample_replies([context], 6, torch.Generator().manual_seed(0))
    assert 1 <= len(sampled[0]) <= 6


def test_rs1_language_model_scores_by_value_with_padding(tmp_path):
    from test_p2bot import tiny_hf_lm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from parlai_ext.agents.p2bot import HFLanguageModelScorer

    directory = tiny_hf_lm(tmp_path / 'lm', ['a', 'b', 'c', 'd'])
    scorer = HFLanguageModelScorer(str(directory))
    texts = ['a b c d a', 'c']
    got = scorer.score(texts)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(directory)
    for text, value in zip(texts, got.tolist()):
        ids = [tok.eos_token_id] + tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            lp = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
        expected = sum(lp[t, ids[t + 1]].item() for t in range(len(ids) - 1)) / (len(ids) - 1)
        assert value == pytest.approx(expected, rel=1e-4)  # Eq. 6: (1/|a|) Σ log p_lm


# --------------------------------------------------------------------------------- receiver


def _receiver(tau: float = 1.0) -> Receiver:
    torch.manual_seed(0)

    def encoder():
        return SentenceEncoder(20, dim=8, n_layers=1, n_heads=2, ffn_dim=16, dropout=0.0)

    return Receiver(encoder(), encoder(), tau=tau).eval()


def _sentence_encoder(**options) -> SentenceEncoder:
    torch.manual_seed(0)  # the same weights whatever the options
    return SentenceEncoder(20, dim=8, n_layers=2, n_heads=2, ffn_dim=16, dropout=0.0, **options)


SENTENCES = torch.tensor([[3, 4, 5, 6], [7, 8, 0, 0], [9, 10, 11, 0]])


def test_sentence_encoder_uses_its_activation():
    """--activation reaches the receiver's encoders: ReLU and GELU differ on the same weights;
    the default is GELU (what receivers saved before the option was honoured used)."""
    with torch.no_grad():
        gelu = _sentence_encoder(activation='gelu').eval()(SENTENCES)
        relu = _sentence_encoder(activation='relu').eval()(SENTENCES)
        default = _sentence_encoder().eval()(SENTENCES)
    assert (gelu - relu).abs().max().item() > 1e-3
    assert torch.equal(default, gelu)
    ffn = _sentence_encoder(activation='relu').stack.layers[0].ffn
    x = torch.randn(5, 8)
    assert torch.allclose(ffn(x), ffn.fc_out(F.relu(ffn.fc_in(x))), atol=1e-6)


def test_sentence_encoder_attention_dropout_acts_in_training_only():
    """--attention-dropout: outputs vary between training passes and equal the undropped
    encoder's in evaluation; without it (the default) a training pass is the evaluation one."""
    dropped, plain = _sentence_encoder(attention_dropout=0.5), _sentence_encoder()
    with torch.no_grad():
        reference = plain.eval()(SENTENCES)
        assert torch.allclose(plain.train()(SENTENCES), reference, atol=1e-5)
        assert torch.equal(dropped.eval()(SENTENCES), reference)
        dropped.train()
        torch.manual_seed(1)
        first = dropped(SENTENCES)
        torch.manual_seed(2)
        second = dropped(SENTENCES)
    assert (first - reference).abs().max().item() > 1e-3
    assert (first - second).abs().max().item() > 1e-3


def test_receiver_scores_variable_length_batches_by_hand():
    """Eq. 11 (√d scaling), Eq. 13 (τ), Eq. 14 (mean over valid utterances), padding masked."""
    receiver = _receiver(tau=0.5)
    utterances = torch.tensor([[3, 4, 0], [5, 6, 7], [8, 0, 0]])  # rows of all examples
    utterance_index = torch.tensor([[0, 1], [2, -1]])  # example 1 has one utterance
    sentences = torch.tensor([[9, 10, 0], [11, 0, 0], [12, 13, 14], [15, 0, 0], [16, 17, 0]])
    persona_index = torch.tensor([[[0, 1], [2, -1]], [[3, 4], [1, -1]]])  # (B, C, L)
    with torch.no_grad():
        out = receiver(utterances, utterance_index, sentences, persona_index)
        h = receiver.impression_encoder(utterances)
        w = receiver.persona_encoder(sentences)
    for b, rows in enumerate([[0, 1], [2]]):
        for c, cols in enumerate([[[0, 1], [2]], [[3, 4], [1]]][b]):
            u = h[rows] @ w[cols].T / math.sqrt(8)  # Eq. 11
            agg = (torch.softmax(u / 0.5, -1) * u).sum(-1)  # Eq. 13
            assert out.scores[b, c].item() == pytest.approx(agg.mean().item(), abs=1e-5)
            assert torch.allclose(out.relevance[b, c, : len(rows), : len(cols)], u, atol=1e-5)
    assert out.mask.sum().item() == 2 * 2 + 2 * 1 + 1 * 2 + 1 * 1
    assert out.relevance[~out.mask].abs().sum().item() == 0.0


def test_receiver_temperature_changes_the_sharpness():
    receiver = _receiver()
    utterances = torch.tensor([[3, 4, 5], [6, 7, 0]])
    sentences = torch.tensor([[9, 10, 0], [11, 12, 13], [14, 0, 0]])
    args = (utterances, torch.tensor([[0, 1]]), sentences, torch.tensor([[[0, 1, 2]]]))
    with torch.no_grad():
        receiver.tau.fill_(1e-4)
        sharp = receiver(*args)
        receiver.tau.fill_(1e4)
        flat = receiver(*args)
    u = sharp.relevance[0, 0]
    assert sharp.scores.item() == pytest.approx(u.max(-1).values.mean().item(), abs=1e-3)
    assert flat.scores.item() == pytest.approx(u.mean(-1).mean().item(), abs=1e-3)
    assert sharp.scores.item() > flat.scores.item() + 0.05
    # Eq. 15 at inference uses the current τ too
    with torch.no_grad():
        receiver.tau.fill_(1e-4)
        one = receiver.perception_scores(utterances[:1], sentences, torch.tensor([[0, 1, 2]]))
    assert one.item() == pytest.approx(u[0].max().item(), abs=1e-3)
    assert one.item() > u[0].mean().item() + 0.05


def test_aggregate_and_cumulative_score_by_value():
    scores = torch.tensor([[[0.5, -1.0, 2.0], [1.0, 1.0, 9.0]]])
    columns = torch.tensor([[True, True, False]])
    rows = torch.tensor([[True, True]])
    w0 = torch.softmax(torch.tensor([0.5, -1.0]) / 2.0, 0)
    first = (w0 * torch.tensor([0.5, -1.0])).sum().item()
    assert cumulative_score(scores, 2.0, rows, columns).item() == pytest.approx((first + 1.0) / 2)
    assert aggregate(torch.tensor([[1.0, 3.0]]), 1.0).item() == pytest.approx(
        (math.e * 1 + math.e**3 * 3) / (math.e + math.e**3)
    )
    assert (
        mean_pool(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1, 1, 0]]).bool()).item()
        == 2.0
    )


def test_receiver_loss_with_several_distractors_by_value():
    scores = torch.tensor([[1.0, 0.9, 0.2, 1.3], [0.0, 0.5, -0.1, 0.1]])
    true = torch.tensor([0, 2])
    relevance = torch.tensor([1.0, -2.0, 0.5, 3.0]).view(1, 1, 2, 2).expand(2, 4, 2, 2).clone()
    mask = torch.ones(2, 4, 2, 2, dtype=torch.bool)
    mask[:, :, 1, 1] = False  # a padded entry: its 3.0 never counts
    loss, margin, l1 = receiver_loss(scores, true, relevance, mask, margin=0.4, beta=0.01)
    m0 = (max(0, 0.4 + 0.9 - 1.0) + max(0, 0.4 + 0.2 - 1.0) + max(0, 0.4 + 1.3 - 1.0)) / 3
    m1 = (max(0, 0.4 + 0.0 + 0.1) + max(0, 0.4 + 0.5 + 0.1) + max(0, 0.4 + 0.1 + 0.1)) / 3
    l1_each = 4 * (1.0 + 2.0 + 0.5)  # |U|₁ over the 4 candidates' valid entries
    assert margin.item() == pytest.approx((m0 + m1) / 2)
    assert l1.item() == pytest.approx(l1_each)
    assert loss.item() == pytest.approx((m0 + m1) / 2 + 0.01 * l1_each)


def test_receiver_train_step_anneals_tau_and_records_eq12(tmp_path):
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser
    from parlai.scripts.build_dict import build_dict
    from parlai.scripts.build_dict import setup_args as build_dict_args
    from test_p2bot import write_both

    data = write_both(tmp_path, 6)
    opt = build_dict_args(ParlaiParser(True, True)).parse_args(
        ['-m', 'p2bot_receiver', '-t', 'p2bot_selfplay:receiver', '--personachat-file',
         str(data), '--datapath', str(tmp_path), '-mf', str(tmp_path / 'rx'), '--dict-file',
         str(tmp_path / 'rx.dict'), '--n-layers', '1', '--embedding-size', '8', '--n-heads',
         '2', '--ffn-size', '16', '--tau-start', '10', '--tau-end', '2', '--tau-anneal-steps',
         '4', '--dropout', '0', '-dt', 'train', '--weight-decay', '0.1']
    )  # fmt: skip
    build_dict(opt)
    agent = create_agent(opt)
    # the receiver calls init_optim itself: biases and norms still take no weight decay
    assert [g['weight_decay'] for g in agent.optimizer.param_groups] == [0.1, 0.0]
    assert all(p.ndim == 1 for p in agent.optimizer.param_groups[1]['params'])
    obs = {
        'utterances': ['my bees made honey again', 'i practised the cello'],
        'label_candidates': ['i keep bees.\ni play the cello.', 'i drive a red tractor.'],
        'labels': ['i keep bees.\ni play the cello.'],
        'episode_done': True,
    }
    taus = []
    for step in range(6):
        agent.observe(dict(obs))
        reply = agent.act()
        taus.append(float(agent.model.tau))
        if step == 0:
            report = reply['metrics']
    # τ at update k is linear_tau(k): 10, 8, 6, 4, 2, 2
    assert taus == pytest.approx([linear_tau(k, 10.0, 2.0, 4) for k in range(6)])
    assert taus == pytest.approx([10.0, 8.0, 6.0, 4.0, 2.0, 2.0])
    # a batch whose examples have 3 and 2 candidate personas: the padded slot can never win
    three = dict(obs, label_candidates=[*obs['label_candidates'], 'i surf every weekend.'])
    batch = agent.batchify([agent.vectorize(three, None), agent.vectorize(dict(obs), None)])
    with torch.no_grad():
        out, scores = agent._forward(batch)
    assert scores[1, 2].item() == float('-inf') and torch.isfinite(scores[0]).all()
    assert torch.equal(scores[:, :2], out.scores[:, :2]) and out.scores[1, 2].item() == 0.0
    assert report['loss'].value() == pytest.approx(
        report['margin_loss'].value() + 1e-4 * report['l1'].value(), rel=1e-5
    )


def test_receiver_encoders_follow_the_options_and_older_files_keep_gelu(tmp_path):
    """A new from-scratch receiver's encoders use --activation / --attention-dropout and
    record it in the saved opt; a file saved before (no ``encoders_follow_options``) reloads
    with GELU and no attention dropout, scoring exactly as the old build did."""
    from parlai.core.agents import create_agent, create_agent_from_model_file
    from parlai.core.opt import Opt
    from parlai.core.params import ParlaiParser
    from parlai.scripts.build_dict import build_dict
    from parlai.scripts.build_dict import setup_args as build_dict_args
    from test_p2bot import write_both

    from parlai_ext.agents.unified_transformer import encoder_args

    data, model_file = write_both(tmp_path, 2), str(tmp_path / 'rx')
    opt = build_dict_args(ParlaiParser(True, True)).parse_args(
        ['-m', 'p2bot_receiver', '-t', 'p2bot_selfplay:receiver', '--personachat-file',
         str(data), '--datapath', str(tmp_path), '-mf', model_file, '--dict-file',
         model_file + '.dict', '--n-layers', '1', '--embedding-size', '8', '--n-heads', '2',
         '--ffn-size', '16', '--dropout', '0', '--activation', 'relu',
         '--attention-dropout', '0.3']
    )  # fmt: skip
    build_dict(opt)
    agent = create_agent(opt)
    agent.save(model_file)
    x = torch.randn(5, 8)

    def settings(receiver) -> list[tuple[str, float]]:
        out = []
        for encoder in (receiver.impression_encoder, receiver.persona_encoder):
            layer = encoder.stack.layers[0]
            ffn = layer.ffn
            relu = torch.allclose(ffn(x), ffn.fc_out(F.relu(ffn.fc_in(x))), atol=1e-6)
            gelu = torch.allclose(ffn(x), ffn.fc_out(F.gelu(ffn.fc_in(x))), atol=1e-6)
            assert relu != gelu
            out.append(('relu' if relu else 'gelu', layer.attention.dropout))
        return out

    assert settings(agent.model) == [('relu', 0.3)] * 2
    reloaded = create_agent_from_model_file(model_file)
    assert reloaded.opt['encoders_follow_options'] is True
    assert settings(reloaded.model) == [('relu', 0.3)] * 2
    # a receiver saved before the encoders followed the options
    old_opt = Opt.load(model_file + '.opt')
    del old_opt['encoders_follow_options']
    old_opt.save(model_file + '.opt')
    old = create_agent_from_model_file(model_file)
    assert old.opt['encoders_follow_options'] is False and old.opt['activation'] == 'relu'
    assert settings(old.model) == [('gelu', 0.0)] * 2
    # scores equal the old build's: encoder_args without activation and attention dropout
    args = encoder_args(old.opt, old.dict)
    del args['activation'], args['attention_dropout']
    before = Receiver(
        SentenceEncoder(len(old.dict), **args), SentenceEncoder(len(old.dict), **args)
    )
    before.load_state_dict(old.model.state_dict())
    rows = torch.tensor([[5, 6, 7], [8, 9, 0], [10, 0, 0]])
    inputs = (rows, torch.tensor([[0, 1], [2, -1]]), rows, torch.tensor([[[0, 1], [2, -1]]] * 2))
    with torch.no_grad():
        new_scores = old.model.eval()(*inputs).scores
        assert torch.equal(new_scores, before.eval()(*inputs).scores)
        assert not torch.allclose(new_scores, reloaded.model.eval()(*inputs).scores)
