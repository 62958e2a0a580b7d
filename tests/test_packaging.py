"""A regular (non-editable) install: the wheel's contents, and the hook working from it."""

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('wheel')
    subprocess.run(
        [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
         '-w', str(out), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (path,) = out.glob('parlai_ext-*.whl')
    return path


def test_wheel_ships_hook_and_subpackages_but_no_top_level_clashes(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {'parlai_ext_hook.pth', '_parlai_ext_hook.py'} <= names
    assert 'parlai_ext/tasks/demo/agents.py' in names
    assert 'parlai_ext/zoo/__init__.py' in names
    top_level = {name.split('/')[0] for name in names}
    assert not top_level & {'projects', 'tests', 'tasks', 'zoo'}


def test_regular_install_registers_short_names(wheel, tmp_path):
    """Install the wheel into a fresh venv that borrows this venv's dependencies."""
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    python = venv / 'bin' / 'python'
    site = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target', site, str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # dependencies (torch, parlai, ...) from this venv, as a plain path: its own .pth files
    # (our editable install) are not processed, so only the wheel's copy is active
    deps = sysconfig.get_paths()['purelib']
    Path(site, 'zz_dependencies.pth').write_text(deps + '\n')
    code = (
        'import sys, parlai_ext, _parlai_ext_hook\n'
        'from parlai.core.loader import load_agent_module, load_teacher_module\n'
        'assert load_agent_module("unified_transformer").__name__ == "UnifiedTransformerAgent"\n'
        'assert load_teacher_module("ext_demo").__module__ == "parlai_ext.tasks.demo.agents"\n'
        'print(parlai_ext.__file__)\n'
    )
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    proc = subprocess.run(
        [python, '-c', code], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().startswith(site)
