"""P2Bot unit tests: Agg/Eq. 13-15, Eq. 12, Eq. 8, REINFORCE sign, backbones' caches, teachers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from parlai.core.params import ParlaiParser
from teacher_helpers import episodes, make_teacher

from parlai_ext.agents.p2bot import split_history
from parlai_ext.losses.p2bot import (
    discounted_persona_reward,
    nup_loss,
    receiver_loss,
    total_reward,
)
from parlai_ext.losses.reinforce import reward_weighted_nll, sequence_log_probs
from parlai_ext.modules.p2bot import (
    HFCausalBackbone,
    HFSentenceEncoder,
    Receiver,
    SentenceEncoder,
    Transmitter,
    UnifiedBackbone,
    aggregate,
    append_cls,
    cumulative_score,
    eq3_score,
    linear_tau,
    relevance,
)
from parlai_ext.modules.unified_transformer import UnifiedTransformer
from parlai_ext.tasks.p2bot_selfplay.agents import strip_persona

# ---------------------------------------------------------------- a PersonaChat-like fixture

TOPICS = [
    ('i keep bees in my garden.', 'my bees made honey again'),
    ('i play the cello.', 'i practised the cello all evening'),
    ('i drive a red tractor.', 'my tractor broke down today'),
    ('i bake bread every morning.', 'the bread came out of the oven'),
    ('i am afraid of dogs.', 'a big dog scared me again'),
    ('i work night shifts.', 'my night shift starts soon'),
    ('i love hiking in the mountains.', 'we hiked up the mountain trail'),
    ('i collect old coins.', 'i found a rare coin yesterday'),
    ('i paint with watercolours.', 'i painted the lake with watercolours'),
    ('i have three cats.', 'my cats knocked over a vase'),
    ('i surf every weekend.', 'the waves were great for surfing'),
    ('i study chemistry.', 'my chemistry exam is on monday'),
]


def persona_of(i: int) -> list[int]:
    return [i % 12, (i + 5) % 12, (i + 7) % 12]


def both_file(n_episodes: int = 10, turns: int = 3) -> str:
    """A ``both``-view fbdialog file whose utterances talk about the speakers' personas."""
    lines = []
    for e in range(n_episodes):
        mine, theirs = persona_of(e), persona_of(e + 3)
        entries = [f'your persona: {TOPICS[t][0]}' for t in mine]
        entries += [f"partner's persona: {TOPICS[t][0]}" for t in theirs]
        for k in range(turns):
            entries.append(f'{TOPICS[theirs[k]][1]} .\t{TOPICS[mine[k]][1]} , and you ?')
        lines += [f'{i} {entry}' for i, entry in enumerate(entries, 1)]
    return '\n'.join(lines) + '\n'


def write_both(tmp_path: Path, n_episodes: int = 10) -> Path:
    path = tmp_path / 'both.txt'
    path.write_text(both_file(n_episodes), encoding='utf-8')
    return path


def all_messages(teacher) -> list[dict]:
    return [message for episode in episodes(teacher) for message in episode]


# ------------------------------------------------------------------------- receiver maths


def test_agg_is_mean_at_large_tau_and_max_at_small_tau():
    scores = torch.tensor([[0.3, -1.2, 2.0, 0.7]])
    assert torch.allclose(aggregate(scores, 1e6), scores.mean(dim=-1), atol=1e-5)
    assert torch.allclose(aggregate(scores, 1e-3), scores.max(dim=-1).values, atol=1e-5)
    # in between it is the softmax-weighted mean of Eq. 13
    weights = torch.softmax(scores / 0.7, dim=-1)
    assert torch.allclose(aggregate(scores, 0.7), (weights * scores).sum(-1))


def test_agg_ignores_padding_and_c_averages_utterances():
    scores = torch.tensor([[[1.0, 3.0, 99.0], [2.0, 2.0, 99.0], [50.0, 50.0, 50.0]]])
    columns = torch.tensor([[True, True, False]])
    rows = torch.tensor([[True, True, False]])
    # small τ: max over the 2 valid sentences of the 2 valid utterances -> (3 + 2) / 2
    c = cumulative_score(scores, 1e-3, rows, columns)
    assert torch.allclose(c, torch.tensor([2.5]), atol=1e-4)
    assert torch.allclose(cumulative_score(scores, 1e6, rows, columns), torch.tensor([2.0]))


