"""Pseudo-reference generation speed: the batched decoder against ParlAI's per-row search.

    .venv/bin/python bench/pseudo_refs_speed.py -mf runs/multiref_dd/mr_hred.gt/model \\
        --data-dir ../shared/data/dailydialog --contexts 640 --num-hyps 5 --batchsize 320

Both decoders of ``parlai generate_pseudo_refs`` (``--hyp-decoder batched`` and ``parlai``)
write N nucleus-sampled hypotheses (p = 0.95, at most ``--max-len`` tokens) for the first
``--contexts`` training contexts of ``dailydialog_ext:no_start`` with the same teacher model;
only the generation is timed (a run that stops before its first context, i.e. loading the
model and the teacher, is timed too and subtracted), ``--repeats`` times with the decoders
interleaved; the median is reported as contexts per second. One intra-op thread unless
``--threads``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from parlai_ext.scripts.generate_pseudo_refs import GeneratePseudoRefs


def run(model_file: str, data_dir: str, outfile: str, decoder: str, args, new: int) -> float:
    start = time.perf_counter()
    GeneratePseudoRefs.main(
        '-mf', model_file, '-t', 'dailydialog_ext:no_start', '--dailydialog-data-dir', data_dir,
        '-dt', 'train:evalmode', '-o', outfile, '--num-hyps', str(args.num_hyps),
        '--hyp-topp', '0.95', '--hyp-max-len', str(args.max_len), '-bs', str(args.batchsize),
        '--progress', 'false', '--hyp-decoder', decoder, '--max-new-contexts', str(new),
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-mf', '--model-file', required=True)
    parser.add_argument('--data-dir', default='../shared/data/dailydialog')
    parser.add_argument('--contexts', type=int, default=640)
    parser.add_argument('--num-hyps', type=int, default=5)
    parser.add_argument('--max-len', type=int, default=20)
    parser.add_argument('--batchsize', type=int, default=320, help='rows per forward')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds: dict[str, list[float]] = {'batched': [], 'parlai': []}
    for _ in range(args.repeats):
        for decoder in seconds:
            with tempfile.TemporaryDirectory() as folder:
                loading = run(
                    args.model_file, args.data_dir, os.path.join(folder, 'a'), decoder, args, 0
                )
                total = run(
                    args.model_file, args.data_dir, os.path.join(folder, 'b'), decoder, args,
                    args.contexts,
                )  # fmt: skip
                seconds[decoder].append(total - loading)
    result = {
        'contexts': args.contexts,
        'num_hyps': args.num_hyps,
        'batchsize': args.batchsize,
        'threads': args.threads,
    }
    for decoder, times in seconds.items():
        median = statistics.median(times)
        result[decoder] = {'seconds': round(median, 2), 'contexts_per_s': args.contexts / median}
    result['speedup'] = result['parlai']['seconds'] / result['batched']['seconds']
    print(json.dumps(result, indent=1))


if __name__ == '__main__':
    main()
