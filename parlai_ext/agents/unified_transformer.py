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
"""

from __future__ import annotations

import copy

import torch
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_generator_agent import TorchGeneratorAgent, TorchGeneratorModel
from parlai.utils.torch import neginf

from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.modules.unified_transformer import ContextState, UnifiedTransformer

# dictionary tokens that a [MASK] input may be called; generation never produces them
MASK_TOKENS = ('[MASK]', '__mask__', '<mask>')


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


def transformer_args(opt: Opt, dictionary) -> dict:
    """Keyword arguments of :class:`UnifiedTransformer` (and its subclasses) from ``opt``."""
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


class UnifiedTransformerGeneratorModel(TorchGeneratorModel):
    """Adapts :class:`UnifiedTransformer` to ParlAI's encoder/decoder generator interface.

    ``encoder`` = the context pass (its per-layer keys/values are the "encoder states"),
    ``decoder`` = response tokens on top of that cache. Training (``forward`` with labels)
    uses one prefix-LM pass over ``[context; response]`` instead.
    """

    def __init__(self, opt: Opt, dictionary, transformer: UnifiedTransformer | None = None) -> None:
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

    # --- ParlAI's encoder/decoder interface (generation) -------------------------------
    def encoder(self, context: torch.Tensor) -> ContextState:
        return self.transformer.encode_context(context)

    def decoder(self, tokens, context: ContextState, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the cache has the rest
        return self.transformer.decode(tokens, context, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.transformer.logits(hidden)
        # never generate the start or the padding token
        logits[:, :, self.START_IDX] = neginf(logits.dtype)
        logits[:, :, self.NULL_IDX] = neginf(logits.dtype)
        return logits

    def reorder_encoder_states(self, context: ContextState, indices) -> ContextState:
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, device=context.valid.device, dtype=torch.long)
        return context.index_select(indices)

    def reorder_decoder_incremental_state(self, incr_state, inds):
        return [(k.index_select(0, inds), v.index_select(0, inds)) for k, v in incr_state]

    # --- training: one prefix-LM pass ---------------------------------------------------
    def forward(self, *xs, ys=None, prev_enc=None, maxlen=None, bsz=None):
        if prev_enc is not None:  # e.g. ranking candidates against a cached context
            return super().forward(*xs, ys=ys, prev_enc=prev_enc, maxlen=maxlen, bsz=bsz)
        assert ys is not None, 'generation goes through the encoder/decoder interface'
        self.longest_label = max(self.longest_label, ys.size(1))
        inputs = self._get_initial_forced_decoder_input(ys.size(0), ys[:, :-1])
        hidden, context = self.transformer(xs[0], inputs)
        logits = self.output(hidden)
        return logits, logits.argmax(dim=-1), context


def generation_banned_ids(dictionary) -> list[int]:
    """Ids generation must never produce: the unknown token and any [MASK] token."""
    banned = (
        [dictionary[dictionary.unk_token]] if dictionary.unk_token in dictionary.tok2ind else []
    )
    banned += [dictionary.tok2ind[t] for t in MASK_TOKENS if t in dictionary.tok2ind]
    return sorted(set(banned))


class UnifiedTransformerAgent(DecayExemptOptimizerMixin, TorchGeneratorAgent):
    """Prefix-LM transformer generator (PLATO-2 stage 1, Eq. 1).

    Example::

        parlai train_model -m unified_transformer -t ext_demo -mf /tmp/ut --n-layers 2
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'Unified transformer (prefix-LM)')
        parser.set_defaults(learningrate=5e-4, optimizer='adamw')
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        super().__init__(default_truncation(opt), shared)
        self.generation_banned = generation_banned_ids(self.dict)

    def build_model(self) -> UnifiedTransformerGeneratorModel:
        return UnifiedTransformerGeneratorModel(self.opt, self.dict)

    def _generation_activation(self, score: torch.Tensor) -> torch.Tensor:
        """Log-probabilities for the search, with UNK (and [MASK]) banned before the softmax."""
        if self.generation_banned:
            score = score.clone()
            score[..., self.generation_banned] = neginf(score.dtype)
        return super()._generation_activation(score)
