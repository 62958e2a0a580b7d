"""Weight decay as Knover applies it: never on biases or LayerNorm parameters.

Knover (PLATO-2's code) builds AdamW with ``apply_decay_param_fun`` that exempts every bias and
every LayerNorm scale/shift from weight decay; BERT and GPT-2 fine-tuning recipes do the same.
ParlAI's :meth:`TorchAgent.init_optim` hands the optimizer one flat parameter list, so weight
decay (``--weight-decay``, or AdamW's own default of 0.01 when none is given) lands on them too.

:class:`DecayExemptOptimizerMixin` goes first in an agent's bases; it splits the parameters
ParlAI passes into two groups and leaves everything else (learning rate, betas, optimizer
state loading, schedulers) to ParlAI.

With ``--bf16-weights`` (``unified_transformer``) the model's parameters are bf16 and the
optimizer steps fp32 copies of them (:class:`MasterWeights`).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.RMSNorm)


def decay_exempt_names(model: nn.Module) -> set[str]:
    """Names of ``model``'s parameters that take no weight decay: biases and norm parameters.

    A parameter is exempt when it is called ``bias``, belongs to a normalisation module (torch's
    own or any class whose name ends in ``Norm``, as Hugging Face's ``LlamaRMSNorm``), or is a
    vector (``ndim < 2``: the shape every bias and norm scale has).
    """
    exempt = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES) or type(module).__name__.endswith('Norm')
        for name, param in module.named_parameters(recurse=False):
            full = f'{module_name}.{name}' if module_name else name
            if is_norm or name == 'bias' or param.ndim < 2:
                exempt.add(full)
    return exempt


def decay_param_groups(
    model: nn.Module, params: Iterable[torch.nn.Parameter]
) -> list[dict[str, list[torch.nn.Parameter] | float]]:
    """``params`` split into ``[{'params': decayed}, {'params': exempt, 'weight_decay': 0.0}]``.

    Only the given parameters appear (ParlAI passes the trainable ones), in their given order
    within each group. The first group takes the optimizer's weight decay; an empty group is
    dropped.
    """
    exempt_ids = {id(p) for n, p in model.named_parameters() if n in decay_exempt_names(model)}
    decayed, exempt = [], []
    for param in params:
        (exempt if id(param) in exempt_ids else decayed).append(param)
    groups: list[dict] = []
    if decayed:
        groups.append({'params': decayed})
    if exempt:
        groups.append({'params': exempt, 'weight_decay': 0.0})
    return groups


FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def use_fused_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Switch a ``torch.optim.Adam``/``AdamW`` to its fused kernel (one kernel per step for
    all parameters, instead of ``_single_tensor_adam``'s Python loop of ~10 operators per
    parameter tensor, which ParlAI's default gives on the CPU); the same update up to float
    rounding. Only when every parameter is a dense floating-point CPU or CUDA tensor and the
    optimizer is neither differentiable nor capturable; otherwise nothing changes. Sets the
    ``fused`` flag of every param group, so call it after any ``load_state_dict`` (which
    restores the saved groups' flags). Returns whether it switched.
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return False
    groups = optimizer.param_groups
    params = [p for group in groups for p in group['params']]
    if not params or any(
        p.is_sparse or p.dtype not in FUSED_DTYPES or p.device.type not in ('cpu', 'cuda')
        for p in params
    ):
        return False
    if any(group.get('differentiable') or group.get('capturable') for group in groups):
        return False
    for group in groups:
        group['foreach'] = None
        group['fused'] = True
    optimizer.defaults['fused'] = True
    optimizer.defaults['foreach'] = None
    for param, state in optimizer.state.items():  # loaded steps: the fused kernel's device
        if torch.is_tensor(state.get('step')):
            state['step'] = state['step'].to(device=param.device, dtype=torch.float32)
    # what torch.optim.Adam(..., fused=True) sets: the step also takes a GradScaler's scale
    optimizer._step_supports_amp_scaling = True
    return True


class MasterWeights:
    """fp32 master copies of a model's low-precision (bf16) parameters, for the optimizer.

    The optimizer is built over :attr:`masters`; :meth:`install` hooks it so that before each
    ``step()`` the parameters' gradients are cast up into the masters' (:meth:`grads_in`) and
    after it the masters are rounded into the parameters, whose gradients are then dropped
    (:meth:`weights_out`). AdamW's moments and its small updates stay in fp32 (a bf16 weight
    would round most updates away). :meth:`state_dict` is the model's state dict with the
    fp32 masters in place of the bf16 parameters: what checkpoints save, so that a resumed
    run continues from the same fp32 weights (``sources``: those saved values, by name).
    """

    def __init__(
        self,
        model: nn.Module,
        params: Iterable[torch.nn.Parameter],
        sources: dict[str, torch.Tensor] | None = None,
    ) -> None:
        names = {id(p): n for n, p in model.named_parameters()}
        self.params = list(params)
        self.names = [names[id(p)] for p in self.params]
        sources = sources or {}
        self.masters = []
        for name, param in zip(self.names, self.params):
            source = sources.get(name)
            if source is None or source.shape != param.shape:
                source = param
            self.masters.append(source.detach().to(torch.float32, copy=True))
        self._master_of = {id(p): m for p, m in zip(self.params, self.masters)}
        self._grads: list[torch.Tensor] | None = None

    def groups(self, groups: list[dict]) -> list[dict]:
        """``groups`` (parameter groups over :attr:`params`) over the masters instead."""
        return [{**group, 'params': [self._master_of[id(p)] for p in group['params']]}
                for group in groups]  # fmt: skip

    def grads_in(self) -> None:
        """Each parameter's gradient cast up into its master's (a buffer kept across steps:
        no fresh fp32 allocation per step)."""
        if self._grads is None:
            self._grads = [torch.empty_like(master) for master in self.masters]
        present = [i for i, param in enumerate(self.params) if param.grad is not None]
        if present:
            torch._foreach_copy_([self._grads[i] for i in present],
                                 [self.params[i].grad for i in present])  # fmt: skip
        for master in self.masters:
            master.grad = None
        for i in present:
            self.masters[i].grad = self._grads[i]

    @torch.no_grad()
    def weights_out(self) -> None:
        torch._foreach_copy_(self.params, self.masters)
        for param in self.params:
            param.grad = None

    def install(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.register_step_pre_hook(lambda *_: self.grads_in())
        optimizer.register_step_post_hook(lambda *_: self.weights_out())

    def state_dict(self, model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``model_state`` (the model's own state dict) with the fp32 masters in it."""
        state = dict(model_state)
        for name, master in zip(self.names, self.masters):
            if name in state:
                state[name] = master.detach()
        return state


