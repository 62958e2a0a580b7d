"""``parlai convert_knover``: the authors' PLATO-2 (Knover, PaddlePaddle) as ParlAI model files.

Reads Knover's ``Plato`` and ``NSP`` parameter folders (``fluid.io.save_params``, as in the
released ``24L.tar`` / ``32L.tar``) or ``.pdparams`` files without PaddlePaddle
(:mod:`parlai_ext.knover`), and the released SentencePiece model, and writes
``OUT/plato2`` (``-m plato2``) and ``OUT/plato2_evaluator`` (``-m plato2_evaluator``), each
with its ``.opt`` and ``.dict``, set up as Knover's PLATO-2 inference scripts: top-k 10, at
most 64 tokens, the NSP model reranks the K candidates with the -1000 penalties, and the
switches that make our models Knover's (``--lm-head knover``, ``--evaluator-cls token``,
``--mask-slot token``, ``--spm-knover-ids true``, ``--knover-layout true``,
``--rerank-style knover``; docs/knover.md)::

    parlai convert_knover --plato 24L/Plato --nsp 24L/NSP --spm-model spm.model \\
        --n-heads 16 --out /models/plato2_24L
    parlai interactive -mf /models/plato2_24L/plato2

Every file is written atomically (:func:`parlai_ext.io.atomic_writes`); the options are
checked before anything is read, and a bad parameter file is named in the error.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from parlai.core.agents import create_agent
from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript, register_script

from parlai_ext import knover
from parlai_ext.io import atomic_writes

SPM_DICT_CLASS = 'parlai_ext.sentencepiece_dict:SentencePieceDictionaryAgent'
# the inference settings of Knover's PLATO-2 scripts (scripts/*/infer.sh, plato-2 branch)
INFERENCE_ARGS = [
    '--inference', 'topk', '--topk', '10', '--max-dec-len', '64', '--beam-min-length', '1',
    '--rerank-penalties', 'true', '--rerank-style', 'knover',
]  # fmt: skip


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    if parser is None:
        parser = ParlaiParser(False, False, "Convert Knover's PLATO-2 parameters to ParlAI")
    group = parser.add_argument_group('Knover conversion')
    group.add_argument('--plato', required=True, help='Knover Plato parameter folder / .pdparams')
    group.add_argument('--nsp', default=None, help='Knover NSP parameter folder / .pdparams')
    group.add_argument('--spm-model', required=True, help='the released SentencePiece spm.model')
    group.add_argument('--out', required=True, help='output folder (plato2, plato2_evaluator)')
    group.add_argument(
        '--knover-config',
        default=None,
        help="Knover's model json (24L.json / 32L.json): num_attention_heads and the "
        'dropout rates; else --n-heads',
    )
    group.add_argument('--n-heads', type=int, default=None, help='attention heads (24L 16, 32L 32)')
    group.add_argument(
        '--lower', type='bool', default=False, help='lower-case inputs (the 32L model)'
    )
    group.add_argument('--text-truncate', type=int, default=128, help="Knover's max_src_len")
    group.add_argument('--label-truncate', type=int, default=128, help="Knover's max_tgt_len")
    return parser


def check_options(opt: dict) -> dict:
    """Check the options before reading anything; returns the Knover config (may be empty)."""
    for key in ('plato', 'nsp', 'spm_model', 'knover_config'):
        path = opt.get(key)
        if path and not os.path.exists(path):
            raise FileNotFoundError(f'--{key.replace("_", "-")} {path}: no such file or folder')
    config = {}
    if opt.get('knover_config'):
        path = opt['knover_config']
        try:
            with open(path) as handle:
                config = json.load(handle)
        except json.JSONDecodeError as err:
            raise ValueError(
                f'{path}:{err.lineno}: not JSON ({err.msg}); expected 24L.json'
            ) from err
        if not isinstance(config, dict) or 'num_attention_heads' not in config:
            raise ValueError(f'{path}:1: no num_attention_heads; expected a Knover model json')
    heads = opt.get('n_heads') or config.get('num_attention_heads')
    if not heads or heads < 1:
        raise ValueError('give --n-heads (24L: 16, 32L: 32) or --knover-config 24L.json')
    if opt.get('n_heads') and config and config['num_attention_heads'] != opt['n_heads']:
        raise ValueError(
            f'--n-heads {opt["n_heads"]} disagrees with {opt["knover_config"]} '
            f'(num_attention_heads {config["num_attention_heads"]})'
        )
    if opt['text_truncate'] < 2 or opt['label_truncate'] < 2:
        raise ValueError('--text-truncate and --label-truncate must be >= 2')
    return {**config, 'num_attention_heads': heads}


def model_args(config: knover.KnoverConfig, heads: int, knover_json: dict, opt: dict) -> list:
    """Command-line options of the converted models (sizes, switches, dictionary)."""
    if config.hidden_size % heads:
        raise ValueError(f'hidden size {config.hidden_size} is not a multiple of {heads} heads')
    dropout = str(knover_json.get('hidden_dropout_prob', 0.1))
    attention_dropout = str(knover_json.get('attention_probs_dropout_prob', 0.1))
    args = [
        '--n-layers', str(config.n_layers), '--embedding-size', str(config.hidden_size),
        '--n-heads', str(heads), '--ffn-size', str(config.ffn_size),
        '--n-positions', str(config.n_positions), '--activation', 'gelu',
        '--dropout', dropout, '--attention-dropout', attention_dropout, '--relu-dropout', '0',
        '--lm-head', 'knover', '--mask-slot', 'token', '--knover-layout', 'true',
        '--text-truncate', str(opt['text_truncate']),
        '--label-truncate', str(opt['label_truncate']),
        '--dict-class', SPM_DICT_CLASS, '--spm-model-file', os.path.abspath(opt['spm_model']),
        '--spm-knover-ids', 'true', '--spm-newline-token', '', '--dict-lower',
        str(bool(opt.get('lower'))).lower(), '--delimiter', '\n', '--no-cuda',
    ]  # fmt: skip
    return args


def _write_agent(argv: list[str], state: dict[str, np.ndarray], where: str) -> None:
    """Build the agent, load ``state`` (every parameter, nothing else) and save it."""
    parser = ParlaiParser(True, True)
    agent = create_agent(parser.parse_args(argv), requireModelExists=False)
    vocab = len(agent.dict)
    tokens = state['transformer.embeddings.tokens.weight']
    if tokens.shape[0] != vocab:
        raise ValueError(
            f'{where}: {tokens.shape[0] - 1} token ids, but the SentencePiece model with '
            f'[MASK] gives {vocab - 1}; expected the spm.model released with these parameters'
        )
    tensors = {k: torch.from_numpy(v) for k, v in state.items()}
    missing, unexpected = agent.model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k != 'START']
    if missing or unexpected:
        raise ValueError(f'{where}: missing {missing[:8]}, unexpected {unexpected[:8]}')
    agent.save(agent.opt['model_file'])


def convert_knover(opt: dict) -> dict[str, str]:
    """Convert; returns ``{'plato2': path, 'plato2_evaluator': path or None}``."""
    knover_json = check_options(opt)
    heads = knover_json['num_attention_heads']
    out = opt['out']
    os.makedirs(out, exist_ok=True)
    plato_state, config = knover.convert_plato(
        knover.load_knover_params(opt['plato']), where=opt['plato'], mask_embedding=False
    )
    if config.n_latent is None:
        raise ValueError(f'{opt["plato"]}: no latent table; expected the Plato model')
    args = model_args(config, heads, knover_json, opt)
    paths = {'plato2': os.path.join(out, 'plato2'), 'plato2_evaluator': None}
    with atomic_writes():
        generator_args = ['-m', 'plato2', '-mf', paths['plato2'], '--n-latent',
                          str(config.n_latent)] + args + INFERENCE_ARGS  # fmt: skip
        if opt.get('nsp'):
            nsp_state, nsp_config = knover.convert_nsp(
                knover.load_knover_params(opt['nsp']), where=opt['nsp'], mask_embedding=False
            )
            if (nsp_config.n_layers, nsp_config.hidden_size) != (
                config.n_layers,
                config.hidden_size,
            ):
                raise ValueError(f'{opt["nsp"]}: another model size than {opt["plato"]}')
            paths['plato2_evaluator'] = os.path.join(out, 'plato2_evaluator')
            evaluator_args = ['-m', 'plato2_evaluator', '-mf', paths['plato2_evaluator'],
                              '--evaluator-cls', 'token'] + model_args(nsp_config, heads, knover_json, opt)  # fmt: skip
            _write_agent(evaluator_args, nsp_state, opt['nsp'])
            generator_args += ['--evaluator-model-file', paths['plato2_evaluator'],
                               '--ranking-score', 'evaluator']  # fmt: skip
        else:
            generator_args += ['--ranking-score', 'logprob']
        _write_agent(generator_args, plato_state, opt['plato'])
    return paths


@register_script('convert_knover')
class ConvertKnover(ParlaiScript):
    """Knover PLATO-2 parameters -> ``plato2`` and ``plato2_evaluator`` model files."""

    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> dict[str, str]:
        paths = convert_knover(self.opt)
        for name, path in paths.items():
            if path:
                print(f'convert_knover: {name} -> {path}')
        return paths


if __name__ == '__main__':
    ConvertKnover.main()
