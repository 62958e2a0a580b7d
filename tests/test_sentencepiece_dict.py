"""SentencePiece dictionary: training, ids of the special tokens, round trips, files, CLI runs."""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch
from parlai.core.agents import create_agent_from_model_file
from parlai.core.params import ParlaiParser
from parlai.scripts.build_dict import build_dict
from parlai.scripts.build_dict import setup_args as build_dict_args
from parlai.scripts.eval_model import EvalModel

from parlai_ext.sentencepiece_dict import SPM_MODEL_SUFFIX, SentencePieceDictionaryAgent

DICT_CLASS = 'parlai_ext.sentencepiece_dict:SentencePieceDictionaryAgent'
ROUNDTRIP = [
    'hello , how are you today ?',
    'Hello, World! It costs $3.50 (or 4,000 yen) - 50% off?!',
    'Ünïcödé: café, naïve, Straße, Ελληνικά, 東京, emoji 🙂',
    "it's 10:45 on 2024-01-31; e-mail: a.b@c.de #tag [x] {y} <z> ~ ^ * + = |",
    'first line\nsecond line\n\nfourth line',
]
WORDS = (
    'the a cat dog sat on mat hello world how are you today i am fine thanks what is your name '
    'my costs yen off or it is on e-mail tag first second fourth line café naïve straße '
    'ελληνικά 東京 🙂 ünïcödé'
).split()
PUNCT = list('.,!?;:-\'"$%()[]{}<>~^*+=|@#/&_') + ['...', '--']


