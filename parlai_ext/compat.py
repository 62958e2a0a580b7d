"""Compatibility fixes that let ParlAI 1.7.2 run on Python 3.11+, torch 2.x and numpy 2.x.

ParlAI 1.7.2 (2023) is the last release of an archived project. Rather than fork it, each fix
below patches one ParlAI (or py-rouge) module right after it is imported, from the start-up
hook ``_parlai_ext_hook`` (installed by ``parlai_ext_hook.pth``), so the fixes are active in
every Python process of the environment: the stock ``parlai`` command, ``python -m
parlai.scripts...``, programmatic use, and the workers that ``multiprocessing_train`` spawns.

Each function takes the freshly executed module and says which file it patches and why.
Every fix is conditional on the breakage actually being present, so a fixed ParlAI or an
older torch passes through unchanged. Only ``patch_distributed`` touches something outside
ParlAI (``DistributedDataParallel`` with ``device_ids=[-1]``, which is never valid).

This module must stay cheap to import: no torch or ParlAI import at module level.
If the hook cannot run (``python -S``, ``pip install --target``), call :func:`install_hook`
before the first ParlAI import.
"""

from __future__ import annotations

import contextlib
import sys
import types

_SHIM_MARK = '__parlai_ext_shim__'


def install_hook() -> None:
    """Install the import hook by hand (equivalent to the ``.pth`` start-up hook)."""
    import _parlai_ext_hook

    _parlai_ext_hook.install()


# --- 1. pkg_resources ------------------------------------------------------------------
# parlai/core/opt.py (and rouge/rouge.py) do ``import pkg_resources`` at module level, for
# resource_exists/resource_filename only. setuptools >= 82 no longer ships pkg_resources,
# and torch 2.13 requires setuptools >= 77.0.3, where it is deprecated. A shim on top of
# importlib.resources sits in sys.modules only while those modules execute, so other
# libraries still see the real state of the environment.


def _pkg_resources_shim() -> types.ModuleType:
    import importlib.resources
    import importlib.util
    import pathlib

    shim = types.ModuleType('pkg_resources')
    setattr(shim, _SHIM_MARK, True)

    def _root(package_or_module: str):
        # pkg_resources accepts a plain module too (rouge passes 'rouge.rouge'): its folder
        spec = importlib.util.find_spec(package_or_module)
        if spec is not None and spec.submodule_search_locations is None and spec.origin:
            return pathlib.Path(spec.origin).parent
        return importlib.resources.files(package_or_module)

    def resource_exists(package: str, resource: str) -> bool:
        try:
            return _root(package).joinpath(resource).is_file()
        except (ModuleNotFoundError, TypeError):
            return False

    def resource_filename(package: str, resource: str) -> str:
        return str(_root(package).joinpath(resource))

    shim.resource_exists = resource_exists
    shim.resource_filename = resource_filename
    return shim


def ensure_pkg_resources(module: types.ModuleType | None = None) -> None:
    """Before parlai.core.opt / rouge.rouge execute: provide pkg_resources if it is gone."""
    if 'pkg_resources' in sys.modules:
        return
    import importlib.util

    if importlib.util.find_spec('pkg_resources') is None:
        sys.modules['pkg_resources'] = _pkg_resources_shim()


def drop_pkg_resources_shim(module: types.ModuleType | None = None) -> None:
    """After they executed: take the shim out of sys.modules (their reference stays)."""
    if getattr(sys.modules.get('pkg_resources'), _SHIM_MARK, False):
        del sys.modules['pkg_resources']


# --- 2. numpy.int in parlai/core/dict.py ---------------------------------------------------
# DictionaryAgent.txt2vec(vec_type=np.ndarray) calls np.fromiter(itr, np.int); numpy >= 1.24
# removed the np.int alias (AttributeError). The module gets its own numpy view with ``int``;
# the global numpy module is untouched.


class _NumpyWithInt(types.ModuleType):
    int = int

    def __init__(self, numpy_module: types.ModuleType) -> None:
        super().__init__('numpy')
        self._numpy = numpy_module

    def __getattr__(self, name: str):
        return getattr(self._numpy, name)


