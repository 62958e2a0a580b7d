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
    """TorchAgent.build_dictionary builds ``--dict-class`` when it was asked for (see below)."""
    original = module.TorchAgent.build_dictionary

    def build_dictionary(self):
        dictionary_class = requested_dict_class(self)
        if dictionary_class is not None:
            self.dictionary_class = lambda: dictionary_class  # this instance only
        return original(self)

    module.TorchAgent.build_dictionary = build_dictionary


def requested_dict_class(agent) -> type | None:
    """The dictionary class ``agent`` must build instead of its own, or None (its own).

    ``opt['dict_class']`` is not always the user's choice: ParlaiParser fills it with the
    ``-m`` model's own class as a default, and an opt saved under another model (or copied
    from one) carries that model's class. The swap therefore happens only when

    - ``--dict-class`` was given explicitly (it is in ``opt['override']``), or
    - the opt belongs to this very agent (``opt['model']`` loads ``type(agent)``): a class
      other than the agent's own was then chosen for it (command line, preset or the opt
      saved with the model), or
    - the requested class is a subclass of the agent's own (always safe).

    Otherwise the agent builds its own ``dictionary_class()``, as stock ParlAI does.
    """
    from parlai.core.loader import load_agent_module
    from parlai.core.params import class2str, str2class

    opt = agent.opt
    requested = opt.get('dict_class')
    own = agent.dictionary_class()
    if not requested or requested == class2str(own):
        return None
    candidate = str2class(requested)
    if isinstance(candidate, type) and isinstance(own, type) and issubclass(candidate, own):
        return candidate
    if 'dict_class' in (opt.get('override') or {}):
        return candidate
    model = opt.get('model')
    if model:
        try:
            model_class = load_agent_module(model)
        except (ImportError, AttributeError, ValueError):
            model_class = None
        if model_class is type(agent):
            return candidate
    return None


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


# --- 11. crash-safe files: atomic writes, no rewrite of identical files --------------------------
# ParlAI writes dictionaries (parlai/core/dict.py DictionaryAgent.save), option files
# (parlai/core/opt.py Opt.save) and train stats (parlai/scripts/train_model.py) in place: a kill
# during a save leaves a cut file, and the next start fails (a dictionary of 13,542 of 20,687
# lines: size mismatch; a cut ``.checkpoint.trainstats``: a JSONDecodeError that names no file).
# Inside parlai_ext.io.atomic_writes() every PathManager.open(..., 'w'/'wb') writes a temporary
# file that replaces the target in one step, and a file whose new content is identical to the
# old one is not rewritten (agents that save their dictionary on every checkpoint). A corrupt
# options file now names itself and the remedy instead of a bare JSONDecodeError.


class CorruptFileError(RuntimeError):
    """A companion file of a model (options, train stats) cannot be read."""


def patch_opt_io(module: types.ModuleType) -> None:
    """parlai/core/opt.py: Opt.save atomic; Opt.load names a corrupt file and the remedy."""
    import json

    from parlai_ext import io

    if getattr(module.Opt.save, _SHIM_MARK, False):
        return
    module.Opt.save = io.atomically(module.Opt.save)
    setattr(module.Opt.save, _SHIM_MARK, True)
    original_load = module.Opt.load.__func__

    def load(cls, optfile):
        try:
            return original_load(cls, optfile)
        except (json.JSONDecodeError, EOFError, ValueError) as err:
            raise CorruptFileError(
                f'{optfile}: not a readable options file ({type(err).__name__}: {err}). '
                'It was cut or overwritten. Restore it from a copy, or delete it together with '
                'the model it describes and train again.'
            ) from None

    module.Opt.load = classmethod(load)


def patch_dict_save(module: types.ModuleType) -> None:
    """parlai/core/dict.py: DictionaryAgent.save writes atomically, skips identical files."""
    from parlai_ext import io

    if getattr(module.DictionaryAgent.save, _SHIM_MARK, False):
        return
    module.DictionaryAgent.save = io.atomically(module.DictionaryAgent.save)
    setattr(module.DictionaryAgent.save, _SHIM_MARK, True)


# --- 12. TorchAgent: atomic save, readable weight mismatch, options checked up front -------------
# parlai/core/torch_agent.py: TorchAgent.save runs inside atomic_writes() (the model's .opt and
# its dictionary; ParlAI writes the weights atomically itself). Loading another agent's file
# (``--init-model`` across agents) fails with a 7,000-character key list: the error now says
# which agent the file belongs to and how many names do not fit. ``-bs 0`` (or a negative
# ``--eval-batchsize``) is rejected before anything is built.