def corpus(seed: int = 0, n: int = 600) -> list[str]:
    """Synthetic lines over WORDS, digits and punctuation (cased variants included)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        tokens = []
        for _ in range(rng.randint(3, 12)):
            kind = rng.random()
            if kind < 0.7:
                word = rng.choice(WORDS)
                tokens.append(word.capitalize() if rng.random() < 0.2 else word)
            elif kind < 0.85:
                tokens.append(str(rng.randint(0, 99999)))
            else:
                tokens.append(rng.choice(PUNCT))
        lines.append(' '.join(tokens))
    return lines + [line for text in ROUNDTRIP for line in text.split('\n') if line]


def make_opt(dict_file: str | None, *args: str):
    parser = ParlaiParser(False, False)
    SentencePieceDictionaryAgent.add_cmdline_args(parser, None)
    argv = ['--spm-character-coverage', '1.0', *args]
    if dict_file:
        argv += ['--dict-file', dict_file]
    return parser.parse_args(argv)


def trained(dict_file: str, *args: str, texts: list[str] | None = None):
    """Build a dictionary as ``build_dict`` does: observe/act per text, then save()."""
    agent = SentencePieceDictionaryAgent(make_opt(dict_file, '--spm-vocab-size', '300', *args))
    for text in corpus() if texts is None else texts:
        agent.observe({'text': text, 'labels': ['ok .'], 'episode_done': True})
        agent.act()
    agent.save(dict_file)
    return agent


@pytest.fixture(scope='module')
def built(tmp_path_factory):
    dict_file = str(tmp_path_factory.mktemp('spm') / 'model.dict')
    return trained(dict_file), dict_file


def read(path: str) -> bytes:
    with open(path, 'rb') as handle:
        return handle.read()


def test_trained_vocabulary_and_special_ids(built):
    agent, _ = built
    sp = agent.spm_processor
    assert len(agent) == 300 == sp.get_piece_size() == len(agent.tok2ind) == len(agent.ind2tok)
    # ParlAI's tokens are SentencePiece's pad/bos/eos/unk; then the newline control symbol
    expected = ['__null__', '__start__', '__end__', '__unk__', '__newln__']
    assert [agent[i] for i in range(5)] == expected
    assert [agent[tok] for tok in expected] == [0, 1, 2, 3, 4]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert agent[agent.null_token] == 0 and agent[agent.unk_token] == 3
    assert agent['no-such-piece'] == 3 and agent[12345] == '__unk__'
    assert all(agent.tok2ind[agent.ind2tok[i]] == i for i in range(len(agent)))
    # text never produces the control ids, even when it spells their names
    ids = agent.txt2vec('__null__ __start__ __end__ __newln__')
    assert not {0, 1, 2, 4} & set(ids)
    # real subwords, and exactly SentencePiece's encoding for a plain line
    line = 'hello world , how are you today ?'
    assert agent.txt2vec(line) == sp.encode(line)
    assert 1 < len(agent.txt2vec(line)) < len(line.replace(' ', ''))
    assert agent.tokenize(line) == [agent[i] for i in agent.txt2vec(line)]


@pytest.mark.parametrize('text', ROUNDTRIP)
def test_roundtrip(built, text):
    agent, _ = built
    ids = agent.txt2vec(text)
    assert agent[agent.unk_token] not in ids
    assert agent.vec2txt(ids) == text
    assert agent.vec2txt(torch.tensor(ids)) == text  # tensors and numpy arrays too
    assert agent.vec2txt(agent.txt2vec(text, np.ndarray)) == text
    assert agent.vec2txt([torch.tensor(i) for i in ids]) == text  # TorchAgent._v2t's input
    assert text.count('\n') == ids.count(agent['__newln__'])


def test_batch_api_matches_single_calls(built):
    agent, _ = built
    texts = ROUNDTRIP + ['', 'second line']
    vecs = agent.txt2vec_batch(texts)
    assert vecs == [agent.txt2vec(text) for text in texts]
    assert agent.vec2txt_batch(vecs) == texts
    assert agent.vec2txt_batch(vecs[:2]) == texts[:2]  # the one-call path (no specials)


def test_special_and_appended_tokens(built):
    _, dict_file = built
    copy = SentencePieceDictionaryAgent(make_opt(dict_file))  # not clone(): that shares tables
    hello = copy.txt2vec('hello')
    assert copy.vec2txt([copy[copy.start_token], *hello, copy[copy.end_token]]) == (
        '__start__ hello __end__'
    )
    copy['__p1__'] = 999_999_999  # what TorchAgent does for --person-tokens
    copy.add_additional_special_tokens(['__p10__'])
    assert copy['__p1__'] == 300 and copy['__p10__'] == 301 and len(copy) == 302
    ids = copy.txt2vec('__p1__ hello\n__p10__ hello')
    assert ids == [300, *hello, copy['__newln__'], 301, *hello]
    assert copy.vec2txt(ids) == '__p1__ hello\n__p10__ hello'
    # ParlAI may pickle agents (background workers): same tables, same encodings after it
    thawed = pickle.loads(pickle.dumps(copy))
    assert thawed.txt2vec('__p1__ hello\n__p10__ hello') == ids
    assert thawed.vec2txt(ids) == '__p1__ hello\n__p10__ hello'


def test_determinism_two_builds_identical_files(tmp_path):
    for model_type in ('bpe', 'unigram'):
        files = []
        for run in ('a', 'b'):
            dict_file = str(tmp_path / f'{model_type}_{run}.dict')
            trained(dict_file, '--spm-model-type', model_type)
            files.append((read(dict_file + SPM_MODEL_SUFFIX), read(dict_file)))
        assert files[0] == files[1], model_type
    # the same input with another vocabulary size is another model (the check is not vacuous)
    other = str(tmp_path / 'other.dict')
    trained(other, '--spm-vocab-size', '250')
    assert read(other + SPM_MODEL_SUFFIX) != files[0][0]


def test_sampled_training_is_seeded(tmp_path):
    models = []
    for run, seed in (('a', '7'), ('b', '7'), ('c', '8')):
        dict_file = str(tmp_path / f'{run}.dict')
        trained(dict_file, '--spm-input-sentence-size', '200', '--spm-seed', seed)
        models.append(read(dict_file + SPM_MODEL_SUFFIX))
    assert models[0] == models[1] != models[2]


def test_save_load_identical_encodings(built, tmp_path):
    agent, dict_file = built
    # the model folder can move: the SentencePiece model travels next to the .dict file
    moved = tmp_path / 'elsewhere'
    moved.mkdir()
    for suffix in ('', SPM_MODEL_SUFFIX):
        shutil.copy(dict_file + suffix, moved / ('model.dict' + suffix))
    os.rename(dict_file + SPM_MODEL_SUFFIX, dict_file + '.away')
    try:
        loaded = SentencePieceDictionaryAgent(make_opt(str(moved / 'model.dict')))
    finally:
        os.rename(dict_file + '.away', dict_file + SPM_MODEL_SUFFIX)
    assert loaded.tok2ind == agent.tok2ind and len(loaded) == len(agent)
    assert loaded.spm_processor.serialized_model_proto() == read(dict_file + SPM_MODEL_SUFFIX)
    for text in ROUNDTRIP + corpus(seed=1, n=50):
        assert loaded.txt2vec(text) == agent.txt2vec(text)
    # appended tokens are saved in the listing and come back with their ids
    extended = loaded.clone()
    extended['__p1__'] = 1
    extended.save(str(tmp_path / 'extended.dict'))
    again = SentencePieceDictionaryAgent(make_opt(str(tmp_path / 'extended.dict')))
    assert again['__p1__'] == 300 and again.txt2vec('__p1__ hi') == extended.txt2vec('__p1__ hi')
    # a dictionary without its SentencePiece model is an error, not a silent re-tokenisation
    (tmp_path / 'plain.dict').write_text('__null__\t1\n')
    with pytest.raises(FileNotFoundError, match=SPM_MODEL_SUFFIX):
        SentencePieceDictionaryAgent(make_opt(str(tmp_path / 'plain.dict')))


def test_save_is_atomic_skips_identical_files_and_a_cut_listing_names_itself(built, tmp_path):
    """Agents save their dictionary with every checkpoint (issue #19): no rewrite when unchanged,
    never a cut file; an old cut listing names the file instead of a size mismatch later."""
    agent, _ = built
    dict_file = str(tmp_path / 'model.dict')
    agent.save(dict_file)
    names = sorted(os.listdir(tmp_path))
    assert names == ['model.dict', 'model.dict.opt', 'model.dict' + SPM_MODEL_SUFFIX]
    stats = {name: os.stat(tmp_path / name) for name in names}
    agent.save(dict_file)
    assert sorted(os.listdir(tmp_path)) == names  # no temporaries left
    for name, stat in stats.items():
        assert os.stat(tmp_path / name).st_ino == stat.st_ino, name  # not replaced
    lines = open(dict_file).read().splitlines(keepends=True)
    open(dict_file, 'w').writelines(lines[:180])  # what an in-place write cut by kill -9 left
    with pytest.raises(ValueError, match=rf'{dict_file}: lists 180 of the 300 pieces.*Remedy'):
        SentencePieceDictionaryAgent(make_opt(dict_file))
    agent.save(dict_file)  # a save repairs it (the content differs: rewritten)
    assert len(SentencePieceDictionaryAgent(make_opt(dict_file))) == 300


def released_model(path: str, **special) -> bytes:
    """A SentencePiece model made the way released ones are (default pieces, no pad)."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()),
        model_prefix=path,
        vocab_size=200,
        model_type='bpe',
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
        **special,
    )
    return read(path + '.model')


