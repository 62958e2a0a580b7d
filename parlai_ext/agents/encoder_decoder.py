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
from parlai.utils.torch import neginf

from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.agents.unified_transformer import add_transformer_args
from parlai_ext.modules.encoder_decoder import EncoderDecoder, EncoderState


class EncoderDecoderGeneratorModel(TorchGeneratorModel):
    """Adapts :class:`EncoderDecoder` to ParlAI's encoder/decoder generator interface."""

    def __init__(self, opt: Opt, dictionary) -> None:
        super().__init__(
            padding_idx=dictionary[dictionary.null_token],
            start_idx=dictionary[dictionary.start_token],
            end_idx=dictionary[dictionary.end_token],
            unknown_idx=dictionary[dictionary.unk_token],
        )
        n_layers = opt['n_layers']
        self.seq2seq = EncoderDecoder(
            vocab_size=len(dictionary),
            dim=opt['embedding_size'],
            n_encoder_layers=opt.get('n_encoder_layers') or n_layers,
            n_decoder_layers=opt.get('n_decoder_layers') or n_layers,
            n_heads=opt['n_heads'],
            ffn_dim=opt['ffn_size'],
            n_positions=opt['n_positions'],
            dropout=opt['dropout'],
            attention_dropout=opt['attention_dropout'],
            ffn_dropout=opt.get('relu_dropout') or 0.0,  # absent from older model files
            activation=opt['activation'],
            padding_idx=self.NULL_IDX,
        )

    def encoder(self, source: torch.Tensor) -> EncoderState:
        return self.seq2seq.encode(source)

    def decoder(self, tokens, encoder_state: EncoderState, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes the whole prefix; the cache has the rest
        return self.seq2seq.decode(tokens, encoder_state, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.seq2seq.logits(hidden)
        # never generate the start or the padding token
        logits[:, :, self.START_IDX] = neginf(logits.dtype)
        logits[:, :, self.NULL_IDX] = neginf(logits.dtype)
        return logits

    def reorder_encoder_states(self, encoder_state: EncoderState, indices) -> EncoderState:
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, device=encoder_state.valid.device, dtype=torch.long)
        return encoder_state.index_select(indices)

    def reorder_decoder_incremental_state(self, incr_state, inds):
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