def test_relevance_is_scaled_dot_product():
    h, w = torch.randn(3, 8), torch.randn(4, 8)
    assert torch.allclose(relevance(h, w), h @ w.T / math.sqrt(8))


def test_margin_loss_zero_when_true_persona_wins_by_margin():
    relevance_ = torch.zeros(2, 2, 1, 1)
    mask = torch.ones(2, 2, 1, 1, dtype=torch.bool)
    true = torch.tensor([0, 1])
    # c_A >= c_Z + m for both examples (the true one is index 0, then index 1)
    scores = torch.tensor([[1.0, 0.6], [-0.5, 0.0]])
    loss, margin, _ = receiver_loss(scores, true, relevance_, mask, margin=0.4, beta=0.0)
    assert loss.item() == 0.0 and margin.item() == 0.0
    # inside the margin: m + c_Z - c_A
    scores = torch.tensor([[1.0, 0.9], [0.0, 0.0]])
    loss, _, _ = receiver_loss(scores, true, relevance_, mask, margin=0.4, beta=0.0)
    assert loss.item() == pytest.approx(((0.4 - 0.1) + 0.4) / 2)
    # the L1 term is β times the absolute sum over every candidate's U
    relevance_ = torch.tensor([[[[1.0]], [[-2.0]]], [[[0.5]], [[0.0]]]])
    _, _, l1 = receiver_loss(scores, true, relevance_, mask, margin=0.4, beta=1.0)
    assert l1.item() == pytest.approx((3.0 + 0.5) / 2)


def test_tau_anneals_linearly():
    assert linear_tau(0, 10.0, 0.5, 100) == 10.0
    assert linear_tau(50, 10.0, 0.5, 100) == pytest.approx(5.25)
    assert linear_tau(500, 10.0, 0.5, 100) == 0.5


def test_perception_score_is_agg_of_the_utterance_row():
    torch.manual_seed(0)
    receiver = Receiver(
        SentenceEncoder(20, dim=8, n_layers=1, n_heads=2, ffn_dim=16, dropout=0.0),
        SentenceEncoder(20, dim=8, n_layers=1, n_heads=2, ffn_dim=16, dropout=0.0),
        tau=0.7,
    ).eval()
    utterance = torch.tensor([[3, 4, 5, 0]])
    persona = torch.tensor([[6, 7, 0], [8, 9, 10], [11, 0, 0]])
    with torch.no_grad():
        got = receiver.perception_scores(utterance, persona, torch.tensor([[0, 1, 2]]))
        h = receiver.impression_encoder(utterance)
        w = receiver.persona_encoder(persona)
        row = h @ w.T / math.sqrt(8)
        expected = (torch.softmax(row / 0.7, dim=-1) * row).sum(-1)
        # the cumulative score of a one-utterance dialogue is the same number (Eq. 14)
        out = receiver(utterance, torch.tensor([[0]]), persona, torch.tensor([[[0, 1, 2]]]))
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.allclose(out.scores[0, 0], expected[0], atol=1e-6)


# --------------------------------------------------------------------------------- rewards


def test_discounted_persona_reward_matches_eq8_by_hand():
    g = 0.5
    r_user = torch.tensor([[0.9, 0.2, -0.4]])  # r(x^A_1..3); x^A_1 never enters Eq. 8
    r_agent = torch.tensor([[1.0, 0.5, 0.3]])  # r(a^B_1..3)
    got = discounted_persona_reward(r_user, r_agent, g)
    # R3(a_1) = r(a_1) + g r(x_2) + g^2 r(a_2) + g^3 r(x_3) + g^4 r(a_3)
    r1 = 1.0 + g * 0.2 + g**2 * 0.5 + g**3 * -0.4 + g**4 * 0.3
    r2 = 0.5 + g * -0.4 + g**2 * 0.3
    r3 = 0.3
    assert torch.allclose(got, torch.tensor([[r1, r2, r3]]))


