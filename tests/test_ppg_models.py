"""PPG model pieces: the REINFORCE step, rewards, sampling, the critic, HF warm starts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from parlai.core.agents import create_agent
from parlai.core.params import ParlaiParser

from parlai_ext.losses.ppg import critic_rewards, generator_reinforce_loss
from parlai_ext.losses.reinforce import sequence_log_probs
from parlai_ext.modules.encoder_decoder import EncoderDecoder
from parlai_ext.modules.ppg import (
    PersonaCritic,
    decoder_input,
    pack_pair,
    sample_sequences,
    segment_ids,
)
from parlai_ext.modules.transformer import TransformerEncoder

PAD, START, END = 0, 1, 2


def tiny_seq2seq(vocab: int = 20) -> EncoderDecoder:
    torch.manual_seed(0)
    return EncoderDecoder(
        vocab, dim=16, n_encoder_layers=1, n_decoder_layers=1, n_heads=2, ffn_dim=32, dropout=0.0
    )


def log_prob(model: EncoderDecoder, source: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    hidden, _ = model(source, decoder_input(sample, START))
    logits = model.logits(hidden)
    per_token, mask = sequence_log_probs(logits, sample, PAD)
    return (per_token * mask).sum(-1)


# --- §3.3: the REINFORCE update -------------------------------------------------------------
@pytest.mark.parametrize('reward,direction', [(1.0, 1), (-1.0, -1)])
def test_rl_step_raises_log_prob_of_rewarded_sample_and_lowers_punished_one(reward, direction):
    model = tiny_seq2seq()
    source = torch.tensor([[5, 6, 7, 8]])
    sample = torch.tensor([[9, 10, 11, END, PAD]])
    before = log_prob(model, source, sample).item()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    hidden, _ = model(source, decoder_input(sample, START))
    loss = generator_reinforce_loss(
        model.logits(hidden), sample, torch.tensor([reward]), PAD, 'mean'
    )
    loss.backward()
    optimizer.step()
    after = log_prob(model, source, sample).item()
    assert (after - before) * direction > 1e-4


def test_reinforce_loss_is_minus_reward_times_sequence_log_prob():
    model = tiny_seq2seq()
    source = torch.tensor([[5, 6, 7], [8, 9, PAD]])
    sample = torch.tensor([[9, 10, END], [11, END, PAD]])
    hidden, _ = model(source, decoder_input(sample, START))
    logits = model.logits(hidden)
    rewards = torch.tensor([1.0, -1.0])
    expected = -(rewards * log_prob(model, source, sample)).mean()
    got = generator_reinforce_loss(logits, sample, rewards, PAD, 'mean')
    assert torch.allclose(got, expected, atol=1e-6)


def test_critic_rewards_label_and_probability():
    probability = torch.tensor([0.9, 0.2, 0.51, 0.5])
    assert critic_rewards(probability).tolist() == [1.0, -1.0, 1.0, -1.0]
    assert critic_rewards(probability, scale=10).tolist() == [10.0, -10.0, 10.0, -10.0]
    prob = critic_rewards(probability, 'probability')
    assert torch.allclose(prob, torch.tensor([0.8, -0.6, 0.02, 0.0]), atol=1e-6)
    scaled = critic_rewards(probability, 'probability', scale=10)
    assert torch.allclose(scaled, torch.tensor([8.0, -6.0, 0.2, 0.0]), atol=1e-5)
    with pytest.raises(ValueError):
        critic_rewards(probability, 'margin')


def test_sampler_stops_at_end_pads_after_and_never_emits_banned_tokens():
    model = tiny_seq2seq()
    with torch.no_grad():  # make END likely so some rows stop early
        model.embeddings.tokens.weight[END] *= 4
    source = torch.tensor([[5, 6, 7]] * 16)
    torch.manual_seed(3)
    sample = sample_sequences(model, source, START, END, 12, banned=(START, PAD))
    assert sample.shape[0] == 16 and sample.shape[1] <= 12
    for row in sample.tolist():
        if END in row:
            stop = row.index(END)
            assert all(t == PAD for t in row[stop + 1 :])
            body = row[:stop]
        else:
            body = row
        assert START not in body and PAD not in body
    greedy_a = sample_sequences(model, source[:2], START, END, 8, (START, PAD), greedy=True)
    greedy_b = sample_sequences(model, source[:2], START, END, 8, (START, PAD), greedy=True)
    assert torch.equal(greedy_a, greedy_b)


# --- the critic network ------------------------------------------------------------------------
def test_pair_packing_and_segments():
    ids = pack_pair([10, 11, 12, 13], [20, 21], cls=1, sep=2, max_len=8)
    assert ids == [1, 10, 11, 12, 2, 20, 21, 2]
    short = pack_pair([10, 11, 12, 13, 14], [20, 21], cls=1, sep=2, max_len=7)
    assert short == [1, 10, 11, 2, 20, 21, 2]  # the persona is cut, the response kept
    capped = pack_pair([10, 11], [20, 21, 22, 23], cls=1, sep=2, max_len=16, max_response=2)
    assert capped == [1, 10, 11, 2, 20, 21, 2]  # the response keeps its first max_response
    types = segment_ids(torch.tensor([ids + [0]]), sep=2)
    assert types.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1]]


def test_critic_output_ignores_padding():
    torch.manual_seed(0)
    encoder = TransformerEncoder(30, dim=16, n_layers=1, n_heads=2, ffn_dim=32, dropout=0.0)
    critic = PersonaCritic(encoder, padding_idx=PAD, sep=END, dropout=0.0).eval()
    row = torch.tensor([[START, 5, 6, END, 7, END]])
    padded = torch.tensor([[START, 5, 6, END, 7, END, PAD, PAD]])
    assert critic(row).shape == (1, 2)
    assert torch.allclose(critic(row), critic(padded), atol=1e-5)


# --- local Hugging Face checkpoints (made here, tiny) ---------------------------------------------
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1))
    bs += list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tiny_gpt2(folder: Path) -> Path:
    """A byte-level GPT-2 tokenizer (257 tokens) and a 1-layer GPT-2 LM in ``folder``."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {ch: i for i, ch in enumerate(bytes_to_unicode().values())}
    vocab['<|endoftext|>'] = 256
    (folder / 'vocab.json').write_text(json.dumps(vocab), encoding='utf-8')
    (folder / 'merges.txt').write_text('#version: 0.2\n', encoding='utf-8')
    tokenizer = GPT2Tokenizer(str(folder / 'vocab.json'), str(folder / 'merges.txt'))
    tokenizer.save_pretrained(str(folder))
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=257,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=64,
        bos_token_id=256,
        eos_token_id=256,
    )
    model = GPT2LMHeadModel(config)
    with torch.no_grad():  # layer norms away from (1, 0), so that copying them matters
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model.save_pretrained(str(folder))
    return folder


def tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    words += 'i like dogs cats love bees keep my garden hello you do have a the .'.split()
    (folder / 'vocab.txt').write_text('\n'.join(words) + '\n', encoding='utf-8')
    BertTokenizer(str(folder / 'vocab.txt')).save_pretrained(str(folder))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(words),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(str(folder))
    return folder


def make_agent(*args: str):
    parser = ParlaiParser(True, True)
    opt = parser.parse_args(list(args))
    return create_agent(opt)


def test_generator_warm_start_from_gpt2_reproduces_its_language_model(tmp_path):
    from transformers import GPT2LMHeadModel

    hf_dir = tiny_gpt2(tmp_path / 'gpt2')
    agent = make_agent(
        '-m', 'ppg_persona_generator', '--hf-model-dir', str(hf_dir),
        '-mf', str(tmp_path / 'ppg'), '--dropout', '0', '--hf-architecture', 'encoder_decoder',
    )  # fmt: skip
    # the encoder-decoder warm start (§5.1); dimensions come from the checkpoint; vocabulary = GPT-2's + added start and padding
    assert agent.opt['embedding_size'] == 16 and agent.opt['n_positions'] == 64
    assert agent.opt['gelu_approximate'] == 'tanh'
    assert len(agent.dict) == 259 and agent.END_IDX == 256
    assert {agent.START_IDX, agent.NULL_IDX} == {257, 258}
    text = 'hello there, my friend'
    vec = agent.dict.txt2vec(text)
    assert agent.dict.vec2txt(vec) == text
    # with cross-attention still zero, the decoder is GPT-2's language model
    gpt2 = GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    seq2seq = agent.model.seq2seq.eval()
    ids = torch.tensor([vec])
    with torch.no_grad():
        expected = gpt2(ids).logits
        state = seq2seq.encode(torch.tensor([[5, 6, 7]]))
        hidden, _ = seq2seq.decode(ids, state)
        ours = seq2seq.logits(hidden)[..., :257]
    assert torch.allclose(ours, expected, atol=1e-4)


