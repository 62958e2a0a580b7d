"""The teacher tests' helpers (tests/teacher_helpers.py) read back exactly what a file holds."""

from __future__ import annotations

from teacher_helpers import episodes, make_teacher


def test_make_teacher_and_episodes_read_every_episode_up_to_episode_done(tmp_path):
    path = tmp_path / 'dialogues.txt'
    path.write_text(
        'text:a\tlabels:b\n'
        'text:c\tlabels:d\tepisode_done:True\n'
        'text:e\tlabels:f\tepisode_done:True\n'
    )
    teacher = make_teacher('fromfile:parlaiformat', '--fromfile-datapath', str(path))
    assert teacher.opt['datatype'] == 'valid'  # the default datatype
    read = episodes(teacher)
    assert [[m['text'] for m in e] for e in read] == [['a', 'c'], ['e']]
    assert [[m['episode_done'] for m in e] for e in read] == [[False, True], [True]]
    train = make_teacher(
        'fromfile:parlaiformat', '--fromfile-datapath', str(path), datatype='train:ordered'
    )
    assert train.opt['datatype'] == 'train:ordered'