def test_total_reward_uses_paper_lambdas_by_default():
    got = total_reward(torch.tensor([1.0]), torch.tensor([10.0]), torch.tensor([100.0]))
    assert got.item() == pytest.approx(0.4 + 1.0 + 50.0)


def _tiny_transmitter(vocab: int = 12) -> Transmitter:
    torch.manual_seed(0)
    backbone = UnifiedBackbone(
        UnifiedTransformer(vocab, dim=16, n_layers=1, n_heads=2, ffn_dim=32, n_positions=64)
    )
    return Transmitter(backbone, start_idx=1, end_idx=2, cls_idx=3, padding_idx=0, dropout=0.0)


def test_reinforce_step_raises_the_log_prob_of_the_better_sample():
    policy = _tiny_transmitter().eval()
    context = torch.tensor([[5, 6, 7], [5, 6, 7]])
    samples = torch.tensor([[8, 9, 2], [10, 11, 2]])  # two replies to the same context
    rewards = torch.tensor([1.0, 0.0])

    def log_probs():
        logits = policy(context, samples).lm_logits
        lp, mask = sequence_log_probs(logits, samples, 0)
        return (lp * mask).sum(dim=1)

    before = log_probs().detach()
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.1)
    logits = policy(context, samples).lm_logits
    lp, mask = sequence_log_probs(logits, samples, 0)
    loss = reward_weighted_nll(lp, mask, rewards, baseline=rewards.mean(), normalise='mean')
    loss.backward()
    optimizer.step()
    after = log_probs().detach()
    assert after[0] > before[0]  # the rewarded reply became more likely
    assert after[1] < before[1]  # the below-baseline reply less likely


def test_nup_loss_prefers_positive_class_one():
    good = nup_loss(torch.tensor([[-5.0, 5.0]]), torch.tensor([[5.0, -5.0]]))
    bad = nup_loss(torch.tensor([[5.0, -5.0]]), torch.tensor([[-5.0, 5.0]]))
    assert good.item() < 0.01 < 5.0 < bad.item()


def test_eq3_mixes_length_normalised_and_nup_scores():
    lennorm, nup = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -0.1])
    assert torch.equal(eq3_score(lennorm, nup, 1.0), lennorm)  # α = 1: Eq. 2
    assert torch.allclose(eq3_score(lennorm, nup, 0.1), 0.1 * lennorm + 0.9 * nup)
    assert eq3_score(lennorm, nup, 0.1).argmax() == 1  # NUP overrides the LM ranking


# ------------------------------------------------------------------------- transmitter


def test_append_cls_keeps_lm_logits_of_the_response_unchanged():
    policy = _tiny_transmitter().eval()
    targets = torch.tensor([[8, 9, 2, 0], [10, 2, 0, 0]])
    sequence, position = append_cls(targets, 1, 3, 0)
    assert sequence.tolist() == [[1, 8, 9, 2, 3, 0], [1, 10, 2, 3, 0, 0]]
    assert position.tolist() == [4, 3]
    with torch.no_grad():
        out = policy(torch.tensor([[5, 6, 7], [5, 6, 0]]), targets)
        plain, _ = policy.backbone(torch.tensor([[5, 6, 7], [5, 6, 0]]), sequence[:, :4])
        plain_logits = policy.backbone.logits(plain)
    valid = targets != 0
    assert torch.allclose(out.lm_logits[valid], plain_logits[valid], atol=1e-5)


def _incremental_equals_full(backbone, context, response, pad=0):
    with torch.no_grad():
        full, _ = backbone(context, response)
        state = backbone.encode_context(context)
        hidden, cache = backbone.decode(response[:, :1], state, None)
        steps = [hidden]
        for t in range(1, response.shape[1]):
            # shuffle and unshuffle the rows, as beam search reorders them
            order = torch.tensor([1, 0])
            state = backbone.reorder_state(state, order)
            cache = backbone.reorder_cache(cache, order)
            state = backbone.reorder_state(state, order)
            cache = backbone.reorder_cache(cache, order)
            hidden, cache = backbone.decode(response[:, t : t + 1], state, cache)
            steps.append(hidden)
        incremental = torch.cat(steps, dim=1)
    valid = response != pad
    assert torch.allclose(full[valid], incremental[valid], atol=1e-4)