def test_existing_model_file_without_pad(tmp_path):
    # PLATO-2's layout: <unk>=0, <s>=1, </s>=2, no pad piece, no newline piece
    model_bytes = released_model(str(tmp_path / 'released'), unk_id=0, bos_id=1, eos_id=2)
    model_file = str(tmp_path / 'released.model')
    dict_file = str(tmp_path / 'model.dict')
    agent = SentencePieceDictionaryAgent(make_opt(dict_file, '--spm-model-file', model_file))
    assert agent.is_prebuilt()
    assert [agent[i] for i in range(3)] == ['__unk__', '__start__', '__end__']
    assert agent[agent.null_token] == 200 and len(agent) == 201  # appended after the pieces
    sp = spm.SentencePieceProcessor(model_file=model_file)
    for text in ROUNDTRIP[:4]:
        assert agent.txt2vec(text) == sp.encode(text)
        assert agent.vec2txt(agent.txt2vec(text)) == text
    # no newline piece: line breaks are whitespace, as SentencePiece itself treats them
    assert agent.vec2txt(agent.txt2vec('a b\nc d')) == 'a b c d'
    assert agent.vec2txt([agent[agent.null_token]]) == '__null__'
    # saved with the model (what TorchAgent.save does), loaded without the original file
    agent.save(dict_file)
    assert read(dict_file + SPM_MODEL_SUFFIX) == model_bytes
    os.remove(model_file)
    loaded = SentencePieceDictionaryAgent(make_opt(dict_file, '--spm-model-file', model_file))
    assert loaded.tok2ind == agent.tok2ind and not loaded.is_prebuilt()
    assert loaded.txt2vec(ROUNDTRIP[2]) == agent.txt2vec(ROUNDTRIP[2])