def patch_torch_agent_reliability(module: types.ModuleType) -> None:
    from parlai_ext import io

    agent_cls = module.TorchAgent
    if getattr(agent_cls.save, _SHIM_MARK, False):
        return
    agent_cls.save = io.atomically(agent_cls.save)
    setattr(agent_cls.save, _SHIM_MARK, True)

    original_load = agent_cls.load

    def load(self, path):
        try:
            return original_load(self, path)
        except RuntimeError as err:
            text = str(err)
            if 'state_dict' not in text and 'size mismatch' not in text:
                raise
            raise RuntimeError(weights_mismatch_message(self, path, text)) from None

    agent_cls.load = load

    original_init = agent_cls.__init__

    def __init__(self, opt, shared=None):
        if shared is None:
            check_batch_options(opt)
        original_init(self, opt, shared)

    agent_cls.__init__ = __init__


def check_batch_options(opt) -> None:
    """``-bs`` / ``--eval-batchsize`` must be at least 1."""
    for key, flag in (('batchsize', '-bs/--batchsize'), ('eval_batchsize', '--eval-batchsize')):
        value = opt.get(key)
        if value is not None and value < 1:
            raise ValueError(f'{flag} {value}: a batch holds at least one example; expected >= 1')


def weights_mismatch_message(agent, path: str, error: str) -> str:
    """A short account of a state-dict mismatch: counts, first names, the file's own agent."""
    import json
    import os
    import re

    def names(label: str) -> list[str]:
        match = re.search(label + r' key\(s\) in state_dict: (.*?)(?:\.\s*\n|\.\s*$)', error, re.S)
        return re.findall(r'"([^"]+)"', match.group(1)) if match else []

    missing, unexpected = names('Missing'), names('Unexpected')
    sizes = re.findall(r'size mismatch for ([^:]+):', error)
    owner = None
    for candidate in (path + '.opt', re.sub(r'\.checkpoint$', '', path) + '.opt'):
        if os.path.isfile(candidate):
            try:
                with open(candidate, encoding='utf-8') as handle:
                    owner = json.load(handle).get('model')
            except (OSError, ValueError):
                owner = None
            break
    this = agent.opt.get('model') or type(agent).__name__
    parts = [f'{path}: its weights do not fit agent {this!r}']
    if owner and owner != this:
        parts[0] += f'; the file belongs to agent {owner!r} (its .opt says model={owner})'
    counts = []
    if missing:
        counts.append(f'{len(missing)} parameters missing (first: {missing[0]})')
    if unexpected:
        counts.append(f'{len(unexpected)} unexpected (first: {unexpected[0]})')
    if sizes:
        counts.append(f'{len(sizes)} of other sizes (first: {sizes[0]})')
    if counts:
        parts.append(', '.join(counts))
    parts.append(
        f'Use a model file saved by {this!r} (with the options it was trained with), or an '
        'agent whose documentation names this file as a valid --init-model'
    )
    return '. '.join(parts) + '.'


# --- 13. sampling options checked up front (parlai/core/torch_generator_agent.py) ---------------
# ``--inference topk --topk 0`` or a top-k above the vocabulary crash deep inside torch at the
# first generation; ``--beam-size 0``, ``--topp 0`` or ``--temperature 0`` fail the same way or
# silently divide by zero. Every TorchGeneratorAgent now checks them when it is built.


def patch_generation_options(module: types.ModuleType) -> None:
    agent_cls = module.TorchGeneratorAgent
    if getattr(agent_cls.__init__, _SHIM_MARK, False):
        return
    original_init = agent_cls.__init__

    def __init__(self, opt, shared=None):
        if shared is None:
            check_generation_options(opt)
        original_init(self, opt, shared)
        if shared is None and hasattr(self, 'dict'):
            check_generation_options(self.opt, vocab_size=len(self.dict))

    setattr(__init__, _SHIM_MARK, True)
    agent_cls.__init__ = __init__


_TOPK_METHODS = ('topk', 'delayedbeam')
_TOPP_METHODS = ('nucleus', 'delayednucleusbeam', 'factual_nucleus')


