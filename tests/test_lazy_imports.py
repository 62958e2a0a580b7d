"""Start-up cost: our agents and teachers load without ``transformers``.

``parlai.agents.hugging_face.dict`` (the base of the HF dictionaries) imports ``transformers``
and scikit-learn: ~0.75 s on every ``parlai`` start. The HF dictionaries therefore live in
modules imported only when ``--hf-model-dir`` is used; their old import paths (saved
``dict_class`` values, user code) still resolve to the very same classes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parlai.core.params import str2class

from parlai_ext import registry

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ('transformers', 'parlai.agents.hugging_face', 'peft')
# ParlAI's own TorchClassifierAgent imports sklearn.metrics at module level (the PPG critic
# subclasses it), so sklearn is only checked for the modules imported before PPG's
SKLEARN_FREE_UNTIL = 'parlai_ext.agents.ppg'

_PROBE = """
import importlib, json, sys
heavy = {heavy!r}
seen = {{}}
for name in {modules!r}:
    importlib.import_module(name)
    seen[name] = [m for m in heavy + ('sklearn',) if m in sys.modules]
print(json.dumps(seen))
"""


def _registered_modules() -> list[str]:
    agents = sorted(set(registry.AGENTS.values()))
    tasks = sorted({module for entry in registry.TASKS.values() for module in entry.values()})
    ppg = [m for m in agents if m.startswith(SKLEARN_FREE_UNTIL)]
    return [m for m in agents if m not in ppg] + tasks + ppg


def test_registered_agents_and_tasks_import_without_transformers():
    modules = _registered_modules()
    assert 'parlai_ext.agents.unified_transformer' in modules
    assert 'parlai_ext.tasks.p2bot_selfplay.worlds' in modules
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1')
    out = subprocess.run(
        [sys.executable, '-c', _PROBE.format(heavy=HEAVY, modules=modules)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(seen) == modules
    for name, loaded in seen.items():
        assert not set(loaded) & set(HEAVY), f'{name} imported {loaded}'
    before_ppg = modules[
        : modules.index(next(m for m in modules if m.startswith('parlai_ext.agents.ppg')))
    ]
    for name in before_ppg:
        assert 'sklearn' not in seen[name], f'{name} imported sklearn'


def test_old_dictionary_paths_resolve_to_the_moved_classes():
    from parlai_ext.agents.hf_dict import HfDictionaryAgent
    from parlai_ext.agents.p2bot_hf_dict import P2BotHFDictionaryAgent
    from parlai_ext.agents.ppg_hf_dict import PpgHfDictionaryAgent

    old_paths = {
        'parlai_ext.agents.hf:HfDictionaryAgent': HfDictionaryAgent,
        'parlai_ext.agents.p2bot_model:P2BotHFDictionaryAgent': P2BotHFDictionaryAgent,
        'parlai_ext.agents.p2bot:P2BotHFDictionaryAgent': P2BotHFDictionaryAgent,
        'parlai_ext.agents.ppg:PpgHfDictionaryAgent': PpgHfDictionaryAgent,
    }
    for path, cls in old_paths.items():
        assert str2class(path) is cls, path
    assert issubclass(P2BotHFDictionaryAgent, HfDictionaryAgent)
    assert issubclass(PpgHfDictionaryAgent, HfDictionaryAgent)


def test_hf_class_is_resolved_lazily_per_subclass():
    from parlai_ext.agents import hf as glue
    from parlai_ext.agents.coral_reward import CoralCrossEncoderDictionaryAgent
    from parlai_ext.agents.ppg import PpgDictionaryAgent
    from parlai_ext.agents.ppg_hf_dict import PpgHfDictionaryAgent

    assert isinstance(glue.HfOrParlaiDictionaryAgent.HF_CLASS, str)  # not imported up front
    assert glue.HfOrParlaiDictionaryAgent.hf_class() is glue.HfDictionaryAgent
    assert CoralCrossEncoderDictionaryAgent.hf_class() is glue.HfDictionaryAgent
    assert PpgDictionaryAgent.hf_class() is PpgHfDictionaryAgent
    assert glue.resolve_class(PpgHfDictionaryAgent) is PpgHfDictionaryAgent
    with pytest.raises(ValueError, match='module:Class'):
        glue.resolve_class('parlai_ext.agents.hf.HfDictionaryAgent')
    with pytest.raises(AttributeError, match='NoSuchThing'):
        glue.NoSuchThing  # noqa: B018
    assert not hasattr(sys.modules['parlai_ext.agents.p2bot_model'], 'NoSuchThing')


def test_saved_dict_class_values_still_resolve():
    """Every ``dict_class`` named by a shipped ``.opt`` (zoo, fixtures) names a class."""
    values = set()
    for folder in ('zoo', 'tests/fixtures'):
        for path in (ROOT / folder).rglob('*.opt'):
            try:
                value = json.loads(path.read_text(encoding='utf-8')).get('dict_class')
            except (ValueError, AttributeError):
                continue
            if value:
                values.add(value)
    assert 'parlai_ext.agents.hf:HfOrParlaiDictionaryAgent' in values
    for value in sorted(values):
        assert isinstance(str2class(value), type), value