def test_existing_model_file_with_own_special_pieces(tmp_path):
    released_model(
        str(tmp_path / 'own'), pad_id=0, unk_id=1, bos_id=2, eos_id=3, control_symbols='__newln__'
    )
    opt = make_opt(None, '--spm-model-file', str(tmp_path / 'own.model'))
    agent = SentencePieceDictionaryAgent(opt)
    assert len(agent) == 200  # every ParlAI token maps to one of the model's own pieces
    assert [agent[i] for i in range(5)] == [
        '__null__',
        '__unk__',
        '__start__',
        '__end__',
        '__newln__',
    ]
    assert '<pad>' not in agent.tok2ind and agent['<unk>'] == 1  # renamed, '<unk>' is unknown
    assert agent.vec2txt(agent.txt2vec(ROUNDTRIP[4])) == ROUNDTRIP[4]


def test_stock_build_dict_script(tmp_path):
    """ParlAI's own build_dict loop (observe/act over the teacher, then save).

    The parser is build_dict's own, unchanged: the ``--spm-*`` options must come from
    ``--dict-class`` alone (compat.patch_dict_class_args, also without a model).
    """
    parser = build_dict_args()
    models = []
    for run in ('a', 'b'):
        dict_file = str(tmp_path / f'{run}.dict')
        opt = parser.parse_args(
            ['-t', 'ext_demo', '--dict-file', dict_file, '--dict-class', DICT_CLASS]
            + ['--spm-vocab-size', '120', '--spm-model-type', 'unigram']
        )
        agent = build_dict(opt)
        assert isinstance(agent, SentencePieceDictionaryAgent) and len(agent) == 120
        models.append(read(dict_file + SPM_MODEL_SUFFIX))
    assert models[0] == models[1]
    assert agent.vec2txt(agent.txt2vec('where do you live ?')) == 'where do you live ?'
    assert len(agent.txt2vec('where do you live ?')) < len('wheredoyoulive?')  # subwords


def test_cli_build_dict_dict_class_without_model(parlai_cli, tmp_path):
    """``parlai build_dict -t <task> --dict-class <ours> --spm-vocab-size N``, no ``-m``."""
    dict_file = str(tmp_path / 'spm.dict')
    parlai_cli(
        'build_dict', '-t', 'ext_demo', '--dict-file', dict_file, '--dict-class', DICT_CLASS,
        '--spm-vocab-size', '150',
    )  # fmt: skip
    assert os.path.exists(dict_file + SPM_MODEL_SUFFIX)
    assert len(open(dict_file).readlines()) == 150
    reloaded = SentencePieceDictionaryAgent(make_opt(dict_file))
    assert len(reloaded) == 150


AGENT_MODULE = '''
from parlai_ext.agents.unified_transformer import UnifiedTransformerAgent
from parlai_ext.sentencepiece_dict import SentencePieceDictionaryAgent


class SpmUnifiedTransformerAgent(UnifiedTransformerAgent):
    """How an agent (e.g. PLATO-2) declares the SentencePiece dictionary."""

    @staticmethod
    def dictionary_class():
        return SentencePieceDictionaryAgent
'''
TINY = ['--n-layers', '1', '--embedding-size', '32', '--n-heads', '2', '--ffn-size', '64']