def test_critic_starts_from_a_local_hf_encoder(tmp_path):
    from transformers import BertModel

    hf_dir = tiny_bert(tmp_path / 'bert')
    agent = make_agent(
        '-m', 'ppg_critic', '--hf-model-dir', str(hf_dir), '-mf', str(tmp_path / 'critic')
    )
    bert = BertModel.from_pretrained(str(hf_dir))
    ours = agent.model.encoder.model.embeddings.word_embeddings.weight
    assert torch.equal(ours, bert.embeddings.word_embeddings.weight)
    vec = agent.pair_vector('i like dogs', 'hello you')
    tokenizer = agent.dict.hf_tokenizer
    assert vec[0] == tokenizer.cls_token_id and vec[-1] == tokenizer.sep_token_id
    assert vec.count(tokenizer.sep_token_id) == 2
    probability = agent.positive_probability(['i like dogs', 'i keep bees'], ['hello', 'you'])
    assert probability.shape == (2,) and bool(((probability > 0) & (probability < 1)).all())


# --- the RL sampler against its exact distribution ----------------------------------------------
def exact_two_step_distribution(model, source, banned, top_k, temperature) -> dict:
    """P(y1, y2) of ``sample_sequences(max_len=2)`` by enumeration (END at step 1 ends it)."""
    allowed = torch.ones(model.embeddings.tokens.weight.shape[0], dtype=torch.bool)
    allowed[list(banned)] = False

    def step_probs(prefix: list[int]) -> torch.Tensor:
        with torch.no_grad():
            hidden, _ = model(source[:1], torch.tensor([[START, *prefix]]))
            logits = model.logits(hidden)[0, -1] / temperature
        logits = logits.masked_fill(~allowed, float('-inf'))
        kth = logits.topk(top_k).values[-1] if top_k else float('-inf')
        return logits.masked_fill(logits < kth, float('-inf')).softmax(-1)

    first = step_probs([])
    out = {}
    for y1 in range(len(first)):
        if first[y1] == 0:
            continue
        if y1 == END:
            out[(END, PAD)] = float(first[y1])
            continue
        second = step_probs([y1])
        for y2 in range(len(second)):
            if second[y2] > 0:
                out[(y1, y2)] = float(first[y1] * second[y2])
    return out


@pytest.mark.parametrize('top_k,temperature', [(0, 1.0), (3, 1.0), (0, 0.5), (4, 2.0)])
def test_sampler_draws_from_its_exact_distribution(top_k, temperature):
    from scipy.stats import chisquare

    model = tiny_seq2seq(vocab=8).eval()
    n = 4000
    source = torch.tensor([[5, 6, 7]]).expand(n, 3)
    banned = (START, PAD)
    generator = torch.Generator().manual_seed(0)
    sample = sample_sequences(
        model, source, START, END, 2, banned, top_k=top_k, temperature=temperature,
        generator=generator,
    )  # fmt: skip
    counts = Counter(tuple(row) for row in sample.tolist())
    exact = exact_two_step_distribution(model, source, banned, top_k, temperature)
    assert set(counts) <= set(exact)  # nothing outside the support (banned, beyond top-k)
    if top_k:
        assert len({y1 for y1, _ in exact}) == top_k
    assert exact.get((END, PAD), 0) * n > 5 or top_k  # the END-first outcome is in play
    assert chisquare(*binned(counts, exact, n)).pvalue > 1e-3
    # and the test has power: the same draws reject the distribution at another temperature
    other = exact_two_step_distribution(model, source, banned, top_k, temperature * 2)
    assert chisquare(*binned(counts, other, n)).pvalue < 1e-6


