"""``personachat_ext`` on fbdialog fixtures written here (own dialogues, ParlAI's file names)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from parlai.core.teachers import FbDeprecatedDialogTeacher
from teacher_helpers import episodes, make_teacher

from parlai_ext.tasks.common import DataNotFoundError, MalformedDataError

# (self persona, partner persona, [(partner utterance, reply), ...])
EPISODES = [
    (
        ['i keep bees in my garden.', 'my favourite colour is teal.'],
        ['i drive a red tractor.', 'i have three sisters.', 'i bake bread every morning.'],
        [
            ('good evening , how was your day ?', 'busy , the bees swarmed again .'),
            ('swarmed ? that sounds scary .', 'not really , they are calm creatures .'),
            ('i spent the day on my tractor .', 'what colour is your tractor ?'),
        ],
    ),
    (
        ['i play the cello.', 'i live near the sea.'],
        ['i am afraid of dogs.', 'i work night shifts.'],
        [
            ('hi ! do you like music ?', 'yes , i play the cello in a small band .'),
            ('nice , i only listen on the night shift .', 'what do you do at night ?'),
        ],
    ),
]
N_EXAMPLES = sum(len(turns) for _, _, turns in EPISODES)
FILLERS = [f'filler reply number {i} .' for i in range(40)]


def fbdialog(view: str, with_cands: bool, crlf: bool = False, blank_lines: bool = False) -> str:
    """An fbdialog file in ParlAI's PersonaChat layout for one view."""
    lines = []
    for number, (mine, theirs, turns) in enumerate(EPISODES):
        persona = []
        if view in ('self', 'both'):
            persona += [f'your persona: {s}' for s in mine]
        if view in ('other', 'both'):
            persona += [f"partner's persona: {s}" for s in theirs]
        entries = persona + [
            f'{text}\t{reply}'
            + (
                '\t\t' + '|'.join(FILLERS[number + i : number + i + 19] + [reply])
                if with_cands
                else ''
            )
            for i, (text, reply) in enumerate(turns)
        ]
        lines += [f'{index} {entry}' for index, entry in enumerate(entries, 1)]
        if blank_lines:
            lines.append('')
    end = '\r\n' if crlf else '\n'
    return end.join(lines) + end


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding='utf-8')
    return path


def read_file(path: Path, task: str = 'personachat_ext:both_original', *args: str):
    return make_teacher(task, '--personachat-file', str(path), *args)


# --- normal reading ---------------------------------------------------------------------------
def test_both_view_counts_text_and_persona_fields(tmp_path):
    path = write(tmp_path / 'ConvAI2' / 'valid_both_original_no_cands.txt', fbdialog('both', False))
    teacher = make_teacher('personachat_ext:both_original', '--datapath', str(tmp_path))
    assert (teacher.num_episodes(), teacher.num_examples()) == (2, N_EXAMPLES)
    eps = episodes(teacher)
    mine, theirs, turns = EPISODES[0]
    first = eps[0][0]
    assert first['text'] == '\n'.join(
        [f'your persona: {s}' for s in mine]
        + [f"partner's persona: {s}" for s in theirs]
        + [turns[0][0]]
    )
    assert list(first['labels']) == [turns[0][1]]
    assert eps[0][1]['text'] == turns[1][0]  # persona only on the first turn's text
    for episode, (mine, theirs, _turns) in zip(eps, EPISODES):
        for message in episode:
            assert message['self_persona'] == mine
            assert message['partner_persona'] == theirs
            assert 'label_candidates' not in message
    assert str(path) == teacher.opt['datafile']


@pytest.mark.parametrize(
    'view,has_self,has_partner',
    [('self', True, False), ('other', False, True), ('none', False, False)],
)
def test_views_fill_only_their_persona_field(tmp_path, view, has_self, has_partner):
    write(tmp_path / 'ConvAI2' / f'valid_{view}_original_no_cands.txt', fbdialog(view, False))
    teacher = make_teacher(f'personachat_ext:{view}_original', '--datapath', str(tmp_path))
    eps = episodes(teacher)
    assert teacher.num_examples() == N_EXAMPLES
    first = eps[0][0]
    assert bool(first['self_persona']) is has_self
    assert bool(first['partner_persona']) is has_partner
    assert first['text'].startswith('your persona:') is has_self
    if view == 'none':
        assert first['text'] == EPISODES[0][2][0][0]


