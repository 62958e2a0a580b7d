"""``parlai p2bot_probe``: P2Bot's persona-perception probe (§5.4, Table 5).

For every dialogue side of the chosen split (``-t p2bot_selfplay:receiver``), the speaker's
true persona is ranked among ``--receiver-eval-distractors`` (31) other personas of the split
(the candidates the teacher fixes per example) by

- **Random**: a seeded random order;
- **IR**: TF-IDF cosine between the speaker's utterances and each persona (scikit-learn's
  ``TfidfVectorizer`` fitted on the split's utterances and personas; Sordoni et al.-style IR);
- **Receiver**: the cumulative score ``c`` of Eq. 14 (``--receiver-model-file``).

Reported: ``hits@1`` and ``mrr`` over the 32 personas, and two sentence-level MRRs (every
sentence is scored alone against the dialogue side; the reciprocal ranks of the true persona's
sentences are averaged; ties rank optimistically):

- ``sent_mrr``, the paper's (§5.4: "given a dialogue and the complete set of profile
  sentences, MRR is the average reciprocal ranks of the dialogue-relevant profile
  sentences"): ranked among **all profile sentences of the split** (each distinct sentence of
  every persona of the split once);
- ``cand_sent_mrr``: ranked among the sentences of the 32 candidate personas only (an easier,
  smaller pool; what earlier versions reported as ``sent_mrr``).

::

    parlai p2bot_probe --personachat-file dev800_both_original_no_cands.txt \\
        --p2bot-train-episodes 700 -dt valid --receiver-model-file /tmp/rx
"""

from __future__ import annotations

import json
import os
import random
import tempfile

import numpy as np
from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript, register_script

from parlai_ext.tasks.p2bot_selfplay.agents import ReceiverTeacher


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    if parser is None:
        parser = ParlaiParser(False, False, 'P2Bot persona-perception probe (Table 5)')
    parser.set_defaults(task='p2bot_selfplay:receiver', datatype='valid')
    ReceiverTeacher.add_cmdline_args(parser, None)
    group = parser.add_argument_group('Persona-perception probe')
    group.add_argument('-t', '--task', default='p2bot_selfplay:receiver')
    group.add_argument('-dt', '--datatype', default='valid')
    group.add_argument('--datapath', default=None, help='unused; ParlAI compatibility')
    group.add_argument(
        '--receiver-model-file', default=None, help='a trained p2bot_receiver (else baselines)'
    )
    group.add_argument('--probe-seed', type=int, default=0, help='seed of the Random baseline')
    group.add_argument('--report-filename', default='', help='also save the report here (json)')
    return parser


def rank_of(scores: np.ndarray, index: int) -> int:
    """1 + the number of candidates scored strictly higher than ``index`` (optimistic ties)."""
    return 1 + int((scores > scores[index]).sum())


def probe_examples(opt) -> list[dict]:
    """The split's examples: utterances, 32 candidate personas (sentence lists), the truth."""
    teacher_opt = dict(opt)
    teacher_opt.setdefault('datapath', '')
    teacher = ReceiverTeacher(teacher_opt)
    examples = []
    for episode in range(teacher.num_episodes()):
        message = teacher.get(episode, 0)
        candidates = list(message['label_candidates'])
        examples.append(
            {
                'utterances': list(message['utterances']),
                'personas': [c.split('\n') for c in candidates],
                'true': candidates.index(message['labels'][0]),
            }
        )
    return examples


def split_sentences(examples: list[dict]) -> list[str]:
    """Every distinct profile sentence of the split (of all its speakers' true personas)."""
    return sorted({s for ex in examples for s in ex['personas'][ex['true']]})


def sentence_mrr(utterances: list[str], pool: list[str], relevant: list[str], sentence_score):
    """Mean reciprocal rank of the ``relevant`` sentences among ``pool`` (which holds them)."""
    scores = np.asarray(sentence_score(utterances, pool), dtype=float)
    position = {s: k for k, s in enumerate(pool)}
    return float(np.mean([1.0 / rank_of(scores, position[s]) for s in relevant]))