def check_generation_options(opt, vocab_size: int | None = None) -> None:
    """Raise ValueError naming the option when a search option cannot work."""
    method = opt.get('inference', 'greedy')
    problems = []
    beam_size = opt.get('beam_size', 1)
    if beam_size is not None and beam_size < 1:
        problems.append(f'--beam-size {beam_size}: expected >= 1')
    temperature = opt.get('temperature', 1.0)
    if temperature is not None and not temperature > 0:
        problems.append(f'--temperature {temperature}: expected > 0')
    if method in _TOPK_METHODS:
        topk = opt.get('topk', 10)
        if topk is None or topk < 1:
            problems.append(f'--topk {topk}: --inference {method} samples from the k most '
                            'likely tokens; expected k >= 1')  # fmt: skip
        elif vocab_size is not None and topk > vocab_size:
            problems.append(f'--topk {topk}: larger than the vocabulary ({vocab_size} tokens); '
                            f'expected 1 <= k <= {vocab_size}')  # fmt: skip
    if method in _TOPP_METHODS:
        topp = opt.get('topp', 0.9)
        if topp is None or not 0 < topp <= 1:
            problems.append(f'--topp {topp}: --inference {method} keeps the smallest set of '
                            'tokens with probability >= p; expected 0 < p <= 1')  # fmt: skip
    min_length = opt.get('beam_min_length', 1)
    if min_length is not None and min_length < 0:
        problems.append(f'--beam-min-length {min_length}: expected >= 0')
    if problems:
        raise ValueError('; '.join(problems))


# --- 14. ``parlai interactive``: empty lines (parlai/agents/local_human/local_human.py) ----------
# An empty input line (typed, or in piped input such as the demo's) becomes a message with an
# empty text, which ends the run with ``KeyError: 'text'`` in the model's history. Empty and
# blank lines are skipped; the prompt comes again.


def patch_local_human(module: types.ModuleType) -> None:
    agent_cls = module.LocalHumanAgent
    # issue #22: --show-candidates prints the candidates after each reply (off by default)
    from parlai_ext.candidates import add_show_candidates_option

    add_show_candidates_option(agent_cls)  # idempotent
    if getattr(agent_cls.act, _SHIM_MARK, False):
        return
    original_act = agent_cls.act

    def act(self):
        while True:
            reply = original_act(self)
            text = reply.get('text')
            if text is None or text.strip():
                return reply

    setattr(act, _SHIM_MARK, True)
    agent_cls.act = act


# --- 15. zoo names (parlai/core/build_data.py modelzoo_path) -------------------------------------
# ``zoo:plato2/no_such_entry/model`` falls back to ``parlai.zoo.plato2.build``, which installs the
# system's real entry, and then fails on a missing file. For our systems an unknown entry or file
# now stops before anything is installed, listing the entries that exist; an unknown system gets
# our list added to ParlAI's own error.


def patch_modelzoo_path(module: types.ModuleType) -> None:
    original = module.modelzoo_path
    if getattr(original, _SHIM_MARK, False):
        return

    def modelzoo_path(datapath, path):
        if isinstance(path, str) and path.startswith(('zoo:', 'models:')):
            from parlai_ext.zoo.common import check_zoo_name

            check_zoo_name(path)
            try:
                return original(datapath, path)
            except ImportError as err:
                from parlai_ext.zoo.common import zoo_listing

                raise ImportError(f'{err}\nparlai-ext zoo entries: {zoo_listing()}') from None
        return original(datapath, path)

    setattr(modelzoo_path, _SHIM_MARK, True)
    module.modelzoo_path = modelzoo_path


# --- 16. TrainLoop: one writer, readable companion files, resume and re-run ---------------------
# parlai/scripts/train_model.py:
# - a second training on the same --model-file ran side by side and mixed the files: TrainLoop
#   now takes an exclusive lock on ``<model file>.lock`` (primary worker) and a second run stops
#   at once (parlai_ext.io.ModelFileLock; the kernel drops it when a run ends or is killed);
# - a cut ``.trainstats`` / ``.checkpoint.trainstats`` died with a JSONDecodeError naming no
#   file: it is checked first and the error names it and the remedy; stats are written
#   atomically;
# - after a resume from ``<mf>.checkpoint`` the final valid/test evaluation reloaded the
#   checkpoint (``_get_init_model`` prefers it), not the best model; and a resumed run that
#   found no better model overwrote the saved best one with its last state: the final reload
#   now loads ``<mf>``, and a resumed run whose best model is on disk counts it as saved;
# - re-running a finished training resumed from its old checkpoint and overwrote the final
#   model: it now says so and returns the saved final reports, unless
#   ``--overwrite-finished true`` (ParlAI's behaviour);
# - a start that fails (e.g. ``--init-model`` of another agent) removes the files it created
#   (ParlAI builds ``<mf>.dict`` before the agent);
# - a task without a test split failed after the model was saved, in the final evaluation: the
#   final test evaluation of such a task is skipped with a warning.