def eval_ppl(parlai_cli, model_file: str, env: dict) -> float:
    report = model_file + '.eval.json'
    parlai_cli(
        'eval_model', '-mf', model_file, '-t', 'ext_demo', '-dt', 'valid',
        '--report-filename', report, '--skip-generation', 'true', env=env,
    )  # fmt: skip
    with open(report) as handle:
        return json.load(handle)['report']['ppl']


def final_valid_ppl(model_file: str) -> float:
    """The ppl of train_model's last validation (of the model reloaded from disk)."""
    with open(model_file + '.trainstats') as handle:
        return json.load(handle)['final_valid_report']['ppl']


def test_cli_train_eval_interactive_with_spm_agent(parlai_cli, tmp_path):
    """Stock train_model / eval_model / interactive with an agent whose dictionary is ours."""
    (tmp_path / 'spm_agent_for_test.py').write_text(AGENT_MODULE)
    env = {
        'PYTHONPATH': os.pathsep.join(filter(None, [str(tmp_path), os.environ.get('PYTHONPATH')]))
    }
    model_file = str(tmp_path / 'run' / 'model')
    parlai_cli(
        'train_model', '-m', 'spm_agent_for_test:SpmUnifiedTransformerAgent', '-t', 'ext_demo',
        '-mf', model_file, '--spm-vocab-size', '200', *TINY, '--num-epochs', '1', '-bs', '16',
        '--skip-generation', 'true', env=env,
    )  # fmt: skip
    assert os.path.exists(model_file + '.dict' + SPM_MODEL_SUFFIX)
    assert len(open(model_file + '.dict').readlines()) == 200
    first = final_valid_ppl(model_file)
    assert 1 < first < 200
    # the whole folder moves and the original is gone: the copy must carry the model
    shutil.move(str(tmp_path / 'run'), str(tmp_path / 'moved'))
    moved = str(tmp_path / 'moved' / 'model')
    assert eval_ppl(parlai_cli, moved, env) == pytest.approx(first, rel=1e-6)
    proc = parlai_cli(
        'interactive', '-mf', moved, '--skip-generation', 'false', '--inference', 'beam',
        '--beam-size', '2', '--beam-min-length', '2',
        stdin='hi , how are you ?\n[EXIT]\n', env=env, timeout=120,
    )  # fmt: skip
    tag = '[SpmUnifiedTransformer]:'  # a reply of at least two pieces, decoded to text
    replies = [line.split(tag)[1].strip() for line in proc.stdout.splitlines() if tag in line]
    assert replies and replies[0], proc.stdout[-2000:]


def test_cli_dict_class_flag(parlai_cli, tmp_path):
    """The issue's command: ``-m unified_transformer --dict-class ... --spm-vocab-size 200``.

    Needs compat.patch_dict_class_args / patch_dict_class_agent (stock ParlAI honours
    --dict-class only inside build_dict).
    """
    model_file = str(tmp_path / 'model')
    parlai_cli(
        'train_model', '-m', 'unified_transformer', '-t', 'ext_demo', '-mf', model_file,
        '--dict-class', DICT_CLASS, '--spm-vocab-size', '200', *TINY, '--num-epochs', '1',
        '-bs', '16', '--skip-generation', 'true',
    )  # fmt: skip
    assert os.path.exists(model_file + '.dict' + SPM_MODEL_SUFFIX)
    assert len(open(model_file + '.dict').readlines()) == 200
    # reloaded for evaluation in this process (eval_model's command line is run by the test
    # above; one start-up of torch and ParlAI less): the same ppl as train_model's last one
    report = EvalModel.main(
        model_file=model_file, task='ext_demo', datatype='valid', skip_generation=True
    )
    assert report['ppl'].value() == pytest.approx(final_valid_ppl(model_file), rel=1e-6)
    # the agent itself (not only build_dict) must use our class, also when reloaded
    agent = create_agent_from_model_file(model_file)
    assert isinstance(agent.dict, SentencePieceDictionaryAgent) and len(agent.dict) == 200
