"""The start-up hook: short names in the stock CLI, one class identity, near-zero start-up cost."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_parlai

from parlai_ext import registry

SITE_PARLAI = Path(__import__('parlai').__file__).parent


def _python(code: str, **env) -> str:
    import os

    full_env = dict(os.environ, **env)
    proc = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, env=full_env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip()


def test_pth_hook_runs_at_startup_without_importing_torch_or_parlai():
    out = _python(
        'import sys; print(sorted(m for m in ("_parlai_ext_hook", "torch", "parlai", '
        '"parlai_ext") if m in sys.modules))'
    )
    assert out == "['_parlai_ext_hook']"


@pytest.mark.parametrize(
    'name', sorted(registry.AGENTS) + sorted(registry.TASKS) + sorted(registry.ZOO)
)
def test_short_names_never_shadow_parlai_builtins(name):
    assert not (SITE_PARLAI / 'agents' / name).exists()
    assert not (SITE_PARLAI / 'tasks' / name).exists()
    assert not (SITE_PARLAI / 'zoo' / name).exists()


def test_every_short_name_resolves_to_the_one_real_class():
    code = """
import importlib, sys
from parlai.core.loader import load_agent_module, load_teacher_module
from parlai_ext import registry
for name, module in registry.AGENTS.items():
    cls = load_agent_module(name)
    real = importlib.import_module(module)
    assert cls is getattr(real, cls.__name__), name
    assert cls.__module__ == module, (name, cls.__module__)
    assert sys.modules['parlai.agents.' + name + '.agents'] is real
for name, modules in registry.TASKS.items():
    real = importlib.import_module(modules['agents'])
    assert load_teacher_module(name) is real.DefaultTeacher, name
    assert sys.modules['parlai.tasks.' + name + '.agents'] is real
print('ok', len(registry.AGENTS), len(registry.TASKS))
"""
    assert _python(code).startswith('ok')


@pytest.fixture(scope='module')
def base_help_lines():
    return set(run_parlai('train_model', '--help').stdout.splitlines())


@pytest.mark.parametrize('name', sorted(registry.AGENTS))
def test_stock_parlai_executable_resolves_agent_short_name(name, base_help_lines):
    # an unknown -m fails with ImportError; a resolved one adds the agent's own options
    out = run_parlai('train_model', '-m', name, '--help')
    added = [line for line in out.stdout.splitlines() if line not in base_help_lines]
    assert any(line.strip().startswith('--') for line in added), out.stdout[-2000:]


def test_stock_parlai_executable_resolves_task_short_name():
    out = run_parlai('display_data', '-t', 'ext_demo', '-n', '2')
    assert 'ext_demo' in out.stdout + out.stderr
    assert 'loaded 400 episodes' in out.stdout + out.stderr


def test_full_module_path_works_too():
    out = run_parlai(
        'train_model',
        '-m',
        'parlai_ext.agents.unified_transformer:UnifiedTransformerAgent',
        '--help',
    )
    assert '--n-positions' in out.stdout


def test_hook_can_be_switched_off():
    out = _python(
        'import sys; print(any(getattr(f, "parlai_ext_hook", False) for f in sys.meta_path))',
        PARLAI_EXT_HOOK='0',
    )
    assert out == 'False'


def test_manual_install_patches_modules_imported_before_the_hook():
    # e.g. a `pip install --target` environment where no .pth file runs
    code = """
import sys
from parlai_ext import compat
sys.modules['pkg_resources'] = compat._pkg_resources_shim()  # as with setuptools < 82
import parlai.core.dict as d
assert not hasattr(d.np, 'int')
from parlai_ext.compat import install_hook
install_hook()
assert d.np.int is int
from parlai.core.loader import load_agent_module
print(load_agent_module('unified_transformer').__name__)
"""
    out = _python(code, PARLAI_EXT_HOOK='0')
    assert out == 'UnifiedTransformerAgent'
