"""DDP glue for agents whose ParlAI base class never wraps its model (``TorchAgent``,
``TorchClassifierAgent``): the P2Bot receiver and the PPG critic."""

from __future__ import annotations

import torch
from torch import nn


def wrap_in_ddp(model: nn.Module, opt: dict, use_cuda: bool) -> nn.Module:
    """``model`` in DistributedDataParallel as ParlAI wraps its own trainable models.

    Call it only on a model that trains under ``multiprocessing_train``; frozen copies stay
    unwrapped.
    """
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[opt['gpu']] if use_cuda else None, broadcast_buffers=False
    )
