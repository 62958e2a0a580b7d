"""The GRUs of the HRED family (``modules/vhred.py``) on the CPU: one fused time loop with its
own backward, both directions of a bidirectional layer in the same loop.

Why: on the CPU PyTorch runs ``nn.GRU`` as a loop over time steps of about a dozen autograd
operators each (no fused GRU kernel, unlike LSTMs), and their backward roughly doubles that; at
the HRED benchmark's sizes (hidden 128, batch 30) those per-step operators and the autograd
engine between them are most of a training step (``docs/speed.md``, 7.C2). :class:`FusedGRU`
computes exactly the GRU of ``nn.GRU`` (PyTorch's equations)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

with the input projections of every step as one batched product before the loop, six
operators per step (no autograd graph inside; eight more when a gradient is needed, for the
chain-rule factors), and a hand-written backward of seven operators per step (the weight
gradients again as one product after the loop). ``D`` independent GRUs of the same sizes (the
two directions of a bidirectional layer) share each step's operators through batched products
(``baddbmm``), and rows of different lengths run packed (a step only updates the rows still
running), so padding costs nothing. CUDA and bf16 autocast keep PyTorch's kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GRU_PARAMS = ('weight_ih', 'weight_hh', 'bias_ih', 'bias_hh')


class FusedGRU(torch.autograd.Function):
    """``D`` single-layer GRUs of the same sizes run side by side (the two directions of a
    bidirectional layer), over rows in the layout of a packed sequence: ``x`` [D, P, I] holds
    step 0's ``batch_sizes[0]`` rows, then step 1's ``batch_sizes[1]`` rows, ... (non-increasing:
    the rows still running at each step, longest first, as
    :func:`~torch.nn.utils.rnn.pack_padded_sequence` lays them out; equal sizes are the plain
    time-major layout). ``h0`` [D, N, H] (N = ``batch_sizes[0]``), weights ``w_ih`` [D, 3H, I],
    ``w_hh`` [D, 3H, H], biases [D, 3H] -> every state [D, P, H] in the same layout. ``b_ih``
    may also be per row, [D, N, 3H]: an input term that is the same at every step of a row
    (the decoder's ``W [c; z]`` part, computed once instead of at every step).

    Memory: the chain-rule factors are computed inside the forward loop while its values are
    in cache (only when a gradient is needed), so the backward loop is seven operators per step;
    the weight gradients are one product over all ``P`` rows. A step runs its real rows only
    (packed), so padding costs neither products nor operators."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes):
        d, rows, _ = x.shape
        hidden = w_hh.shape[-1]
        h2 = 2 * hidden
        # every step's input projection at once: [D, P, 3H]. b_ir, b_iz join b_hr, b_hz in the
        # per-step product's bias; b_in is added inside the tanh's argument
        gi = torch.bmm(x, w_ih.transpose(1, 2))
        per_row = b_ih.dim() == 3
        if not per_row:
            b_ih = b_ih.unsqueeze(1)
        bias = torch.cat(
            [b_ih[..., :h2] + b_hh[:, None, :h2], b_hh[:, None, h2:].expand(-1, b_ih.shape[1], -1)],
            dim=-1,
        )  # [D, 1 or N, 3H]
        b_in = b_ih[..., h2:]
        w_hh_t = w_hh.transpose(1, 2)
        grad = any(ctx.needs_input_grad)
        out = x.new_empty(d, rows, hidden)
        rz_all = x.new_empty(d, rows, h2)
        if grad:  # chain-rule factors, see backward
            d_new, d_update, d_reset = (x.new_empty(d, rows, hidden) for _ in range(3))
        # views of the gates, sliced along the rows only inside the loop
        gi_rz, gi_n = gi[..., :h2], gi[..., h2:]
        r_all, z_all = rz_all[..., :hidden], rz_all[..., hidden:]
        h, start = h0, 0
        for size in batch_sizes:
            end = start + size
            h = h[:, :size]
            gh = torch.baddbmm(bias[:, :size] if per_row else bias, h, w_hh_t)  # [D, size, 3H]
            gh_n = gh[..., h2:]
            rz = torch.add(gi_rz[:, start:end], gh[..., :h2], out=rz_all[:, start:end])
            rz.sigmoid_()
            reset, update = r_all[:, start:end], z_all[:, start:end]
            new = torch.addcmul(gi_n[:, start:end], reset, gh_n)
            new = new.add_(b_in[:, :size] if per_row else b_in).tanh_()
            if grad:
                keep = 1 - update
                slopes = rz * (1 - rz)  # sigmoid' of r and z
                # dh -> d(pre-tanh n): (1 - z)(1 - n^2)
                torch.addcmul(keep, keep, new * new, value=-1, out=d_new[:, start:end])
                # dh -> d(pre-sigmoid z): (h_prev - n) z (1 - z)
                torch.mul(h - new, slopes[..., hidden:], out=d_update[:, start:end])
                # d(pre-tanh n) -> d(pre-sigmoid r): (W_hn h + b_hn) r (1 - r)
                torch.mul(gh_n, slopes[..., :hidden], out=d_reset[:, start:end])
            h = torch.lerp(new, h, update, out=out[:, start:end])  # n + z * (h - n)
            start = end
        if grad:
            ctx.batch_sizes, ctx.per_row = batch_sizes, per_row
            ctx.save_for_backward(x, h0, w_ih, w_hh, out, rz_all, d_new, d_update, d_reset)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x, h0, w_ih, w_hh, out, rz_all, d_new, d_update, d_reset = ctx.saved_tensors
        batch_sizes = ctx.batch_sizes
        d, rows, _ = x.shape
        hidden = w_hh.shape[-1]
        h2 = 2 * hidden
        starts = [0]
        for size in batch_sizes[:-1]:
            starts.append(starts[-1] + size)
        # d(W_h h + b_h) of every step (r, z, n parts); d(W_i x + b_i) is the same except its
        # n part, d(pre-tanh n), kept apart
        grad_gates = x.new_empty(d, rows, 3 * hidden)
        grad_new = x.new_empty(d, rows, hidden)
        grad_r, grad_z, grad_hn = (
            grad_gates[..., :hidden],
            grad_gates[..., hidden:h2],
            grad_gates[..., h2:],
        )
        r_all, z_all = rz_all[..., :hidden], rz_all[..., hidden:]
        carry = None  # d h_{t} from step t + 1, for that step's rows
        for start, size in zip(reversed(starts), reversed(batch_sizes)):
            end = start + size
            dh = grad_out[:, start:end]
            if carry is not None:
                if carry.shape[1] == size:
                    dh = dh + carry
                else:  # rows that end at this step get no carry
                    dh = dh.clone()
                    dh[:, : carry.shape[1]] += carry
            dn = torch.mul(dh, d_new[:, start:end], out=grad_new[:, start:end])
            torch.mul(dn, d_reset[:, start:end], out=grad_r[:, start:end])
            torch.mul(dh, d_update[:, start:end], out=grad_z[:, start:end])
            torch.mul(dn, r_all[:, start:end], out=grad_hn[:, start:end])
            carry = torch.baddbmm(dh * z_all[:, start:end], grad_gates[:, start:end], w_hh)
        flat_rz = grad_gates[..., :h2]
        grads = [None] * 7
        if ctx.needs_input_grad[0]:
            dx = torch.bmm(flat_rz, w_ih[:, :h2])
            grads[0] = torch.baddbmm(dx, grad_new, w_ih[:, h2:])
        if ctx.needs_input_grad[1]:
            grads[1] = F.pad(carry, (0, 0, 0, h0.shape[1] - carry.shape[1]))
        if ctx.needs_input_grad[2]:
            grads[2] = torch.cat(
                [torch.bmm(flat_rz.transpose(1, 2), x), torch.bmm(grad_new.transpose(1, 2), x)],
                dim=1,
            )
        if ctx.needs_input_grad[3]:  # sum_t dgates_t^T h_{t-1}, h_{-1} = h0
            previous = [h0[:, : batch_sizes[0]]] + [
                out[:, start : start + size] for start, size in zip(starts, batch_sizes[1:])
            ]
            grads[3] = torch.bmm(grad_gates.transpose(1, 2), torch.cat(previous, dim=1))
        if ctx.needs_input_grad[4] or ctx.needs_input_grad[5]:
            grad_bias_h = grad_gates.sum(dim=1)
            grads[5] = grad_bias_h
            if ctx.per_row:  # each row's sum over its steps
                row = torch.cat([torch.arange(size, device=x.device) for size in batch_sizes])
                per_row = x.new_zeros(d, batch_sizes[0], 3 * hidden)
                grads[4] = per_row.index_add_(1, row, torch.cat([flat_rz, grad_new], dim=-1))
            else:
                grads[4] = torch.cat([grad_bias_h[:, :h2], grad_new.sum(dim=1)], dim=-1)
        return tuple(grads)


def uses_fused(x: torch.Tensor) -> bool:
    """The fused loop runs on the CPU in fp32/fp64 without autocast; elsewhere (a GPU, bf16
    autocast) PyTorch's own kernels."""
    return (
        x.device.type == 'cpu'
        and x.dtype in (torch.float32, torch.float64)
        and not torch.is_autocast_enabled('cpu')
    )


def layer_weights(rnn: nn.GRU, layer: int, suffixes: tuple[str, ...]) -> list[torch.Tensor]:
    """``w_ih``, ``w_hh``, ``b_ih``, ``b_hh`` of one layer, the directions ``suffixes``
    stacked on a first dimension (zero biases for ``bias=False``)."""
    weights = []
    for name in GRU_PARAMS:
        per_direction = []
        for suffix in suffixes:
            if hasattr(rnn, f'{name}_l{layer}{suffix}'):
                per_direction.append(getattr(rnn, f'{name}_l{layer}{suffix}'))
            else:  # bias=False
                w = getattr(rnn, f'weight_hh_l{layer}{suffix}')
                per_direction.append(w.new_zeros(w.shape[0]))
        weights.append(torch.stack(per_direction))
    return weights


def unidirectional_gru(
    rnn: nn.GRU,
    x: torch.Tensor,
    state: torch.Tensor | None = None,
    constant: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rnn(x, state)`` for a unidirectional ``batch_first`` GRU: outputs [N, T, H] (top
    layer) and the final states [layers, N, H]; the fused loop on the CPU.

    ``constant`` [N, C]: the first layer's input at every step is ``[x_t; constant]`` (the
    decoder's ``tanh(W [c; z])``); on the CPU its share of the input projection is computed
    once per row, not once per step."""
    if not uses_fused(x):
        if constant is not None:
            x = torch.cat([x, constant.unsqueeze(1).expand(-1, x.size(1), -1)], dim=-1)
        return rnn(x, state)
    n, steps = x.shape[:2]
    if state is None:
        state = x.new_zeros(rnn.num_layers, n, rnn.hidden_size)
    finals = []
    inputs = x
    for layer in range(rnn.num_layers):
        weights = layer_weights(rnn, layer, ('',))
        if layer == 0 and constant is not None:  # W_ih [x; c] + b_ih = W_x x + (W_c c + b_ih)
            w_ih, b_ih = weights[0], weights[2]
            split = x.shape[-1]
            row_term = torch.baddbmm(
                b_ih.unsqueeze(1), constant.unsqueeze(0), w_ih[:, :, split:].transpose(1, 2)
            )
            weights = [w_ih[:, :, :split], weights[1], row_term, weights[3]]
        time_major = inputs.transpose(0, 1).reshape(1, steps * n, -1)  # [1, T * N, I]
        out = FusedGRU.apply(time_major, state[layer : layer + 1], *weights, (n,) * steps)
        out = out.view(steps, n, -1).transpose(0, 1)
        finals.append(out[:, -1])
        inputs = out
        if layer < rnn.num_layers - 1 and rnn.dropout > 0:
            inputs = F.dropout(inputs, rnn.dropout, rnn.training)
    return inputs, torch.stack(finals)


def padded_bidirectional_gru(
    rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``rnn`` (bidirectional, ``batch_first``) over right-padded rows of ``lengths`` tokens,
    equal to running it on the packed sequence: outputs ``[N, L, 2H]`` (zeros at padding),
    final states ``[layers * 2, N, H]`` (each row's state after its last real token).

    On the CPU both directions of a layer run in one :class:`FusedGRU` loop over the packed
    rows (:func:`packed_indices`: each step only the rows still running; the backward
    direction reads each row's real tokens in reverse); elsewhere
    :func:`padded_bidirectional_gru_plain` (PyTorch's kernels over padded rows)."""
    if not uses_fused(x):
        return padded_bidirectional_gru_plain(rnn, x, lengths)
    n, length, _ = x.shape
    hidden = rnn.hidden_size
    batch_sizes, forward, backward, last = packed_indices(lengths, length)
    # output row (token, direction) of every packed state: [N * L * 2] flat positions
    target = torch.cat([forward * 2, backward * 2 + 1])
    finals = []
    inputs = x
    for layer in range(rnn.num_layers):
        flat = inputs.reshape(n * length, -1)
        rows = torch.stack([flat.index_select(0, forward), flat.index_select(0, backward)])
        h0 = x.new_zeros(2, n, hidden)
        weights = layer_weights(rnn, layer, ('', '_reverse'))
        out = FusedGRU.apply(rows, h0, *weights, batch_sizes)  # [2, P, H]
        finals.append(out.index_select(1, last))  # [2, N, H]
        inputs = x.new_zeros(n * length * 2, hidden).index_copy(0, target, out.flatten(0, 1))
        inputs = inputs.view(n, length, 2 * hidden)  # zeros at padding
        if layer < rnn.num_layers - 1 and rnn.dropout > 0:
            inputs = F.dropout(inputs, rnn.dropout, rnn.training)
    return inputs, torch.cat(finals)


def packed_indices(
    lengths: torch.Tensor, length: int
) -> tuple[tuple[int, ...], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The packed layout of right-padded rows ``[N, L]`` of ``lengths`` (>= 1) tokens.

    Returns ``batch_sizes`` (rows still running at each step, longest rows first), and as
    positions into the flattened ``[N * L]`` rows: ``forward`` (step t of every running row:
    token t) and ``backward`` (the same steps reading each row in reverse: token
    ``len - 1 - t``), and ``last`` ([N], in row order): the packed position of each row's last
    step, where its final state is."""
    device = lengths.device
    lengths = lengths.to('cpu')
    sorted_lengths, order = lengths.sort(descending=True, stable=True)
    steps = torch.arange(length)
    running = steps[:, None] < sorted_lengths[None, :]  # [L, N], time-major like the packing
    sizes = running.sum(dim=1)
    start_of_row = order[None, :] * length
    forward = (start_of_row + steps[:, None])[running]
    backward = (start_of_row + sorted_lengths[None, :] - 1 - steps[:, None])[running]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel())
    starts = torch.cumsum(sizes, 0) - sizes
    last = starts[lengths - 1] + rank
    batch_sizes = tuple(size for size in sizes.tolist() if size > 0)
    forward, backward, last = forward.to(device), backward.to(device), last.to(device)
    return batch_sizes, forward, backward, last


def padded_bidirectional_gru_plain(
    rnn: nn.GRU, x: torch.Tensor, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`padded_bidirectional_gru` with PyTorch's GRU kernels (cuDNN on a GPU): two plain
    (unpacked) GRU calls over the padded rows with the module's own weights. The forward
    direction reads the padded rows as they are (padding comes after the real tokens, so their
    states are unaffected); the backward direction reads each row's real tokens reversed
    (``reverse``: position t holds token ``len - 1 - t``), padding again last, and its outputs
    are put back in order.

    Each direction runs ``torch.ops.aten.gru.input``, the operator behind ``nn.GRU`` (and the
    private ``torch._VF.gru``): same kernels, outputs and speed. Not ``torch.func.functional_call``
    on a one-direction ``nn.GRU``: about 75 us more per call on the CPU, and on CUDA it would
    re-flatten the weights it is given in place (``flatten_parameters``) at every call. Not
    ``pack_padded_sequence``: twice as slow on the CPU (``docs/speed.md`` 7.C2) and the lengths
    must go to the host."""
    n, length, _ = x.shape
    steps = torch.arange(length, device=x.device)
    valid = steps[None, :] < lengths[:, None]  # [N, L]
    source = lengths[:, None] - 1 - steps[None, :]
    reverse = torch.where(valid, source, steps[None, :].expand(n, length))  # an involution
    last = (lengths - 1)[:, None, None]
    finals = []
    inputs = x
    for layer in range(rnn.num_layers):
        directions = []
        for suffix in ('', '_reverse'):
            weights = [w[0] for w in layer_weights(rnn, layer, (suffix,))]
            source_rows = inputs
            if suffix:
                source_rows = inputs.gather(1, reverse[..., None].expand_as(inputs))
            h0 = inputs.new_zeros(1, n, rnn.hidden_size)
            # the GRU operator nn.GRU runs (its schema: input, hx, params, has_biases,
            # num_layers, dropout, train, bidirectional, batch_first), one direction's weights
            out, _ = torch.ops.aten.gru.input(
                source_rows, h0, weights, True, 1, 0.0, rnn.training, False, True
            )
            finals.append(out.gather(1, last.expand(n, 1, out.shape[-1])).squeeze(1))
            if suffix:
                out = out.gather(1, reverse[..., None].expand_as(out))
            directions.append(out)
        inputs = torch.cat(directions, dim=-1) * valid[..., None]
        if layer < rnn.num_layers - 1 and rnn.dropout > 0:
            inputs = F.dropout(inputs, rnn.dropout, rnn.training)
    return inputs, torch.stack(finals)
