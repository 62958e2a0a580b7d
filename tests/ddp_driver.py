"""Several ``multiprocessing_train`` configurations in one pair of CPU workers (tests only).

``python tests/ddp_driver.py RUNS.json`` reads ``[[name, checksum_dir, [args...]], ...]``, parses
each configuration with ParlAI's ``multiprocessing_train`` parser, then does what
``parlai multiprocessing_train`` does (``launch_and_train``: this process is worker 0, one
spawned process is worker 1, both run ``multiprocess_train`` with a fresh gloo group on a free
port) for every configuration in turn, so the two workers import torch and ParlAI once for
all of them instead of once per configuration. ``CHECKSUM_DIR`` is set to the configuration's
folder in both workers before it runs; ``=== <name>`` lines on stdout name the one running.
"""

from __future__ import annotations

import json
import os
import sys


def _run_all(rank: int, runs: list[tuple[str, str, dict, int]]) -> None:
    from parlai.scripts.multiprocessing_train import multiprocess_train

    for name, checksum_dir, opt, port in runs:
        os.environ['CHECKSUM_DIR'] = checksum_dir
        if rank == 0:
            print(f'=== {name}', flush=True)
        # the spawned worker is rank 0 of spawn() with rank offset 1, as in launch_and_train
        multiprocess_train(rank - 1 if rank else 0, opt, port, 1 if rank else 0)
        if rank == 0:
            print(f'=== {name} done', flush=True)


def _spawned(index: int, runs: list[tuple[str, str, dict, int]]) -> None:
    _run_all(index + 1, runs)


def main(path: str) -> None:
    import torch.multiprocessing as mp
    from parlai.scripts.multiprocessing_train import MultiProcessTrain
    from parlai.utils.distributed import find_free_port

    with open(path, encoding='utf-8') as handle:
        configurations = json.load(handle)
    runs = []
    for name, checksum_dir, args in configurations:
        opt = MultiProcessTrain.setup_args().parse_args(args)
        if opt['distributed_world_size'] != 2:
            raise SystemExit(f'{path}: {name}: expected --distributed-world-size 2')
        runs.append((name, checksum_dir, opt, find_free_port()))
    context = mp.start_processes(_spawned, (runs,), nprocs=1, join=False, start_method='spawn')
    _run_all(0, runs)
    context.join()


if __name__ == '__main__':
    main(sys.argv[1])
