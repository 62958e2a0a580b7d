"""PLATO-2 speed (issues #6, #23), side by side with ParlAI's ``transformer/generator``.

One run, same dictionary, data, batch, thread count and dimensions (hidden 256, 4 heads,
FFN 1024; ParlAI's model has 2 encoder + 2 decoder layers, ours 2 unified layers, i.e. the
depth of each side: "equal dimensions" as in ``bench/bench_generators.py``):

1. training tokens/s of PLATO-2 stage 1 (``unified_transformer``) vs ParlAI's generator
   (target: >= 1.3x), with stage 2.1 (``plato2``, two passes per step) and stage 2.2
   (``plato2_evaluator``, positive + negative pairs) for reference;
2. seconds per response of K=20 generate-then-rank (``plato2``: 20 top-k candidates in one
   batch + evaluator rerank) vs ParlAI's beam search with beam 20 (target: <= 1.2x). Both
   decode exactly ``--gen-length`` tokens (``--beam-min-length`` = that length), so the
   comparison does not depend on when untrained weights happen to stop.

Every configuration runs in its own worker process; the configurations of a table are
interleaved round by round (``bench/harness.py``), the ratios are taken per round and the
tables give median (quartiles) over rounds and the machine's load. Usage::

    python bench/plato2_speed.py --quick      # a check, under five minutes
    python bench/plato2_speed.py              # for the docs

Writes ``runs/bench/plato2_speed[-quick]-<time>.{json,md}`` (or ``--out STEM``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import configs  # noqa: E402
from bench_setup import task_with_dictionary, write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    load_line,
    load_summary,
    machine_info,
    markdown_table,
    paired_ratios,
    run_interleaved,
    spread,
)

TRAIN_REFERENCE = 'ParlAI transformer/generator (2+2)'
GEN_REFERENCE = 'ParlAI transformer/generator (2+2), beam 20'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default='../shared/data/dailydialog')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--quick', action='store_true', help='a check: fewer rounds and steps')
    parser.add_argument('--rounds', type=int, default=None, help='default 3 (quick) / 8')
    parser.add_argument('--steps', type=int, default=None, help='train steps per chunk')
    parser.add_argument('--batch', type=int, default=32)
    parser.add_argument('--gen-batch', type=int, default=8)
    parser.add_argument('--gen-batches', type=int, default=None, help='batches per chunk')
    parser.add_argument('--gen-length', type=int, default=20)
    parser.add_argument('--precision', choices=['fp32', 'bf16'], default='fp32')
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    steps = args.steps or (2 if args.quick else 5)
    gen_batches = args.gen_batches or (1 if args.quick else 3)

    task, workdir, dict_file = task_with_dictionary(args.data, 'bench_plato2_', no_start=True)
    evaluator = os.path.join(workdir, 'evaluator')
    configs.save_untrained(configs.PLATO2_EVALUATOR, task, dict_file, evaluator)
    machine = machine_info(args.threads)

    train_args = configs.train_args(dict_file, args.batch, 128, 64)
    trainers = {
        TRAIN_REFERENCE: configs.PARLAI_GENERATOR,
        'PLATO-2 stage 1 (unified_transformer, 2)': configs.UNIFIED_2,
        'PLATO-2 stage 2.1 (plato2, 2)': configs.PLATO2,
        'PLATO-2 stage 2.2 (plato2_evaluator, 2)': configs.PLATO2_EVALUATOR,
    }
    if args.quick:
        trainers.pop('PLATO-2 stage 2.2 (plato2_evaluator, 2)')
    ranker_args = configs.without_flag(train_args, '--skip-generation')  # the evaluator ranks
    specs = {
        name: {'kind': 'train', 'precision': args.precision, 'task_args': task,
               'agent_args': agent + (ranker_args if agent is configs.PLATO2_EVALUATOR
                                      else train_args)}
        for name, agent in trainers.items()
    }  # fmt: skip
    print('training:')
    train = run_interleaved(specs, rounds, steps, [args.precision], args.threads, workdir)
    rows, summary = [], {}
    for name in trainers:
        tokens = spread(train.rate(name))
        ratio = spread(paired_ratios(train.rate(name), train.rate(TRAIN_REFERENCE)))
        mfu = spread(train.mfu(name, args.precision))
        cpu = spread(paired_ratios(train.cpu_rate(name), train.cpu_rate(TRAIN_REFERENCE)))
        summary[name] = {
            'tokens_per_s': tokens, 'vs_reference': ratio, 'vs_reference_cpu_time': cpu,
            'mfu': mfu,
        }  # fmt: skip
        rows.append(
            [name, f'{train.info[name]["params"] / 1e6:.2f} M', tokens.format(),
             ratio.format('.2f', 'x'), cpu.format('.2f', 'x'), f'{mfu.median:.1%}']
        )  # fmt: skip

    gen_args = configs.generate_args(dict_file, args.gen_batch, args.gen_length)
    generators = {
        GEN_REFERENCE: configs.PARLAI_GENERATOR + ['--inference', 'beam', '--beam-size', '20'],
        'PLATO-2, K=20 top-k (k=10) + evaluator rerank': configs.PLATO2
        + ['--inference', 'topk', '--topk', '10', '--evaluator-model-file', evaluator],
        'PLATO-2, K=20 top-k (k=10), logprob rank': configs.PLATO2
        + ['--inference', 'topk', '--topk', '10'],
    }
    specs = {
        name: {'kind': 'generate', 'agent_args': agent + gen_args, 'task_args': task,
               'precision': args.precision}
        for name, agent in generators.items()
    }  # fmt: skip
    print('generation:')
    gen = run_interleaved(specs, rounds, gen_batches, (), args.threads, workdir)
    gen_rows, gen_summary = [], {}
    for name in generators:
        seconds = spread(gen.per_unit(name))
        ratio = spread(paired_ratios(gen.per_unit(name), gen.per_unit(GEN_REFERENCE)))
        cpu = spread(paired_ratios(gen.cpu_per_unit(name), gen.cpu_per_unit(GEN_REFERENCE)))
        gen_summary[name] = {
            'seconds_per_response': seconds, 'vs_reference': ratio, 'vs_reference_cpu_time': cpu
        }  # fmt: skip
        gen_rows.append(
            [name, seconds.format('.4f'), ratio.format('.2f', 'x'), cpu.format('.2f', 'x')]
        )

    load = load_summary([train, gen])
    markdown = '\n'.join(
        [
            f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; '
            f'{args.precision}; {rounds} interleaved rounds, median (quartiles) over rounds, '
            'ratios per round (wall time, and each worker\'s own CPU time).',
            load_line(load) + ' Numbers measured under load are not final.',
            f'\n### Training throughput (batch {args.batch}, context <= 128, label <= 64 '
            f'tokens, {steps} steps per chunk)\n',
            markdown_table(
                ['model', 'params', 'tokens/s', 'vs ParlAI (per round)', 'vs ParlAI, CPU time',
                 'MFU'], rows
            ),
            f'\n### Generation: seconds per response (batch {args.gen_batch}, exactly '
            f'{args.gen_length} tokens per candidate, untrained weights)\n',
            markdown_table(
                ['decoding', 's / response', 'vs ParlAI beam 20 (per round)',
                 'CPU time vs beam 20'], gen_rows,
            ),
        ]
    )  # fmt: skip
    data = {
        'machine': machine,
        'settings': vars(args),
        'load': load,
        'train': {'group': train.to_json(), 'summary': summary},
        'generate': {'group': gen.to_json(), 'summary': gen_summary},
    }
    write_and_print_results(__file__, args.out, args.quick, data, markdown)


if __name__ == '__main__':
    main()
