"""The configurations the speed benchmarks compare, in one place (equal dimensions).

ParlAI's ``transformer/generator`` with 2 encoder + 2 decoder layers (pre-norm, GELU, learned
positions) against our models at the same hidden size, heads and FFN size; the same data,
dictionary, batch and truncation for every agent (:func:`train_args`, :func:`generate_args`).
"""

from __future__ import annotations

import os

DIMS = ['--embedding-size', '256', '--n-heads', '4', '--ffn-size', '1024', '--dropout', '0.1']
PARLAI_GENERATOR = [
    '-m', 'transformer/generator', '--n-layers', '2', '--variant', 'prelayernorm',
    '--activation', 'gelu', '--learn-positional-embeddings', 'true', '--n-positions', '512',
    *DIMS,
]  # fmt: skip
UNIFIED_2 = ['-m', 'unified_transformer', '--n-layers', '2', *DIMS]
UNIFIED_4 = ['-m', 'unified_transformer', '--n-layers', '4', *DIMS]
# bf16 parameters end to end with fp32 master weights (a bf16-only configuration)
UNIFIED_2_BF16_WEIGHTS = [*UNIFIED_2, '--bf16-weights', 'true']
ENCODER_DECODER = ['-m', 'encoder_decoder', '--n-layers', '2', *DIMS]
PLATO2 = ['-m', 'plato2', '--n-layers', '2', '--n-latent', '20', *DIMS]
PLATO2_EVALUATOR = ['-m', 'plato2_evaluator', '--n-layers', '2', *DIMS]


def with_dim(agent_args: list[str], dim: int) -> list[str]:
    """``agent_args`` at hidden size ``dim`` (heads of 64, FFN 4·dim), every model alike."""
    sizes = {'--embedding-size': dim, '--n-heads': max(1, dim // 64), '--ffn-size': 4 * dim}
    out = list(agent_args)
    for flag, value in sizes.items():
        if flag in out:
            out[out.index(flag) + 1] = str(value)
    return out


def task_args(data: str | None, no_start: bool = False) -> list[str]:
    """DailyDialog from ``data`` when that folder exists, else the synthetic ``ext_demo``."""
    if data and os.path.isdir(data):
        task = 'dailydialog_ext:no_start' if no_start else 'dailydialog_ext'
        return ['-t', task, '--dailydialog-data-dir', os.path.abspath(data)]
    print(f'({data} not found: using the synthetic ext_demo dialogues)')
    return ['-t', 'ext_demo']


def build_dictionary(task: list[str], dict_file: str) -> None:
    """One ParlAI dictionary of the task's training data, shared by every agent."""
    from parlai.scripts.build_dict import build_dict, setup_args

    build_dict(setup_args().parse_args([*task, '--dict-file', dict_file]))


def train_args(dict_file: str, batch: int = 32, text: int = 128, label: int = 64) -> list[str]:
    """Training options every agent gets (AdamW, lr 1e-3, no generation during training)."""
    return [
        '--dict-file', dict_file, '-bs', str(batch), '--optimizer', 'adamw', '-lr', '1e-3',
        '--text-truncate', str(text), '--label-truncate', str(label),
        '--skip-generation', 'true',
    ]  # fmt: skip


def without_flag(args: list[str], flag: str) -> list[str]:
    """``args`` without ``flag`` and its value (e.g. ``--skip-generation`` for a ranker)."""
    out = list(args)
    while flag in out:
        at = out.index(flag)
        del out[at : at + 2]
    return out


def generate_args(dict_file: str, batch: int, length: int, text: int = 128) -> list[str]:
    """Generation options: every response exactly ``length`` tokens (min length = max length),
    so the comparison does not depend on when untrained weights happen to stop."""
    return [
        '--dict-file', dict_file, '-bs', str(batch), '--text-truncate', str(text),
        '--label-truncate', str(length), '--beam-min-length', str(length),
        '--skip-generation', 'false',
    ]  # fmt: skip


def save_untrained(agent_args: list[str], task: list[str], dict_file: str, model_file: str):
    """An untrained model file of ``agent_args`` on ``dict_file`` (e.g. PLATO-2's evaluator)."""
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser

    opt = ParlaiParser(True, True).parse_args(
        [*agent_args, *task, '--dict-file', dict_file, '-mf', model_file]
    )
    create_agent(opt, requireModelExists=False).save(model_file)
