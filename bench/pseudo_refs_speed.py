"""Pseudo-reference generation speed: the batched decoder against ParlAI's per-row search.

    .venv/bin/python bench/pseudo_refs_speed.py -mf runs/multiref_dd/mr_hred.gt/model \\
        --data-dir ../shared/data/dailydialog --contexts 640 --num-hyps 5 --batchsize 320
    .venv/bin/python bench/pseudo_refs_speed.py --quick   # a check: an untrained HRED

Both decoders of ``parlai generate_pseudo_refs`` (``--hyp-decoder batched`` and ``parlai``)
write N nucleus-sampled hypotheses (p = 0.95, at most ``--max-len`` tokens) for the first
``--contexts`` training contexts of ``dailydialog_ext:no_start`` with the same teacher model.
Each decoder lives in its own worker process (``bench/harness.py``); a chunk is one loading-only
run (the model and the teacher, stopped before the first context) and one full run, both
timed, and counts the difference; chunks alternate between the decoders over ``--rounds``
rounds; median (quartiles) over rounds, the speed-up per round, the machine's load. Without
``-mf`` an untrained ``mr_hred`` on the benchmark's dictionary is the teacher model (the
decoders' cost does not depend on the weights, only the hypotheses' lengths do). One intra-op
thread unless ``--threads``. Writes ``runs/bench/pseudo_refs_speed[-quick]-<time>.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_setup import write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    load_line,
    load_summary,
    machine_info,
    markdown_table,
    paired_ratios,
    run_interleaved,
    spread,
)

DECODERS = ('parlai', 'batched')


class PseudoRefsWorkload:
    """``run(n)``: seconds of ``generate_pseudo_refs`` for ``n`` contexts, loading excluded."""

    def __init__(
        self, model_file: str, data_dir: str, decoder: str, num_hyps: int, max_len: int,
        batchsize: int,
    ) -> None:  # fmt: skip
        self.args = [
            '-mf', model_file, '-t', 'dailydialog_ext:no_start', '--dailydialog-data-dir',
            data_dir, '-dt', 'train:evalmode', '--num-hyps', str(num_hyps), '--hyp-topp', '0.95',
            '--hyp-max-len', str(max_len), '-bs', str(batchsize), '--progress', 'false',
            '--hyp-decoder', decoder,
        ]  # fmt: skip
        self.info = {'decoder': decoder}
        self._timed(0)  # imports, caches

    def _timed(self, contexts: int) -> tuple[float, float]:
        """Wall and CPU seconds of one ``generate_pseudo_refs`` run over ``contexts``."""
        from parlai_ext.scripts.generate_pseudo_refs import GeneratePseudoRefs

        with tempfile.TemporaryDirectory() as folder:
            start, cpu_start = time.perf_counter(), time.process_time()
            GeneratePseudoRefs.main(
                *self.args, '-o', os.path.join(folder, 'out.jsonl'),
                '--max-new-contexts', str(contexts),
            )  # fmt: skip
            return time.perf_counter() - start, time.process_time() - cpu_start

    def run(self, n: int) -> dict[str, float]:
        loading, loading_cpu = self._timed(0)
        total, total_cpu = self._timed(n)
        return {
            'seconds': total - loading,
            'cpu_seconds': total_cpu - loading_cpu,
            'units': n,
            'loading_seconds': loading,
        }


def untrained_model(data_dir: str, folder: str) -> str:
    """An untrained ``mr_hred`` (hidden 128) with a dictionary of the data, saved in
    ``folder``."""
    from parlai.core.agents import create_agent
    from parlai.core.params import ParlaiParser
    from parlai.scripts.build_dict import build_dict, setup_args

    task = ['-t', 'dailydialog_ext:no_start', '--dailydialog-data-dir', data_dir]
    dict_file = os.path.join(folder, 'model.dict')
    build_dict(setup_args().parse_args([*task, '--dict-file', dict_file, '--dict-lower', 'true']))
    model_file = os.path.join(folder, 'model')
    opt = ParlaiParser(True, True).parse_args(
        ['-m', 'mr_hred', *task, '--dict-file', dict_file, '--dict-lower', 'true',
         '--hidden-size', '128', '--embedding-size', '64', '-mf', model_file]
    )  # fmt: skip
    create_agent(opt, requireModelExists=False).save(model_file)
    return model_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-mf', '--model-file', default=None, help='default: an untrained HRED')
    parser.add_argument('--data-dir', default='../shared/data/dailydialog')
    parser.add_argument('--quick', action='store_true', help='a check: fewer contexts, rounds')
    parser.add_argument('--contexts', type=int, default=None, help='default 64 (quick) / 640')
    parser.add_argument('--num-hyps', type=int, default=5)
    parser.add_argument('--max-len', type=int, default=20)
    parser.add_argument('--batchsize', type=int, default=320, help='rows per forward')
    parser.add_argument('--rounds', type=int, default=None, help='default 2 (quick) / 4')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--out', default=None)
    args = parser.parse_args()
    contexts = args.contexts or (64 if args.quick else 640)
    rounds = args.rounds or (2 if args.quick else 4)
    data_dir = os.path.abspath(args.data_dir)
    folder = tempfile.mkdtemp(prefix='bench_pseudo_refs_')
    model_file = args.model_file or untrained_model(data_dir, folder)
    specs = {
        decoder: {
            'kind': 'factory',
            'factory': 'pseudo_refs_speed:PseudoRefsWorkload',
            'kw': {'model_file': os.path.abspath(model_file), 'data_dir': data_dir,
                   'decoder': decoder, 'num_hyps': args.num_hyps, 'max_len': args.max_len,
                   'batchsize': args.batchsize},
        }
        for decoder in DECODERS
    }  # fmt: skip
    group = run_interleaved(specs, rounds, contexts, (), args.threads, folder, warm=0)
    speedup = spread(paired_ratios(group.per_unit('parlai'), group.per_unit('batched')))
    cpu_speedup = spread(paired_ratios(group.cpu_per_unit('parlai'), group.cpu_per_unit('batched')))
    rows, summary = [], {}
    for decoder in DECODERS:
        seconds = spread(s.seconds for s in group.samples[decoder])
        rate = spread(1 / x for x in group.per_unit(decoder))
        summary[decoder] = {'seconds': seconds, 'contexts_per_s': rate}
        rows.append(
            [f'`--hyp-decoder {decoder}`', seconds.format('.2f'), rate.format('.2f'),
             speedup.format('.2f', '×') if decoder == 'batched' else '1.00×',
             cpu_speedup.format('.2f', '×') if decoder == 'batched' else '1.00×']
        )  # fmt: skip
    machine = machine_info(args.threads)
    load = load_summary([group])
    trained = 'untrained mr_hred' if not args.model_file else f'`{args.model_file}`'
    markdown = '\n'.join(
        [
            f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; teacher '
            f'model {trained}; {args.num_hyps} hypotheses per context, at most {args.max_len} '
            f'tokens, {args.batchsize} rows per forward; {rounds} interleaved rounds.',
            load_line(load) + ' Numbers measured under load are not final.\n',
            markdown_table(
                ['decoder', f'seconds for {contexts} contexts', 'contexts/s', 'speed-up',
                 'CPU-time speed-up'], rows
            ),
        ]
    )  # fmt: skip
    data = {
        'machine': machine,
        'settings': vars(args),
        'load': load,
        'group': group.to_json(),
        'summary': summary,
        'speedup': speedup,
        'cpu_speedup': cpu_speedup,
    }
    write_and_print_results(__file__, args.out, args.quick, data, markdown)


if __name__ == '__main__':
    main()