def evaluate(
    examples: list[dict], persona_score, sentence_score, pool: list[str] | None = None
) -> dict[str, float]:
    """Mean hits@1, persona MRR and the two sentence MRRs of one scorer over the examples.

    :param pool: all profile sentences of the split (the paper's ``sent_mrr``); default
        :func:`split_sentences` of ``examples``.
    """
    pool = split_sentences(examples) if pool is None else pool
    hits, mrr, sent_mrr, cand_sent_mrr = [], [], [], []
    for ex in examples:
        scores = np.asarray(persona_score(ex['utterances'], ex['personas']), dtype=float)
        rank = rank_of(scores, ex['true'])
        hits.append(float(rank == 1))
        mrr.append(1.0 / rank)
        relevant = list(dict.fromkeys(ex['personas'][ex['true']]))
        candidates = list(dict.fromkeys(s for p in ex['personas'] for s in p))
        cand_sent_mrr.append(sentence_mrr(ex['utterances'], candidates, relevant, sentence_score))
        sent_mrr.append(sentence_mrr(ex['utterances'], pool, relevant, sentence_score))
    return {
        'hits@1': float(np.mean(hits)),
        'mrr': float(np.mean(mrr)),
        'sent_mrr': float(np.mean(sent_mrr)),
        'cand_sent_mrr': float(np.mean(cand_sent_mrr)),
        'exs': len(examples),
    }


def random_scorers(seed: int):
    rng = random.Random(seed)

    def persona(utterances, personas):
        return [rng.random() for _ in personas]

    def sentence(utterances, sentences):
        return [rng.random() for _ in sentences]

    return persona, sentence


def tfidf_scorers(examples: list[dict]):
    from sklearn.feature_extraction.text import TfidfVectorizer

    corpus = [' '.join(ex['utterances']) for ex in examples]
    corpus += sorted({' '.join(p) for ex in examples for p in ex['personas']})
    vectorizer = TfidfVectorizer().fit(corpus)

    def cosine(query: str, documents: list[str]) -> np.ndarray:
        q = vectorizer.transform([query])
        d = vectorizer.transform(documents)
        return (d @ q.T).toarray()[:, 0]  # rows are L2-normalised: dot = cosine

    def persona(utterances, personas):
        return cosine(' '.join(utterances), [' '.join(p) for p in personas])

    def sentence(utterances, sentences):
        return cosine(' '.join(utterances), sentences)

    return persona, sentence


def receiver_scorers(model_file: str):
    from parlai_ext.agents.p2bot import load_receiver

    agent = load_receiver(model_file)

    def persona(utterances, personas):
        return agent.persona_scores(utterances, personas).numpy()

    def sentence(utterances, sentences):
        return agent.persona_scores(utterances, [[s] for s in sentences]).numpy()

    return persona, sentence


def probe(opt) -> dict[str, dict[str, float]]:
    examples = probe_examples(opt)
    report = {
        'random': evaluate(examples, *random_scorers(opt.get('probe_seed', 0))),
        'ir_tfidf': evaluate(examples, *tfidf_scorers(examples)),
    }
    if opt.get('receiver_model_file'):
        report['receiver'] = evaluate(examples, *receiver_scorers(opt['receiver_model_file']))
    return report


@register_script('p2bot_probe')
class P2BotProbe(ParlaiScript):
    """Rank each speaker's true persona among distractors: Random, TF-IDF IR, receiver."""

    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> dict[str, dict[str, float]]:
        report = probe(self.opt)
        n = next(iter(report.values()))['exs']
        lines = [f'persona perception probe: {n} dialogue sides, {self.opt["datatype"]}']
        lines.append(
            f'{"method":<10} {"hits@1":>8} {"mrr":>8} {"sent_mrr":>9} {"cand_sent_mrr":>14}'
        )
        for name, v in report.items():
            lines.append(
                f'{name:<10} {v["hits@1"]:8.4f} {v["mrr"]:8.4f} {v["sent_mrr"]:9.4f} '
                f'{v["cand_sent_mrr"]:14.4f}'
            )
        print('\n'.join(lines))
        if self.opt.get('report_filename'):
            path = self.opt['report_filename']
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)))
            with os.fdopen(fd, 'w', encoding='utf-8') as handle:
                json.dump(report, handle, indent=2)
            os.replace(tmp, path)
        return report


if __name__ == '__main__':
    P2BotProbe.main()