def binned(counts: Counter, probabilities: dict, n: int) -> tuple[list, list]:
    """Observed and expected counts, outcomes expected fewer than 5 times pooled in one bin."""
    big = [o for o in probabilities if probabilities[o] * n >= 5]
    observed = [counts.get(o, 0) for o in big] + [n - sum(counts.get(o, 0) for o in big)]
    expected = [probabilities[o] * n for o in big]
    expected.append(max(n - sum(expected), 1e-9))
    total = sum(expected)
    return observed, [e * n / total for e in expected]


def test_sampler_log_probs_are_the_models_own_at_sampling_time():
    model = tiny_seq2seq().eval()
    with torch.no_grad():
        model.embeddings.tokens.weight[END] *= 4
    source = torch.tensor([[5, 6, 7], [8, 9, PAD], [10, 11, 12]] * 4)
    generator = torch.Generator().manual_seed(1)
    sample, log_probs = sample_sequences(
        model, source, START, END, 7, (START, PAD), temperature=0.7, top_k=5,
        generator=generator, with_log_probs=True,
    )  # fmt: skip
    assert (sample == PAD).any() and (sample == END).any()
    # teacher-forced, untempered, unfiltered log P with START and PAD removed; 0 at padding
    with torch.no_grad():
        hidden, _ = model(source, decoder_input(sample, START))
        logits = model.logits(hidden).index_fill(-1, torch.tensor([START, PAD]), float('-inf'))
    expected = logits.log_softmax(-1).gather(-1, sample.unsqueeze(-1)).squeeze(-1)
    expected = expected.masked_fill(sample == PAD, 0.0)
    assert torch.allclose(log_probs, expected, atol=1e-5)
    assert (log_probs[sample == PAD] == 0).all() and (log_probs[sample != PAD] < 0).all()


def test_decoder_input_is_start_then_the_sample_shifted_right():
    sample = torch.tensor([[9, 10, END], [11, END, PAD]])
    assert decoder_input(sample, START).tolist() == [[START, 9, 10], [START, 11, END]]


# --- the critic agent: label mapping, the paper's optimiser, decay exemption -------------------
def tiny_critic(tmp_path: Path, *extra: str):
    return make_agent(
        '-m', 'ppg_critic', '--dict-file', str(tmp_path / 'critic.dict'), '--n-layers', '1',
        '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32', *extra,
    )  # fmt: skip


def test_critic_positive_probability_reads_the_consistent_class(tmp_path):
    """Class '1' (the response fits the persona, §3.3) is the one whose probability becomes
    the reward; the head's other row is class '0'."""
    agent = tiny_critic(tmp_path)
    assert agent.class_list == ['0', '1'] and agent.positive_index == 1
    head = agent.model.head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-1.0, 2.0]))  # logits of class '0', class '1'
    probability = agent.positive_probability(['i like dogs', 'i keep bees'], ['hello', 'you'])
    assert torch.allclose(probability, torch.full((2,), torch.tensor([-1.0, 2.0]).softmax(0)[1]))
    assert agent.model.training is False  # scored in eval mode (no dropout)


