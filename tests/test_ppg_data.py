"""PPG data: §3.3 critic pairs, BM25 top-3, the ppg_ext teachers and the DRG input modes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from parlai.core.loader import load_teacher_module
from parlai.core.params import ParlaiParser

from parlai_ext.modules.ppg import (
    CriticPair,
    bm25_scores,
    bm25_top_k,
    chat_fields,
    critic_pairs,
    drg_source,
    persona_text,
    ppg_source,
    select_partner_persona,
    speaker_utterances,
    strip_chat_role,
    unique_dialogues,
)

# (self persona, partner persona, [(partner utterance, reply), ...]); speaker A = "self".
EPISODES = [
    (
        ['i keep bees in my garden.', 'my favourite colour is teal.'],
        ['i drive a red tractor.', 'i have three sisters.', 'i bake bread every morning.'],
        [
            ('__SILENCE__', 'hello , my bees kept me busy today .'),
            ('i spent the day on my red tractor .', 'what colour is your tractor ?'),
            ('red , and my sisters love it .', 'teal would suit it better .'),
        ],
    ),
    (
        ['i play the cello.', 'i live near the sea.'],
        ['i am afraid of dogs.', 'i work night shifts.'],
        [
            ('hi ! do you like music ?', 'yes , i play the cello by the sea .'),
            ('nice , i only listen on the night shift .', 'what do you do at night ?'),
        ],
    ),
    (
        ['i am a chef.', 'i hate the cold.'],
        ['i collect zebra stamps.', 'i have a pet parrot.'],
        [
            ('do you cook ?', 'yes , i am a chef in a warm kitchen .'),
            ('my parrot loves bread .', 'i could bake some for it .'),
            ('he also likes my stamps .', 'what kind of stamps ?'),
            ('zebra stamps , a rare set .', 'that is a lovely hobby .'),
        ],
    ),
]


def fbdialog_both(episodes=EPISODES) -> str:
    """A PersonaChat ``both`` view file (ParlAI's fbdialog layout)."""
    lines = []
    for mine, theirs, turns in episodes:
        entries = [f'your persona: {s}' for s in mine]
        entries += [f"partner's persona: {s}" for s in theirs]
        entries += [f'{text}\t{reply}' for text, reply in turns]
        lines += [f'{index} {entry}' for index, entry in enumerate(entries, 1)]
    return '\n'.join(lines) + '\n'


def write_both(folder: Path, episodes=EPISODES, name: str = 'both.txt') -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(fbdialog_both(episodes), encoding='utf-8')
    return path


def make_teacher(task: str, path: Path, *args: str, datatype: str = 'valid'):
    argv = ['-t', task, '-dt', datatype, '--personachat-file', str(path), *args]
    opt = ParlaiParser(True, False).parse_args(argv)
    return load_teacher_module(task)(opt)


def messages(teacher) -> list[dict]:
    out = []
    for episode in range(teacher.num_episodes()):
        message = teacher.get(episode, 0)
        assert message['episode_done']  # one example per episode: the context is in it
        out.append(message)
    return out


# --- §3.3: the critic's positives and speaker-swapped negatives --------------------------------
def test_critic_pairs_follow_section_3_3_exactly():
    s_a = ['i keep bees.', 'i like teal.']
    s_b = ['i drive a tractor.']
    turns = [('__SILENCE__', 'a1'), ('b1', 'a2'), ('b2', 'a3')]
    pairs = critic_pairs(s_a, s_b, turns)
    A, B = tuple(s_a), tuple(s_b)
    expected = [
        CriticPair(A, 'a1', 1),  # (s_A, r_A, 1)
        CriticPair(B, 'a1', 0),  # (s_B, r_A, 0)
        CriticPair(B, 'b1', 1),  # (s_B, r_B, 1)
        CriticPair(A, 'b1', 0),  # (s_A, r_B, 0)
        CriticPair(A, 'a2', 1),
        CriticPair(B, 'a2', 0),
        CriticPair(B, 'b2', 1),
        CriticPair(A, 'b2', 0),
        CriticPair(A, 'a3', 1),
        CriticPair(B, 'a3', 0),
    ]
    assert pairs == expected
    # balanced, every response once positive and once negative, never with __SILENCE__
    assert sum(p.label for p in pairs) * 2 == len(pairs)
    assert all(p.response != '__SILENCE__' for p in pairs)
    # the footnote's alternative (partner personas): the same pairs, labels swapped
    swapped = critic_pairs(s_a, s_b, turns, persona='partner')
    assert sorted((p.persona, p.response, p.label) for p in swapped) == sorted(
        (p.persona, p.response, 1 - p.label) for p in pairs
    )
    assert swapped[:2] == [CriticPair(B, 'a1', 1), CriticPair(A, 'a1', 0)]
    with pytest.raises(ValueError):
        critic_pairs(s_a, s_b, turns, persona='both')


def test_critic_teacher_gives_the_section_3_3_pairs_of_each_episode(tmp_path):
    path = write_both(tmp_path)
    teacher = make_teacher('ppg_ext:critic', path)
    got = [(m['persona'], m['response'], m['labels'][0]) for m in messages(teacher)]
    mine, theirs, turns = EPISODES[0]
    s_a, s_b = persona_text(mine), persona_text(theirs)
    first_episode = [
        (s_a, turns[0][1], '1'),
        (s_b, turns[0][1], '0'),
        (s_b, turns[1][0], '1'),
        (s_a, turns[1][0], '0'),
        (s_a, turns[1][1], '1'),
        (s_b, turns[1][1], '0'),
    ]
    assert got[:6] == first_episode
    n_responses = sum(2 * len(t) - (t[0][0] == '__SILENCE__') for _, _, t in EPISODES)
    assert len(got) == 2 * n_responses
    assert messages(teacher)[0]['text'] == f'{s_a}\n{turns[0][1]}'
    partner = make_teacher('ppg_ext:critic', path, '--critic-persona', 'partner')
    got_partner = [(m['persona'], m['response'], m['labels'][0]) for m in messages(partner)]
    assert got_partner[:2] == [(s_b, turns[0][1], '1'), (s_a, turns[0][1], '0')]
    assert len(got_partner) == len(got)


# --- BM25 top-3 (Table 1's "E2E w/ partner personas") ---------------------------------------------
def test_bm25_top3_picks_the_sentences_the_context_talks_about():
    persona = [
        'i have a pet parrot.',  # 0: "parrot"
        'my favourite food is pizza.',  # 1
        'i collect zebra stamps.',  # 2: "stamps", "zebra" (two rare terms)
        'i work as a nurse.',  # 3: "nurse"
        'i live in a big city.',  # 4
    ]
    context = [
        'do you have any pets ?',
        'a parrot , he sits on my stamps all day .',
        'zebra stamps ? are you a nurse or a collector ?',
    ]
    query = ' '.join(context)
    scores = bm25_scores(query, persona)
    assert scores[1] == scores[4] == 0.0  # only function words ("my", "a", "i") in common
    assert bm25_top_k(query, persona, 3) == [2, 0, 3]
    # kept in profile order for the DRG; all sentences when top_k is 0 or >= their number
    assert select_partner_persona(persona, context, 3) == [persona[0], persona[2], persona[3]]
    assert select_partner_persona(persona, context, 0) == persona
    assert select_partner_persona(persona[:2], context, 3) == persona[:2]


def test_bm25_prefers_rare_terms_and_short_documents():
    docs = ['i like dogs', 'i like dogs and cats and birds and fish', 'i like tea']
    assert bm25_top_k('dogs', docs, 1) == [0]  # same tf, shorter document
    assert bm25_top_k('like tea', docs, 1) == [2]  # "like" is everywhere, "tea" is rare
    assert bm25_top_k('nothing matches', docs, 2) == [0, 1]  # ties keep file order


# --- ppg_ext teachers -------------------------------------------------------------------------
def test_persona_and_response_teachers_build_contexts_turn_by_turn(tmp_path):
    path = write_both(tmp_path)
    persona = messages(make_teacher('ppg_ext:persona', path))
    response = messages(make_teacher('ppg_ext', path))
    n_turns = sum(len(t) for _, _, t in EPISODES)
    assert len(persona) == len(response) == n_turns
    mine, theirs, turns = EPISODES[2]
    third = response[5 + 2]  # episode 3, turn 3
    context = [turns[0][0], turns[0][1], turns[1][0], turns[1][1], turns[2][0]]
    assert third['context'] == context and third['turn'] == 3
    assert list(third['labels']) == [turns[2][1]] and third['response'] == turns[2][1]
    assert third['text'] == drg_source(context, mine, persona_text(theirs))
    assert third['text'].endswith("partner's persona: i collect zebra stamps. i have a pet parrot.")
    p = persona[5 + 2]
    assert p['text'] == ppg_source(context, mine)
    assert 'zebra' not in p['text']  # the PPG never sees the partner persona
    assert list(p['labels']) == ['i collect zebra stamps. i have a pet parrot.']


def test_valid_episodes_split_and_turn_filter(tmp_path):
    path = write_both(tmp_path)
    train = messages(make_teacher('ppg_ext', path, '--ppg-valid-episodes', '1', datatype='train'))
    valid = messages(make_teacher('ppg_ext', path, '--ppg-valid-episodes', '1'))
    test = messages(make_teacher('ppg_ext', path, '--ppg-valid-episodes', '1', datatype='test'))
    assert len(train) == len(EPISODES[0][2]) + len(EPISODES[1][2])
    assert [m['response'] for m in valid] == [r for _, r in EPISODES[2][2]]
    assert [m['response'] for m in test] == [m['response'] for m in valid]
    with pytest.raises(ValueError, match='leaves no training episode'):
        make_teacher('ppg_ext', path, '--ppg-valid-episodes', '3', datatype='train')
    second = messages(make_teacher('ppg_ext', path, '--ppg-turn', '2'))
    assert [m['turn'] for m in second] == [2, 2, 2]
    assert [len(m['context']) for m in second] == [3, 3, 3]
    fourth = messages(make_teacher('ppg_ext:persona', path, '--ppg-turn', '4'))
    assert [m['response'] for m in fourth] == [EPISODES[2][2][3][1]]


def test_input_layouts_put_the_personas_last():
    context = ['hi', 'hello', 'how are you ?']
    text = drg_source(context, ['i am a chef.'], 'i like dogs.')
    assert text.split('\n') == [
        'hi',
        'hello',
        'how are you ?',
        'your persona: i am a chef.',
        "partner's persona: i like dogs.",
    ]
    assert drg_source(context, ['i am a chef.'], None).split('\n')[-1] == (
        'your persona: i am a chef.'
    )
    assert ppg_source(context, ['i am a chef.']).split('\n')[-1] == 'your persona: i am a chef.'
    # an empty generated persona still gets its line (the layout the DRG was trained on)
    assert drg_source(context, ['i am a chef.'], '').split('\n')[-1] == "partner's persona: "


def test_chat_fields_split_persona_lines_from_the_turns():
    """A free chat (``parlai interactive``, self-chat): ``your persona:`` lines (any case,
    anywhere in a turn) are the self persona, prefix removed; ``partner's persona:`` lines (a
    ``both``-view opener) are dropped, not read as dialogue; the other non-empty lines are the
    context."""
    turns = [
        "your persona: i am a chef.\nPartner's persona: i drive a tractor.\n"
        "Your persona: i hate the cold.\npartner's persona: i keep bees.\nhi , how are you ?",
        'great , i just cooked .',
        '\nwhat do you cook ?  ',
    ]
    context, persona = chat_fields(turns)
    assert persona == ['i am a chef.', 'i hate the cold.']
    assert context == ['hi , how are you ?', 'great , i just cooked .', 'what do you cook ?']
    assert chat_fields(['hello']) == (['hello'], [])


@pytest.mark.parametrize(
    'text,expected',
    [
        ("assistant\ni'm a writer .", "i'm a writer ."),
        ('user: how are you ?', 'how are you ?'),
        (' system : hi', 'hi'),
        ('assistant', ''),
        ('users like me .', 'users like me .'),  # a word that starts with a role: kept
        ('user hi there', 'user hi there'),  # no colon or line break after it: kept
        ('i am a user: ok', 'i am a user: ok'),  # only at the very start
        ('user: assistant: hi', 'assistant: hi'),  # one role only
    ],
)
def test_strip_chat_role_removes_one_leading_template_role(text, expected):
    assert strip_chat_role(text) == expected


# --- ConvAI2's train file holds every dialogue from both sides: the critic counts it once -------
def mirrored(episode, last_word: str | None = None):
    """The same dialogue seen from the other speaker (as ConvAI2's train file holds it);
    ``last_word``: the other speaker's final line, which the first view does not hold."""
    mine, theirs, turns = episode
    utterances = [u for turn in turns for u in turn if u != '__SILENCE__']
    utterances += [last_word] if last_word else []
    if turns[0][0] == '__SILENCE__':  # A spoke first: B's view starts with A's first line
        pairs = list(zip(utterances[0::2], utterances[1::2]))
    else:  # B spoke first: B's view starts with silence
        pairs = [('__SILENCE__', utterances[0])]
        pairs += list(zip(utterances[1::2], utterances[2::2]))
    return (theirs, mine, pairs)


def test_unique_dialogues_keeps_one_view_of_each_dialogue():
    a_first, b_first, other = EPISODES
    assert mirrored(a_first)[2] == [
        ('hello , my bees kept me busy today .', 'i spent the day on my red tractor .'),
        ('what colour is your tractor ?', 'red , and my sisters love it .'),
    ]  # one utterance fewer than A's view: A had the last word
    b_last = mirrored(b_first, 'i sleep .')
    views = [a_first, b_first, mirrored(a_first), other, b_last, mirrored(other)]
    # the mirror of episode 1 is shorter (dropped); that of episode 2 is longer (it replaces it)
    assert unique_dialogues(views) == [0, 4, 3]
    assert len(speaker_utterances(*b_last)) == len(speaker_utterances(*b_first)) + 1
    assert speaker_utterances(*b_last)[-1] == (tuple(b_first[1]), 'i sleep .')
    # both views of one dialogue give the same utterances, with the same speakers' personas
    assert speaker_utterances(*a_first)[:4] == speaker_utterances(*mirrored(a_first))
    assert speaker_utterances(*a_first)[0] == (tuple(a_first[0]), turns_first_reply(a_first))
    # an exact repeat is dropped; a dialogue that only shares its opening is kept
    same_start = (a_first[0], a_first[1], [a_first[2][0], ('other', 'lines'), ('from', 'here')])
    assert unique_dialogues([a_first, a_first, same_start]) == [0, 2]
    # views two utterances apart are different dialogues
    cut = (a_first[0], a_first[1], a_first[2][:2])
    assert len(speaker_utterances(*a_first)) - len(speaker_utterances(*cut)) == 2
    assert unique_dialogues([cut, a_first]) == [0, 1]
    one_more = (a_first[0], a_first[1], [*a_first[2][:2], (a_first[2][2][0], '')])
    assert unique_dialogues([cut, one_more]) == [1]  # one utterance apart: one dialogue


def turns_first_reply(episode) -> str:
    return episode[2][0][1]


def test_critic_teacher_counts_a_mirrored_dialogue_once(tmp_path):
    plain = write_both(tmp_path, EPISODES, 'plain.txt')
    both_sides = [EPISODES[0], mirrored(EPISODES[0]), *EPISODES[1:], mirrored(EPISODES[1], 'ok')]
    doubled = write_both(tmp_path, both_sides, 'doubled.txt')

    def pairs(path, *args):
        got = messages(make_teacher('ppg_ext:critic', path, *args))
        return [(m['persona'], m['response'], m['labels'][0]) for m in got]

    once = pairs(plain)
    deduplicated = pairs(doubled)
    # episode 2's mirror holds one utterance more (B's last line): its 2 pairs are new
    mine, theirs, _ = EPISODES[1]
    extra = 'ok'
    assert sorted(deduplicated) == sorted(
        once + [(persona_text(theirs), extra, '1'), (persona_text(mine), extra, '0')]
    )
    assert len(set(deduplicated)) == len(deduplicated)  # no pair twice
    kept_all = pairs(doubled, '--critic-deduplicate', 'false')
    mirror_pairs = critic_pairs(*mirrored(EPISODES[0])) + critic_pairs(*EPISODES[1])
    assert len(kept_all) == len(deduplicated) + len(mirror_pairs)
    assert len(set(kept_all)) < len(kept_all)


def test_bm25_scores_by_hand():
    """Okapi BM25 with k1 = 1.5, b = 0.75 and idf = ln(1 + (N - n + 0.5) / (n + 0.5))."""
    docs = ['i like dogs', 'dogs and cats and dogs', 'i like tea']  # "i", "and": stop words
    # bags: [like, dogs], [dogs, cats, dogs], [like, tea]; average length 7/3
    idf_dogs, idf_tea = math.log(1 + 1.5 / 2.5), math.log(1 + 2.5 / 1.5)
    norm2 = 1.5 * (0.25 + 0.75 * 2 / (7 / 3))  # k1 (1 - b + b |d| / avgdl), |d| = 2
    norm3 = 1.5 * (0.25 + 0.75 * 3 / (7 / 3))
    expected = [
        idf_dogs * 1 * 2.5 / (1 + norm2),
        idf_dogs * 2 * 2.5 / (2 + norm3),
        idf_tea * 1 * 2.5 / (1 + norm2),
    ]
    assert bm25_scores('dogs tea', docs) == pytest.approx(expected, rel=1e-9)