def test_same_messages_as_parlai_fbdialog_reader(tmp_path):
    """text, labels, candidates and episode boundaries equal FbDeprecatedDialogTeacher's."""
    path = write(tmp_path / 'valid_both_original.txt', fbdialog('both', True))
    ours = read_file(path, 'personachat_ext:both_original', '--with-candidates', 'true')
    opt = copy.deepcopy(ours.opt)
    opt['datafile'] = str(path)
    theirs = FbDeprecatedDialogTeacher(opt)
    ours_eps, theirs_eps = episodes(ours), episodes(theirs)
    assert [len(e) for e in ours_eps] == [len(e) for e in theirs_eps]
    for ours_episode, theirs_episode in zip(ours_eps, theirs_eps):
        for a, b in zip(ours_episode, theirs_episode):
            assert a['text'] == b['text']
            assert list(a['labels']) == list(b['labels'])
            assert list(a['label_candidates']) == list(b['label_candidates'])


def test_candidates_contain_the_label(tmp_path):
    path = write(tmp_path / 'valid_self_original.txt', fbdialog('self', True))
    teacher = read_file(path, 'personachat_ext:self_original', '--with-candidates', 'true')
    for episode in episodes(teacher):
        for message in episode:
            assert len(message['label_candidates']) == 20
            assert message['labels'][0] in message['label_candidates']
    # without --with-candidates the same file gives no candidates
    plain = read_file(path, 'personachat_ext:self_original')
    assert all('label_candidates' not in m for e in episodes(plain) for m in e)


def test_default_layouts_and_preferences(tmp_path):
    convai2 = tmp_path / 'ConvAI2'
    personachat = tmp_path / 'Persona-Chat' / 'personachat'
    nocands = write(convai2 / 'valid_self_original_no_cands.txt', fbdialog('self', False))
    cands = write(convai2 / 'valid_self_original.txt', fbdialog('self', True))
    pc_test = write(personachat / 'test_self_original.txt', fbdialog('self', True))
    data = ['--datapath', str(tmp_path)]
    assert make_teacher('personachat_ext', *data).opt['datafile'] == str(nocands)
    with_c = make_teacher('personachat_ext', *data, '--with-candidates', 'true')
    assert with_c.opt['datafile'] == str(cands)
    test = make_teacher('personachat_ext:self', *data, datatype='test')
    assert test.opt['datafile'] == str(pc_test)
    assert 'label_candidates' not in episodes(test)[0][0]


def test_data_dir_and_split_placeholder(tmp_path):
    write(tmp_path / 'mine' / 'train_other_revised_no_cands.txt', fbdialog('other', False))
    teacher = make_teacher(
        'personachat_ext:other_revised',
        '--personachat-data-dir',
        str(tmp_path / 'mine'),
        datatype='train:ordered',
    )
    assert teacher.num_examples() == N_EXAMPLES
    write(tmp_path / 'dev800_valid.txt', fbdialog('none', False))
    teacher = make_teacher(
        'personachat_ext:none', '--personachat-file', str(tmp_path / 'dev800_{split}.txt')
    )
    assert teacher.num_episodes() == 2


def test_crlf_and_blank_lines_change_nothing(tmp_path):
    plain = read_file(write(tmp_path / 'a.txt', fbdialog('both', False)))
    odd = read_file(write(tmp_path / 'b.txt', fbdialog('both', False, crlf=True, blank_lines=True)))
    assert episodes(plain) == episodes(odd)