@pytest.mark.parametrize('label,direction', [('1', 1), ('0', -1)])
def test_critic_training_on_a_label_moves_that_class_probability(tmp_path, label, direction):
    agent = tiny_critic(tmp_path, '-lr', '0.1', '--optimizer', 'sgd', '-dt', 'train')
    pair = {'persona': 'i like dogs', 'response': 'hello you', 'episode_done': True}
    before = agent.positive_probability([pair['persona']], [pair['response']]).item()
    agent.observe({**pair, 'text': 'i like dogs\nhello you', 'labels': [label]})
    agent.act()
    after = agent.positive_probability([pair['persona']], [pair['response']]).item()
    assert (after - before) * direction > 1e-3


def test_critic_defaults_are_the_papers_adam_and_decay_skips_biases_and_norms(tmp_path):
    agent = tiny_critic(tmp_path, '-dt', 'train', '--weight-decay', '0.01')
    assert agent.opt['learningrate'] == 5e-6 and agent.opt['optimizer'] == 'adam'  # Appendix B
    assert isinstance(agent.optimizer, torch.optim.Adam)
    names = {id(p): n for n, p in agent.model.named_parameters()}
    groups = {
        g['weight_decay']: {names[id(p)] for p in g['params']} for g in agent.optimizer.param_groups
    }
    assert set(groups) == {0.01, 0.0}
    assert 'head.weight' in groups[0.01] and 'head.bias' in groups[0.0]
    assert all(n.endswith('bias') or 'norm' in n for n in groups[0.0])
    assert any('norm' in n and n.endswith('weight') for n in groups[0.0])
    assert all(not n.endswith('bias') for n in groups[0.01])
    assert all(g['lr'] == 5e-6 for g in agent.optimizer.param_groups)


def test_greedy_sampler_takes_the_argmax_of_the_allowed_tokens():
    model = tiny_seq2seq().eval()
    source = torch.tensor([[5, 6, 7], [8, 9, 10]])
    greedy = sample_sequences(model, source, START, END, 5, (START, PAD), greedy=True)
    with torch.no_grad():
        hidden, _ = model(source, decoder_input(greedy, START))
        logits = model.logits(hidden).index_fill(-1, torch.tensor([START, PAD]), float('-inf'))
    best = logits.argmax(-1)
    ended = torch.cumsum((greedy == END).long(), dim=1) - (greedy == END).long()
    real = ended == 0  # up to and including the first END
    assert torch.equal(greedy[real], best[real])
    assert bool((greedy[real] != PAD).all() and (greedy[real] != START).all())


def test_critic_pair_vector_is_persona_then_response(tmp_path):
    agent = tiny_critic(tmp_path)
    persona, response = agent.dict.txt2vec('i like dogs'), agent.dict.txt2vec('hello you')
    start, end = agent.START_IDX, agent.END_IDX
    assert agent.pair_vector('i like dogs', 'hello you') == [
        start, *persona, end, *response, end,
    ]  # fmt: skip
    # a text message: the last line is the response
    obs = agent.observe({'text': 'i like dogs\nhello you', 'labels': ['1'], 'episode_done': True})
    assert obs['text_vec'].tolist() == agent.pair_vector('i like dogs', 'hello you')


def test_critic_reads_cls_with_persona_and_response_segments():
    torch.manual_seed(0)
    encoder = TransformerEncoder(30, dim=16, n_layers=1, n_heads=2, ffn_dim=32, dropout=0.0)
    critic = PersonaCritic(encoder, padding_idx=PAD, sep=END, dropout=0.0).eval()
    ids = torch.tensor([[START, 5, 6, END, 7, END, PAD]])
    types = torch.tensor([[0, 0, 0, 0, 1, 1, 1]])  # segment 0: [CLS] persona [SEP]
    with torch.no_grad():
        hidden = encoder(ids, types, ids != PAD)
        expected = critic.head(hidden[:, 0])  # the [CLS] state
        assert torch.allclose(critic(ids), expected, atol=1e-6)
        # the segments matter: all-zero types give another output
        flat = critic.head(encoder(ids, torch.zeros_like(ids), ids != PAD)[:, 0])
    assert not torch.allclose(flat, expected, atol=1e-4)
