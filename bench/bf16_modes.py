"""bf16 MFU ceiling of a ``UnifiedTransformer`` training step, model math only (no ParlAI).

Issue #23's bf16 target (≥ 40 % of the measured bf16 matmul peak) is missed by the agent
(docs/speed.md 10.E). This script measures what a training step of the model alone reaches
in several precision modes, so that the agent's ceiling is known per size and per mode:

- ``fp32``: fp32 weights and activations (reference; MFU against the fp32 peak).
- ``amp``: fp32 weights under ``torch.autocast(bfloat16)`` with a context per step: what
  the benchmark harness runs for the agent's bf16 rows.
- ``bf16w``: bf16 parameters and bf16 activations end to end (residual stream, layer norms,
  dropout, attention, GELU), fp32 master weights in a fused AdamW (:class:`MasterWeights`),
  fp32 loss (the bf16 logits cast up before ``cross_entropy``).
- ``bf16w_att32``: ``bf16w`` with the attention kernel run in fp32 in training, as
  ``modules.transformer.attend`` does under autocast (torch 2.13's CPU bf16 flash-attention
  backward is slower than its fp32 one).
- ``bf16w_amp``: bf16 parameters under bf16 autocast: the existing code then runs the fp32
  attention kernel and the fp32 loss by itself (``attend``; ``cross_entropy`` is on
  autocast's fp32 list), with no weight casts.
- ``bf16w_nomaster``: ``bf16w`` with AdamW applied to the bf16 parameters directly (a lower
  bound on the optimizer's cost; not a usable training mode).
- ``bf16w_ffncomp``: ``bf16w_att32`` with every feed-forward block under ``torch.compile``.

Batches are synthetic and DailyDialog-like (batch 32, contexts of 20-128 tokens, responses
of 5-40, vocabulary 20,687: ~2,370 context and ~710 response tokens per batch). Modes run
interleaved, one step each per round (order reversed every other round), after two warm-up
steps each; CPU time per step (``time.process_time``, one torch thread); MFU = the harness's
6·N·T estimate (:func:`step_flops`) over the best 512²/1024²/2048² matmul of the same
precision, measured before and after the rounds (the larger counts).

Usage::

    OMP_NUM_THREADS=1 python bench/bf16_modes.py --dims 256,512,1024,2048 \\
        --modes amp,bf16w,bf16w_att32 --steps 4 [--layers 2] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

import parlai_ext.modules.transformer as transformer
from parlai_ext.modules.unified_transformer import UnifiedTransformer

VOCAB = 20687
MODES = ('fp32', 'amp', 'bf16w', 'bf16w_att32', 'bf16w_amp', 'bf16w_nomaster', 'bf16w_ffncomp')
AUTOCAST_MODES = ('amp', 'bf16w_amp')
FP32_ATTENTION_MODES = ('bf16w_att32', 'bf16w_ffncomp')
_attend = transformer.attend


def synthetic_batches(n: int, vocab: int = VOCAB, batch: int = 32, seed: int = 0):
    """``n`` right-padded ``(context, response)`` id batches of DailyDialog-like lengths."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        lc = torch.randint(20, 129, (batch,), generator=generator)
        lr = torch.randint(5, 40, (batch,), generator=generator)
        context = torch.zeros(batch, int(lc.max()), dtype=torch.long)
        response = torch.zeros(batch, int(lr.max()), dtype=torch.long)
        for i in range(batch):
            context[i, : lc[i]] = torch.randint(4, vocab, (int(lc[i]),), generator=generator)
            response[i, : lr[i]] = torch.randint(4, vocab, (int(lr[i]),), generator=generator)
        out.append((context, response))
    return out


