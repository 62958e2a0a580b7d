"""Run the authors' PLATO-2 code (Knover) at a tiny size and save parameters + outputs (#24).

This is a *driver*: all model math comes from the authors' code, imported from a checkout of
PaddlePaddle/Knover at commit ``4bad22c`` (the ``plato-2`` branch, the code the released 24L /
32L weights were trained and served with). Nothing of Knover is copied here. It needs
PaddlePaddle 1.8 (the pip CPU wheel ``paddlepaddle==1.8.5`` exists for Python <= 3.8), so it
runs in its own environment, never in the project's ``.venv``::

    python3.8 -m venv /work/paddle_venv
    /work/paddle_venv/bin/pip install paddlepaddle==1.8.5 'protobuf==3.20.3' 'numpy<1.20' \\
        sentencepiece
    bench/knover/get_knover.sh /tmp/knover_orig          # git clone + checkout 4bad22c
    /work/paddle_venv/bin/python bench/knover/knover_reference.py \\
        --knover-dir /tmp/knover_orig --out /tmp/knover_tiny

What it does, for a tiny config (hidden 16, 2 heads, 2 layers, K latent values, a 30-token
vocabulary whose last id is [MASK], like Knover's 8001 = 8000 pieces + [MASK]):

1. builds Knover's ``Plato`` model (inference program: K-way tiling, top-k decoding loop) and
   ``NSPModel`` (inference program: [CLS] -> pooled_fc -> next_sent_fc -> softmax) exactly as
   ``infer.py`` does, from Knover's own argument parser and a JSON config in Knover's format;
2. replaces the random initialisation by seeded, larger random values (so greedy decoding has
   no near ties) and saves them in the two formats the authors' tools write:
   ``fluid.io.save_params`` (one file per parameter, the format of the released
   ``24L/Plato`` and ``24L/NSP`` directories) and ``fluid.save`` (``<prefix>.pdparams``, a
   pickle);
3. builds the inputs with Knover's readers (``PlatoReader`` / ``NSPReader`` on a
   ``tokenized`` TSV example list: [SEP]-joined turns, [CLS]/[SEP] per turn, context
   truncation by whole turns, continuous positions, type ids, the attention masks);
4. runs, through Knover's own methods (``Plato.forward(is_infer=True)``, ``_calc_logits``,
   ``_calc_bow_logits``, ``_recognition_network``, ``NSPModel.forward`` + ``infer``):
   the generation-pass logits at every position for every latent value, the recognition
   posterior, the BOW logits, the NSP score and the NSP model's MLM logits;
5. runs Knover's decoding loop (``Plato.infer_step``) with top-k 1 (greedy) for every latent
   value, scores the candidates with the NSP model through Knover's ``get_nsp_score_batch``
   and picks the reply with ``DialogGeneration._post_process_generation_output`` (NSP rerank,
   -1000 penalties for unfinished / repeating candidates);
6. writes ``<out>/plato_params/`` + ``<out>/plato.pdparams``, ``<out>/nsp_params/`` +
   ``<out>/nsp.pdparams``, ``<out>/outputs.npz`` (arrays), ``<out>/decode.json`` (candidates
   and picks), ``<out>/vocab.txt``, ``<out>/config.json`` and ``<out>/manifest.json``.

``tests/test_knover_parity.py`` runs this in a subprocess (when ``KNOVER_PYTHON`` and
``KNOVER_DIR`` are set) and compares with our reader; ``parlai_ext/knover.py`` reads the
parameter files without PaddlePaddle.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
from collections import namedtuple

import numpy as np

KNOVER_COMMIT = '4bad22c'

# Tiny vocabulary in Knover's vocab.txt format: ``piece\tid`` lines, then the aliases.
PIECES = (
    ['<unk>', '<s>', '</s>']
    + ['\u2581' + w for w in 'hi hello how are you i am fine do like cats dogs what about'.split()]
    + ['\u2581' + w for w in 'good thanks the a to ? . !'.split()]
    + ['s', 'ing', 'ed', 'er']
)
MASK_ID = len(PIECES)  # like Knover: [MASK] = number of pieces (8000), vocab = pieces + 1
VOCAB_SIZE = MASK_ID + 1

TINY_CONFIG = {
    # the keys and values of Knover's package/dialog_en/plato/24L.json, sizes made tiny
    'pre_encoder_cmd': 'd',
    'preprocess_cmd': 'n',
    'postprocess_cmd': 'da',
    'post_cls_cmd': 'n',
    'cls_bias': True,
    'attention_probs_dropout_prob': 0.1,
    'hidden_act': 'gelu',
    'hidden_dropout_prob': 0.1,
    'hidden_size': 16,
    'initializer_range': 0.02,
    'max_position_embeddings': 32,
    'latent_type_size': 4,
    'num_attention_heads': 2,
    'num_hidden_layers': 2,
    'type_vocab_size': 2,
    'vocab_size': VOCAB_SIZE,
}

# (src, tgt) in Knover's ``tokenized`` data format: pieces separated by spaces, turns by [SEP].
EXAMPLES = [
    ('\u2581hi \u2581how \u2581are \u2581you \u2581?', '\u2581i \u2581am \u2581fine \u2581.'),
    (
        # three turns; with max_src_len 12 the first turn is dropped whole
        '\u2581hello \u2581! [SEP] \u2581do \u2581you \u2581like \u2581cats \u2581? '
        '[SEP] \u2581i \u2581like \u2581dogs \u2581.',
        '\u2581what \u2581about \u2581cats \u2581?',
    ),
]
MAX_SRC_LEN = 12
MAX_TGT_LEN = 8
MAX_DEC_LEN = 6


def write_vocab(path: str) -> None:
    """Knover's vocab.txt layout (see package/dialog_en/vocab.txt)."""
    lines = [f'{p}\t{i}' for i, p in enumerate(PIECES)]
    lines += [f'[MASK]\t{MASK_ID}', '[UNK]\t0', '[PAD]\t0', '[CLS]\t1', '[SEP]\t2']
    with open(path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')


def knover_args(knover_dir: str, out: str, model: str, task: str, extra: list[str]):
    """Parse Knover arguments exactly as infer.py does (its own parser and config loader)."""
    import models  # noqa: F401  (Knover's package, from --knover-dir)
    from utils.args import parse_args, str2bool

    import tasks

    argv = [
        '--model', model, '--task', task,
        '--config_path', os.path.join(out, 'config.json'),
        '--vocab_path', os.path.join(out, 'vocab.txt'),
        '--spm_model_file', os.path.join(knover_dir, 'package/dialog_en/spm.model'),
        '--data_format', 'tokenized',
        '--max_src_len', str(MAX_SRC_LEN), '--max_tgt_len', str(MAX_TGT_LEN),
        '--max_seq_len', str(MAX_SRC_LEN + MAX_TGT_LEN),
        '--batch_size', str(len(EXAMPLES)),
    ] + extra  # fmt: skip
    saved = sys.argv
    sys.argv = ['infer.py'] + argv
    try:
        parser = argparse.ArgumentParser()
        parser.add_argument('--is_distributed', type=str2bool, default=False)
        models.add_cmdline_args(parser)
        tasks.add_cmdline_args(parser)
        args = parse_args(parser)
    finally:
        sys.argv = saved
    args.load(args.config_path, 'Model')
    args.run_infer = True
    return args, argv


def randomise(fluid, scope, program, rng: np.random.RandomState) -> dict[str, np.ndarray]:
    """Seeded values with a spread large enough that argmax decoding has no near ties."""
    values = {}
    for p in sorted(program.global_block().all_parameters(), key=lambda p: p.name):
        shape = tuple(p.shape)
        if p.name.endswith('layer_norm_scale'):
            v = 1.0 + 0.1 * rng.randn(*shape)
        elif p.name.endswith(('layer_norm_bias', '.b_0', '_bias')) or p.name == 'recognition_bias':
            v = 0.1 * rng.randn(*shape)
        elif p.name == 'latent_embedding':
            v = 1.0 * rng.randn(*shape)
        else:
            v = 0.3 * rng.randn(*shape)
        if p.name == 'mask_lm_out_fc.b_0':
            v[2] += 0.4  # [SEP] likelier, so some latent values end before max_dec_len
        v = v.astype('float32')
        var = scope.find_var(p.name) or scope.var(p.name)  # probe-only: not initialised yet
        var.get_tensor().set(v, fluid.CPUPlace())
        values[p.name] = v
    return values


def build_plato_probe(fluid, layers, model, L: int):
    """Knover's own forward pieces on fed inputs (no decoding loop, dropout off).

    ``L`` is the padded length (static, as Knover declares ``max_seq_len``).
    """
    probe, startup = fluid.Program(), fluid.Program()
    with fluid.program_guard(probe, startup), fluid.unique_name.guard():
        inputs = {
            'token_ids': layers.data('token_ids', [-1, L, 1], dtype='int64'),
            'type_ids': layers.data('type_ids', [-1, L, 1], dtype='int64'),
            'pos_ids': layers.data('pos_ids', [-1, L, 1], dtype='int64'),
            'generation_mask': layers.data('generation_mask', [-1, L + 1, L + 1], dtype='float32'),
            'recognition_mask': layers.data(
                'recognition_mask', [-1, L + 1, L + 1], dtype='float32'
            ),
            'latent_id': layers.data('latent_id', [-1, 1], dtype='int64'),
            'parent_idx': layers.data('parent_idx', [-1], dtype='int64'),
            'bow_pos': layers.data('bow_pos', [-1, 1], dtype='int64'),
        }
        # generation pass with a one-hot latent: the code path of inference (Plato.forward)
        outputs = model.forward(inputs, is_infer=True)
        fetch = {
            'gen_enc_out': outputs['enc_out'],
            'gen_logits': model._calc_logits(outputs['enc_out']),
            'bow_logits': model._calc_bow_logits(outputs['enc_out'], inputs['bow_pos']),
        }
        rec_logits, _ = model._recognition_network(
            token_ids=inputs['token_ids'],
            type_ids=inputs['type_ids'],
            pos_ids=inputs['pos_ids'],
            recognition_mask=inputs['recognition_mask'],
        )
        fetch['rec_logits'] = rec_logits
        fetch['post_probs'] = layers.softmax(rec_logits)
    return probe.clone(for_test=True), fetch


def build_nsp_probe(fluid, layers, model, L: int):
    """NSPModel.forward + NSPModel.infer (the score) + the MLM head, on fed inputs."""
    probe, startup = fluid.Program(), fluid.Program()
    with fluid.program_guard(probe, startup), fluid.unique_name.guard():
        inputs = {
            'token_ids': layers.data('token_ids', [-1, L, 1], dtype='int64'),
            'type_ids': layers.data('type_ids', [-1, L, 1], dtype='int64'),
            'pos_ids': layers.data('pos_ids', [-1, L, 1], dtype='int64'),
            'attention_mask': layers.data('attention_mask', [-1, L, L], dtype='float32'),
            'label_pos': layers.data('label_pos', [-1, 1], dtype='int64'),
            'data_id': layers.data('data_id', [-1, 1], dtype='int64'),
        }
        outputs = model.forward(inputs)
        fetch = {
            'nsp_enc_out': outputs['enc_out'],
            'nsp_scores': model.infer(inputs, outputs)['scores'],
            'nsp_mlm_logits': model._calc_logits(outputs['enc_out']),
        }
    return probe.clone(for_test=True), fetch


def save_pdparams(fluid, program, prefix: str) -> None:
    """``fluid.save``: ``prefix.pdparams`` (a pickle) plus the program and optimizer state,
    which are not parameters and are removed."""
    fluid.save(program, prefix)
    for suffix in ('.pdmodel', '.pdopt'):
        os.remove(prefix + suffix)


def run(exe, program, feed: dict, fetch: dict) -> dict[str, np.ndarray]:
    names = list(fetch)
    values = exe.run(program, feed=feed, fetch_list=[fetch[n] for n in names])
    return {n: np.array(v) for n, v in zip(names, values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--knover-dir', required=True, help=f'Knover checkout at {KNOVER_COMMIT}')
    parser.add_argument('--out', required=True)
    parser.add_argument('--seed', type=int, default=0)
    opt = parser.parse_args()
    knover_dir = os.path.abspath(opt.knover_dir)
    out = os.path.abspath(opt.out)
    os.makedirs(out, exist_ok=True)
    sys.path.insert(0, knover_dir)

    import models
    import paddle
    import paddle.fluid as fluid
    import paddle.fluid.layers as layers
    from tasks.dialog_generation import get_nsp_score_batch
    from utils import pad_batch_data

    import tasks

    write_vocab(os.path.join(out, 'vocab.txt'))
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(TINY_CONFIG, f, indent=2)
    rng = np.random.RandomState(opt.seed)
    place = fluid.CPUPlace()
    arrays: dict[str, np.ndarray] = {}
    K = TINY_CONFIG['latent_type_size']

    # ---------------- PLATO (stage 2.1 generator) ----------------
    plato_extra = [
        '--do_generation', 'true', '--decoding_strategy', 'topk_sampling', '--topk', '1',
        '--max_dec_len', str(MAX_DEC_LEN), '--ranking_score', 'nsp_score',
    ]  # fmt: skip
    plato_args, plato_argv = knover_args(knover_dir, out, 'Plato', 'DialogGeneration', plato_extra)
    plato_scope = fluid.Scope()
    with fluid.scope_guard(plato_scope):
        task = tasks.create_task(plato_args)
        model = models.create_model(plato_args, place)
        reader = task.reader
        Example = namedtuple('Example', ['src', 'tgt', 'data_id'])
        examples = [Example(s, t, i) for i, (s, t) in enumerate(EXAMPLES)]
        # training layout (context + response), Knover's PlatoReader
        train_records = [reader._convert_example_to_record(e, is_infer=False) for e in examples]
        train = reader._pad_batch_records(train_records, is_infer=False)
        for key in ('token_ids', 'type_ids', 'pos_ids', 'generation_mask', 'recognition_mask',
                    'tgt_label', 'tgt_pos', 'bow_label', 'bow_pos'):  # fmt: skip
            arrays['train_' + key] = np.asarray(train[key])
        arrays['train_tgt_start_idx'] = np.array([r.tgt_start_idx for r in train_records])
        arrays['train_lengths'] = np.array([len(r.token_ids) for r in train_records])

        probe, probe_fetch = build_plato_probe(fluid, layers, model, train['token_ids'].shape[1])
        plato_values = randomise(fluid, plato_scope, probe, rng)
        infer_params = {p.name for p in model.infer_program.global_block().all_parameters()}
        assert infer_params <= set(plato_values), infer_params - set(plato_values)
        fluid.io.save_params(model.exe, os.path.join(out, 'plato_params'), main_program=probe)
        save_pdparams(fluid, probe, os.path.join(out, 'plato'))

        # one probe batch: every example x every latent value (latent-major like infer_step)
        B = len(examples)
        tile = lambda a: np.concatenate([a] * K, axis=0)  # noqa: E731
        feed = {
            'token_ids': tile(train['token_ids']),
            'type_ids': tile(train['type_ids']),
            'pos_ids': tile(train['pos_ids']),
            'generation_mask': tile(train['generation_mask']),
            'recognition_mask': tile(train['recognition_mask']),
            'latent_id': np.array([[k] for k in range(K) for _ in range(B)], dtype='int64'),
            'parent_idx': np.arange(B * K, dtype='int64'),
            'bow_pos': np.arange(B * K, dtype='int64').reshape(-1, 1),
        }
        got = run(model.exe, probe, feed, probe_fetch)
        L1 = train['token_ids'].shape[1] + 1
        arrays['probe_latent_id'] = feed['latent_id'][:, 0]
        arrays['gen_enc_out'] = got['gen_enc_out'].reshape(B * K, L1, -1)
        arrays['gen_logits'] = got['gen_logits'].reshape(B * K, L1, VOCAB_SIZE)
        arrays['bow_logits'] = got['bow_logits']
        arrays['rec_logits'] = got['rec_logits'][:B]
        arrays['post_probs'] = got['post_probs'][:B]
        assert np.allclose(got['post_probs'][:B], got['post_probs'][B : 2 * B])

        # inference layout (context only) and Knover's decoding loop for every latent value
        infer_records = [reader._convert_example_to_record(e, is_infer=True) for e in examples]
        infer = reader._pad_batch_records(infer_records, is_infer=True)
        for key in ('token_ids', 'type_ids', 'pos_ids', 'generation_mask', 'tgt_pos'):
            arrays['infer_' + key] = np.asarray(infer[key])
        predictions = model.infer_step(infer)
        for i, info in enumerate(predictions):
            info['latent_id'] = i // B  # infer_step tiles latent-major

    # ---------------- NSP (stage 2.2 evaluator) ----------------
    nsp_args, nsp_argv = knover_args(knover_dir, out, 'NSPModel', 'NextSentencePrediction', [])
    nsp_scope = fluid.Scope()
    with fluid.scope_guard(nsp_scope):
        nsp_task = tasks.create_task(nsp_args)
        nsp_model = models.create_model(nsp_args, place)
        # gold (context, response) pairs through Knover's NSPReader (inference: no masking)
        nsp_reader = nsp_task.reader
        nsp_records = [nsp_reader._convert_example_to_record(e, is_infer=True) for e in examples]
        clean = copy.deepcopy([r.token_ids for r in nsp_records])
        np.random.seed(opt.seed)  # Knover's masking draws from numpy's global generator
        nsp_batch = nsp_reader._pad_batch_records(nsp_records, is_infer=True)
        # Knover 4bad22c bug: utils/masking.mask() copies a ragged batch with np.copy (an object
        # array of the *same* lists) and MLM-corrupts the inputs in place even at inference;
        # the develop branch fixed it (copy.deepcopy). Keep what Knover fed, feed clean inputs.
        arrays['nsp_token_ids_as_knover_4bad22c'] = np.asarray(nsp_batch['token_ids'])
        nsp_batch['token_ids'] = pad_batch_data(clean, pad_id=nsp_reader.pad_id)
        nsp_probe, nsp_fetch = build_nsp_probe(
            fluid, layers, nsp_model, nsp_batch['token_ids'].shape[1]
        )
        randomise(fluid, nsp_scope, nsp_probe, rng)
        fluid.io.save_params(nsp_model.exe, os.path.join(out, 'nsp_params'), main_program=nsp_probe)
        save_pdparams(fluid, nsp_probe, os.path.join(out, 'nsp'))
        for key in ('token_ids', 'type_ids', 'pos_ids', 'attention_mask', 'label_pos'):
            arrays['nsp_' + key] = np.asarray(nsp_batch[key])
        got = run(nsp_model.exe, nsp_probe, nsp_batch, nsp_fetch)
        Ln = nsp_batch['token_ids'].shape[1]
        arrays['nsp_scores'] = got['nsp_scores']
        arrays['nsp_enc_out'] = got['nsp_enc_out']
        arrays['nsp_mlm_logits'] = got['nsp_mlm_logits'].reshape(len(examples), Ln, VOCAB_SIZE)

        # rerank: Knover's own get_nsp_score_batch (it re-parses argv and rebuilds the inputs)
        infer_fetch = nsp_model.infer_fetch_dict

        rerank_inputs = {}

        def nsp_predictor(data):
            res = run(nsp_model.exe, nsp_model.infer_program, data, infer_fetch)
            lengths = np.asarray(data['attention_mask'])[:, 0, :].sum(axis=1).astype(int)
            for row, length, data_id in zip(data['token_ids'], lengths, res['data_id']):
                rerank_inputs[int(data_id[0])] = row[:length, 0].tolist()
            return [res['scores'], res['data_id']]

        saved = sys.argv
        sys.argv = ['infer.py'] + nsp_argv
        np.random.seed(opt.seed)
        try:
            get_nsp_score_batch(nsp_predictor, predictions)
        finally:
            sys.argv = saved

    # Knover's post-processing (penalties, rerank by nsp_score, top-1), task.nsp_predictor stays
    # None because the scores are already in `predictions`.
    picks = task._post_process_generation_output(predictions)

    keep = ('data_id', 'latent_id', 'decode_score', 'response_token_ids', 'context_token_ids',
            'nsp_score', 'num_token', 'cross_turn_repetition', 'in_turn_repetition', 'score',
            'response')  # fmt: skip
    for i, info in enumerate(predictions):
        info['nsp_input_token_ids'] = rerank_inputs[i]  # as fed (see the masking bug above)
    keep += ('nsp_input_token_ids',)
    decode = {
        'candidates': [{k: info[k] for k in keep} for info in predictions],
        'picks': picks,
    }
    with open(os.path.join(out, 'decode.json'), 'w') as f:
        json.dump(decode, f, indent=1, ensure_ascii=False)
    with tempfile.NamedTemporaryFile(dir=out, suffix='.npz', delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, os.path.join(out, 'outputs.npz'))
    manifest = {
        'knover_commit': KNOVER_COMMIT,
        'paddle_version': paddle.__version__,
        'seed': opt.seed,
        'config': TINY_CONFIG,
        'mask_id': MASK_ID,
        'examples': EXAMPLES,
        'plato_argv': plato_argv,
        'nsp_argv': nsp_argv,
        'plato_params': sorted(plato_values),
        'arrays': {k: list(v.shape) for k, v in arrays.items()},
    }
    with open(os.path.join(out, 'manifest.json'), 'w') as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
    print(json.dumps({'out': out, 'picks': picks}, ensure_ascii=False))


if __name__ == '__main__':
    main()