def test_unified_backbone_cached_decoding_equals_one_pass():
    backbone = _tiny_transmitter().backbone.eval()
    context = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    response = torch.tensor([[1, 4, 5, 6], [1, 7, 8, 0]])
    _incremental_equals_full(backbone, context, response)


def tiny_hf_lm(directory: Path, words: list[str]) -> Path:
    """A 1-layer GPT-2 and a word-level tokenizer saved where from_pretrained finds them."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {'<unk>': 0, '<eos>': 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token='<unk>'))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token='<unk>', eos_token='<eos>')
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=256, n_embd=16, n_layer=1, n_head=2, n_inner=32
    )
    GPT2LMHeadModel(config).save_pretrained(directory)
    return directory


def fixture_words() -> list[str]:
    text = both_file().replace('\t', ' ').replace('\n', ' ')
    return sorted({w for w in text.replace('.', ' . ').replace(',', ' , ').split()})


def test_hf_backbone_cached_decoding_equals_one_pass(tmp_path):
    from transformers import AutoModelForCausalLM

    directory = tiny_hf_lm(tmp_path / 'lm', ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h'])
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True).eval()
    backbone = HFCausalBackbone(model, padding_idx=0)
    context = torch.tensor([[2, 3, 4, 5], [6, 7, 0, 0]])  # right-padded, 0 = pad
    response = torch.tensor([[1, 8, 9, 3], [1, 4, 5, 0]])
    _incremental_equals_full(backbone, context, response)
    # a padded context row gives the same states as the unpadded sequence
    with torch.no_grad():
        padded, _ = backbone(context[1:], response[1:, :3])
        alone = model.base_model(input_ids=torch.tensor([[6, 7, 1, 4, 5]])).last_hidden_state
    assert torch.allclose(padded[0], alone[0, 2:], atol=1e-5)


def test_split_history_extracts_persona_and_speakers():
    raw = [
        "your persona: i like tea.\npartner's persona: i hate tea.\nhello there",
        'hi , i like tea',
        'cool , me too',
    ]
    persona, turns = split_history(raw)
    assert persona == ['i like tea.']
    # the last entry is the partner's, speakers alternate backwards
    assert turns == [(False, 'hello there'), (True, 'hi , i like tea'), (False, 'cool , me too')]
    persona, turns = split_history(['your persona: i sing.'])  # self-chat context only
    assert persona == ['i sing.'] and turns == []
    # the prefixes are matched as ConvAI2 writes them (lower case): other text is a turn
    persona, turns = split_history(["Your persona: i sing.\nPartner's persona: i dance."])
    assert persona == [] and turns == [(False, "Your persona: i sing. Partner's persona: i dance.")]


def test_strip_persona_leaves_the_first_utterance():
    text = "your persona: i like tea.\npartner's persona: i hate tea.\nhello there\nhow are you"
    assert strip_persona(text) == 'hello there\nhow are you'
    # only the prefixes as ConvAI2 writes them, at the start of a line, are persona lines
    text = 'Your persona: i sing.\n your persona: i dance.\nhi'
    assert strip_persona(text) == text


# ---------------------------------------------------------------------------- teachers


def test_split_teacher_serves_first_n_episodes_for_train_and_rest_for_valid(tmp_path):
    path = write_both(tmp_path, 10)
    args = ['--personachat-file', str(path), '--p2bot-train-episodes', '7']
    train = make_teacher('p2bot_selfplay:supervised', *args, datatype='train:ordered')
    valid = make_teacher('p2bot_selfplay:supervised', *args)
    assert (train.num_episodes(), valid.num_episodes()) == (7, 3)
    first_valid = all_messages(valid)[0]
    assert first_valid['self_persona'] == [TOPICS[t][0] for t in persona_of(7)]
    everything = make_teacher('p2bot_selfplay', '--personachat-file', str(path))
    assert everything.num_episodes() == 10


def test_synthesized_candidates_hold_the_label_and_are_fixed(tmp_path):
    path = write_both(tmp_path, 6)
    args = ['--personachat-file', str(path), '--p2bot-synth-candidates', '5']
    first = all_messages(make_teacher('p2bot_selfplay', *args))
    second = all_messages(make_teacher('p2bot_selfplay', *args))
    for a, b in zip(first, second):
        assert len(a['label_candidates']) == 6
        assert a['labels'][0] in a['label_candidates']
        assert len(set(a['label_candidates'])) == 6
        assert a['label_candidates'] == b['label_candidates']


def test_receiver_teacher_sides_and_distractors(tmp_path):
    path = write_both(tmp_path, 10)
    base = ['--personachat-file', str(path), '--p2bot-train-episodes', '6']
    valid = make_teacher('p2bot_selfplay:receiver', *base, '--receiver-eval-distractors', '3')
    messages = all_messages(valid)
    assert len(messages) == 2 * 4  # both speakers of the 4 held-out dialogues
    for message in messages:
        truth = message['labels'][0]
        assert truth in message['label_candidates'] and len(message['label_candidates']) == 4
        assert len(set(message['label_candidates'])) == 4
    # the partner side's utterances are the texts, the self side's the labels
    assert messages[0]['utterances'][0] == TOPICS[persona_of(6 + 3)[0]][1] + ' .'
    assert messages[1]['labels'][0].split('\n') == [TOPICS[t][0] for t in persona_of(6)]
    train = make_teacher('p2bot_selfplay:receiver', *base, datatype='train')
    drawn = [tuple(train.get(0)['label_candidates']) for _ in range(6)]
    assert all(len(c) == 2 for c in drawn) and len(set(drawn)) > 1  # redrawn each time


def test_hf_receiver_encoder_mean_pools_over_tokens(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=30,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    ).eval()
    encoder = HFSentenceEncoder(model, padding_idx=0)
    tokens = torch.tensor([[2, 5, 6, 3, 0, 0]])
    with torch.no_grad():
        got = encoder(tokens)
        alone = model(input_ids=tokens[:, :4]).last_hidden_state.mean(dim=1)
    assert torch.allclose(got, alone, atol=1e-5)


def test_probe_metrics_rank_the_true_persona_and_its_sentences():
    from parlai_ext.scripts.p2bot_probe import evaluate

    examples = [
        {'utterances': ['u'], 'personas': [['a1', 'a2'], ['t1', 't2', 't3'], ['b1']], 'true': 1},
        {'utterances': ['u'], 'personas': [['t1'], ['a1', 'a2']], 'true': 0},
    ]

    def perfect(utterances, personas):
        return [1.0 if p[0].startswith('t') else 0.0 for p in personas]

    def perfect_sentences(utterances, sentences):
        return [1.0 if s.startswith('t') else 0.0 for s in sentences]

    def inverted(utterances, personas):
        return [-x for x in perfect(utterances, personas)]

    def ordered_sentences(utterances, sentences):  # t-sentences ranked 1, 2, 3 (tie-free)
        return [10.0 - int(s[1]) if s.startswith('t') else 0.0 for s in sentences]

    best = evaluate(examples, perfect, perfect_sentences)
    assert best == {'hits@1': 1.0, 'mrr': 1.0, 'sent_mrr': 1.0, 'cand_sent_mrr': 1.0, 'exs': 2}
    worst = evaluate(examples, inverted, ordered_sentences)
    assert worst['hits@1'] == 0.0
    assert worst['mrr'] == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert worst['cand_sent_mrr'] == pytest.approx(((1 + 1 / 2 + 1 / 3) / 3 + 1.0) / 2)


def test_sent_mrr_ranks_among_all_profile_sentences_of_the_split():
    """§5.4: MRR over "the complete set of profile sentences", not the candidates' only."""
    from parlai_ext.scripts.p2bot_probe import evaluate, split_sentences

    examples = [
        {'utterances': ['u'], 'personas': [['a1', 'a2'], ['t1', 't2']], 'true': 1},
        {'utterances': ['u'], 'personas': [['x1'], ['a1', 'a2']], 'true': 0},
        {'utterances': ['u'], 'personas': [['a1', 'a2'], ['t2', 'y1']], 'true': 0},
    ]
    assert split_sentences(examples) == ['a1', 'a2', 't1', 't2', 'x1']

    def persona(utterances, personas):
        return [0.0 for _ in personas]

    def sentences(utterances, pool):  # x1 > t* > a*, y1 lowest
        return [{'x': 3.0, 't': 2.0, 'a': 1.0, 'y': 0.0}[s[0]] for s in pool]

    got = evaluate(examples, persona, sentences)
    # 1: t1, t2 rank 2 among the split's 5 (x1 above; ties optimistic), 1 among the candidates
    # 2: x1 ranks 1 in both; 3: a1, a2 rank 4 among the split (x1, t1, t2 above), 2 among
    #    the candidates (t2 above)
    assert got['sent_mrr'] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    assert got['cand_sent_mrr'] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert got['mrr'] == 1.0 and got['hits@1'] == 1.0  # all tied: optimistic rank 1


