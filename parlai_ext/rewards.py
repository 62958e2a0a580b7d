"""The generic (context, response) reward interface, so that methods compose.

A *reward model* is any object with ``score(contexts, responses) -> tensor`` of shape ``(N,)``
with values in (0, 1), where ``contexts`` and ``responses`` are lists of strings (texts, not
token ids, so that a reward model may use a dictionary other than the generator's). CORAL's
reward agents (``coral_esim``, ``coral_cross_encoder``) implement it; so can any other ParlAI
agent, e.g. PLATO-2's evaluation model.

:func:`load_reward_model` turns a ``--reward-model-file`` value into a frozen reward model:

- ``constant:<v>``: every pair scores ``v`` (ablations and tests: with ``v = 1``, ``m = 0`` and
  ``p+ = 1`` CORAL is cross-entropy training);
- a ParlAI model file whose agent has ``score(contexts, responses)``;
- a ParlAI model file whose agent has ``coherence_scores(context_vecs, response_vecs)`` on
  token-id rows of its own dictionary (the PLATO-2 evaluator's interface); the texts are
  vectorised with the agent's dictionary first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class RewardModel(Protocol):
    def score(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        """f(c, r) in (0, 1) for each pair: ``(N,)``."""
        ...


class ConstantReward:
    """Every pair gets the same score."""

    def __init__(self, value: float) -> None:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f'a constant reward must be in [0, 1], got {value}')
        self.value = value

    def score(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return torch.full((len(responses),), float(self.value))


class AgentReward:
    """A ParlAI agent used as a frozen reward model."""

    def __init__(self, agent, kind: str) -> None:
        self.agent = agent
        self.kind = kind  # 'score' or 'coherence_scores'

    @property
    def module(self) -> nn.Module | None:
        return getattr(self.agent, 'model', None)

    @torch.no_grad()
    def score(self, contexts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        if len(contexts) != len(responses):
            raise ValueError(f'{len(contexts)} contexts for {len(responses)} responses')
        if not responses:
            return torch.zeros(0)
        if self.kind == 'score':
            scores = self.agent.score(list(contexts), list(responses))
        else:
            vectorize = self.agent._vectorize_text
            context_vecs = [vectorize(text, truncate_left=True) for text in contexts]
            response_vecs = [vectorize(text, truncate_left=False) for text in responses]
            scores = self.agent.coherence_scores(context_vecs, response_vecs)
        return scores.detach().float().cpu().view(-1)


def freeze(module: nn.Module | None) -> None:
    """Evaluation mode and no gradients: the reward model is a fixed environment (Alg. 1)."""
    if module is None:
        return
    module.eval()
    for parameter in module.parameters():
        parameter.requires_grad_(False)


def load_reward_model(spec: str, opt_overrides: dict | None = None) -> RewardModel:
    """A frozen reward model from ``constant:<v>`` or a ParlAI model file (see module doc)."""
    if spec.startswith('constant:'):
        return ConstantReward(float(spec.split(':', 1)[1]))
    from parlai.core.agents import create_agent_from_model_file
    from parlai.utils.io import PathManager

    # zoo:<system>/<entry>/<file> names are resolved (and installed) by ParlAI's model-file loader
    if not spec.startswith('zoo:') and not PathManager.exists(spec):
        raise FileNotFoundError(f'reward model file {spec} does not exist')
    overrides = {'datatype': 'valid', 'interactive_mode': False}
    overrides.update(opt_overrides or {})
    agent = create_agent_from_model_file(spec, overrides)
    if callable(getattr(agent, 'score', None)):
        reward = AgentReward(agent, 'score')
    elif callable(getattr(agent, 'coherence_scores', None)):
        reward = AgentReward(agent, 'coherence_scores')
    else:
        raise TypeError(
            f'{type(agent).__name__} (from {spec}) has neither score(contexts, responses) '
            'nor coherence_scores(context_vecs, response_vecs); it cannot serve as a reward'
        )
    freeze(reward.module)
    return reward
