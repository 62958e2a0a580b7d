"""The offline model zoo: export, install into the data folder, ``zoo:`` names, clear errors."""

import json
import os
import re

import pytest
import torch

from parlai_ext.zoo.common import ZooEntryMissing, export_model, install_entry

TINY = [
    '--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32',
    '--dropout', '0',
]  # fmt: skip


def _tiny_generator(tmp_path):
    """A saved, untrained unified_transformer with the ext_demo dictionary."""
    from parlai.core.agents import create_agent
    from parlai.scripts.build_dict import build_dict, setup_args

    model_file = str(tmp_path / 'trained' / 'model')
    os.makedirs(os.path.dirname(model_file))
    args = ['-m', 'unified_transformer', '-t', 'ext_demo', '-mf', model_file, *TINY]
    opt = setup_args().parse_args(args + ['--dict-file', model_file + '.dict'])
    build_dict(opt)
    agent = create_agent(opt)
    agent.save(model_file)
    return model_file


def _reply(model_file, text='hello there , how are you ?'):
    from parlai.core.agents import create_agent_from_model_file

    agent = create_agent_from_model_file(model_file, {'inference': 'greedy', 'datatype': 'valid'})
    agent.observe({'text': text, 'episode_done': True})
    return agent.act()['text']


def test_export_keeps_weights_drops_optimizer_and_local_paths(tmp_path):
    model_file = _tiny_generator(tmp_path)
    exported = export_model(model_file, str(tmp_path / 'zoo'), 'model')
    states = torch.load(exported, weights_only=False)
    assert list(states) == ['model']
    assert all(v.dtype == torch.float16 for v in states['model'].values() if v.is_floating_point())
    opt = json.load(open(exported + '.opt'))
    assert 'dict_file' not in opt and 'model_file' not in opt
    assert not any(isinstance(v, str) and v.startswith(str(tmp_path)) for v in opt.values())
    assert os.path.exists(exported + '.dict')
    # float16 storage, float32 model: the same greedy reply as the original
    reply = _reply(model_file)
    assert reply and _reply(exported) == reply


def test_install_copies_once_and_names_the_build_command_when_files_are_missing(tmp_path):
    source = tmp_path / 'shipped'
    source.mkdir()
    (source / 'model').write_text('weights')
    datapath = str(tmp_path / 'data')
    target = install_entry(datapath, 'sys', 'entry', str(source), ['model'], 'v1', 'make it')
    assert open(os.path.join(target, 'model')).read() == 'weights'
    (source / 'model').write_text('changed')  # same version: not copied again
    install_entry(datapath, 'sys', 'entry', str(source), ['model'], 'v1', 'make it')
    assert open(os.path.join(target, 'model')).read() == 'weights'
    with pytest.raises(ZooEntryMissing, match='build it locally with\n    bash build.sh'):
        install_entry(datapath, 'sys', 'other', str(source), ['model', 'x'], 'v1', 'bash build.sh')


def test_zoo_names_resolve_through_parlai_modelzoo_path(tmp_path, monkeypatch):
    """``zoo:plato2/...`` goes through ParlAI's own lookup to our package's download()."""
    from parlai.core.build_data import modelzoo_path

    import parlai_ext.zoo.plato2.build as build

    calls = []
    monkeypatch.setattr(build, 'download', lambda datapath: calls.append(datapath))
    path = modelzoo_path(str(tmp_path), 'zoo:plato2/dailydialog_smollm2/model')
    assert path == os.path.join(str(tmp_path), 'models', 'plato2', 'dailydialog_smollm2', 'model')
    assert calls == [str(tmp_path)]


def test_unknown_zoo_name_lists_the_entries_and_installs_nothing(tmp_path, monkeypatch):
    """``zoo:plato2/no_such/model`` used to install plato2's real entry, then fail on a file."""
    from parlai.core.build_data import modelzoo_path

    import parlai_ext.zoo.plato2.build as build
    from parlai_ext.zoo.common import ZooNameUnknown

    calls = []
    monkeypatch.setattr(build, 'download', lambda datapath: calls.append(datapath))
    for name in ('zoo:plato2/no_such/model', 'zoo:plato2/dailydialog_smollm2/nothing'):
        with pytest.raises(ZooNameUnknown) as info:
            modelzoo_path(str(tmp_path), name)
        message = str(info.value)
        assert message.startswith(f'{name}: no such entry') and 'nothing was installed' in message
        assert (
            'zoo:plato2/dailydialog_smollm2/model, zoo:plato2/dailydialog_smollm2/evaluator;'
            in message
        )
        assert 'zoo:ppg/convai2_smollm2/model' in message  # all systems' models are listed
    assert calls == [] and os.listdir(tmp_path) == []
    # a file of an entry is fine (a dictionary as --dict-file)
    modelzoo_path(str(tmp_path), 'zoo:plato2/dailydialog_smollm2/model.dict')
    assert calls == [str(tmp_path)]
    # a system that is not ours: ParlAI's error, with our list added
    with pytest.raises(ImportError, match='parlai-ext zoo entries: zoo:coral/'):
        modelzoo_path(str(tmp_path), 'zoo:no_such_system/x/model')


