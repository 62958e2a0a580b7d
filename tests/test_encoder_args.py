"""One reading of the transformer options (``unified_transformer.encoder_args``) builds the
from-scratch stacks exactly as their former hand-written keyword lists did: CORAL's
cross-encoder, PPG's critic, P2Bot's receiver encoders, the unified transformer and the
encoder-decoder (CORAL's generator, PPG's generators)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from parlai_ext.agents import (
    coral_reward,
    encoder_decoder,
    p2bot_receiver,
    ppg,
    unified_transformer,
)
from parlai_ext.modules.encoder_decoder import EncoderDecoder
from parlai_ext.modules.transformer import TransformerEncoder
from parlai_ext.modules.unified_transformer import UnifiedTransformer

NULL = 2  # not 0: a builder that forgot the dictionary's padding id would pass 0


class TinyDict:
    """The dictionary interface the builders read: length, token -> id, special tokens."""

    null_token, start_token, end_token, unk_token = '__null__', '__start__', '__end__', '__unk__'

    def __init__(self) -> None:
        words = ['__start__', '__end__', '__null__', '__unk__', 'a', 'b', 'c', 'd', 'e']
        self.ids = {w: i for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, token: str) -> int:
        return self.ids[token]


def tiny_opt(**changes) -> dict:
    """Every value distinct, so that a swapped option shows."""
    opt = dict(
        embedding_size=12,
        n_layers=3,
        n_encoder_layers=None,
        n_decoder_layers=2,
        n_heads=3,
        ffn_size=20,
        n_positions=24,
        dropout=0.15,
        attention_dropout=0.05,
        relu_dropout=0.25,
        activation='relu',
        lm_head='knover',
        knover_layout=False,
        mlp_hidden_size=7,
        pooling='cls',
        tau_start=0.5,
    )
    opt.update(changes)
    return {k: v for k, v in opt.items() if v is not None}


# the keyword arguments each builder wrote out by hand before encoder_args (from tiny_opt())
OLD_ENCODER = dict(
    dim=12,
    n_layers=3,
    n_heads=3,
    ffn_dim=20,
    n_positions=24,
    dropout=0.15,
    attention_dropout=0.05,
    activation='relu',
    padding_idx=NULL,
    ffn_dropout=0.25,
)
OLD_RECEIVER = dict(  # SentenceEncoder: no attention dropout, GELU
    dim=12, n_layers=3, n_heads=3, ffn_dim=20, n_positions=24, dropout=0.15,
    ffn_dropout=0.25, padding_idx=NULL,
)  # fmt: skip
OLD_UNIFIED = dict(OLD_ENCODER, lm_head='knover')
OLD_ENCODER_DECODER = dict(
    vocab_size=9,
    dim=12,
    n_encoder_layers=3,  # --n-layers
    n_decoder_layers=2,
    n_heads=3,
    ffn_dim=20,
    n_positions=24,
    dropout=0.15,
    attention_dropout=0.05,
    ffn_dropout=0.25,
    activation='relu',
    padding_idx=NULL,
)


def recording(monkeypatch, module, name: str, calls: list):
    """Replace ``module.name`` (a class) by a recorder that builds the real class."""
    real = getattr(module, name)

    def build(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, build)
    return real


def build_coral(opt, d):
    stub = SimpleNamespace(opt=opt, dict=d, NULL_IDX=d[d.null_token], hf_fresh=False)
    return [coral_reward.CoralCrossEncoderAgent.build_model(stub).encoder]


def build_ppg(opt, d):
    stub = SimpleNamespace(opt=opt, dict=d, NULL_IDX=d[d.null_token], END_IDX=d[d.end_token])
    return [ppg.PpgCriticAgent.build_model(stub).encoder]


def build_receiver(opt, d):
    receiver = p2bot_receiver.P2BotReceiverAgent.build_model(SimpleNamespace(opt=opt, dict=d))
    return [receiver.impression_encoder, receiver.persona_encoder]


def build_unified(opt, d):
    return [unified_transformer.UnifiedTransformerGeneratorModel(opt, d).transformer]


def build_encoder_decoder(opt, d):
    return [encoder_decoder.EncoderDecoderGeneratorModel(opt, d).seq2seq]


VOCAB = (9,)  # the vocabulary size, passed positionally
CASES = {
    'coral_cross_encoder': (coral_reward, 'TransformerEncoder', build_coral, VOCAB, OLD_ENCODER),
    'ppg_critic': (ppg, 'TransformerEncoder', build_ppg, VOCAB, OLD_ENCODER),
    'p2bot_receiver': (p2bot_receiver, 'SentenceEncoder', build_receiver, VOCAB, OLD_RECEIVER),
    'unified_transformer': (
        unified_transformer,
        'UnifiedTransformer',
        build_unified,
        VOCAB,
        OLD_UNIFIED,
    ),
    'encoder_decoder': (
        encoder_decoder,
        'EncoderDecoder',
        build_encoder_decoder,
        (),
        OLD_ENCODER_DECODER,
    ),
}


def outputs(module: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Encoder states; the unified transformer's response logits (its LM head included)."""
    if isinstance(module, UnifiedTransformer):
        hidden, _ = module(ids, ids[:, :3])
        return module.logits(hidden)
    if isinstance(module, EncoderDecoder):
        hidden, _ = module(ids, ids[:, :3])
        return module.logits(hidden)
    return module(ids)


