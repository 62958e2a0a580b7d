"""Centre the ``--nup-pmi`` term of a transmitter on training data (issue #21).

For the first N training examples (``train:evalmode``, in order) it computes the PMI (how much
the context raises the Eq. 2 likelihood, :meth:`parlai_ext.modules.p2bot.Transmitter.pmi`) of
the true reply and of a distractor (the true reply of the example ``N // 2`` later, another
dialogue), and writes a copy of the model whose "next utterance" bias is lowered by the
midpoint of the two means: ``a · PMI`` then starts centred, so ``p(y=1) > 1/2`` means "more
context evidence than a typical pair" (both means are positive: any dialogue context helps
predict a dialogue reply more than ``[PS]`` alone). Adds ``nup_pmi_scale = 1`` if missing.

    python projects/p2bot/center_nup_pmi.py MODEL OUT --personachat-file F [-n 64]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil

import torch
from parlai.agents.repeat_label.repeat_label import RepeatLabelAgent
from parlai.core.agents import create_agent_from_model_file
from parlai.core.message import Message
from parlai.core.params import ParlaiParser
from parlai.core.worlds import create_task

from parlai_ext.io import atomic_write
from parlai_ext.modules.p2bot import append_cls


def pmi_of_pairs(model_file: str, data: str, n: int, train_episodes: int) -> tuple[float, float]:
    """Mean PMI of the true replies and of the distractors over the first ``n`` examples."""
    agent = create_agent_from_model_file(model_file)
    opt = ParlaiParser(True, True).parse_args(
        ['-t', 'p2bot_selfplay:supervised', '--personachat-file', data,
         '--p2bot-train-episodes', str(train_episodes), '-dt', 'train:evalmode',
         '-m', 'repeat_label']
    )  # fmt: skip
    teacher = create_task(opt, RepeatLabelAgent(opt)).get_agents()[0]
    observations = []
    while len(observations) < n:
        observations.append(agent.observe(Message(dict(teacher.act()))))
        agent.self_observe(Message({}))
    golds = [o['eval_labels'][0] for o in observations]
    model = agent.model.eval()
    transmitter = model.transmitter
    means = []
    with torch.no_grad():
        for shift in (0, n // 2):  # the true replies, then the distractors
            values = []
            for start in range(0, n, 8):
                rows = range(start, min(start + 8, n))
                batch = agent.batchify([observations[r] for r in rows])
                replies = [agent._vectorize_distractor(golds[(r + shift) % n]) for r in rows]
                targets, _ = agent._pad_tensor(replies, is_label=True)
                sequence, _ = append_cls(
                    targets, transmitter.start_idx, transmitter.cls_idx, transmitter.padding_idx
                )
                with model.autocast(targets):
                    hidden, state = transmitter.backbone(batch.text_vec, sequence)
                    logits = transmitter.backbone.logits(hidden[:, : targets.shape[1]])
                    values.append(transmitter.pmi(state, sequence, logits, targets).float())
            means.append(torch.cat(values).mean().item())
    return means[0], means[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('model_file')
    parser.add_argument('out')
    parser.add_argument('--personachat-file', required=True)
    parser.add_argument('--p2bot-train-episodes', type=int, default=700)
    parser.add_argument('-n', type=int, default=64)
    args = parser.parse_args()
    true_mean, distractor_mean = pmi_of_pairs(
        args.model_file, args.personachat_file, args.n, args.p2bot_train_episodes
    )
    midpoint = 0.5 * (true_mean + distractor_mean)
    states = torch.load(args.model_file, map_location='cpu', weights_only=False)
    weights = states['model']
    weights.setdefault('transmitter.nup_pmi_scale', torch.ones(()))
    bias = weights['transmitter.nup_head.bias'].clone()
    bias[1] -= midpoint * float(weights['transmitter.nup_pmi_scale'])
    weights['transmitter.nup_head.bias'] = bias
    buffer = io.BytesIO()
    torch.save({'model': weights}, buffer)
    atomic_write(args.out, buffer.getvalue())
    for suffix in ('.opt', '.dict', '.dict.opt'):
        shutil.copyfile(args.model_file + suffix, args.out + suffix)
    if os.path.isdir(args.model_file + '.dict.hf'):
        shutil.copytree(args.model_file + '.dict.hf', args.out + '.dict.hf', dirs_exist_ok=True)
    print(json.dumps({'pmi_true': true_mean, 'pmi_distractor': distractor_mean,
                      'midpoint': midpoint, 'out': args.out}))  # fmt: skip


if __name__ == '__main__':
    main()
