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
    MasterWeights,
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


def test_master_weights_step_is_a_hand_applied_adamw_step_rounded_into_bf16():
    torch.manual_seed(0)
    toy = Toy()
    start = {n: p.detach().clone() for n, p in toy.named_parameters()}
    groups = decay_param_groups(toy, toy.parameters())
    masters = MasterWeights(toy, [p for g in groups for p in g['params']])
    toy.to(torch.bfloat16)
    lr, decay, eps = 0.1, 0.5, 1e-8
    optimizer = torch.optim.AdamW(masters.groups(groups), lr=lr, weight_decay=decay, eps=eps)
    masters.install(optimizer)
    grads = {n: torch.randn_like(p) for n, p in toy.named_parameters()}
    for name, param in toy.named_parameters():
        param.grad = None if name == 'matrix' else grads[name]
    optimizer.step()
    exempt = decay_exempt_names(toy)
    by_name = dict(zip(masters.names, masters.masters))
    assert torch.equal(by_name['matrix'], start['matrix'])  # no gradient: no step, no decay
    for name, param in toy.named_parameters():
        if name == 'matrix':
            continue
        g = grads[name].float()
        wd = 0.0 if name in exempt else decay  # the exempt group's master takes no decay
        expected = start[name] * (1 - lr * wd) - lr * g / (g.abs() + eps)  # AdamW's 1st step
        assert by_name[name].dtype == torch.float32
        assert torch.allclose(by_name[name], expected, atol=1e-6), name
        assert param.dtype == torch.bfloat16 and torch.equal(param, by_name[name].bfloat16())
        assert param.grad is None
    for name, param in toy.named_parameters():  # a second step reuses the fp32 buffers
        param.grad = grads[name]
    optimizer.step()
    assert not torch.equal(by_name['matrix'], start['matrix'])
    assert torch.equal(toy.matrix, by_name['matrix'].bfloat16())
    after_two = by_name['matrix'].clone()
    toy.scale.grad = grads['scale']  # a third step without the matrix's gradient: no step
    optimizer.step()
    assert torch.equal(by_name['matrix'], after_two)
    state = masters.state_dict(toy.state_dict())
    assert all(torch.equal(state[n], by_name[n]) for n in by_name)
    assert any(not torch.equal(by_name[n], p.float()) for n, p in toy.named_parameters())


def _masters(agent):
    return dict(zip(agent.master_weights.names, agent.master_weights.masters))


def test_bf16_weights_agent_trains_fp32_masters_and_resumes_the_same_run(dict_file, tmp_path):
    path = str(tmp_path / 'm')
    args = ('--bf16-weights', 'true', '-bs', '1', '--dropout', '0', '-lr', '0.01')
    agent = _agent('unified_transformer', dict_file, path, *args)
    assert all(p.dtype == torch.bfloat16 for p in agent.model.parameters())
    assert all(p.dtype == torch.float32 for g in agent.optimizer.param_groups for p in g['params'])
    obs = agent.observe({'text': 'hi', 'labels': ['i am fine .'], 'episode_done': True})
    loss = agent.compute_loss(agent.batchify([obs]))  # under bf16 autocast: fp32 loss
    assert loss.dtype == torch.float32 and loss.requires_grad
    agent.reset()
    start = {n: m.clone() for n, m in _masters(agent).items()}
    _train_one_step(agent)
    masters = _masters(agent)
    assert sum(not torch.equal(start[n], m) for n, m in masters.items()) > len(masters) // 2
    params = dict(agent.model.named_parameters())
    for name, master in masters.items():
        assert torch.equal(params[name], master.bfloat16()), name
    agent.save(path)
    saved = torch.load(path, weights_only=False)['model']
    assert all(torch.equal(saved[n], m) and saved[n].dtype == torch.float32
               for n, m in masters.items())  # fmt: skip
    resumed = create_agent_from_model_file(path, {'datatype': 'train'})
    for name, master in _masters(resumed).items():
        assert torch.equal(master, masters[name]), name  # the fp32 values, not the rounded
    _train_one_step(agent)
    _train_one_step(resumed)
    for name, master in _masters(resumed).items():
        assert torch.equal(master, _masters(agent)[name]), name


def test_bf16_weights_is_refused_where_it_cannot_run(dict_file, tmp_path):
    with pytest.raises(ValueError, match='--fp16'):
        _agent('unified_transformer', dict_file, str(tmp_path / 'a'), '--bf16-weights', 'true',
               '--fp16', 'true')  # fmt: skip
    with pytest.raises(ValueError, match='not supported'):
        _agent('plato2', dict_file, str(tmp_path / 'b'), '--bf16-weights', 'true')