@pytest.mark.parametrize('system', sorted(CASES))
def test_builders_construct_the_hand_written_stack(system, monkeypatch):
    module, name, builder, expected_args, expected = CASES[system]
    d = TinyDict()
    calls: list = []
    real = recording(monkeypatch, module, name, calls)
    torch.manual_seed(0)
    built = builder(tiny_opt(), d)
    assert len(calls) == len(built)
    for args, kwargs in calls:
        assert args == expected_args
        assert kwargs == expected
    torch.manual_seed(0)
    reference = [real(*expected_args, **expected) for _ in built]
    ids = torch.tensor([[0, 4, 5, 6, 1, NULL], [0, 7, 8, 1, NULL, NULL]])
    for got, want in zip(built, reference):
        assert repr(got) == repr(want)  # dropout rates, layer sizes
        got_state, want_state = got.state_dict(), want.state_dict()
        assert list(got_state) == list(want_state)  # parameter names: model files load
        for key in want_state:
            assert torch.equal(got_state[key], want_state[key]), key
        got.eval(), want.eval()
        with torch.no_grad():  # the activation (ReLU here, GELU in the receiver) shows
            assert torch.equal(outputs(got, ids), outputs(want, ids))


def test_model_file_without_newer_options_gets_their_old_defaults():
    """Older model files lack --relu-dropout and --lm-head: no FFN dropout, tied head."""
    args = unified_transformer.transformer_args(
        tiny_opt(relu_dropout=None, lm_head=None), TinyDict()
    )
    assert args == dict(OLD_ENCODER, ffn_dropout=0.0, lm_head='tied')
    assert unified_transformer.encoder_args(tiny_opt(), TinyDict()) == OLD_ENCODER


def test_activation_reaches_the_encoder_blocks():
    """``--activation relu`` gives ReLU feed-forwards (a GELU stack computes otherwise)."""
    d = TinyDict()
    torch.manual_seed(0)
    relu = TransformerEncoder(len(d), **unified_transformer.encoder_args(tiny_opt(), d))
    torch.manual_seed(0)
    gelu = TransformerEncoder(
        len(d), **unified_transformer.encoder_args(tiny_opt(activation='gelu'), d)
    )
    relu.eval(), gelu.eval()
    ids = torch.tensor([[0, 4, 5, 1]])
    assert not torch.allclose(relu(ids), gelu(ids))
