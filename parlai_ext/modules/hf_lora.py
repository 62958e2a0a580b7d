"""LoRA through ``peft`` and adapter-only checkpoints (split from :mod:`parlai_ext.modules.hf`).

:func:`apply_lora` injects adapters (and trainable rows for added tokens) and freezes the
base; :func:`merge_lora` / :func:`merged_state_dict` fold them back into plain weights. The
adapter-only checkpoint (:func:`adapter_state_dict`, :func:`load_adapter_state_dict`,
:func:`frozen_base_keys`, :func:`is_adapter_checkpoint`) saves only the trainable parameters
(adapters, added token rows, the agents' small heads); the frozen base comes from the base
checkpoint at load time. :func:`load_plain_state_dict` loads a full state dict into an adapted
model; :func:`parameter_count`. Everything here is re-exported by
:mod:`parlai_ext.modules.hf`.

``peft`` is imported inside the functions, never at module import.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LoraSettings:
    """``--lora-rank`` (0 = off), ``--lora-alpha``, ``--lora-dropout``, target modules."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None: peft's default for the architecture

    @property
    def enabled(self) -> bool:
        return self.rank > 0


# peft knows defaults for most architectures; these cover the ones it may not
_FALLBACK_TARGETS = ('q_proj', 'k_proj', 'v_proj', 'o_proj', 'c_attn', 'c_proj', 'query', 'value')


def apply_lora(
    model: nn.Module,
    settings: LoraSettings,
    trainable_token_ids: Sequence[int] = (),
) -> nn.Module:
    """Inject LoRA adapters into ``model`` in place (peft) and freeze everything else in it.

    ``trainable_token_ids`` (e.g. the rows ParlAI's special tokens added to the vocabulary)
    stay trainable through peft's token adapter, so new tokens learn an embedding without
    training the whole matrix. The module tree keeps its class and attribute names (the
    ``base_layer`` of each adapted linear holds the frozen weight).
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not settings.enabled:
        return model
    targets = list(settings.target_modules) if settings.target_modules else None
    if targets is None:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        model_type = getattr(getattr(model, 'config', None), 'model_type', None)
        known = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(model_type)
        if known is None:
            names = {n.rsplit('.', 1)[-1] for n, m in model.named_modules()}
            known = [t for t in _FALLBACK_TARGETS if t in names]
        targets = list(known)
    extra = {}
    if trainable_token_ids:
        extra['trainable_token_indices'] = sorted({int(i) for i in trainable_token_ids})
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=targets,
        **extra,
    )
    inject_adapter_in_model(config, model)  # freezes every non-adapter parameter of model
    model._parlai_ext_lora = settings  # marks the frozen base for adapter-only checkpoints
    model._parlai_ext_lora_tokens = tuple(extra.get('trainable_token_indices', ()))
    return model


def _adapter_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost peft modules: wrappers (token adapters) and tuner layers (LoRA linears)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if any(name.startswith(outer + '.') for outer, _ in found):
            continue
        if isinstance(module, BaseTunerLayer) or hasattr(
            module, 'unload_and_optionally_merge_module'
        ):
            found.append((name, module))
    return found


def has_lora(model: nn.Module) -> bool:
    return bool(_adapter_modules(model))


def merge_lora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Fold every adapter into its base weight and remove the adapter layers (in place).

    The result has the original architecture and parameter names, so it saves as a full
    checkpoint and reloads without ``peft``. ``merge=False`` drops the adapters unmerged.
    """
    for name, module in _adapter_modules(model):
        if hasattr(module, 'unload_and_optionally_merge_module'):
            plain = module.unload_and_optionally_merge_module(
                merge=merge, safe_merge=False, adapter_names=None
            )
        else:
            if merge:
                module.merge()
            plain = module.get_base_layer()
        parent_name, _, child = name.rpartition('.')
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, plain)
    for attribute in ('peft_config', '_parlai_ext_lora', '_parlai_ext_lora_tokens'):
        if hasattr(model, attribute):
            delattr(model, attribute)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def merged_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """``root``'s state dict with every LoRA-adapted model merged (``root`` is untouched)."""
    with torch.no_grad():
        clone = copy.deepcopy(root)
    for module in list(clone.modules()):
        if getattr(module, '_parlai_ext_lora', None) is not None:
            merge_lora(module)
    return clone.state_dict()


def frozen_base_keys(root: nn.Module) -> set[str]:
    """State-dict keys of the frozen base weights under every LoRA-adapted model in ``root``."""
    keys: set[str] = set()
    for prefix, module in root.named_modules():
        if getattr(module, '_parlai_ext_lora', None) is None:
            continue
        lead = prefix + '.' if prefix else ''
        for name, param in module.named_parameters(remove_duplicate=False):
            if not param.requires_grad:
                keys.add(lead + name)
    return keys


def adapter_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """``root``'s state dict without the frozen base weights of its LoRA-adapted models.

    What remains: the adapters, the added-token rows, the buffers, and every parameter
    outside the adapted models (the agents' heads). A few MB instead of the whole base model.
    """
    frozen = frozen_base_keys(root)
    return {k: v for k, v in root.state_dict().items() if k not in frozen}


def load_adapter_state_dict(root: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load an :func:`adapter_state_dict` over a freshly built ``root`` (base weights loaded).

    Every key of ``root`` must be in ``state`` except the frozen base weights; unexpected
    keys are errors too.
    """
    missing, unexpected = root.load_state_dict(state, strict=False)
    frozen = frozen_base_keys(root)
    really_missing = [k for k in missing if k not in frozen]
    if really_missing or unexpected:
        raise RuntimeError(
            f'adapter checkpoint does not fit the model: missing {really_missing[:5]}, '
            f'unexpected {list(unexpected)[:5]}'
        )


def is_adapter_checkpoint(state: dict[str, torch.Tensor]) -> bool:
    """Whether a saved state dict holds LoRA adapters (then it needs the base weights)."""
    return any('lora_' in key for key in state)


def load_plain_state_dict(root: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full (merged or never adapted) state dict into ``root``, adapters or not.

    Adapted models in ``root`` are stripped of their adapters, loaded, and adapted again
    with fresh adapters (LoRA's B starts at zero, so the outputs are those of the loaded
    weights); the same settings and trainable token rows are kept.
    """
    readapt = []
    for module in list(root.modules()):
        settings = getattr(module, '_parlai_ext_lora', None)
        if settings is not None:
            tokens = getattr(module, '_parlai_ext_lora_tokens', ())
            merge_lora(module, merge=False)
            readapt.append((module, settings, tokens))
    root.load_state_dict(state)
    for module, settings, tokens in readapt:
        apply_lora(module, settings, tokens)


def parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
