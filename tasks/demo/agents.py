"""``-t ext_demo``: small synthetic chit-chat dialogues, generated offline from templates.

The demo data of the README's main job and the fixture of the end-to-end tests: a few
hundred short two-person conversations (greetings, names, places, food, pets, jobs, weather)
made deterministically from templates, so that the repository ships no dataset lines and
nothing is downloaded. Splits: train 400, valid 40, test 40 episodes (independent seeds).
"""

from __future__ import annotations

import copy
import os
import random
from collections.abc import Iterator

from parlai.core.opt import Opt
from parlai.core.teachers import DialogTeacher

NAMES = ['anna', 'ben', 'carla', 'dev', 'emma', 'farid', 'greta', 'hugo', 'ines', 'jon']
CITIES = ['paris', 'lima', 'oslo', 'cairo', 'tokyo', 'quito', 'dublin', 'perth']
FOODS = ['pizza', 'sushi', 'pasta', 'tacos', 'soup', 'curry', 'salad', 'pancakes']
PETS = ['dog', 'cat', 'parrot', 'rabbit', 'turtle', 'hamster']
JOBS = ['teacher', 'nurse', 'baker', 'pilot', 'farmer', 'chef', 'lawyer', 'painter']
WEATHER = ['sunny', 'rainy', 'cold', 'windy', 'warm', 'cloudy']
HOBBIES = ['reading', 'hiking', 'swimming', 'chess', 'cooking', 'singing', 'running']

# (question, answer template, remark template): the partner asks, the model answers, and
# the partner's next turn starts with a remark on that answer
EXCHANGES = [
    ('what is your name ?', 'my name is {name} .', 'nice to meet you , {name} .'),
    ('where do you live ?', 'i live in {city} .', 'i have never been to {city} .'),
    ('what do you like to eat ?', 'i love {food} .', '{food} is great .'),
    ('do you have any pets ?', 'yes , i have a {pet} .', 'i would like a {pet} too .'),
    ('what do you do for work ?', 'i work as a {job} .', 'being a {job} sounds hard .'),
    ('how is the weather there ?', 'it is {weather} today .', 'i hope it stays {weather} .'),
    ('what do you do for fun ?', 'i enjoy {hobby} .', '{hobby} is a good hobby .'),
]
GREETINGS = [
    ('hi , how are you ?', 'i am fine , thanks . and you ?'),
    ('hello there !', 'hello ! how is your day ?'),
    ('good morning !', 'good morning to you !'),
]
GOODBYES = [
    ('i have to go now . bye !', 'bye ! it was nice talking to you .'),
    ('see you later !', 'see you later !'),
    ('talk to you soon !', 'talk to you soon !'),
]
SPLIT_SEEDS = {'train': (0, 400), 'valid': (1, 40), 'test': (2, 40)}


def generate_dialogue(rng: random.Random) -> list[tuple[str, str]]:
    """One conversation as (partner turn, model reply) pairs; the model's facts stay fixed."""
    facts = {
        'name': rng.choice(NAMES),
        'city': rng.choice(CITIES),
        'food': rng.choice(FOODS),
        'pet': rng.choice(PETS),
        'job': rng.choice(JOBS),
        'weather': rng.choice(WEATHER),
        'hobby': rng.choice(HOBBIES),
    }
    pairs = [rng.choice(GREETINGS)]
    remark = ''
    for question, answer, next_remark in rng.sample(EXCHANGES, k=rng.randint(2, 4)):
        pairs.append((f'{remark}{question}', answer.format(**facts)))
        remark = next_remark.format(**facts) + ' '
    goodbye, reply = rng.choice(GOODBYES)
    pairs.append((f'{remark}{goodbye}', reply))
    return pairs


def generate_split(split: str) -> list[list[tuple[str, str]]]:
    seed, count = SPLIT_SEEDS[split]
    rng = random.Random(seed)
    return [generate_dialogue(rng) for _ in range(count)]


class DefaultTeacher(DialogTeacher):
    def __init__(self, opt: Opt, shared=None) -> None:
        opt = copy.deepcopy(opt)
        # the data is generated, not read; the "datafile" only names the split, and lives under
        # the datapath because ParlAI writes a ``<datafile>.lengths`` cache in stream mode
        folder = os.path.join(opt['datapath'], 'parlai_ext', 'ext_demo')
        os.makedirs(folder, exist_ok=True)
        opt['datafile'] = os.path.join(folder, opt['datatype'].split(':')[0])
        self.id = 'ext_demo'
        super().__init__(opt, shared)

    def setup_data(self, datafile: str) -> Iterator[tuple[dict, bool]]:
        for dialogue in generate_split(os.path.basename(datafile)):
            for turn, (text, reply) in enumerate(dialogue):
                yield {'text': text, 'labels': [reply]}, turn == 0
