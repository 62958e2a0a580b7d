"""PPG model pieces: the REINFORCE step, rewards, sampling, the critic, HF warm starts."""

from __future__ import annotations

import json
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


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: small models on a shared 2-core machine run far faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
    GPT2LMHeadModel(config).save_pretrained(str(folder))
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
        '-mf', str(tmp_path / 'ppg'), '--dropout', '0',
    )  # fmt: skip
    # dimensions come from the checkpoint; vocabulary = GPT-2's + added start and padding
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