FINISHED_KEY = 'parlai_ext_finished'


def patch_train_loop_reliability(module: types.ModuleType) -> None:
    import functools
    import os

    from parlai_ext import io

    loop_cls = module.TrainLoop
    if getattr(loop_cls.__init__, _SHIM_MARK, False):
        return
    original_setup_args = module.setup_args

    @functools.wraps(original_setup_args)
    def setup_args(parser=None):
        parser = original_setup_args(parser)
        group = parser.add_argument_group('parlai-ext training safety')
        group.add_argument(
            '--overwrite-finished',
            type='bool',
            default=False,
            help='re-running a finished training (its <model file>.trainstats has the final '
            'reports) stops and returns them unchanged; true: train again as ParlAI does, '
            'resuming from <model file>.checkpoint and overwriting the model',
        )
        return parser

    module.setup_args = setup_args

    original_init = loop_cls.__init__

    @functools.wraps(original_init)
    def __init__(self, opt):
        from parlai.utils import logging
        from parlai.utils.distributed import is_primary_worker

        self._ext_lock = None
        self._ext_finished_reports = None
        lock_existed = True
        model_file = opt.get('model_file')
        if model_file:
            from parlai.core.build_data import modelzoo_path

            model_file = modelzoo_path(opt.get('datapath'), model_file)
        if model_file and is_primary_worker():
            self._ext_lock = io.ModelFileLock(model_file)
            lock_existed = os.path.exists(self._ext_lock.path)
            self._ext_lock.acquire()
        try:
            if model_file:
                finished = finished_training_reports(model_file)
                if finished is not None and not opt.get('overwrite_finished', False):
                    logging.warning(
                        f'{model_file} is the result of a finished training '
                        f'({model_file}.trainstats holds its final reports): nothing to do, '
                        'the model is left unchanged. Pass --overwrite-finished true to '
                        'train it again, or choose another --model-file.'
                    )
                    self.opt = opt
                    self._ext_finished_reports = finished
                    _release(self._ext_lock, remove=not lock_existed)
                    self._ext_lock = None
                    return
                check_trainstats(opt, model_file)
            watched = [p for p in (model_file, opt.get('dict_file')) if p]
            before = _files_with_prefixes(watched)
            try:
                original_init(self, opt)
            except BaseException:
                _remove_new_files(before, watched, keep=self._ext_lock)
                raise
            if (
                model_file
                and opt.get('init_model') == model_file + '.checkpoint'
                and self.best_valid is not None
                and os.path.isfile(model_file)
            ):
                self.saved = True  # the best model of the run so far is on disk
        except BaseException:
            _release(self._ext_lock, remove=not lock_existed)
            self._ext_lock = None
            raise

    setattr(__init__, _SHIM_MARK, True)
    loop_cls.__init__ = __init__

    original_train_steps = loop_cls.train_steps

    @functools.wraps(original_train_steps)
    def train_steps(self):
        model_file = self.opt.get('model_file')
        if model_file and self.opt.get('init_model') == model_file + '.checkpoint':
            # the reload at the end of train_steps must load the best model, not the checkpoint
            # (the agent itself was built from the checkpoint already)
            self.opt['init_model'] = model_file
        yield from original_train_steps(self)
        self._ext_trained = True

    loop_cls.train_steps = train_steps

    original_train = loop_cls.train

    @functools.wraps(original_train)
    def train(self):
        if self._ext_finished_reports is not None:
            return self._ext_finished_reports
        try:
            result = original_train(self)
        except BaseException:
            _release(self._ext_lock, remove=False)
            self._ext_lock = None
            raise
        _release(self._ext_lock, remove=True)  # a clean end leaves no lock file behind
        self._ext_lock = None
        return result

    loop_cls.train = train

    original_save_stats = loop_cls._save_train_stats

    def _save_train_stats(self, suffix=None):
        with io.atomic_writes():
            original_save_stats(self, suffix)
        from parlai.utils.distributed import is_primary_worker

        model_file = self.opt.get('model_file')
        # only the primary worker writes the stats (ParlAI's rule): another worker marking them
        # would read them before the primary's final write and put the older copy back
        finished = suffix is None and getattr(self, '_ext_trained', False)
        if finished and model_file and is_primary_worker():
            mark_finished(model_file + '.trainstats')

    loop_cls._save_train_stats = _save_train_stats

    original_eval_worlds = module.load_eval_worlds

    def load_eval_worlds(agent, opt, datatype):
        if not datatype.startswith('test'):
            return original_eval_worlds(agent, opt, datatype)
        from parlai.utils import logging

        missing, worlds = [], []
        for task in (opt.get('evaltask') or opt['task']).split(','):
            task_opt = opt.copy()
            task_opt['evaltask'] = task
            try:  # building a teacher is what finds its files
                worlds += original_eval_worlds(agent, task_opt, datatype)
            except FileNotFoundError as err:
                missing.append(task)
                logging.warning(f'{task}: no test split: {err}')
        if missing:
            logging.warning(f'final test evaluation skipped: no test split for {missing}')
            for world in worlds:
                world.shutdown()
            return []
        return worlds

    module.load_eval_worlds = load_eval_worlds

    original_run_eval = loop_cls._run_eval

    def _run_eval(self, valid_worlds, opt, datatype, *args, **kwargs):
        if not valid_worlds and datatype.startswith('test'):
            return {}  # skipped above: no test split
        return original_run_eval(self, valid_worlds, opt, datatype, *args, **kwargs)

    loop_cls._run_eval = _run_eval


