"""Max differences between our converted PLATO-2 and Knover's outputs (tests/fixtures/knover_tiny).

Converts the fixture with ``parlai convert_knover`` into a temporary folder, loads the files
with ParlAI's agents (the Knover switches on) and prints, per quantity, the largest absolute
difference to what the authors' code (Knover 4bad22c, Paddle 1.8.5) wrote::

    OMP_NUM_THREADS=1 .venv/bin/python bench/knover/parity.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'tests'))

import test_knover as t  # noqa: E402  (the fixture readers and the tiny spm model)


@torch.no_grad()
def main() -> None:
    from parlai.core.agents import create_agent_from_model_file

    from parlai_ext.scripts.convert_knover import ConvertKnover

    manifest, decode, arrays = t.ref.__wrapped__()
    with tempfile.TemporaryDirectory() as tmp:
        spm_model = t._tiny_spm(Path(tmp) / 'spm.model')
        paths = ConvertKnover.main(
            '--plato', os.path.join(t.FIXTURE, 'plato_params'),
            '--nsp', os.path.join(t.FIXTURE, 'nsp_params'), '--spm-model', spm_model,
            '--knover-config', os.path.join(t.FIXTURE, 'config.json'),
            '--out', os.path.join(tmp, 'out'), '--text-truncate', '12', '--label-truncate', '8',
        )  # fmt: skip
        agent = create_agent_from_model_file(paths['plato2'], {'datatype': 'valid'})
    gen, ev = agent.model.transformer.eval(), agent.evaluator.model.transformer.eval()
    V, K = manifest['config']['vocab_size'], manifest['config']['latent_type_size']
    starts, lengths = arrays['train_tgt_start_idx'], arrays['train_lengths']
    context, response = t._split(arrays['train_token_ids'][..., 0], starts, lengths, V)
    B, Lc = context.shape
    diffs = {}
    post = gen.recognize(context, response).softmax(-1).numpy()
    diffs['recognition posterior'] = np.abs(post - arrays['post_probs']).max()
    rows = torch.arange(K * B) % B
    w = F.one_hot(torch.from_numpy(arrays['probe_latent_id']), K).float()
    hidden, _ = gen.encode(context[rows], response[rows], gen.latent_vectors(w))
    logits = gen.logits(hidden)
    worst = 0.0
    for row in range(K * B):
        b = int(rows[row])
        ours = [0] + [1 + j for j in range(starts[b])]
        ours += [1 + Lc + j for j in range(lengths[b] - starts[b])]
        theirs = list(range(lengths[b] + 1))
        d = np.abs(logits[row, ours, :V].numpy() - arrays['gen_logits'][row, theirs]).max()
        worst = max(worst, float(d))
    diffs['generation-pass logits'] = worst
    bow = gen.bow_logits(hidden[:, 0])[:, :V].numpy()
    diffs['BOW logits'] = np.abs(bow - arrays['bow_logits']).max()
    tokens = arrays['nsp_token_ids'][..., 0]
    n = arrays['nsp_attention_mask'][:, 0].sum(axis=1).astype(int)
    s = [int(np.where(r[1:] == 1)[0][0]) + 1 for r in tokens]
    probs, _, _, _ = t._nsp_scores(ev, [tokens[b, : n[b]].tolist() for b in range(len(n))], s, V)
    diffs['NSP score'] = np.abs(probs.numpy() - arrays['nsp_scores']).max()
    for name, value in diffs.items():
        print(f'{name:28s} max |ours - Knover| = {value:.2e}')
    print(f'(tolerance of tests/test_knover.py: {t.ATOL:g})')


if __name__ == '__main__':
    main()
