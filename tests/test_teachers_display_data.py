"""Stock ``parlai display_data`` over every sub-teacher of our three on-disk tasks.

The fixtures are the ones the per-task test files write (own text, the releases' file names),
all placed in one datapath. Each PersonaChat variant gets its own file with the two fixture
episodes repeated a different number of times, so every count tells which file was read.

To keep it fast, one ``parlai`` subprocess runs a whole group (``-t a,b,c``, ParlAI's
multi-task teacher, whose "loaded N episodes" line is the group's total); the same teachers are
also counted one by one in-process, so a wrong count still names its teacher.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from teacher_helpers import make_teacher
from test_teachers_dailydialog import DIALOGUES, N_UTTERANCES, write_split
from test_teachers_personachat import EPISODES, N_EXAMPLES, fbdialog
from test_teachers_ubuntu import VALID_HEADER, VALID_ROWS, csv_text, write_dstc7, write_udc

# PersonaChat variant -> how many times the two fixture episodes are repeated in its file
REPEATS = {
    'self_original': 1,
    'self_revised': 2,
    'other_original': 3,
    'other_revised': 4,
    'both_original': 5,
    'both_revised': 6,
    'none_original': 7,
}
ALIASES = {'self': 'self_original', 'other': 'other_original', 'both': 'both_original'}
ALIASES['none'] = 'none_original'


def _personachat(variant: str) -> tuple[int, int]:
    return len(EPISODES) * REPEATS[variant], N_EXAMPLES * REPEATS[variant]


N_DSTC7 = 3  # write_dstc7's default examples
# task -> (episodes, examples) on the fixtures below (valid split)
EXPECTED = {
    'personachat_ext': _personachat('self_original'),
    **{f'personachat_ext:{v}': _personachat(v) for v in REPEATS},
    **{f'personachat_ext:{a}': _personachat(v) for a, v in ALIASES.items()},
    # both speakers' views of every dialogue; no_start: ParlAI's count (see its own test)
    'dailydialog_ext': (2 * len(DIALOGUES), N_UTTERANCES),
    'dailydialog_ext:no_start': (len(DIALOGUES) + 2, N_UTTERANCES - len(DIALOGUES)),
    'ubuntu_ext': (N_DSTC7, N_DSTC7),
    'ubuntu_ext:dstc7': (N_DSTC7, N_DSTC7),
    'ubuntu_ext:dstc7_ranking': (N_DSTC7, N_DSTC7),
    'ubuntu_ext:udc_v2': (len(VALID_ROWS), len(VALID_ROWS)),
}
GROUPS = {
    name: [task for task in EXPECTED if task.split(':')[0] == name]
    for name in ('personachat_ext', 'dailydialog_ext', 'ubuntu_ext')
}


@pytest.fixture(scope='module')
def datapath(tmp_path_factory) -> Path:
    """Every fixture at its default place under one datapath (valid split)."""
    root = tmp_path_factory.mktemp('display_data')
    convai2 = root / 'ConvAI2'
    convai2.mkdir()
    for variant, repeat in REPEATS.items():
        text = fbdialog(variant.split('_')[0], False) * repeat
        (convai2 / f'valid_{variant}_no_cands.txt').write_text(text, encoding='utf-8')
    write_split(root / 'dailydialog' / 'ijcnlp_dailydialog', 'valid')
    write_dstc7(root / 'dstc7')
    write_udc(root / 'Ubuntu', 'valid.csv', csv_text(VALID_HEADER, VALID_ROWS))
    return root


def counts(task: str, datapath: Path) -> tuple[int, int]:
    teacher = make_teacher(task, '--datapath', str(datapath))
    return teacher.num_episodes(), teacher.num_examples()


def test_every_sub_teacher_is_covered():
    """A sub-teacher added later must get its fixture count here too."""
    from parlai_ext.tasks.dailydialog import agents as dailydialog
    from parlai_ext.tasks.personachat import agents as personachat
    from parlai_ext.tasks.ubuntu import agents as ubuntu

    bases = {'Personachat', 'Dailydialog', 'UbuntuBase', 'Default'}
    found = set()
    for module in (personachat, dailydialog, ubuntu):
        for name, value in vars(module).items():
            if not (isinstance(value, type) and name.endswith('Teacher')):
                continue
            camel = name[: -len('Teacher')]
            if value.__module__ == module.__name__ and camel not in bases:
                sub = ''.join(f'_{c.lower()}' if c.isupper() else c for c in camel)
                found.add(f'{module.TASK}:{sub[1:]}')
    assert len(found) == 15 and found <= set(EXPECTED), found - set(EXPECTED)


@pytest.mark.parametrize('group', list(GROUPS))
def test_stock_display_data_counts(group, datapath, parlai_cli):
    tasks = GROUPS[group]
    for task in tasks:
        assert counts(task, datapath) == EXPECTED[task], task
    out = parlai_cli(
        'display_data', '-t', ','.join(tasks), '-dt', 'valid', '--datapath', str(datapath),
        '-n', '1',
    )  # fmt: skip
    log = out.stdout + out.stderr
    n_episodes = sum(EXPECTED[t][0] for t in tasks)
    n_examples = sum(EXPECTED[t][1] for t in tasks)
    assert f'loaded {n_episodes} episodes with a total of {n_examples} examples' in log, log[-3000:]