def finished_training_reports(model_file: str):
    """(valid, test) final reports if ``model_file`` is a finished training, else None."""
    import json
    import os

    stats_file = model_file + '.trainstats'
    if not (os.path.isfile(model_file) and os.path.isfile(stats_file)):
        return None
    try:
        with open(stats_file, encoding='utf-8') as handle:
            stats = json.load(handle)
    except (OSError, ValueError):
        return None  # check_trainstats reports it if the run needs it
    valid, test = stats.get('final_valid_report') or {}, stats.get('final_test_report') or {}
    if stats.get(FINISHED_KEY) or valid or test:
        return valid, test
    return None


def check_trainstats(opt, model_file: str) -> None:
    """The train stats TrainLoop will read must be JSON; else name the file and the remedy."""
    import json
    import os

    checkpoint = model_file + '.checkpoint'
    resuming = opt.get('load_from_checkpoint') and os.path.exists(checkpoint)
    stats_file = (checkpoint if resuming else model_file) + '.trainstats'
    if not os.path.isfile(stats_file):
        return
    try:
        with open(stats_file, encoding='utf-8') as handle:
            json.load(handle)
    except (ValueError, UnicodeDecodeError) as err:
        weights = checkpoint if resuming else model_file
        raise CorruptFileError(
            f'{stats_file}: cut or corrupt training statistics ({type(err).__name__}: {err}). '
            f'It holds the step, epoch and time counters that go with {weights}. Remedy: '
            'restore it from a copy; or delete it to continue from those weights with the '
            'counters at zero; or delete it with the other files of the run to start afresh.'
        ) from None


def mark_finished(stats_file: str) -> None:
    """Record in ``stats_file`` that the training ended with its final evaluation."""
    import json

    from parlai_ext import io

    with open(stats_file, encoding='utf-8') as handle:
        stats = json.load(handle)
    stats[FINISHED_KEY] = True
    io.atomic_write(stats_file, json.dumps(stats, indent=4))


def _release(lock, remove: bool) -> None:
    """Release ``lock`` (if any); with ``remove`` delete its file first, while still held."""
    import os

    if lock is None:
        return
    if remove and lock.acquired:
        with contextlib.suppress(OSError):
            os.remove(lock.path)
    lock.release()


def _files_with_prefixes(paths: list[str]) -> set[str]:
    import glob
    import os

    found = set()
    for path in paths:
        folder, name = os.path.split(os.path.abspath(path))
        found.update(glob.glob(os.path.join(glob.escape(folder), glob.escape(name) + '*')))
    return found


def _remove_new_files(before: set[str], paths: list[str], keep=None) -> None:
    """Remove the files a failed start created next to the model/dictionary (not the lock)."""
    import os

    lock_path = getattr(keep, 'path', None)
    for path in _files_with_prefixes(paths) - before:
        if path != lock_path and os.path.isfile(path):
            with contextlib.suppress(OSError):
                os.remove(path)
