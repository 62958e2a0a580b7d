"""Weight decay as the PLATO-2 code applies it: never on biases or LayerNorm parameters (#18).

``DecayExemptOptimizerMixin`` (``parlai_ext/agents/optim.py``) is the first base of every
transformer agent; these tests pin which parameters are exempt, that an agent's AdamW really
leaves them undecayed, and that checkpoints (new ones and single-group older ones) resume.
"""

import pytest
import torch
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from torch import nn

from parlai_ext.agents.optim import (
    DecayExemptOptimizerMixin,
    decay_exempt_names,
    decay_param_groups,
)

SIZES = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']
SENTENCES = ['hi , how are you ?', 'i am fine , thanks .', 'where do you live ?']


class MyRMSNorm(nn.Module):
    """A norm class of someone else's (matched by its name, as Hugging Face's)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.rms = MyRMSNorm()
        self.embedding = nn.Embedding(5, 3)
        self.scale = nn.Parameter(torch.ones(3))  # a vector: a gain or a bias
        self.matrix = nn.Parameter(torch.ones(2, 2))


def test_exempt_parameters_are_biases_norms_and_vectors():
    toy = Toy()
    assert decay_exempt_names(toy) == {
        'linear.bias', 'norm.weight', 'norm.bias', 'rms.weight', 'scale',
    }  # fmt: skip
    params = [toy.matrix, toy.linear.bias, toy.linear.weight, toy.norm.weight]
    groups = decay_param_groups(toy, params)
    assert [p is q for p, q in zip(groups[0]['params'], [toy.matrix, toy.linear.weight])] == [
        True, True]  # fmt: skip
    assert groups[1]['weight_decay'] == 0.0 and 'weight_decay' not in groups[0]
    assert [id(p) for p in groups[1]['params']] == [id(toy.linear.bias), id(toy.norm.weight)]
    assert len(decay_param_groups(toy, [toy.matrix])) == 1  # no empty group


@pytest.fixture(scope='module')
def dict_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('optim') / 'toy.dict')
    parser = ParlaiParser(True, True)
    DictionaryAgent.add_cmdline_args(parser)
    dictionary = DictionaryAgent(parser.parse_args(['--dict-file', path]))
    for sentence in SENTENCES:
        dictionary.add_to_dict(dictionary.tokenize(sentence))
    dictionary.save(path, sort=True)
    return path


def _agent(model, dict_file, model_file, *extra):
    args = ['-m', model, '-mf', model_file, '--dict-file', dict_file, *SIZES, *extra]
    torch.manual_seed(0)
    return create_agent(ParlaiParser(True, True).parse_args(args))


@pytest.mark.parametrize(
    'model', ['unified_transformer', 'plato2', 'plato2_evaluator', 'encoder_decoder']
)
def test_agent_optimizer_exempts_biases_and_norms(model, dict_file, tmp_path):
    agent = _agent(model, dict_file, str(tmp_path / 'm'), '--weight-decay', '0.1')
    assert isinstance(agent, DecayExemptOptimizerMixin)
    names = {id(p): n for n, p in agent.model.named_parameters()}
    decayed, exempt = agent.optimizer.param_groups
    assert decayed['weight_decay'] == 0.1 and exempt['weight_decay'] == 0.0
    exempt_names = {names[id(p)] for p in exempt['params']}
    decayed_names = {names[id(p)] for p in decayed['params']}
    assert exempt_names == decay_exempt_names(agent.model)
    assert exempt_names | decayed_names == set(names.values())
    assert not exempt_names & decayed_names
    assert all(n.endswith('bias') or 'norm' in n or n.endswith(('embedding', 'slot'))
               or agent.model.get_parameter(n).ndim == 1 for n in exempt_names)  # fmt: skip
    assert any('norm' in n for n in exempt_names) and any(n.endswith('.bias') for n in exempt_names)
    assert all(agent.model.get_parameter(n).ndim >= 2 for n in decayed_names)


def test_adamw_step_decays_only_the_decayed_group(dict_file, tmp_path):
    """With zero gradients AdamW's step is the decay alone: p <- p (1 - lr wd)."""
    agent = _agent('unified_transformer', dict_file, str(tmp_path / 'm'), '--weight-decay',
                   '0.5', '-lr', '0.1', '--optimizer', 'adamw')  # fmt: skip
    before = {n: p.detach().clone() for n, p in agent.model.named_parameters()}
    for p in agent.model.parameters():
        p.grad = torch.zeros_like(p)
    agent.optimizer.step()
    exempt = decay_exempt_names(agent.model)
    for name, param in agent.model.named_parameters():
        factor = 1.0 if name in exempt else 1 - 0.1 * 0.5
        assert torch.allclose(param, before[name] * factor, atol=1e-7), name


def _train_one_step(agent):
    agent.reset()
    agent.observe({'text': 'where do you live ?', 'labels': ['i am fine .'], 'episode_done': True})
    agent.act()


@pytest.mark.parametrize('model', ['unified_transformer', 'plato2_evaluator'])
def test_checkpoints_resume_with_their_optimizer_state(model, dict_file, tmp_path):
    path = str(tmp_path / 'm')
    agent = _agent(model, dict_file, path, '-bs', '1')
    _train_one_step(agent)
    agent.save(path)
    saved = agent.optimizer.state_dict()
    resumed = create_agent_from_model_file(path, {'datatype': 'train'})
    state = resumed.optimizer.state_dict()
    assert [g['weight_decay'] for g in state['param_groups']] == [0.01, 0.0]  # AdamW default
    assert len(state['state']) == len(saved['state']) > 0
    for key, value in saved['state'].items():
        assert torch.equal(state['state'][key]['exp_avg'], value['exp_avg'])
    # an older checkpoint with one parameter group: the weights load, the optimizer restarts
    checkpoint = torch.load(path, weights_only=False)
    merged = dict(checkpoint['optimizer']['param_groups'][0])
    merged['params'] = sorted(
        p for g in checkpoint['optimizer']['param_groups'] for p in g['params']
    )
    checkpoint['optimizer']['param_groups'] = [merged]
    torch.save(checkpoint, path)
    older = create_agent_from_model_file(path, {'datatype': 'train'})
    assert len(older.optimizer.param_groups) == 2 and not older.optimizer.state_dict()['state']
    for (name, p), q in zip(agent.model.named_parameters(), older.model.parameters()):
        assert torch.equal(p, q), name
    _train_one_step(older)  # and it trains
