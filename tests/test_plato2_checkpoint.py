"""The stage-2 agents' shared load/save (parlai_ext/agents/plato2_checkpoint.py): which fresh
names each path uses, the dictionary saved next to the model, and the agents' own names."""

from __future__ import annotations

import pytest
import torch

from parlai_ext.agents import plato2_checkpoint
from parlai_ext.agents.plato2 import GENERATOR_FRESH, Plato2Agent
from parlai_ext.agents.plato2_checkpoint import Plato2StageCheckpointMixin
from parlai_ext.agents.plato2_evaluator import (
    EVALUATOR_FRESH,
    HF_EVALUATOR_FRESH,
    Plato2EvaluatorAgent,
)


class _Saved:
    """The base agent: records the path ParlAI's ``save`` got."""

    def save(self, path=None):
        self.saved_to = path


class _Dictionary:
    def save(self, path, sort=True):
        self.saved = (path, sort)


class _Agent(Plato2StageCheckpointMixin, _Saved):
    fresh_parameters = ('head',)
    hf_fresh_parameters = ('hf_head',)

    def __init__(self, uses_hf: bool) -> None:
        self.uses_hf = uses_hf
        self.model = torch.nn.ModuleDict(
            {'body': torch.nn.Linear(2, 2), 'head': torch.nn.Linear(2, 1)}
        )
        self.opt = {'model_file': '/m/model', 'dict_file': '/stage1/model.dict'}
        self.dict = _Dictionary()

    def _hf_root(self):
        return 'hf root'


def test_a_stage1_checkpoint_loads_the_body_and_leaves_the_fresh_head():
    agent = _Agent(uses_hf=False)
    head = agent.model['head'].weight.detach().clone()
    body = {
        k: torch.full_like(v, 0.5)
        for k, v in agent.model.state_dict().items()
        if k.startswith('body')
    }
    agent.load_state_dict(body)
    assert (agent.model['body'].weight == 0.5).all()
    assert torch.equal(agent.model['head'].weight, head)
    with pytest.raises(RuntimeError, match='does not match'):  # the body is not fresh
        agent.load_state_dict({'head.weight': head, 'head.bias': torch.zeros(1)})


def test_over_a_backbone_the_hf_loader_gets_the_root_and_the_hf_fresh_names(monkeypatch):
    calls = []
    monkeypatch.setattr(plato2_checkpoint, 'load_hf_with_fresh', lambda *a: calls.append(a))
    monkeypatch.setattr(plato2_checkpoint, 'load_with_fresh', lambda *a: calls.append(('plain',)))
    _Agent(uses_hf=True).load_state_dict({'x': 1})
    assert calls == [('hf root', {'x': 1}, ('hf_head',))]


def test_save_writes_the_model_dictionary_next_to_the_model_then_saves(tmp_path):
    agent = _Agent(uses_hf=False)
    agent.save()
    assert agent.dict.saved == ('/m/model.dict', False) and agent.saved_to == '/m/model'
    agent.save('/other/file')
    assert agent.dict.saved == ('/other/file.dict', False) and agent.saved_to == '/other/file'


def test_the_agents_name_their_own_fresh_parameters():
    assert Plato2Agent.fresh_parameters == Plato2Agent.hf_fresh_parameters == GENERATOR_FRESH
    assert Plato2EvaluatorAgent.fresh_parameters == EVALUATOR_FRESH
    assert Plato2EvaluatorAgent.hf_fresh_parameters == HF_EVALUATOR_FRESH
    for agent in (Plato2Agent, Plato2EvaluatorAgent):  # the mixin's methods are the ones used
        assert agent.save is Plato2StageCheckpointMixin.save
        assert agent.load_state_dict is Plato2StageCheckpointMixin.load_state_dict