class FusedAdamOptimizerMixin:
    """Put before a ParlAI ``TorchAgent`` subclass: ``--optimizer adam|adamw`` runs torch's
    fused kernel (:func:`use_fused_adam`); optimizer states load as before."""

    def init_optim(self, params, optim_states=None, saved_optim_type=None, is_finetune=False):
        failed = super().init_optim(
            params,
            optim_states=optim_states,
            saved_optim_type=saved_optim_type,
            is_finetune=is_finetune,
        )
        use_fused_adam(self.optimizer)
        return failed


class DecayExemptOptimizerMixin(FusedAdamOptimizerMixin):
    """Put before a ParlAI ``TorchAgent`` subclass: biases and norms get no weight decay (and
    Adam/AdamW run fused, :class:`FusedAdamOptimizerMixin`). With ``--bf16-weights`` the
    optimizer steps fp32 masters of the bf16 parameters (:class:`MasterWeights`, seeded from
    the agent's ``fp32_weights``, the loaded checkpoint's values, where it has them)."""

    def init_optim(self, params, optim_states=None, saved_optim_type=None, is_finetune=False):
        model = self.model.module if hasattr(self.model, 'module') else self.model
        groups = decay_param_groups(model, params)
        masters = None
        if self.opt.get('bf16_weights'):
            params = [p for group in groups for p in group['params']]
            masters = MasterWeights(model, params, getattr(self, 'fp32_weights', None))
            self.fp32_weights = None
            groups = masters.groups(groups)
        failed = super().init_optim(
            groups,
            optim_states=optim_states,
            saved_optim_type=saved_optim_type,
            is_finetune=is_finetune,
        )
        if masters is not None:
            masters.install(self.optimizer)
        self.master_weights = masters
        return failed