def test_paper_hyperparameters_are_the_defaults():
    selfplay = ParlaiParser(True, True).parse_args(
        ['-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay']
    )
    assert selfplay['learningrate'] == 1e-6  # self-play lr (§5.1)
    assert (selfplay['rs_lambda1'], selfplay['rs_lambda2'], selfplay['rs_lambda3']) == (
        0.4,
        0.1,
        0.5,
    )
    assert selfplay['rs_gamma'] == 0.5 and selfplay['rerank_alpha'] == 0.1
    assert (selfplay['inference'], selfplay['beam_size'], selfplay['selfplay_turns']) == (
        'beam',
        2,
        3,
    )
    assert selfplay['selfplay_max_len'] == 32
    receiver = ParlaiParser(True, True).parse_args(
        ['-m', 'p2bot_receiver', '-t', 'p2bot_selfplay:receiver']
    )
    assert (receiver['margin'], receiver['l1_beta']) == (0.4, 1e-4)
    assert (receiver['tau_start'], receiver['tau_end']) == (10.0, 0.5)
    assert (receiver['receiver_distractors'], receiver['receiver_eval_distractors']) == (1, 31)


def test_receiver_learns_to_match_utterances_with_their_persona():
    """From scratch, the receiver (Eq. 11-14 + Eq. 12 loss) learns a synthetic persona match:
    each utterance mentions a topic word of its speaker's persona sentences, the distractor
    persona has other topics."""
    import random

    from parlai_ext.losses.p2bot import receiver_loss
    from parlai_ext.modules.p2bot import Receiver, SentenceEncoder

    torch.manual_seed(0)
    rng = random.Random(0)
    vocab, topics = 60, list(range(10, 50))

    def sentence(topic: int) -> list[int]:
        filler = [rng.randrange(3, 10) for _ in range(5)]
        return filler[:3] + [topic] + filler[3:]

    def pad(rows: list[list[int]]) -> torch.Tensor:
        return torch.tensor([row + [0] * (6 - len(row)) for row in rows])

    def encoder() -> SentenceEncoder:
        return SentenceEncoder(vocab, 64, 2, 4, 128, n_positions=8, dropout=0.0)

    receiver = Receiver(encoder(), encoder(), tau=10.0)
    optimizer = torch.optim.Adam(receiver.parameters(), lr=1e-3)
    for step in range(250):
        utterances, utterance_index, sentences, persona_index = [], [], [], []
        for _ in range(16):
            own = rng.sample(topics, 3)
            other = rng.sample([t for t in topics if t not in own], 3)
            utterance_index.append(list(range(len(utterances), len(utterances) + 4)))
            utterances += [sentence(rng.choice(own)) for _ in range(4)]
            candidates = []
            for persona in (own, other):
                candidates.append(list(range(len(sentences), len(sentences) + 3)))
                sentences += [sentence(topic) for topic in persona]
            persona_index.append(candidates)
        receiver.tau.fill_(max(0.5, 10 - 9.5 * step / 200))
        out = receiver(
            pad(utterances),
            torch.tensor(utterance_index),
            pad(sentences),
            torch.tensor(persona_index),
        )
        loss, margin, _ = receiver_loss(
            out.scores, torch.zeros(16, dtype=torch.long), out.relevance, out.mask
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert margin.item() < 0.05
    assert bool((out.scores[:, 0] > out.scores[:, 1]).all())
