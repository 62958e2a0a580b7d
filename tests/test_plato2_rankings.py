"""projects/plato2/candidate_rankings.py: three rankings of the same K candidates from one log."""

import importlib.util
import json
import math
import os
import random
from collections import Counter

import pytest

_PATH = os.path.join(os.path.dirname(__file__), '..', 'projects', 'plato2', 'candidate_rankings.py')
_SPEC = importlib.util.spec_from_file_location('candidate_rankings', _PATH)
rankings = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(rankings)


def record(text, latent, evaluator, logprob, n_tokens, penalty=0.0):
    return {
        'text': text, 'latent': latent, 'evaluator': evaluator, 'logprob': logprob,
        'n_tokens': n_tokens, 'penalty': penalty, 'score': evaluator - penalty, 'chosen': False,
    }  # fmt: skip


# a: best evaluator; b: best summed log-probability (-3) but not per token (-3/2 = -1.5);
# c: best per-token log-probability (-4/4 = -1.0); d: best of all but penalised
RECORDS = [
    record('a', 0, 0.9, -9.0, 3),
    record('b', 1, 0.5, -3.0, 2),
    record('c', 2, 0.2, -4.0, 4),
    record('d', 3, 0.99, -0.1, 5, penalty=1000.0),
]


def test_each_ranking_picks_what_the_agent_would():
    rng = random.Random(0)
    assert rankings.choose(RECORDS, 'evaluator', rng)['text'] == 'a'
    assert rankings.choose(RECORDS, 'logprob', rng)['text'] == 'c'  # per token, not summed
    with pytest.raises(ValueError, match='unknown ranking'):
        rankings.choose(RECORDS, 'best', rng)
    unscored = [dict(r, evaluator=None) for r in RECORDS]
    with pytest.raises(ValueError, match='--ranking-score evaluator'):
        rankings.choose(unscored, 'evaluator', rng)


def test_random_ranking_is_uniform_over_the_unpenalised_candidates():
    rng = random.Random(1)
    counts = Counter(rankings.choose(RECORDS, 'random', rng)['text'] for _ in range(3000))
    assert set(counts) == {'a', 'b', 'c'}  # the penalised one never
    chi2 = sum((counts[t] - 1000) ** 2 / 1000 for t in 'abc')
    assert chi2 < 13.8  # chi-square, 2 degrees of freedom, p = 0.001
    # all penalised: uniform over all of them
    rng = random.Random(2)
    all_bad = [dict(r, penalty=1000.0) for r in RECORDS]
    assert len({rankings.choose(all_bad, 'random', rng)['text'] for _ in range(200)}) == 4


def test_latent_usage_counts_entropy_and_top_share():
    usage = rankings.latent_usage([0, 0, 1, 2, None], n_latent=20)
    assert usage['latents_used'] == 3
    assert usage['latent_entropy_bits'] == pytest.approx(1.5)  # shares 1/2, 1/4, 1/4
    assert usage['latent_max_share'] == 0.5
    assert rankings.latent_usage([None], 20) == {}


def write_log(path, turns):
    with open(path, 'w') as handle:
        for teacher, reply in turns:
            handle.write(json.dumps({'dialog': [[teacher, reply]]}) + '\n')


def test_one_log_gives_every_ranking_with_its_own_metrics(tmp_path):
    log = str(tmp_path / 'gen.jsonl')
    second = [
        record('good day to you', 5, 0.8, -2.0, 5),
        record('a b', 6, 0.1, -0.5, 3),
    ]
    write_log(
        log,
        [
            ({'text': 'hi', 'eval_labels': ['hello there']}, {'text': 'a', 'plato2_candidates': RECORDS}),
            ({'text': 'x', 'eval_labels': ['good day']}, {'text': '?', 'plato2_candidates': second}),
        ],
    )  # fmt: skip
    out = str(tmp_path / 'rankings.json')
    results = rankings.main([f'run={log}', '--n-latent', '20', '--outfile', out])
    assert json.load(open(out)) == results and os.path.exists(str(tmp_path / 'rankings.md'))
    evaluator = results['run/evaluator']
    assert evaluator['samples'] == ['a', 'good day to you']
    assert evaluator['latent_counts'] == {'0': 1, '5': 1}
    assert evaluator['ext_len'] == pytest.approx(2.5)  # 1 and 4 words
    assert evaluator['ext_dist-1'] == pytest.approx(5 / 5)
    assert evaluator['ext_dist-2'] == pytest.approx(3 / 3)
    # F1: 'a' vs 'hello there' = 0 ('a' is an article: removed); 'good day to you' vs 'good day'
    assert evaluator['f1'] == pytest.approx((0 + 2 * (2 / 4) * 1 / (2 / 4 + 1)) / 2)
    logprob = results['run/logprob']
    assert logprob['samples'] == ['c', 'a b']  # -0.5/3 beats -2/5
    assert logprob['latents_used'] == 2 and logprob['mean_candidates'] == 3.0
    assert logprob['latent_entropy_bits'] == pytest.approx(1.0)
    # a log without candidates: the logged reply
    plain = str(tmp_path / 'plain.jsonl')
    write_log(plain, [({'text': 'hi', 'eval_labels': ['ok ok']}, {'text': 'ok ok ok'})])
    reply = rankings.main([f'stage1={plain}'])['stage1/reply']
    assert reply['ext_dist-1'] == pytest.approx(1 / 3) and reply['ext_dist-2'] == pytest.approx(0.5)
    assert 'latents_used' not in reply


def test_a_bad_log_line_names_file_and_line(tmp_path):
    log = tmp_path / 'bad.jsonl'
    log.write_text(json.dumps({'dialog': []}) + '\n{not json\n')
    with pytest.raises(ValueError, match=r'bad\.jsonl:2: not a world-log episode'):
        rankings.read_log(str(log))
    assert math.isclose(rankings.latent_usage([1], 20)['latent_entropy_bits'], 0.0)
