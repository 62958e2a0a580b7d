"""``dailydialog_ext`` on fixtures in the official ``ijcnlp_dailydialog`` layout (own dialogues)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
from teacher_helpers import episodes, make_teacher

from parlai_ext.tasks.common import DataNotFoundError, MalformedDataError
from parlai_ext.tasks.dailydialog.agents import ACTS, EMOTIONS, normalize_spacing

# (utterances, act codes, emotion codes)
DIALOGUES = [
    (
        [
            'Hello , is the library open today ?',
            "Yes , it ' s open until nine .",
            'Great , thanks !',
        ],
        [2, 1, 4],
        [0, 0, 4],
    ),
    (
        ['Could you pass the salt ?', 'Here you are .', 'Thank you .', 'You are welcome .'],
        [3, 4, 1, 1],
        [0, 0, 4, 0],
    ),
    (['I lost my keys again .', 'Oh no ! Where did you see them last ?'], [1, 2], [5, 6]),
]
SPLIT_FILES = {'train': 'train', 'valid': 'validation', 'test': 'test'}


def lines_for(dialogues=DIALOGUES) -> tuple[list[str], list[str], list[str]]:
    text = [' __eou__ '.join(u) + ' __eou__' for u, _, _ in dialogues]
    acts = [' '.join(map(str, a)) + ' ' for _, a, _ in dialogues]  # the release's trailing space
    emotions = [' '.join(map(str, e)) + ' ' for _, _, e in dialogues]
    return text, acts, emotions


def write_split(root: Path, split: str = 'train', files=None, end: str = '\n') -> Path:
    name = SPLIT_FILES[split]
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    text, acts, emotions = files or lines_for()
    for prefix, lines in (('dialogues_', text), ('dialogues_act_', acts)):
        (folder / f'{prefix}{name}.txt').write_bytes((end.join(lines) + end).encode('utf-8'))
    (folder / f'dialogues_emotion_{name}.txt').write_bytes((end.join(emotions) + end).encode())
    return folder


def from_dir(root: Path, task: str = 'dailydialog_ext', *args: str, datatype='train:ordered'):
    return make_teacher(task, '--dailydialog-data-dir', str(root), *args, datatype=datatype)


N_UTTERANCES = sum(len(u) for u, _, _ in DIALOGUES)


# --- normal reading ---------------------------------------------------------------------------
def test_both_speaker_views_counts_and_labels(tmp_path):
    write_split(tmp_path)
    teacher = from_dir(tmp_path)
    assert teacher.num_episodes() == 2 * len(DIALOGUES)
    assert teacher.num_examples() == N_UTTERANCES
    eps = episodes(teacher)
    utts, acts, emos = DIALOGUES[1]
    first_view, second_view = eps[2], eps[3]
    assert [m['text'] for m in first_view] == ['__SILENCE__', utts[1]]
    assert [m['labels'][0] for m in first_view] == [utts[0], utts[2]]
    assert [m['text'] for m in second_view] == [utts[0], utts[2]]
    assert [m['labels'][0] for m in second_view] == [utts[1], utts[3]]
    silence = first_view[0]
    assert (silence['act_type'], silence['emotion']) == ('no_act', 'no_emotion')
    assert (silence['label_act_type'], silence['label_emotion']) == (ACTS[3], EMOTIONS[0])
    answer = second_view[1]  # text utterance 2, label utterance 3
    assert (answer['act_type'], answer['emotion']) == (ACTS[acts[2]], EMOTIONS[emos[2]])
    assert (answer['label_act_type'], answer['label_emotion']) == ('inform', 'no_emotion')
    assert (answer['dialogue_id'], answer['turn']) == ('train:2', 3)
    assert 'topic' not in answer


def test_no_start_matches_parlai_counts(tmp_path):
    write_split(tmp_path, 'valid')
    teacher = from_dir(tmp_path, 'dailydialog_ext:no_start', datatype='valid')
    # ParlAI's no_start: sum(n - 1) examples; one episode per dialogue plus one more when n > 2
    assert teacher.num_examples() == N_UTTERANCES - len(DIALOGUES)
    assert teacher.num_episodes() == len(DIALOGUES) + 2
    texts = [m['text'] for e in episodes(teacher) for m in e]
    assert '__SILENCE__' not in texts


def test_zips_read_like_folders(tmp_path):
    folder = write_split(tmp_path / 'unzipped', 'test')
    with zipfile.ZipFile(tmp_path / 'test.zip', 'w') as archive:
        for path in folder.iterdir():
            archive.write(path, f'test/{path.name}')
    zipped = from_dir(tmp_path, datatype='test')
    assert '.zip[test/dialogues_test.txt]' in zipped.opt['datafile']
    assert episodes(zipped) == episodes(from_dir(tmp_path / 'unzipped', datatype='test'))


def test_default_location_under_datapath(tmp_path):
    write_split(tmp_path / 'dailydialog' / 'ijcnlp_dailydialog', 'valid')
    teacher = make_teacher('dailydialog_ext', '--datapath', str(tmp_path), datatype='valid')
    assert teacher.num_examples() == N_UTTERANCES


def test_parlai_json_layout_and_same_episodes_as_parlai_teacher(tmp_path):
    """ParlAI's own download ({split}.json): read it, and match ParlAI's dailydialog teacher."""
    folder = tmp_path / 'dailydialog'
    folder.mkdir()
    records = [
        {
            'fold': 'validation',
            'topic': 'ordinary_life',
            'dialogue': [
                {'emotion': EMOTIONS[e], 'act': ACTS[a], 'text': u} for u, a, e in zip(*d)
            ],
        }
        for d in DIALOGUES
    ]
    (folder / 'valid.json').write_text('\n'.join(json.dumps(r) for r in records) + '\n')
    (folder / '.built').write_text('2026-01-01\nNone')  # ParlAI's build() then downloads nothing
    for task, parlai_task in (
        ('dailydialog_ext', 'dailydialog'),
        ('dailydialog_ext:no_start', 'dailydialog:no_start'),
    ):
        ours = make_teacher(task, '--datapath', str(tmp_path), datatype='valid')
        theirs = make_teacher(parlai_task, '--datapath', str(tmp_path), datatype='valid')
        ours_eps, theirs_eps = episodes(ours), episodes(theirs)
        assert len(ours_eps) == len(theirs_eps) == theirs.num_episodes()
        for a_ep, b_ep in zip(ours_eps, theirs_eps):
            assert len(a_ep) == len(b_ep)
            for a, b in zip(a_ep, b_ep):
                for key in ('text', 'act_type', 'emotion', 'topic'):
                    assert a[key] == b[key], key
                assert list(a['labels']) == list(b['labels'])


def test_normalize_spacing():
    assert normalize_spacing("Let ' s go , now ! It ’ s $ 5 ( about ) .") == (
        "Let's go, now! It’s $5 (about)."
    )
    assert normalize_spacing('You are right.But what ? Wait ... 。') == (
        'You are right. But what? Wait....'
    )


def test_normalize_spacing_option(tmp_path):
    write_split(tmp_path)
    raw = episodes(from_dir(tmp_path))[1][0]
    assert raw['labels'][0] == "Yes , it ' s open until nine ."
    normal = episodes(from_dir(tmp_path, 'dailydialog_ext', '--normalize-spacing', 'true'))[1][0]
    assert normal['text'] == 'Hello, is the library open today?'
    assert normal['labels'][0] == "Yes, it's open until nine."


def test_crlf_bom_and_trailing_blank_lines(tmp_path):
    write_split(tmp_path / 'a')
    text, acts, emotions = lines_for()
    text = ['\ufeff' + text[0]] + text[1:] + ['', '']
    acts, emotions = acts + ['', ''], emotions + ['']  # unequal numbers of trailing blanks
    write_split(tmp_path / 'b', files=(text, acts, emotions), end='\r\n')
    assert episodes(from_dir(tmp_path / 'b')) == episodes(from_dir(tmp_path / 'a'))


# --- bad input --------------------------------------------------------------------------------
def test_missing_data_error(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        make_teacher('dailydialog_ext', '--datapath', str(tmp_path), datatype='valid')
    message = str(err.value)
    for expected in (
        'validation/dialogues_validation.txt',
        'validation/dialogues_act_validation.txt',
        'validation/dialogues_emotion_validation.txt',
        'validation.zip',
        str(tmp_path / 'dailydialog' / 'ijcnlp_dailydialog' / 'validation'),
        str(tmp_path / 'ijcnlp_dailydialog' / 'validation'),
        'yanran.li/dailydialog',
    ):
        assert expected in message
    folder = write_split(tmp_path / 'x')
    (folder / 'dialogues_emotion_train.txt').unlink()
    with pytest.raises(DataNotFoundError, match='dialogues_emotion_train.txt'):
        from_dir(tmp_path / 'x')


def _with(index: int, which: int, new: str):
    files = [list(f) for f in lines_for()]
    files[which][index] = new
    return tuple(files)


BAD = [
    # (line index, file index 0 text / 1 act / 2 emotion, new content, file name, reason)
    (1, 1, '3 4 1', 'dialogues_act_train.txt', '3 act labels for 4 utterances'),
    (1, 2, '0 0 4 0 0', 'dialogues_emotion_train.txt', '5 emotion labels for 4 utterances'),
    (2, 1, '1 7', 'dialogues_act_train.txt', "act label '7' is not an integer 1..4"),
    (2, 2, '1 x', 'dialogues_emotion_train.txt', "emotion label 'x'"),
    (0, 0, 'Hi __eou__ __eou__ Bye __eou__', 'dialogues_train.txt', 'utterance 2 is empty'),
    (0, 0, 'Hi __eou__ Bye', 'dialogues_train.txt', 'does not end with __eou__'),
    (2, 0, 'Alone . __eou__', 'dialogues_train.txt', 'at least 2 utterances'),
    (1, 0, '', 'dialogues_train.txt', 'blank line where the other files'),
]


@pytest.mark.parametrize('index,which,new,name,reason', BAD)
def test_malformed_line_names_file_and_line(tmp_path, index, which, new, name, reason):
    write_split(tmp_path, files=_with(index, which, new))
    with pytest.raises(MalformedDataError) as err:
        from_dir(tmp_path)
    location, _, message = str(err.value).partition(': ')
    assert location == f'{tmp_path / "train" / name}:{index + 1}'
    assert reason in message


def test_label_file_shorter_than_text(tmp_path):
    text, acts, emotions = lines_for()
    write_split(tmp_path, files=(text, acts[:2], emotions))
    with pytest.raises(MalformedDataError, match=r'dialogues_act_train\.txt:3: file ends before'):
        from_dir(tmp_path)


def test_non_utf8_text(tmp_path):
    folder = write_split(tmp_path)
    path = folder / 'dialogues_train.txt'
    path.write_bytes(path.read_bytes().replace(b'salt', b's\xe4lt'))
    with pytest.raises(MalformedDataError, match=r'dialogues_train\.txt:2: not valid UTF-8'):
        from_dir(tmp_path)


def test_skip_malformed_keeps_the_rest_aligned(tmp_path):
    # dialogue 2 has one act label too many; with skipping it is dropped whole and dialogue 3
    # keeps its own labels (no shift)
    write_split(tmp_path, files=_with(1, 1, '3 4 1 1 1'))
    teacher = from_dir(tmp_path, 'dailydialog_ext', '--skip-malformed', 'true')
    assert teacher.num_episodes() == 4
    assert teacher.num_examples() == N_UTTERANCES - 4
    last = episodes(teacher)[3][0]  # dialogue 3, model as second speaker
    assert last['text'] == DIALOGUES[2][0][0]
    assert (last['act_type'], last['label_act_type']) == ('inform', 'question')
    assert (last['emotion'], last['label_emotion']) == ('sadness', 'surprise')
    assert teacher.malformed.summary().startswith('dailydialog_ext: skipped 1 malformed')
    assert teacher.malformed.dropped == 1


# --- stock parlai -----------------------------------------------------------------------------
def test_stock_display_data(tmp_path, parlai_cli):
    write_split(tmp_path / 'ijcnlp_dailydialog', 'valid')
    out = parlai_cli(
        'display_data', '-t', 'dailydialog_ext', '-dt', 'valid', '--datapath', str(tmp_path)
    )
    log = out.stdout + out.stderr
    assert f'loaded {2 * len(DIALOGUES)} episodes with a total of {N_UTTERANCES} examples' in log
    assert '__SILENCE__' in log and 'Could you pass the salt ?' in log
