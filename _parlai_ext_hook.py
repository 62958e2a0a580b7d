"""Start-up import hook that plugs parlai-ext into a stock ParlAI 1.7.2.

``parlai_ext_hook.pth`` (installed into site-packages next to this module) imports this
module when Python starts. It installs one finder at the front of ``sys.meta_path`` and
does nothing else: no torch, no ParlAI, no parlai_ext import at start-up. The finder
answers for two kinds of module names only:

1. ParlAI modules that need a compatibility fix (``PATCHED_MODULES``): the real module is
   loaded as usual, and functions of :mod:`parlai_ext.compat` run before and/or after it
   executes (see that module for what each fix does and why).
2. ParlAI short names of our agents and teachers (``parlai.agents.<name>[.agents]``,
   ``parlai.tasks.<name>[.agents|.worlds]``, ``parlai.zoo.<name>[.build]`` for names in
   :mod:`parlai_ext.registry`): these
   resolve to the real ``parlai_ext`` module object itself, so ``-m plato2`` and
   ``-m parlai_ext.agents.plato2:Plato2Agent`` give the very same class.

Every other import costs one dictionary lookup or one ``str.startswith``.
Set ``PARLAI_EXT_HOOK=0`` to switch it off (then ParlAI runs unpatched).
"""

import os
import sys

# module name -> (callbacks before exec, callbacks after exec), names in parlai_ext.compat
PATCHED_MODULES = {
    'parlai.core.opt': (('ensure_pkg_resources',), ('drop_pkg_resources_shim', 'patch_opt_io')),
    'parlai.core.dict': ((), ('patch_dict_numpy', 'patch_dict_save')),
    'parlai.core.params': ((), ('patch_dict_class_args',)),
    'parlai.core.build_data': ((), ('patch_modelzoo_path',)),
    'parlai.core.torch_agent': ((), ('patch_dict_class_agent', 'patch_torch_agent_reliability')),
    'parlai.core.torch_generator_agent': ((), ('patch_generation_options',)),
    'parlai.agents.local_human.local_human': ((), ('patch_local_human',)),
    'parlai.core.script': ((), ('patch_script_registry',)),
    'parlai.core.metrics': ((), ('register_metrics',)),
    'parlai.nn.lr_scheduler': ((), ('patch_lr_scheduler',)),
    'parlai.utils.distributed': ((), ('patch_distributed',)),
    'parlai.utils.fsdp': ((), ('patch_fsdp_join',)),
    # the seed patch wraps the reliability one (its __wrapped__ skips only the seeding)
    'parlai.scripts.train_model': ((), ('patch_train_loop_reliability', 'patch_train_loop_seed')),
    'parlai.agents.hugging_face.gpt2': ((), ('patch_hf_gpt2',)),
    'rouge.rouge': (
        ('ensure_pkg_resources',),
        ('drop_pkg_resources_shim', 'patch_py_rouge'),
    ),
}
_ALIAS_ROOTS = ('parlai.agents.', 'parlai.tasks.', 'parlai.zoo.')
_PATCHED_ATTR = '__parlai_ext_patched__'


def _compat():
    import parlai_ext.compat

    return parlai_ext.compat


def _run_callbacks(names, module):
    compat = _compat()
    for name in names:
        getattr(compat, name)(module)


class _PatchingLoader:
    """Wraps a real loader; runs the compat callbacks around ``exec_module``."""

    def __init__(self, loader, before, after):
        self._loader = loader
        self._before = before
        self._after = after

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # leave the module looking exactly as if the real loader had loaded it
        module.__loader__ = self._loader
        module.__spec__.loader = self._loader
        _run_callbacks(self._before, module)
        self._loader.exec_module(module)
        _run_callbacks(self._after, module)
        setattr(module, _PATCHED_ATTR, True)


class _AliasLoader:
    """Loads ``parlai.agents.<name>`` style names as our real modules (one identity)."""

    def __init__(self, target):
        self._target = target  # None: an empty package standing for the short name

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        if self._target is None:
            module.__path__ = []
            return
        import importlib

        # importlib returns whatever sys.modules holds after exec_module, so the alias
        # name ends up bound to the real module object.
        sys.modules[module.__name__] = importlib.import_module(self._target)


def _alias_target(fullname):
    """Return (is_alias, target module or None) for a ParlAI short-name module path."""
    parts = fullname.split('.')
    if len(parts) not in (3, 4):
        return False, None
    from parlai_ext import registry

    kind, short = parts[1], parts[2]
    if kind == 'zoo':
        return _zoo_target(registry.ZOO, short, parts)
    table = registry.AGENTS if kind == 'agents' else registry.TASKS
    if short not in table:
        return False, None
    if len(parts) == 3:
        return True, None
    target = table[short].get(parts[3]) if kind == 'tasks' else None
    if kind == 'agents' and parts[3] == 'agents':
        target = table[short]
    if target is None:
        return False, None
    return True, target


def _zoo_target(table, short, parts):
    """``parlai.zoo.<system>[.<module>]`` -> our zoo package's module, if it has one."""
    if short not in table:
        return False, None
    if len(parts) == 3:
        return True, None
    import importlib.util

    target = f'{table[short]}.{parts[3]}'
    spec = importlib.util.find_spec(target)
    # a real module only: an entry's data folder (a namespace package) is not one, so
    # ParlAI's lookup falls back to ``<system>.build`` as it does for its own zoo
    return (True, target) if spec is not None and spec.origin else (False, None)


class ParlaiExtFinder:
    """Meta-path finder for the patched ParlAI modules and our short names."""

    parlai_ext_hook = True

    def find_spec(self, fullname, path=None, target=None):
        hooks = PATCHED_MODULES.get(fullname)
        if hooks is not None:
            spec = self._real_spec(fullname, path, target)
            if spec is None or spec.loader is None:
                return None
            spec.loader = _PatchingLoader(spec.loader, *hooks)
            return spec
        if not fullname.startswith(_ALIAS_ROOTS):
            return None
        is_alias, alias_target = _alias_target(fullname)
        if not is_alias:
            return None
        import importlib.machinery

        return importlib.machinery.ModuleSpec(
            fullname, _AliasLoader(alias_target), is_package=alias_target is None
        )

    def _real_spec(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                return spec
        return None


def install():
    """Put the finder first on ``sys.meta_path`` and patch already-imported modules."""
    if any(getattr(f, 'parlai_ext_hook', False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, ParlaiExtFinder())
    for name, (_, after) in PATCHED_MODULES.items():
        module = sys.modules.get(name)
        if module is not None and not getattr(module, _PATCHED_ATTR, False):
            _run_callbacks([a for a in after if a != 'drop_pkg_resources_shim'], module)
            setattr(module, _PATCHED_ATTR, True)


if os.environ.get('PARLAI_EXT_HOOK', '1') != '0':
    install()
