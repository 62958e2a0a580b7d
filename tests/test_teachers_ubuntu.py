"""``ubuntu_ext`` on fixtures in the DSTC7 track-1 JSON and Ubuntu Dialogue Corpus v2 CSV formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from teacher_helpers import make_teacher

from parlai_ext.tasks.common import DataNotFoundError, MalformedDataError

# --- DSTC7 fixtures (own text) ----------------------------------------------------------------
CONTEXTS = [
    [
        ('participant_1', 'how do i mount a usb stick from the terminal ?'),
        ('participant_2', 'check dmesg for the device name first'),
        ('participant_1', 'it says sdb1'),
    ],
    [
        ('participant_1', 'my wifi drops every few minutes after the upgrade'),
        ('participant_2', 'which chipset ?'),
    ],
    [('participant_2', 'anyone know how to change the default editor ?')],
]
ANSWERS = [
    'sudo mount /dev/sdb1 /mnt then',
    'lspci shows an intel card',
    'run sudo update-alternatives --config editor',
]


def dstc7_example(number: int, with_answer: bool = True) -> dict:
    options = [
        {'candidate-id': f'c{number}-{i}', 'utterance': f'distractor {number} {i} text'}
        for i in range(99)
    ]
    options.insert(37, {'candidate-id': f'ok{number}', 'utterance': ANSWERS[number]})
    example = {
        'example-id': 1000 + number,
        'messages-so-far': [{'speaker': s, 'utterance': u} for s, u in CONTEXTS[number]],
        'options-for-next': options,
    }
    if with_answer:
        example['options-for-correct-answers'] = [
            {'candidate-id': f'ok{number}', 'utterance': ANSWERS[number]}
        ]
    return example


def write_dstc7(folder: Path, split: str = 'dev', examples=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = examples if examples is not None else [dstc7_example(i) for i in range(3)]
    path = folder / f'ubuntu_{split}_subtask_1.json'
    path.write_text(json.dumps(data, indent=1), encoding='utf-8')
    return path


# --- UDC v2 fixtures (own text) ---------------------------------------------------------------
TRAIN_ROWS = [
    [
        'hi all __eou__ my sound is gone __eou__ __eot__ try alsamixer __eou__ __eot__',
        'ok it worked __eou__',
        '1',
    ],
    ['how do i list files ? __eou__ __eot__', 'the moon is bright __eou__', '0'],
    [
        'is grub2 default now ? __eou__ __eot__ yes since karmic __eou__ __eot__',
        'thanks , and how do i edit it ?\nthe config i mean __eou__',
        '1.0',
    ],
    ['what is sudo ? __eou__ __eot__', 'it runs a command as root __eou__', '1'],
]
VALID_HEADER = ['Context', 'Ground Truth Utterance'] + [f'Distractor_{i}' for i in range(9)]
VALID_ROWS = [
    ['apt is locked __eou__ __eot__ another apt running ? __eou__ __eot__', 'yes synaptic __eou__']
    + [f'wrong answer {i} __eou__' for i in range(9)],
    ['where is xorg.conf ? __eou__ __eot__', 'there is none by default __eou__']
    + [f'other answer {i} __eou__' for i in range(9)],
]


def csv_text(header: list[str], rows: list[list[str]], end: str = '\n') -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=end)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_udc(folder: Path, name: str, content: str | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode('utf-8'))
    return path


def messages(teacher) -> list[dict]:
    result = []
    for episode_idx in range(teacher.num_episodes()):
        message = teacher.get(episode_idx, 0)
        assert message['episode_done']  # one-message episodes
        result.append(message)
    return result


def in_dir(folder: Path, task: str, datatype: str = 'valid', *args: str):
    return make_teacher(task, '--ubuntu-data-dir', str(folder), *args, datatype=datatype)


# --- DSTC7 --------------------------------------------------------------------------------------
def test_dstc7_generation_default_location(tmp_path):
    write_dstc7(tmp_path / 'dstc7')
    teacher = make_teacher('ubuntu_ext', '--datapath', str(tmp_path))
    assert (teacher.num_episodes(), teacher.num_examples()) == (3, 3)
    first = messages(teacher)[0]
    assert first['text'] == (
        'participant 1: how do i mount a usb stick from the terminal ?\n'
        'participant 2: check dmesg for the device name first\n'
        'participant 1: it says sdb1'
    )
    assert list(first['labels']) == [ANSWERS[0]]
    assert first['example_id'] == '1000'
    assert first['context_turns'] == [u for _, u in CONTEXTS[0]]
    assert first['context_speakers'] == ['participant_1', 'participant_2', 'participant_1']
    assert 'label_candidates' not in first


def test_dstc7_ranking_has_100_candidates_with_the_answer(tmp_path):
    write_dstc7(tmp_path)
    teacher = in_dir(tmp_path, 'ubuntu_ext:dstc7_ranking')
    found = messages(teacher)
    positions = set()
    for message, answer in zip(found, ANSWERS):
        assert len(message['label_candidates']) == 100
        assert answer in message['label_candidates']
        positions.add(message['label_candidates'].index(answer))
    assert positions != {37}  # shuffled, not in file order
    again = messages(in_dir(tmp_path, 'ubuntu_ext:dstc7_ranking'))
    assert [m['label_candidates'] for m in again] == [m['label_candidates'] for m in found]


def test_dstc7_test_split_answers_from_tsv(tmp_path):
    write_dstc7(tmp_path, 'test', [dstc7_example(i, with_answer=False) for i in range(3)])
    with pytest.raises(DataNotFoundError, match='ubuntu_responses_subtask_1.tsv'):
        in_dir(tmp_path, 'ubuntu_ext:dstc7_ranking', 'test')
    tsv = ''.join(f'{1000 + i}\tok{i}\t{ANSWERS[i]}\n' for i in range(3))
    (tmp_path / 'ubuntu_responses_subtask_1.tsv').write_text(tsv)
    found = messages(in_dir(tmp_path, 'ubuntu_ext:dstc7_ranking', 'test'))
    assert [list(m['labels']) for m in found] == [[a] for a in ANSWERS]


def test_dstc7_malformed_answer_lines_drop_and_count_their_examples(tmp_path):
    write_dstc7(tmp_path, 'test', [dstc7_example(i, with_answer=False) for i in range(3)])
    tsv = (
        f'1000\tok0\t{ANSWERS[0]}\n'
        f'1001\tok1\t{ANSWERS[1]}\n'
        '1001\tok1b\tan answer\twith a stray tab\n'  # 4 fields
    ).encode() + b'1002\tok2\tbad \xff byte\n'
    (tmp_path / 'ubuntu_responses_subtask_1.tsv').write_bytes(tsv)
    with pytest.raises(MalformedDataError, match=r'subtask_1\.tsv:3: expected example-id'):
        in_dir(tmp_path, 'ubuntu_ext:dstc7', 'test')
    teacher = in_dir(tmp_path, 'ubuntu_ext:dstc7', 'test', '--skip-malformed', 'true')
    # 1001 is not kept with half its answers; 1002 is not reported again for having none
    assert [m['example_id'] for m in messages(teacher)] == ['1000']
    assert [where for where, _ in teacher.malformed.problems] == [
        f'{tmp_path / "ubuntu_responses_subtask_1.tsv"}:{n}' for n in (3, 4)
    ]
    assert teacher.malformed.dropped == 2
    assert '(2 examples left out)' in teacher.malformed.summary()


def test_dstc7_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        make_teacher('ubuntu_ext:dstc7', '--datapath', str(tmp_path), datatype='train')
    message = str(err.value)
    assert 'ubuntu_train_subtask_1.json' in message
    assert str(tmp_path / 'dstc7') in message
    assert 'dstc7-noesis' in message


def test_dstc7_malformed_entries(tmp_path):
    bad = dstc7_example(1)
    bad['options-for-next'] = bad['options-for-next'][:37] + bad['options-for-next'][38:]
    write_dstc7(tmp_path, examples=[dstc7_example(0), bad, dstc7_example(2)])
    with pytest.raises(MalformedDataError, match=r'example #1 \(example-id 1001\): the correct'):
        in_dir(tmp_path, 'ubuntu_ext:dstc7_ranking')
    teacher = in_dir(tmp_path, 'ubuntu_ext:dstc7_ranking', 'valid', '--skip-malformed', 'true')
    assert [m['example_id'] for m in messages(teacher)] == ['1000', '1002']
    empty = dstc7_example(0)
    empty['messages-so-far'][1]['utterance'] = '  '
    write_dstc7(tmp_path, examples=[empty])
    with pytest.raises(MalformedDataError, match=r'messages-so-far\[1\] needs'):
        in_dir(tmp_path, 'ubuntu_ext:dstc7')
    path = tmp_path / 'ubuntu_dev_subtask_1.json'
    path.write_text('[\n{"example-id": 1,\n "messages-so-far": [}\n]')
    with pytest.raises(MalformedDataError, match=r'ubuntu_dev_subtask_1\.json:3: invalid JSON'):
        in_dir(tmp_path, 'ubuntu_ext:dstc7')


# --- UDC v2 -------------------------------------------------------------------------------------
def test_udc_train_keeps_positive_rows_and_splits_turns(tmp_path):
    write_udc(
        tmp_path / 'Ubuntu', 'train.csv', csv_text(['Context', 'Utterance', 'Label'], TRAIN_ROWS)
    )
    teacher = make_teacher('ubuntu_ext:udc_v2', '--datapath', str(tmp_path), datatype='train')
    assert (teacher.num_episodes(), teacher.num_examples()) == (3, 3)
    first, second, _ = messages(teacher)
    assert first['text'] == 'hi all my sound is gone\ntry alsamixer'
    assert first['context_turns'] == ['hi all my sound is gone', 'try alsamixer']
    assert list(first['labels']) == ['ok it worked']
    assert list(second['labels']) == ['thanks , and how do i edit it ?\nthe config i mean']
    assert 'label_candidates' not in first


def test_udc_valid_candidates(tmp_path):
    write_udc(tmp_path, 'valid.csv', csv_text(VALID_HEADER, VALID_ROWS, end='\r\n'))
    found = messages(in_dir(tmp_path, 'ubuntu_ext:udc_v2'))
    assert len(found) == 2
    assert found[0]['text'] == 'apt is locked\nanother apt running ?'
    for message in found:
        assert len(message['label_candidates']) == 10
        assert message['labels'][0] in message['label_candidates']
    assert 'wrong answer 3' in found[0]['label_candidates']


def test_udc_missing_file(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        make_teacher('ubuntu_ext:udc_v2', '--datapath', str(tmp_path), datatype='test')
    assert 'test.csv' in str(err.value) and str(tmp_path / 'Ubuntu') in str(err.value)
    assert 'ubuntu-ranking-dataset-creator' in str(err.value)


TRAIN_HEADER = ['Context', 'Utterance', 'Label']


@pytest.mark.parametrize(
    'row,reason',
    [
        (['ctx __eou__ __eot__', 'resp __eou__'], '2 fields, the header has 3'),
        (['ctx __eou__ __eot__', 'resp __eou__', 'yes'], "Label must be 0 or 1, not 'yes'"),
        (['a __eou__ __eot__ __eou__ __eot__ b __eou__ __eot__', 'r __eou__', '1'], 'empty turn'),
        (['ctx __eou__ __eot__', ' __eou__ ', '1'], 'the response is empty'),
    ],
)
def test_udc_malformed_row_names_line(tmp_path, row, reason):
    # row 3 (TRAIN_ROWS[2]) spans two lines, so the new row starts on line 7
    path = write_udc(tmp_path, 'train.csv', csv_text(TRAIN_HEADER, TRAIN_ROWS + [row]))
    with pytest.raises(MalformedDataError) as err:
        in_dir(tmp_path, 'ubuntu_ext:udc_v2', 'train')
    location, _, message = str(err.value).partition(': ')
    assert location == f'{path}:7'
    assert reason in message


def test_udc_bad_header_and_bytes(tmp_path):
    write_udc(tmp_path, 'valid.csv', csv_text(['Context', 'Response'], [['a', 'b']]))
    with pytest.raises(MalformedDataError, match=r'valid\.csv:1: unexpected header'):
        in_dir(tmp_path, 'ubuntu_ext:udc_v2')
    raw = csv_text(TRAIN_HEADER, TRAIN_ROWS).encode('utf-8').replace(b'sudo', b'su\x80do')
    write_udc(tmp_path, 'train.csv', raw)
    with pytest.raises(MalformedDataError, match=r'train\.csv:6: not valid UTF-8'):
        in_dir(tmp_path, 'ubuntu_ext:udc_v2', 'train')
    teacher = in_dir(tmp_path, 'ubuntu_ext:udc_v2', 'train', '--skip-malformed', 'true')
    assert teacher.num_examples() == 2 and teacher.malformed.dropped == 1


# --- stock parlai ---------------------------------------------------------------------------
def test_stock_display_data(tmp_path, parlai_cli):
    write_dstc7(tmp_path / 'dstc7')
    write_udc(tmp_path / 'Ubuntu', 'valid.csv', csv_text(VALID_HEADER, VALID_ROWS))
    out = parlai_cli(
        'display_data',
        '-t',
        'ubuntu_ext:dstc7_ranking,ubuntu_ext:udc_v2',
        '-dt',
        'valid',
        '--datapath',
        str(tmp_path),
        '-n',
        '10',
    )
    log = out.stdout + out.stderr
    assert 'loaded 5 episodes with a total of 5 examples' in log
    assert 'participant 1: my wifi drops every few minutes after the upgrade' in log
    assert 'there is none by default' in log