def patch_dict_numpy(module: types.ModuleType) -> None:
    numpy_module = module.np
    if not hasattr(numpy_module, 'int'):
        module.np = _NumpyWithInt(numpy_module)


# --- 3. ReduceLROnPlateau(verbose=...) in parlai/nn/lr_scheduler.py ----------------------
# ParlAI's default scheduler (--lr-scheduler reduceonplateau, so every default train_model
# run) passes verbose=True, which torch 2.x removed: TypeError at the first training step.


def patch_lr_scheduler(module: types.ModuleType) -> None:
    import inspect

    from torch import optim

    if 'verbose' in inspect.signature(optim.lr_scheduler.ReduceLROnPlateau).parameters:
        return
    scheduler_cls = module.ReduceOnPlateauLRScheduler
    base_init = module.ParlAILRScheduler.__init__

    def __init__(self, optimizer, patience, decay, warmup_updates, warmup_rate):
        base_init(self, warmup_updates, warmup_rate)
        self.scheduler = optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, 'min', factor=decay, patience=patience
        )

    scheduler_cls.__init__ = __init__


# --- 4. CPU (gloo) runs of multiprocessing_train / multiprocessing_eval -----------------
# parlai/utils/distributed.py assumes CUDA: distributed_context does
# ``rank % torch.cuda.device_count()`` (ZeroDivisionError on CPU), uses the nccl backend and
# torch.cuda.init(); all_gather_list allocates .cuda() buffers; the agents then wrap the model
# in DDP with device_ids=[opt['gpu']] = [-1] (ValueError). On a machine without CUDA the
# context below uses gpu=-1 and gloo, gathers with all_gather_object, and DDP maps [-1] to
# None. With CUDA available, ParlAI's own code runs unchanged.
#
# It also sleeps 0.2 s before destroy_process_group(): torch/gloo can deadlock at exit when the
# process group is destroyed while gloo's run-loop thread still waits for the GIL to release
# the last collective's tensor (seen as a hang in about 1 run in 4 without the pause).


def patch_distributed(module: types.ModuleType) -> None:
    import torch
    import torch.distributed as dist

    original_context = module.distributed_context
    original_gather = module.all_gather_list

    @contextlib.contextmanager
    def distributed_context(
        rank, opt, rank_offset=0, gpu=None, init_method='tcp://localhost:61337'
    ):
        if torch.cuda.is_available():
            with original_context(rank, opt, rank_offset, gpu, init_method) as new_opt:
                yield new_opt
            return
        import copy
        import time

        opt = copy.deepcopy(opt)
        rank = rank + rank_offset
        opt['rank'] = rank
        opt['gpu'] = -1
        opt.setdefault('override', {})['gpu'] = -1
        print_prefix = f'rank:{rank:3d} |' if opt.get('verbose') or rank else None
        suppress_output = not opt.get('verbose') and rank != 0
        with module.override_print(suppress_output, print_prefix):
            dist.init_process_group(
                backend='gloo',
                init_method=init_method,
                world_size=opt['distributed_world_size'],
                rank=rank,
            )
            module.logging.info('Distributed group initialized (CPU, gloo)')
            torch.manual_seed(42)
            module.sync_object(None)
            try:
                yield opt
            finally:
                time.sleep(0.2)
                dist.destroy_process_group()

    def all_gather_list(data):
        if not module.is_distributed() or dist.get_backend() == 'nccl':
            return original_gather(data)
        result = [None] * dist.get_world_size()
        dist.all_gather_object(result, data)
        return result

    module.distributed_context = distributed_context
    module.all_gather_list = all_gather_list
    _patch_ddp_cpu_device_ids()


def _patch_ddp_cpu_device_ids() -> None:
    from torch.nn.parallel import DistributedDataParallel

    if getattr(DistributedDataParallel.__init__, _SHIM_MARK, False):
        return
    original_init = DistributedDataParallel.__init__

    def __init__(self, module, device_ids=None, *args, **kwargs):
        if device_ids is not None and list(device_ids) == [-1]:
            device_ids = None
        original_init(self, module, device_ids, *args, **kwargs)

    setattr(__init__, _SHIM_MARK, True)
    DistributedDataParallel.__init__ = __init__


