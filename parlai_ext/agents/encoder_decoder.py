"""ParlAI glue for the transformer encoder-decoder: ``-m encoder_decoder``.

The seq2seq generator that CORAL and PPG build on (and a plain NLL baseline on its own). An
ordinary :class:`~parlai.core.torch_generator_agent.TorchGeneratorAgent`: ParlAI's training
loop, checkpoints, schedulers and every ``--inference`` mode work unchanged.
"""

from __future__ import annotations

import copy

import torch
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.core.torch_generator_agent import TorchGeneratorAgent, TorchGeneratorModel

from parlai_ext.agents.generation import record_generator_metrics, reorders_identically
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.unified_transformer import add_transformer_args, encoder_args
from parlai_ext.modules.encoder_decoder import EncoderDecoder, EncoderState
from parlai_ext.modules.transformer import banned_bias, banned_linear, padded_from_flat


class EncoderDecoderGeneratorModel(TorchGeneratorModel):
    """Adapts :class:`EncoderDecoder` to ParlAI's encoder/decoder generator interface."""

    def __init__(self, opt: Opt, dictionary) -> None:
        super().__init__(
            padding_idx=dictionary[dictionary.null_token],
            start_idx=dictionary[dictionary.start_token],
            end_idx=dictionary[dictionary.end_token],
            unknown_idx=dictionary[dictionary.unk_token],
        )
        args = encoder_args(opt, dictionary)
        n_layers = args.pop('n_layers')
        self.seq2seq = EncoderDecoder(
            vocab_size=len(dictionary),
            n_encoder_layers=opt.get('n_encoder_layers') or n_layers,
            n_decoder_layers=opt.get('n_decoder_layers') or n_layers,
            **args,
        )
        # never generate the start or the padding token (a bias of the output GEMM)
        self.register_buffer(
            'banned_bias',
            banned_bias(len(dictionary), (self.START_IDX, self.NULL_IDX)),
            persistent=False,
        )
        # set by the agent for each _generate: True while the search never reorders
        self.identity_reorder = False

    def encoder(self, source: torch.Tensor) -> EncoderState:
        return self.seq2seq.encode(source)

    def decoder(self, tokens, encoder_state: EncoderState, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the cache has the rest
        return self.seq2seq.decode(tokens, encoder_state, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the vocabulary; the start and padding tokens at ParlAI's neginf."""
        weight = self.seq2seq.embeddings.tokens.weight
        return banned_linear(hidden, weight, None, self.banned_bias)

    def forward(self, *xs, ys=None, prev_enc=None, maxlen=None, bsz=None, real_tokens=False):
        """ParlAI's teacher-forced pass ``(scores, preds, encoder_states)``.

        ``real_tokens=True``: the output layer runs only at the label's real tokens
        (``ys != NULL``): scores ``(n_tokens, vocab)`` and preds ``(n_tokens,)`` in the
        row-major order of ``ys[ys != NULL]`` (the values of the padded pass at those
        positions; the padding's share of the vocabulary-sized work is skipped).
        """
        if not real_tokens:
            return super().forward(*xs, ys=ys, prev_enc=prev_enc, maxlen=maxlen, bsz=bsz)
        self.longest_label = max(self.longest_label, ys.size(1))
        encoder_states = prev_enc if prev_enc is not None else self.encoder(*xs)
        inputs = self._get_initial_forced_decoder_input(ys.size(0), ys[:, :-1])
        hidden, _ = self.decoder(inputs, encoder_states)
        scores = self.output(hidden[ys != self.NULL_IDX])
        return scores, scores.max(dim=-1).indices, encoder_states

    def reorder_encoder_states(self, encoder_state: EncoderState, indices) -> EncoderState:
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, device=encoder_state.valid.device, dtype=torch.long)
        return encoder_state.index_select(indices)

    def reorder_decoder_incremental_state(self, incr_state, inds):
        if self.identity_reorder:  # greedy / top-k / nucleus: inds is always arange
            return incr_state
        return [(k.index_select(0, inds), v.index_select(0, inds)) for k, v in incr_state]


class EncoderDecoderAgent(DecayExemptOptimizerMixin, TorchGeneratorAgent):
    """Transformer encoder-decoder generator trained with NLL.

    Weight decay spares biases and LayerNorm parameters (:mod:`parlai_ext.agents.optim`).

    Example::

        parlai train_model -m encoder_decoder -t ext_demo -mf /tmp/ed --n-layers 2
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_transformer_args(parser, 'Transformer encoder-decoder')
        group = parser.add_argument_group('Encoder-decoder depth')
        group.add_argument('--n-encoder-layers', type=int, default=None, help='default: --n-layers')
        group.add_argument('--n-decoder-layers', type=int, default=None, help='default: --n-layers')
        parser.set_defaults(learningrate=5e-4, optimizer='adamw')
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        # source and target each get their own positions: truncate each to fit
        for key in ('text_truncate', 'label_truncate'):
            value = opt.get(key) or opt.get('truncate', -1)
            if value is None or value < 0 or value > opt['n_positions'] - 1:
                opt[key] = opt['n_positions'] - 1
        super().__init__(opt, shared)

    def build_model(self) -> EncoderDecoderGeneratorModel:
        return EncoderDecoderGeneratorModel(self.opt, self.dict)

    def _own_model(self) -> EncoderDecoderGeneratorModel | None:
        """The encoder-decoder model (unwrapped from DDP), or None for another model (e.g.
        CORAL's pretrained causal LM)."""
        model = self.model.module if hasattr(self.model, 'module') else self.model
        return model if isinstance(model, EncoderDecoderGeneratorModel) else None

    def _treesearch_factory(self, device, verbose=False):
        search = super()._treesearch_factory(device, verbose=verbose)
        model = self._own_model()
        if model is not None:  # called by _generate before decoding, once per example
            model.identity_reorder = reorders_identically(search)
            # without reorders, each step appends its keys/values into preallocated buffers
            # instead of re-copying the cache (torch.cat); a beam search copies its cache at
            # every reorder anyway, so it keeps torch.cat (the buffers measured 6 % slower)
            reserve = min(self.opt['label_truncate'] + 1, 64) if model.identity_reorder else 0
            model.seq2seq.decoder.reserve_cache(reserve)
        return search

    def compute_loss(self, batch, return_output=False):
        """ParlAI's NLL and metrics, with the output layer at the real label tokens only.

        Same loss, metrics and gradients as ``TorchGeneratorAgent.compute_loss`` (whose
        per-token losses are 0 at padding): the model returns the real tokens' scores, and
        their losses and predictions are scattered back to ``(batch, time)``. With
        ``return_output`` (evaluation; callers read ``(batch, time, vocab)`` scores) the
        padded pass runs, as in ParlAI.
        """
        if return_output or self._own_model() is None:
            return super().compute_loss(batch, return_output=return_output)
        if batch.label_vec is None:
            raise ValueError('Cannot compute loss without a label.')
        labels = batch.label_vec
        notnull = labels.ne(self.NULL_IDX)
        scores, preds, _ = self.model(*self._model_input(batch), ys=labels, real_tokens=True)
        token_losses = self.criterion(scores, labels[notnull])
        loss_per_token = padded_from_flat(token_losses, notnull)
        return record_generator_metrics(
            self, batch, loss_per_token, padded_from_flat(preds, notnull, self.NULL_IDX)
        )