def test_stream_datatype_counts_without_writing_beside_data(tmp_path):
    folder = tmp_path / 'data'
    write(folder / 'train_both_original_no_cands.txt', fbdialog('both', False))
    teacher = make_teacher(
        'personachat_ext:both',
        '--personachat-data-dir',
        str(folder),
        '--datapath',
        str(tmp_path / 'dp'),
        datatype='train:stream',
    )
    assert (teacher.num_episodes(), teacher.num_examples()) == (2, N_EXAMPLES)
    assert sorted(p.name for p in folder.iterdir()) == ['train_both_original_no_cands.txt']
    assert teacher.act()['self_persona'] == EPISODES[0][0]


# --- bad input --------------------------------------------------------------------------------
def test_missing_files_error_names_files_places_and_source(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        make_teacher('personachat_ext:both_revised', '--datapath', str(tmp_path))
    message = str(err.value)
    assert 'valid_both_revised_no_cands.txt' in message
    assert 'valid_both_revised.txt' in message
    assert str(tmp_path / 'ConvAI2') in message
    assert str(tmp_path / 'Persona-Chat' / 'personachat') in message
    assert 'parl.ai/downloads/convai2' in message
    with pytest.raises(DataNotFoundError, match='no public test split'):
        make_teacher('personachat_ext', '--datapath', str(tmp_path), datatype='test')
    with pytest.raises(DataNotFoundError, match='nothere.txt'):
        read_file(tmp_path / 'nothere.txt')


def _broken(replace_line: int, new_text: str, view: str = 'both', cands: bool = False) -> str:
    lines = fbdialog(view, cands).splitlines()
    lines[replace_line - 1] = new_text
    return '\n'.join(lines) + '\n'


# line 6 is the first dialogue line of episode 1 in the 'both' view (5 persona lines first)
BAD_LINES = [
    ('six no index\tx', 'expected "<index> <text>"'),
    ('9 hello ?\tanswer .', 'does not follow 5'),
    ('6 hello ?\t', 'empty reply'),
    ('6 \tanswer .', 'empty partner utterance'),
    ('6 a\tb\tc\td\te', '5 tab-separated fields'),
]


@pytest.mark.parametrize('line,reason', BAD_LINES)
def test_malformed_line_names_file_and_line(tmp_path, line, reason):
    path = write(tmp_path / 'bad.txt', _broken(6, line))
    with pytest.raises(MalformedDataError) as err:
        read_file(path)
    assert str(err.value).startswith(f'{path}:6: ')
    if reason:
        assert reason in str(err.value)


def test_persona_line_after_dialogue_and_wrong_view(tmp_path):
    path = write(tmp_path / 'late.txt', _broken(7, "7 partner's persona: late line."))
    with pytest.raises(MalformedDataError, match=r'late\.txt:7: persona line after'):
        read_file(path)
    path = write(tmp_path / 'both.txt', fbdialog('both', False))
    with pytest.raises(MalformedDataError, match=r'both\.txt:3: partner persona line.*"self" view'):
        read_file(path, 'personachat_ext:self_original')


def test_persona_prefixes_are_exact_and_need_a_sentence(tmp_path):
    # ConvAI2 writes the prefixes in lower case: another spelling is no persona line
    path = write(tmp_path / 'caps.txt', _broken(2, '2 Your persona: i like tea.'))
    with pytest.raises(MalformedDataError, match=r'caps\.txt:2: a line without a tab must be'):
        read_file(path)
    path = write(tmp_path / 'empty.txt', _broken(2, "2 partner's persona:  "))
    with pytest.raises(MalformedDataError, match=r'empty\.txt:2: empty persona sentence'):
        read_file(path)


def test_candidate_problems(tmp_path):
    no_cands = write(tmp_path / 'plain.txt', fbdialog('self', False))
    with pytest.raises(MalformedDataError, match=r'plain\.txt:3: no label candidates'):
        read_file(no_cands, 'personachat_ext:self', '--with-candidates', 'true')
    lines = fbdialog('self', True).splitlines()
    lines[3] = lines[3].replace('|not really , they are calm creatures .', '|wrong .')
    path = write(tmp_path / 'cands.txt', '\n'.join(lines) + '\n')
    with pytest.raises(MalformedDataError, match=r'cands\.txt:4: the reply is not among'):
        read_file(path, 'personachat_ext:self', '--with-candidates', 'true')


def test_non_utf8_and_persona_only_episode(tmp_path):
    raw = fbdialog('both', False).encode('utf-8').replace(b'bees swarmed', b'bees \xff swarmed')
    path = write(tmp_path / 'latin.txt', raw)
    with pytest.raises(MalformedDataError, match=r'latin\.txt:6: not valid UTF-8 \(byte 0xff'):
        read_file(path)
    path = write(tmp_path / 'short.txt', '1 your persona: i like tea.\n' + fbdialog('self', False))
    with pytest.raises(MalformedDataError, match=r'short\.txt:1: episode has persona lines but no'):
        read_file(path, 'personachat_ext:self')


def test_file_cut_in_its_last_line_warns(tmp_path):
    """A copy cut mid-line parses (the cut reply is still a reply) but must not pass silently."""
    content = fbdialog('both', False)
    path = write(tmp_path / 'cut.txt', content[: content.rindex('night')])  # mid-word, no '\n'
    teacher = read_file(path)
    assert teacher.num_examples() == N_EXAMPLES
    last_line = content.count('\n')
    assert teacher.cut_warning.startswith(f'{path}:{last_line}: the last line has no line end')
    assert read_file(write(tmp_path / 'whole.txt', content)).cut_warning is None


def test_skip_malformed_drops_episode_and_reports_count(tmp_path, caplog):
    text = _broken(6, '6 hello ?\t') + fbdialog('both', False).replace(
        'good evening', 'good morning'
    )
    raw = text.encode('utf-8').replace(b'cello in', b'cello \xfe in', 1)
    path = write(tmp_path / 'mixed.txt', raw)
    teacher = read_file(path, 'personachat_ext:both', '--skip-malformed', 'true')
    eps = episodes(teacher)
    # episode 1 (empty reply) and episode 2 (bad byte) dropped; the second copy's episode 1 kept
    assert teacher.num_episodes() == 2
    assert eps[0][0]['text'].endswith('good morning , how was your day ?')
    assert eps[1][0]['self_persona'] == EPISODES[1][0]
    assert len(teacher.malformed.problems) == 2 and teacher.malformed.dropped == 2
    assert 'skipped 2 malformed' in teacher.malformed.summary()


def test_skip_malformed_undecodable_first_line_drops_only_its_episode(tmp_path):
    # three episodes (8, 6, 8 lines in the 'both' view); line 9 opens episode 2 with a bad byte
    text = fbdialog('both', False) + fbdialog('both', False).replace('good evening', 'good morning')
    lines = text.encode('utf-8').splitlines()[:22]
    assert lines[8] == b'1 your persona: i play the cello.'
    lines[8] = b'1 your persona: i play the \xfe cello.'
    path = write(tmp_path / 'first.txt', b'\n'.join(lines) + b'\n')
    teacher = read_file(path, 'personachat_ext:both', '--skip-malformed', 'true')
    eps = episodes(teacher)
    # the episode before the bad line is kept; only episode 2 is left out and counted
    assert teacher.num_episodes() == 2
    assert eps[0][0]['text'].endswith('good evening , how was your day ?')
    assert eps[1][0]['text'].endswith('good morning , how was your day ?')
    assert teacher.malformed.problems[0][0] == f'{path}:9'
    assert len(teacher.malformed.problems) == 1 and teacher.malformed.dropped == 1
    assert '(1 episodes left out)' in teacher.malformed.summary()


# --- stock parlai -----------------------------------------------------------------------------
def test_stock_display_data(tmp_path, parlai_cli):
    write(tmp_path / 'ConvAI2' / 'valid_both_original.txt', fbdialog('both', True))
    out = parlai_cli(
        'display_data',
        '-t',
        'personachat_ext:both_original',
        '-dt',
        'valid',
        '--with-candidates',
        'true',
        '--datapath',
        str(tmp_path),
        '-n',
        '2',
    )
    log = out.stdout + out.stderr
    assert f'loaded 2 episodes with a total of {N_EXAMPLES} examples' in log
    assert 'busy , the bees swarmed again .' in log