def matmul_peak(dtype: torch.dtype, sizes: Sequence[int] = (512, 1024, 2048)) -> float:
    """Best FLOP/s of a square matmul at ``dtype`` (CPU time, best of 3 per size)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        times = []
        for _ in range(3):
            start = time.process_time()
            a @ b
            times.append(time.process_time() - start)
        best = max(best, 2 * n**3 / max(min(times), 1e-9))
    return best


def attend_fp32(query, keys, values, attn_mask=None, dropout_p=0.0):
    """bf16 q/k/v through the fp32 SDPA kernel while autograd records; output back in bf16."""
    if query.dtype == torch.bfloat16 and torch.is_grad_enabled():
        out = F.scaled_dot_product_attention(
            query.float(), keys.float(), values.float(), attn_mask, dropout_p
        )
        return out.to(torch.bfloat16)
    return _attend(query, keys, values, attn_mask, dropout_p)


class MasterWeights:
    """fp32 master copies of a model's bf16 parameters for an optimizer over the masters.

    Before ``optimizer.step()``: :meth:`grads_in` casts each parameter's gradient up into its
    master's; after it: :meth:`weights_out` rounds the masters into the bf16 parameters and
    drops their gradients.
    """

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.params = list(params)
        self.masters = [p.detach().float().clone() for p in self.params]

    def grads_in(self) -> None:
        for master, param in zip(self.masters, self.params):
            master.grad = None if param.grad is None else param.grad.float()

    @torch.no_grad()
    def weights_out(self) -> None:
        torch._foreach_copy_(self.params, self.masters)
        for param in self.params:
            param.grad = None


def step_flops(model: UnifiedTransformer, context_tokens: int, label_tokens: int) -> float:
    """The harness's ≈ 6·(N·T + V·d·labels) (``harness_workloads.estimate_training_flops``):
    N = parameters less the token, position and type tables; T = context + response tokens."""
    emb = model.embeddings
    tables = emb.tokens.weight.numel() + emb.positions.weight.numel()
    tables += 0 if emb.types is None else emb.types.weight.numel()
    dense = sum(p.numel() for p in model.parameters()) - tables
    return 6.0 * (dense * context_tokens + emb.tokens.weight.numel() * label_tokens)


class ModeRun:
    """One model and optimizer trained in ``mode``; :meth:`step` times one training step."""

    def __init__(self, mode: str, dim: int, layers: int, vocab: int = VOCAB, lr: float = 1e-4):
        if mode not in MODES:
            raise ValueError(f'mode {mode!r} not in {MODES}')
        self.mode = mode
        torch.manual_seed(0)
        self.model = UnifiedTransformer(
            vocab, dim=dim, n_layers=layers, n_heads=max(1, dim // 64), ffn_dim=4 * dim,
            n_positions=512, dropout=0.1,
        )  # fmt: skip
        self.model.train()
        if mode == 'bf16w_ffncomp':
            for layer in self.model.stack.layers:
                layer.ffn = torch.compile(layer.ffn, dynamic=True)
        self.masters: MasterWeights | None = None
        params = list(self.model.parameters())
        if mode.startswith('bf16w') and mode != 'bf16w_nomaster':
            self.masters = MasterWeights(params)
            params = self.masters.masters
        if mode.startswith('bf16w'):
            self.model.to(torch.bfloat16)
        self.optimizer = torch.optim.AdamW(params, lr=lr, fused=True)
        self.times: list[float] = []
        self.flops: list[float] = []
        self.parts: list[tuple[float, float, float]] = []
        self.warm_up = 0.0

    @property
    def precision(self) -> str:
        return 'fp32' if self.mode == 'fp32' else 'bf16'

    def loss(self, context: torch.Tensor, response: torch.Tensor) -> torch.Tensor:
        """Mean NLL of the response tokens (fp32), the output layer at real tokens only."""
        autocast = (
            torch.autocast('cpu', dtype=torch.bfloat16)
            if self.mode in AUTOCAST_MODES
            else contextlib.nullcontext()
        )
        with autocast:
            hidden, _ = self.model(context, response[:, :-1])
            target = response[:, 1:]
            real = target != 0
            logits = self.model.logits(hidden[real])
            return F.cross_entropy(logits.float(), target[real])

    def step(self, context: torch.Tensor, response: torch.Tensor) -> tuple[float, float, tuple]:
        """One training step: ``(CPU seconds, model FLOPs, (forward, backward, optimizer))``."""
        transformer.attend = attend_fp32 if self.mode in FP32_ATTENTION_MODES else _attend
        try:
            start = time.process_time()
            loss = self.loss(context, response)
            forward = time.process_time()
            loss.backward()
            backward = time.process_time()
            if self.masters is not None:
                self.masters.grads_in()
                self.optimizer.step()
                self.masters.weights_out()
            else:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            end = time.process_time()
        finally:
            transformer.attend = _attend
        tokens = int((context != 0).sum() + (response[:, :-1] != 0).sum())
        labels = int((response[:, 1:] != 0).sum())
        parts = (forward - start, backward - forward, end - backward)
        return end - start, step_flops(self.model, tokens, labels), parts


def run_size(
    dim: int, modes: Sequence[str], steps: int, layers: int, batches, report: Callable = print
) -> list[ModeRun]:
    """Every mode at one size, interleaved; returns the runs (times, FLOPs, step parts)."""
    peaks = {'fp32': matmul_peak(torch.float32), 'bf16': matmul_peak(torch.bfloat16)}
    runs = [ModeRun(mode, dim, layers) for mode in modes]
    for run in runs:
        start = time.time()
        for context, response in batches[:2]:
            run.step(context, response)
        run.warm_up = time.time() - start
    for i in range(steps):
        context, response = batches[i % len(batches)]
        for run in runs if i % 2 == 0 else runs[::-1]:
            seconds, flops, parts = run.step(context, response)
            run.times.append(seconds)
            run.flops.append(flops / seconds)
            run.parts.append(parts)
    peaks = {
        'fp32': max(peaks['fp32'], matmul_peak(torch.float32)),
        'bf16': max(peaks['bf16'], matmul_peak(torch.bfloat16)),
    }
    load = open('/proc/loadavg').read().split()[0]
    for run in runs:
        peak = peaks[run.precision]
        mfu = sorted(f / peak for f in run.flops)
        fwd, bwd, opt = (statistics.median(p[j] for p in run.parts) * 1e3 for j in range(3))
        report(
            f'L{layers} dim {dim} {run.mode}: {statistics.median(run.times) * 1e3:.0f} ms/step '
            f'CPU (fwd {fwd:.0f}, bwd {bwd:.0f}, opt {opt:.0f}); MFU {statistics.median(mfu):.1%}'
            f' ({mfu[0]:.1%}-{mfu[-1]:.1%}) of {peak / 1e9:.0f} GFLOP/s; warm-up '
            f'{run.warm_up:.0f} s; load {load}'
        )
    return runs


def profile_runs(runs: Sequence[ModeRun], batches, rows: int = 18) -> None:
    """Top operators by self CPU time over two steps of each run (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    for run in runs:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for context, response in batches[:2]:
                run.step(context, response)
        print(f'--- profile {run.mode} (2 steps)')
        table = prof.key_averages().table(
            sort_by='self_cpu_time_total', row_limit=rows, max_name_column_width=40
        )
        print(table, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dims', default='256,512,1024')
    parser.add_argument('--modes', default='amp,bf16w,bf16w_att32')
    parser.add_argument('--steps', type=int, default=4, help='timed steps per mode and size')
    parser.add_argument('--layers', type=int, default=2)
    parser.add_argument('--profile', action='store_true', help='top operators per mode')
    args = parser.parse_args(argv)
    modes = args.modes.split(',')
    for mode in modes:
        if mode not in MODES:
            parser.error(f'--modes: {mode!r} is not one of {", ".join(MODES)}')
    if args.steps < 1 or args.layers < 1:
        parser.error('--steps and --layers must be >= 1')
    torch.set_num_threads(1)
    batches = synthetic_batches(4)
    for dim in (int(d) for d in args.dims.split(',')):
        runs = run_size(dim, modes, args.steps, args.layers, batches,
                        report=lambda line: print(line, flush=True))  # fmt: skip
        if args.profile:
            profile_runs(runs, batches)


if __name__ == '__main__':
    main()