def patch_fsdp_join(module: types.ModuleType) -> None:
    """parlai/utils/fsdp.py: Join needs a torch.device; the trainer gives opt['gpu'] = -1."""
    import torch

    for cls in (module.JoinableTrainLoop, module.JoinableEvaluator):
        original = cls.join_device

        def join_device(self, _original=original):
            device = _original.fget(self)
            if isinstance(device, int) and device < 0:
                return torch.device('cpu')
            return device

        cls.join_device = property(join_device)


# --- 5. py-rouge without punkt data ---------------------------------------------------------
# rouge/rouge.py tokenises with nltk.word_tokenize, which needs the punkt_tab data (a download,
# impossible offline); ParlAI then silently drops rouge-1/2/L. ParlAI only passes single-line,
# punctuation-free normalised text, so preserve_line=True (no sentence splitting, no punkt) gives
# the same tokens.


def patch_py_rouge(module: types.ModuleType) -> None:
    import nltk

    def tokenize_text(text, language='english'):
        return nltk.word_tokenize(text, language, preserve_line=True)

    module.Rouge.tokenize_text = staticmethod(tokenize_text)


# --- 6. hugging_face/gpt2 beam search with transformers >= 4.4x --------------------------
# parlai/agents/hugging_face/gpt2.py reorders past_key_values as a tuple of tensors; recent
# transformers return a Cache object instead (TypeError in beam search / multi-turn decode).


def patch_hf_gpt2(module: types.ModuleType) -> None:
    model_cls = module.HFGPT2Model
    original = model_cls.reorder_decoder_incremental_state

    def reorder_decoder_incremental_state(self, incremental_state, inds):
        if hasattr(incremental_state, 'reorder_cache'):
            incremental_state.reorder_cache(inds)
            return incremental_state
        return original(self, incremental_state, inds)

    model_cls.reorder_decoder_incremental_state = reorder_decoder_incremental_state


# --- 7. our scripts in the ``parlai`` super-command -----------------------------------------
# parlai/core/script.py builds the list of ``parlai <command>`` scripts by importing every
# module of parlai.scripts (and parlai_internal.scripts). We add parlai_ext.scripts, so that
# e.g. ``parlai selfchat_metrics`` works like a built-in script.


def patch_script_registry(module: types.ModuleType) -> None:
    original = module.setup_script_registry

    def setup_script_registry():
        original()
        import importlib
        import pkgutil

        import parlai_ext.scripts

        for info in pkgutil.iter_modules(parlai_ext.scripts.__path__, 'parlai_ext.scripts.'):
            importlib.import_module(info.name)

    module.setup_script_registry = setup_script_registry


# --- 8. parlai-ext metrics in ``--metrics`` ---------------------------------------------
# parlai/core/metrics.py: TeacherMetrics learns our ``ext_*`` metric names and groups (see
# parlai_ext.metrics and docs/metrics.md). ParlAI's own metrics are unchanged.


def register_metrics(module: types.ModuleType) -> None:
    """After parlai.core.metrics: install parlai_ext.metrics (imported only now, lazily)."""
    import importlib

    metrics = importlib.import_module('parlai_ext.metrics')
    # no ``install`` yet: parlai_ext.metrics is itself importing ParlAI's module and installs
    # at its own end
    if hasattr(metrics, 'install'):
        metrics.install(module)


# --- 9. ``--dict-class`` for every TorchAgent ------------------------------------------------
# ParlAI honours --dict-class only in build_dict: parlai/core/params.py never adds the named
# class's options (``unrecognized arguments: --spm-vocab-size``) and TorchAgent.build_dictionary
# (parlai/core/torch_agent.py) always builds the agent's own dictionary_class(). With these two
# patches ``parlai train_model -m <any TorchAgent> --dict-class <module:Class> <its options>``
# trains, saves and reloads with that dictionary (e.g. our SentencePiece one).
# ParlaiParser.add_extra_args (parlai/core/params.py) calls add_model_subargs only when a model
# is known (-m, or -mf with a .opt), so the class's options are also added there when no model
# is given: ``parlai build_dict -t <task> --dict-class <module:Class> <its options>`` (without
# -m) otherwise fails with ``unrecognized arguments``.


