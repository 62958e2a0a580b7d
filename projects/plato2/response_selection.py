"""Write a response-selection version of a ParlAI task: the true response + N random ones.

The paper's Table 6 ranks candidate responses with three score functions. This script turns
any dialogue task into such a test set, in ParlAI's text format, for
``-t fromfile:parlaiformat --fromfile-datapath FILE``: every example keeps its episode (so the
context is the whole history) and gets ``label_candidates`` = its true response and
``--n-random`` responses of other examples of the same split, drawn with ``--seed``
(candidates equal to the true response are redrawn). Write the file outside the repository
(it holds dataset lines). Example::

    python projects/plato2/response_selection.py -t dailydialog_ext:no_start \\
        --dailydialog-data-dir ../shared/data/dailydialog -dt valid --n-random 9 \\
        --outfile /tmp/dd_selection_valid.txt
"""

from __future__ import annotations

import random

from parlai.core.params import ParlaiParser
from parlai.core.teachers import create_task_agent_from_taskname
from parlai.utils.misc import msg_to_str


def read_examples(opt) -> list[dict]:
    """Every example of the split, in order (episodes kept)."""
    opt = opt.copy()
    opt['datatype'] = opt['datatype'].split(':')[0] + ':ordered'
    teacher = create_task_agent_from_taskname(opt)[0]
    examples = []
    while True:
        message = teacher.act()
        if message.get('text') is None and message.get('episode_done') and not examples:
            break
        examples.append(dict(message))
        if teacher.epoch_done():
            break
    return examples


def selection_lines(examples: list[dict], n_random: int, seed: int) -> list[str]:
    """ParlAI text-format lines with ``label_candidates`` (true response at a random place)."""
    rng = random.Random(seed)
    responses = [(ex.get('labels') or ex.get('eval_labels'))[0] for ex in examples]
    lines = []
    for example, true in zip(examples, responses):
        candidates: list[str] = []
        while len(candidates) < n_random:
            other = responses[rng.randrange(len(responses))]
            if other != true and other not in candidates:
                candidates.append(other)
        candidates.insert(rng.randrange(n_random + 1), true)
        message = {
            'text': example['text'],
            'labels': [true],
            'label_candidates': candidates,
            'episode_done': bool(example.get('episode_done')),
        }
        lines.append(msg_to_str(message))
    return lines


def main() -> None:
    parser = ParlaiParser(True, False, 'Response-selection version of a task (1 true + N)')
    parser.add_argument('--n-random', type=int, default=9, help='random candidates per example')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--outfile', type=str, required=True)
    opt = parser.parse_args()
    examples = read_examples(opt)
    lines = selection_lines(examples, opt['n_random'], opt['seed'])
    with open(opt['outfile'], 'w') as handle:
        handle.write('\n'.join(lines) + '\n')
    print(f'wrote {len(lines)} examples to {opt["outfile"]}')


if __name__ == '__main__':
    main()
