"""The shared transformer encoder-decoder: caches, padding, and training through the CLI."""

import json

import pytest
import torch
from conftest import run_parlai

from parlai_ext.modules.encoder_decoder import EncoderDecoder


@pytest.fixture
def model():
    torch.manual_seed(0)
    return EncoderDecoder(30, dim=32, n_heads=4, ffn_dim=64, n_positions=64, dropout=0.0).eval()


SOURCE = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
TARGET = torch.tensor([[1, 11, 12, 13], [1, 14, 15, 0]])


def test_incremental_decoding_equals_teacher_forcing(model):
    with torch.no_grad():
        full, state = model(SOURCE, TARGET)
        caches, steps = None, []
        for t in range(TARGET.shape[1]):
            hidden, caches = model.decode(TARGET[:, t : t + 1], state, caches)
            steps.append(hidden)
    valid = TARGET != 0
    assert torch.allclose(full[valid], torch.cat(steps, dim=1)[valid], atol=1e-5)


def test_source_padding_changes_nothing(model):
    padded = torch.cat([SOURCE, torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        a, _ = model(SOURCE, TARGET)
        b, _ = model(padded, TARGET)
    valid = TARGET != 0
    assert torch.allclose(a[valid], b[valid], atol=1e-5)


def test_decoder_is_causal_and_reads_the_source(model):
    changed_target = TARGET.clone()
    changed_target[0, 3] = 20
    changed_source = SOURCE.clone()
    changed_source[0, 0] = 21
    with torch.no_grad():
        base, _ = model(SOURCE, TARGET)
        later, _ = model(SOURCE, changed_target)
        other, _ = model(changed_source, TARGET)
    assert torch.allclose(base[0, :3], later[0, :3], atol=1e-6)
    assert not torch.allclose(base[0, 0], other[0, 0])


def test_cli_training_converges_and_beam_search_decodes(tmp_path):
    model_file = str(tmp_path / 'model')
    run_parlai(
        'train_model', '-m', 'encoder_decoder', '-t', 'ext_demo', '-mf', model_file,
        '--n-layers', '1', '--embedding-size', '64', '--n-heads', '2', '--ffn-size', '128',
        '--dropout', '0', '-bs', '32', '-lr', '2e-3', '--num-epochs', '2',
        '--log-every-n-steps', '10', '-vtim', '60', '--skip-generation', 'false',
        '--inference', 'beam', '--beam-size', '3', timeout=900,
    )  # fmt: skip
    stats = json.load(open(model_file + '.trainstats'))
    first, last = stats['train_reports'][0]['loss'], stats['train_reports'][-1]['loss']
    assert last < first / 3, (first, last)
    assert stats['final_valid_report']['gen_n_toks'] > 2


def test_ffn_dropout_is_its_own_option():
    """--relu-dropout reaches every FFN (encoder and decoder); --dropout does not (#18)."""
    seq2seq = EncoderDecoder(30, dim=16, n_heads=2, ffn_dim=32, dropout=0.2, ffn_dropout=0.3)
    for stack in (seq2seq.encoder, seq2seq.decoder):
        for block in stack.layers:
            assert block.ffn.dropout.p == 0.3 and block.dropout.p == 0.2
    default = EncoderDecoder(30, dim=16, n_heads=2, ffn_dim=32, dropout=0.2)
    assert all(block.ffn.dropout.p == 0.0 for block in default.decoder.layers)