def patch_dict_class_args(module: types.ModuleType) -> None:
    import argparse

    def add_dict_class_args(parser, requested: str, partial) -> None:
        try:
            module.str2class(requested).add_cmdline_args(parser, partial)
        except argparse.ArgumentError:
            pass  # already added

    original = module.ParlaiParser.add_model_subargs

    def add_model_subargs(self, model, partial):
        original(self, model, partial)
        requested = partial.get('dict_class')
        if not requested:
            return
        agent = module.load_agent_module(model)
        if hasattr(agent, 'dictionary_class') and requested == module.class2str(
            agent.dictionary_class()
        ):
            return  # the agent's own dictionary: its options are already there
        add_dict_class_args(self, requested, partial)

    original_extra = module.ParlaiParser.add_extra_args

    def add_extra_args(self, args=None):
        original_extra(self, args)
        parsed = vars(self.parse_known_args(args, nohelp=True)[0])
        requested = parsed.get('dict_class')
        if not requested:
            return
        parsed = self._infer_datapath(parsed)
        if module.get_model_name(parsed) is not None:
            return  # add_model_subargs above has handled it
        add_dict_class_args(self, requested, module.Opt(parsed))
        self.set_defaults(**self._defaults)  # parser-level defaults win, as in add_extra_args

    module.ParlaiParser.add_model_subargs = add_model_subargs
    module.ParlaiParser.add_extra_args = add_extra_args


def patch_dict_class_agent(module: types.ModuleType) -> None:
    from parlai.core.params import class2str, str2class

    original = module.TorchAgent.build_dictionary

    def build_dictionary(self):
        requested = self.opt.get('dict_class')
        if requested and requested != class2str(self.dictionary_class()):
            dictionary_class = str2class(requested)
            self.dictionary_class = lambda: dictionary_class  # this instance only
        return original(self)

    module.TorchAgent.build_dictionary = build_dictionary


# --- 10. ``--seed`` seeds the model's initialisation --------------------------------------------
# parlai/scripts/train_model.py calls set_seed(opt['seed']) only after TrainLoop(opt) has built
# the agent, so ``--seed`` never made the initial weights reproducible (two runs with the same
# seed start from different models). The patch seeds ``random`` and torch at the start of
# TrainLoop.__init__ as well, which also covers each ``multiprocessing_train`` worker. Under
# DDP every worker would then draw the same data order and the same samples (both workers
# training on identical batches), so once the agent is built (DDP makes the weights equal
# anyway) each worker reseeds with ``seed + rank``: rank 0 continues exactly as one process.
# Without ``--seed``, torch is reseeded with 42 + rank (ParlAI seeds it with 42 in every worker).


def patch_train_loop_seed(module: types.ModuleType) -> None:
    import functools

    original = module.TrainLoop.__init__

    @functools.wraps(original)  # __wrapped__: the unpatched one (for the test)
    def __init__(self, opt):
        if opt.get('seed') is not None:
            module.set_seed(opt['seed'])
        original(self, opt)
        reseed_per_worker(opt, module.set_seed)

    module.TrainLoop.__init__ = __init__


def reseed_per_worker(opt, set_seed) -> None:
    """Under DDP, worker ``r`` continues with ``seed + r`` (rank 0: as one process would).

    Without ``--seed`` only torch is reseeded, with ParlAI's 42 + r (its distributed context
    seeds torch with 42 in every worker; ``random`` is already seeded per process).
    """
    import torch
    from parlai.utils import distributed

    if not distributed.is_distributed():
        return
    if opt.get('seed') is not None:
        set_seed(opt['seed'] + distributed.get_rank())
    else:
        torch.manual_seed(42 + distributed.get_rank())
