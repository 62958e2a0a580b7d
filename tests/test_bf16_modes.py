"""bench/bf16_modes.py: fp32 master weights for bf16 parameters, the modes' precisions, FLOPs."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from torch import nn

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'bench')
sys.path.insert(0, BENCH)

import bf16_modes  # noqa: E402


def test_master_weights_take_a_hand_applied_adamw_step_and_round_into_the_bf16_copy():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    start = [p.detach().clone() for p in layer.parameters()]
    masters = bf16_modes.MasterWeights(list(layer.parameters()))
    layer.to(torch.bfloat16)
    lr, decay, eps = 0.1, 0.01, 1e-8
    optimizer = torch.optim.AdamW(masters.masters, lr=lr, weight_decay=decay, eps=eps)
    grads = [torch.randn_like(p) for p in layer.parameters()]  # bf16, as a backward leaves
    for param, grad in zip(layer.parameters(), grads):
        param.grad = grad
    masters.grads_in()
    optimizer.step()
    masters.weights_out()
    for p0, grad, master, param in zip(start, grads, masters.masters, layer.parameters()):
        g = grad.float()
        # AdamW's first step: m̂ = g, v̂ = g², decoupled decay on the fp32 master
        expected = p0 * (1 - lr * decay) - lr * g / (g.abs() + eps)
        assert master.dtype == torch.float32
        assert torch.allclose(master, expected, atol=1e-6)
        assert param.dtype == torch.bfloat16 and torch.equal(param, master.to(torch.bfloat16))
        assert param.grad is None
    # the master keeps what the bf16 copy rounds away
    assert any(not torch.equal(m, p.float()) for m, p in zip(masters.masters, layer.parameters()))


@pytest.mark.parametrize('mode', ['bf16w', 'bf16w_amp', 'bf16w_att32'])
def test_bf16_weight_modes_train_bf16_parameters_from_fp32_masters(mode):
    batches = bf16_modes.synthetic_batches(2, vocab=40, batch=3)
    run = bf16_modes.ModeRun(mode, dim=16, layers=1, vocab=40, lr=1e-2)
    before = [m.clone() for m in run.masters.masters]
    loss = run.loss(*batches[0])
    assert loss.dtype == torch.float32
    run.step(*batches[0])
    params = list(run.model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in params)
    moved = [not torch.equal(b, m) for b, m in zip(before, run.masters.masters)]
    assert sum(moved) > len(moved) // 2  # an optimizer step on the masters happened
    for master, param in zip(run.masters.masters, params):
        assert torch.equal(param, master.to(torch.bfloat16))


def test_amp_mode_keeps_fp32_weights_and_bf16_matmuls():
    batches = bf16_modes.synthetic_batches(1, vocab=40, batch=2)
    run = bf16_modes.ModeRun('amp', dim=16, layers=1, vocab=40)
    outputs = []
    hook = run.model.stack.layers[0].ffn.fc_in.register_forward_hook(
        lambda module, args, out: outputs.append(out.dtype)
    )
    run.loss(*batches[0])
    hook.remove()
    assert outputs == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in run.model.parameters())
    assert run.masters is None


def test_step_flops_is_six_n_t_plus_the_output_layer_at_labels():
    model = bf16_modes.UnifiedTransformer(30, dim=8, n_layers=1, n_heads=2, ffn_dim=16,
                                          n_positions=20)  # fmt: skip
    # per layer: 2 LayerNorms (2·2·8) + qkv (8·24 + 24) + out (8·8 + 8) + ffn (8·16 + 16 + 16·8 + 8)
    layer = 2 * 2 * 8 + (8 * 24 + 24) + (8 * 8 + 8) + (8 * 16 + 16 + 16 * 8 + 8)
    dense = layer + 2 * 8  # + the final LayerNorm
    assert bf16_modes.step_flops(model, 10, 3) == 6.0 * (dense * 10 + 30 * 8 * 3)


def test_bad_mode_is_refused_up_front():
    with pytest.raises(SystemExit):
        bf16_modes.main(['--modes', 'amp,bf17', '--dims', '16'])
    with pytest.raises(ValueError, match='not in'):
        bf16_modes.ModeRun('fp16', dim=16, layers=1, vocab=40)
