"""Measured what-ifs for ``docs/speed.md``: two proposed changes, patched into a worker only.

Nothing in the repository changes: each "what-if" worker patches a method of the model code in
its own process before building the agent, and runs interleaved with the unpatched agent and
ParlAI's reference (``bench/harness.py``), so the gain of a change is measured side by side,
before anyone edits the model files:

- **P1 + P5** (training): ``unified_transformer``'s output layer, loss and predictions only at
  the real label tokens (not at every padded position), predictions by ``max`` instead of
  ``argmax``. The patched ``compute_loss`` records ``loss``, ``ppl`` and ``token_acc`` as ParlAI
  does (not ParlAI's other per-token metrics): a timing stand-in, not the final code.
- **P2** (generation): PLATO-2's K = 20 sampling skips the key/value-cache reorder, whose
  indices are the identity for ParlAI's sampling searches.

Usage::

    python bench/whatif_speedups.py --quick

Writes ``runs/bench/whatif_speedups[-quick]-<time>.{json,md}`` (or ``--out STEM``). Once the
changes are in the model code, the ordinary benchmarks measure them and this script has done
its job.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
from bench_setup import task_with_dictionary, write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    GenerateWorkload,
    TrainWorkload,
    load_line,
    load_summary,
    machine_info,
    markdown_table,
    paired_ratios,
    run_interleaved,
    spread,
)


def train_real_tokens_only(agent_args: list[str], task_args: list[str], warmup: int = 5):
    """A worker workload: ``unified_transformer`` with P1 + P5 patched in (this process only)."""
    from parlai.core.metrics import AverageMetric
    from parlai.core.torch_generator_agent import PPLMetric

    from parlai_ext.agents.unified_transformer import UnifiedTransformerAgent

    def compute_loss(self, batch, return_output=False):
        model = self.model
        labels = batch.label_vec
        inputs = model._get_initial_forced_decoder_input(labels.size(0), labels[:, :-1])
        hidden, context = model.transformer(batch.text_vec, inputs)
        notnull = labels != self.NULL_IDX
        logits = model.output(hidden[notnull][None])[0]  # (real tokens, vocab)
        targets = labels[notnull]
        per_token = F.cross_entropy(logits, targets, reduction='none')
        rows = notnull.nonzero()[:, 0]
        per_example = torch.zeros(labels.size(0)).index_add_(0, rows, per_token)
        n_tokens = notnull.sum(-1)
        preds = logits.max(dim=-1).indices
        correct = torch.zeros(labels.size(0)).index_add_(0, rows, (preds == targets).float())
        self.record_local_metric('loss', AverageMetric.many(per_example, n_tokens))
        self.record_local_metric('ppl', PPLMetric.many(per_example, n_tokens))
        self.record_local_metric('token_acc', AverageMetric.many(correct, n_tokens))
        loss = per_example.sum() / n_tokens.sum()
        return (loss, (logits, preds, context)) if return_output else loss

    UnifiedTransformerAgent.compute_loss = compute_loss
    return TrainWorkload(agent_args, task_args, warmup)


def generate_no_identity_reorder(agent_args: list[str], task_args: list[str], warmup: int = 1):
    """A worker workload: sampling without the identity key/value-cache reorder (P2)."""
    from parlai_ext.agents.unified_transformer import UnifiedTransformerGeneratorModel

    def keep(self, incr_state, inds):
        return incr_state

    UnifiedTransformerGeneratorModel.reorder_decoder_incremental_state = keep
    return GenerateWorkload(agent_args, task_args, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='../shared/data/dailydialog')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--rounds', type=int, default=None, help='default 4 (quick) / 8')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    rounds = args.rounds or (4 if args.quick else 8)
    task, workdir, dict_file = task_with_dictionary(args.data, 'bench_whatif_', no_start=True)
    train_args = configs.UNIFIED_2 + configs.train_args(dict_file)
    here = 'whatif_speedups'
    train_specs = {
        'ParlAI transformer/generator (2+2)': {
            'kind': 'train',
            'agent_args': configs.PARLAI_GENERATOR + configs.train_args(dict_file),
            'task_args': task,
        },
        'unified_transformer (2 layers)': {
            'kind': 'train', 'agent_args': train_args, 'task_args': task,
        },
        'unified_transformer + P1 + P5': {
            'kind': 'factory', 'factory': f'{here}:train_real_tokens_only',
            'kw': {'agent_args': train_args, 'task_args': task},
        },
    }  # fmt: skip
    print('training:')
    train = run_interleaved(train_specs, rounds, 2, ['fp32'], args.threads, workdir)
    sampling = configs.PLATO2 + configs.generate_args(dict_file, 8, 20)
    sampling += ['--inference', 'topk', '--topk', '10']
    gen_specs = {
        'ParlAI beam 20': {
            'kind': 'generate',
            'agent_args': configs.PARLAI_GENERATOR
            + configs.generate_args(dict_file, 8, 20)
            + ['--inference', 'beam', '--beam-size', '20'],
            'task_args': task,
        },
        'PLATO-2 K = 20 (logprob rank)': {
            'kind': 'generate', 'agent_args': sampling, 'task_args': task,
        },
        'PLATO-2 K = 20 + P2': {
            'kind': 'factory', 'factory': f'{here}:generate_no_identity_reorder',
            'kw': {'agent_args': sampling, 'task_args': task},
        },
    }  # fmt: skip
    print('generation:')
    gen = run_interleaved(gen_specs, rounds, 1, (), args.threads, workdir)

    reference = 'ParlAI transformer/generator (2+2)'
    train_rows = []
    for name in train_specs:
        train_rows.append(
            [name, spread(train.cpu_rate(name)).format(),
             spread(paired_ratios(train.rate(name), train.rate(reference))).format('.2f', '×'),
             spread(paired_ratios(train.cpu_rate(name), train.cpu_rate(reference))).format('.2f', '×'),
             f'{spread(train.mfu(name)).median:.1%}']
        )  # fmt: skip
    gen_rows = []
    for name in gen_specs:
        gen_rows.append(
            [name, spread(gen.cpu_per_unit(name)).format('.3f'),
             spread(paired_ratios(gen.per_unit(name), gen.per_unit('ParlAI beam 20'))).format('.2f', '×'),
             spread(paired_ratios(gen.cpu_per_unit(name), gen.cpu_per_unit('ParlAI beam 20'))).format('.2f', '×')]
        )  # fmt: skip
    machine = machine_info(args.threads)
    load = load_summary([train, gen])
    markdown = '\n'.join(
        [
            f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; '
            f'{rounds} interleaved rounds; fp32.',
            load_line(load) + ' Numbers measured under load are not final.\n',
            markdown_table(
                ['training (batch 32)', 'tokens / CPU s', 'vs ParlAI, wall', 'vs ParlAI, CPU time',
                 'MFU (CPU time)'], train_rows,
            ),
            '',
            markdown_table(
                ['generation (batch 8, 20 tokens)', 'CPU s / response', 'vs beam 20, wall',
                 'vs beam 20, CPU time'], gen_rows,
            ),
        ]
    )  # fmt: skip
    data = {
        'machine': machine,
        'settings': vars(args),
        'load': load,
        'train': train.to_json(),
        'generate': gen.to_json(),
    }
    write_and_print_results(__file__, args.out, args.quick, data, markdown)


if __name__ == '__main__':
    main()