def test_shipped_plato2_entry_chats_offline(parlai_cli, shared_hf_cache):
    """zoo:plato2/dailydialog_smollm2: installed from the package, generate-then-rank answers.

    SmolLM2 comes dequantised from the session's cache (``shared_hf_cache``), as on a user's
    second start; ``test_hf_smoke.py`` and ``test_demo.py`` test the first start."""
    out = parlai_cli(
        'interactive', '-mf', 'zoo:plato2/dailydialog_smollm2/model',
        '--display-add-fields', 'beam_texts', '--inference', 'greedy',  # deterministic
        stdin='hi , how are you today ?\nwhat do you want to eat tonight ?\n', timeout=600,
    )  # fmt: skip
    replies = [line.split('[Plato2]:', 1)[1].strip() for line in out.stdout.splitlines()
               if '[Plato2]:' in line]  # fmt: skip
    assert len(replies) == 2 and all(replies)
    # one candidate per latent value (K = 20; unfinished ones dropped), best evaluator score
    # first, and the reply is that best candidate
    shown = re.findall(r'\.\.\. \(5 of (\d+) shown\)', out.stdout)
    assert len(shown) == 2 and all(10 <= int(n) <= 20 for n in shown)
    best = re.findall(r'\[beam_texts\]: \((["\'])(.*?)\1, ([0-9.]+)\)', out.stdout)
    assert [text for _, text, _ in best] == replies
    installed = os.path.join(
        os.environ['PARLAI_DATAPATH'], 'models', 'plato2', 'dailydialog_smollm2'
    )
    assert sorted(os.listdir(installed)) == sorted(
        {'.built', *(f.split('/')[0] for f in build_files())}
    )


def build_files():
    from parlai_ext.zoo.plato2.build import FILES

    return FILES


# every other shipped entry: (system, entry, the generator's name in ParlAI's chat output,
# [secondary model files that are loaded and used below])
ENTRIES = [
    ('p2bot', 'convai2_smollm2', 'P2BotTransmitter', ['receiver']),
    ('ppg', 'convai2_smollm2', 'PpgResponseGenerator', ['ppg', 'critic']),
    ('multiref', 'dailydialog_small', 'VhredLgm', []),
    ('coral', 'dailydialog_smollm2', 'Coral', ['reward']),
]


@pytest.mark.parametrize('system,entry,speaker,_', ENTRIES, ids=[e[0] for e in ENTRIES])
def test_shipped_entry_chats_offline(parlai_cli, shared_hf_cache, system, entry, speaker, _):
    """zoo:<system>/<entry>/model installs from the package and answers two piped turns
    (the SmolLM2 base from the session's dequantised copy, see ``shared_hf_cache``)."""
    out = parlai_cli(
        'interactive', '-mf', f'zoo:{system}/{entry}/model', '--inference', 'greedy',
        '--beam-size', '1', stdin='hi , how are you today ?\nwhat do you do for fun ?\n', timeout=600,
    )  # fmt: skip
    tag = f'[{speaker}]:'
    replies = [line.split(tag, 1)[1].strip() for line in out.stdout.splitlines() if tag in line]
    assert len(replies) == 2 and all(replies), out.stdout[-2000:]
    module = __import__(f'parlai_ext.zoo.{system}.build', fromlist=['FILES'])
    installed = os.path.join(os.environ['PARLAI_DATAPATH'], 'models', system, entry)
    # top-level names: entries over a pretrained base keep their tokenizers in <name>.dict.hf/
    assert sorted(os.listdir(installed)) == sorted(
        {'.built', *(f.split('/')[0] for f in module.FILES)}
    )


def test_shipped_secondary_models_load_and_score(tmp_path, shared_hf_cache):
    """The receiver, PPG persona generator, critic and CORAL reward model of the zoo work."""
    from parlai.core.agents import create_agent_from_model_file
    from parlai.core.build_data import modelzoo_path

    from parlai_ext.agents.p2bot import load_receiver

    def path(name: str) -> str:
        return modelzoo_path(str(tmp_path), name)

    receiver = load_receiver(path('zoo:p2bot/convai2_smollm2/receiver'))
    scores = receiver.perception_scores(
        ['i walk my two dogs every morning'] * 2,
        [['i have two dogs.', 'i like to ski.'], ['i am a nurse.', 'i hate winter.']],
    )
    assert scores.shape == (2,) and torch.isfinite(scores).all()

    ppg = create_agent_from_model_file(
        path('zoo:ppg/convai2_smollm2/ppg'),
        {'inference': 'greedy', 'beam_size': 1, 'datatype': 'valid'},
    )
    ppg.observe(
        {'text': 'your persona: i have two dogs.\nhi , i love my dogs !', 'episode_done': True}
    )
    assert ppg.act()['text'].strip()

    reward = create_agent_from_model_file(
        path('zoo:coral/dailydialog_smollm2/reward'), {'datatype': 'valid'}
    )
    values = reward.score(['how much is it ?', 'how much is it ?'], ['it is ten dollars .', 'no'])
    assert values.shape == (2,) and bool(((values > 0) & (values < 1)).all())

    critic = create_agent_from_model_file(
        path('zoo:ppg/convai2_smollm2/critic'), {'datatype': 'valid'}
    )
    probability = critic.positive_probability(['i have two dogs.'], ['my dogs are great'])
    assert probability.shape == (1,) and 0.0 <= float(probability) <= 1.0
