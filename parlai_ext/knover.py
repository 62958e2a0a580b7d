"""Knover (PaddlePaddle) PLATO-2 parameter files, read without PaddlePaddle, and renamed to ours.

The released PLATO-2 models (``24L.tar``, ``32L.tar``) unpack to ``<size>/Plato/`` (the
stage-2.1 generator) and ``<size>/NSP/`` (the stage-2.2 evaluation model), directories written
by Paddle 1.x ``fluid.io.save_params`` / ``save_persistables``. The formats read here:

**One file per variable** (``save_params``, ``save_persistables``, ``save_vars`` without
``filename``; also Paddle 2.x ``paddle.static.save_vars``). The file is named after the
variable (e.g. ``encoder_layer_0_ffn_fc_0.w_0``) and holds one serialised LoDTensor,
little-endian::

    uint32  LoDTensor version, 0
    uint64  number of LoD levels n (0 for parameters)
    n x     (uint64 byte size s, then s bytes of uint64 offsets)
    uint32  Tensor version, 0
    int32   size d of the TensorDesc
    d bytes TensorDesc protobuf (framework.proto, proto2):
              field 1 (varint)  data_type: BOOL 0, INT16 1, INT32 2, INT64 3, FP16 4,
                                 FP32 5, FP64 6, UINT8 20, INT8 21, BF16 22
              field 2 (varint, repeated, packed or not) dims
    raw     the elements, C order

**Combined file** (``save_vars(..., filename=F)``, op ``save_combine``): the same records back
to back, variables in sorted name order; the names are not stored, so the reader needs them.

**``.pdparams``** (Paddle 1.8 ``fluid.save``, Paddle 2.x ``paddle.save`` of a state dict): a
pickle of ``{name: numpy.ndarray}``. It is read with an unpickler that only accepts numpy's
array reconstruction (no arbitrary code); Paddle 2.x's bookkeeping key
``StructuredToParameterName@@`` is dropped.

:func:`convert_plato` / :func:`convert_nsp` map a Knover parameter dict to a state dict in
the naming of our ``plato2`` / ``plato2_evaluator`` models (``docs/knover.md`` is the spec).
The keys of Knover's LM head (fc -> GELU -> LayerNorm -> tied embeddings + bias) are listed in
:data:`KNOVER_LM_HEAD_KEYS`; they load into models built with ``--lm-head knover``, which
``parlai convert_knover`` sets.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

# --- reading ----------------------------------------------------------------------------------
_DTYPES = {
    0: np.dtype('bool'),
    1: np.dtype('<i2'),
    2: np.dtype('<i4'),
    3: np.dtype('<i8'),
    4: np.dtype('<f2'),
    5: np.dtype('<f4'),
    6: np.dtype('<f8'),
    20: np.dtype('u1'),
    21: np.dtype('i1'),
    22: np.dtype('<u2'),  # BF16: stored as the upper 16 bits of a float32
}
_BF16 = 22
_CODES = {np.dtype('<f4'): 5, np.dtype('<f8'): 6, np.dtype('<f2'): 4, np.dtype('<i8'): 3,
          np.dtype('<i4'): 2}  # fmt: skip


class KnoverFormatError(ValueError):
    """A parameter file that is not in the format described in this module."""


def _read_exact(stream: BinaryIO, size: int, where: str, what: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise KnoverFormatError(
            f'{where}: file ends inside {what} ({len(data)} of {size} bytes); '
            'expected a Paddle LoDTensor record'
        )
    return data


def _varint(buf: bytes, pos: int, where: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise KnoverFormatError(f'{where}: truncated varint in the TensorDesc')
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _parse_tensor_desc(buf: bytes, where: str) -> tuple[int, list[int]]:
    """``(data_type, dims)`` from the TensorDesc protobuf (fields 1 and 2 only)."""
    data_type, dims, pos = None, [], 0
    while pos < len(buf):
        key, pos = _varint(buf, pos, where)
        field, wire = key >> 3, key & 7
        if field == 1 and wire == 0:
            data_type, pos = _varint(buf, pos, where)
        elif field == 2 and wire == 0:
            dim, pos = _varint(buf, pos, where)
            dims.append(dim - (1 << 64) if dim >= 1 << 63 else dim)
        elif field == 2 and wire == 2:  # packed
            size, pos = _varint(buf, pos, where)
            end = pos + size
            while pos < end:
                dim, pos = _varint(buf, pos, where)
                dims.append(dim - (1 << 64) if dim >= 1 << 63 else dim)
        else:
            raise KnoverFormatError(
                f'{where}: unexpected TensorDesc field {field} (wire type {wire}); '
                'expected data_type (1) and dims (2)'
            )
    if data_type is None:
        raise KnoverFormatError(f'{where}: TensorDesc without data_type')
    return data_type, dims


def read_tensor(stream: BinaryIO, where: str = '<stream>') -> np.ndarray:
    """One serialised LoDTensor record from ``stream`` (see the module docstring)."""
    (version,) = struct.unpack('<I', _read_exact(stream, 4, where, 'the LoDTensor version'))
    if version != 0:
        raise KnoverFormatError(f'{where}: LoDTensor version {version}, expected 0')
    (levels,) = struct.unpack('<Q', _read_exact(stream, 8, where, 'the LoD level count'))
    if levels > 16:
        raise KnoverFormatError(f'{where}: {levels} LoD levels; expected a parameter (0)')
    for _ in range(levels):
        (size,) = struct.unpack('<Q', _read_exact(stream, 8, where, 'a LoD level size'))
        _read_exact(stream, size, where, 'a LoD level')
    (version,) = struct.unpack('<I', _read_exact(stream, 4, where, 'the Tensor version'))
    if version != 0:
        raise KnoverFormatError(f'{where}: Tensor version {version}, expected 0')
    (desc_size,) = struct.unpack('<i', _read_exact(stream, 4, where, 'the TensorDesc size'))
    if not 0 < desc_size < 1 << 16:
        raise KnoverFormatError(f'{where}: TensorDesc size {desc_size}; expected 1..65535')
    data_type, dims = _parse_tensor_desc(
        _read_exact(stream, desc_size, where, 'the TensorDesc'), where
    )
    if data_type not in _DTYPES:
        raise KnoverFormatError(
            f'{where}: data type {data_type} not supported; expected one of {sorted(_DTYPES)}'
        )
    if any(d < 0 for d in dims):
        raise KnoverFormatError(f'{where}: negative dimension in {dims}')
    dtype = _DTYPES[data_type]
    count = int(np.prod(dims)) if dims else 1
    raw = _read_exact(stream, count * dtype.itemsize, where, f'the {dims} elements')
    array = np.frombuffer(raw, dtype=dtype).reshape(dims)
    if data_type == _BF16:
        array = (array.astype('<u4') << 16).view('<f4')
    return array.copy()


def read_param_file(path: str) -> np.ndarray:
    """One variable file; the whole file must be one record."""
    with open(path, 'rb') as stream:
        array = read_tensor(stream, path)
        if stream.read(1):
            raise KnoverFormatError(
                f'{path}: bytes left after the tensor; expected one variable per file '
                '(a combined file needs read_combined with its variable names)'
            )
    return array


def read_param_dir(path: str) -> dict[str, np.ndarray]:
    """A ``save_params`` / ``save_persistables`` directory: ``{file name: array}``.

    Sub-directories and files that start with ``__`` (``__model__``, ``__params__``) are
    skipped.
    """
    if not os.path.isdir(path):
        raise KnoverFormatError(f'{path}: not a directory; expected a Knover parameter directory')
    params = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if name.startswith('__') or not os.path.isfile(full):
            continue
        params[name] = read_param_file(full)
    if not params:
        raise KnoverFormatError(f'{path}: no parameter files; expected e.g. word_embedding')
    return params


def read_combined(path: str, names: Iterable[str]) -> dict[str, np.ndarray]:
    """A ``save_combine`` file; ``names`` are its variables (stored in sorted order)."""
    names = sorted(names)
    params = {}
    with open(path, 'rb') as stream:
        for name in names:
            params[name] = read_tensor(stream, f'{path} [{name}]')
        if stream.read(1):
            raise KnoverFormatError(
                f'{path}: more records than the {len(names)} names given; expected exactly them'
            )
    return params


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and plain containers) and nothing else."""

    _ALLOWED = {
        ('numpy.core.multiarray', '_reconstruct'),
        ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'),
        ('numpy._core.multiarray', 'scalar'),
        ('numpy.core.numeric', '_frombuffer'),
        ('numpy._core.numeric', '_frombuffer'),
        ('numpy', 'ndarray'),
        ('numpy', 'dtype'),
        ('_codecs', 'encode'),
        ('collections', 'OrderedDict'),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f'{module}.{name} is not allowed in a parameter pickle; expected numpy arrays'
            )
        if module.startswith('numpy.core'):  # numpy >= 2 keeps these under numpy._core
            try:
                return super().find_class(module.replace('numpy.core', 'numpy._core', 1), name)
            except (ImportError, AttributeError):
                pass
        return super().find_class(module, name)


def read_pdparams(path: str) -> dict[str, np.ndarray]:
    """A ``.pdparams`` pickle ``{name: ndarray}`` (Paddle 1.8 ``fluid.save``, 2.x ``paddle.save``)."""
    with open(path, 'rb') as handle:
        try:
            data = _NumpyOnlyUnpickler(io.BytesIO(handle.read())).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as error:
            raise KnoverFormatError(f'{path}: {error}') from None
    if not isinstance(data, dict):
        raise KnoverFormatError(f'{path}: a pickled {type(data).__name__}; expected a dict')
    data.pop('StructuredToParameterName@@', None)
    if 'UnpackBigParamInfor@@' in data:
        raise KnoverFormatError(
            f'{path}: parameters split into slices (UnpackBigParamInfor@@) are not supported; '
            'expected whole arrays'
        )
    params = {}
    for name, value in data.items():
        if not isinstance(value, np.ndarray):
            raise KnoverFormatError(f'{path}: {name} is a {type(value).__name__}; expected ndarray')
        params[name] = value
    return params


def load_knover_params(path: str) -> dict[str, np.ndarray]:
    """A directory of variable files, or a ``.pdparams`` pickle."""
    if os.path.isdir(path):
        return read_param_dir(path)
    if path.endswith('.pdparams'):
        return read_pdparams(path)
    raise KnoverFormatError(
        f'{path}: expected a Knover parameter directory (24L/Plato, 24L/NSP) or a .pdparams file'
    )


# --- writing (tests, hand-made files) -----------------------------------------------------------
def _encode_varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def serialize_tensor(array: np.ndarray) -> bytes:
    """The LoDTensor record of ``array`` (what Paddle writes; unpacked dims as Paddle 1.8)."""
    array = np.ascontiguousarray(array)
    dtype = array.dtype.newbyteorder('<') if array.dtype.byteorder == '>' else array.dtype
    if dtype not in _CODES:
        raise ValueError(f'dtype {array.dtype} not supported; expected one of {list(_CODES)}')
    desc = b'\x08' + _encode_varint(_CODES[dtype])
    for dim in array.shape:
        desc += b'\x10' + _encode_varint(dim)
    header = struct.pack('<IQIi', 0, 0, 0, len(desc))
    return header + desc + array.astype(dtype).tobytes()


def write_param_dir(path: str, params: dict[str, np.ndarray]) -> None:
    """One file per variable, each written atomically (temporary file + ``os.replace``)."""
    os.makedirs(path, exist_ok=True)
    for name, array in params.items():
        target = os.path.join(path, name)
        tmp = target + '.tmp'
        with open(tmp, 'wb') as handle:
            handle.write(serialize_tensor(array))
        os.replace(tmp, target)


# --- renaming to our models ---------------------------------------------------------------------
# Keys of Knover's LM / MLM head (fc -> GELU -> LayerNorm -> tied embeddings + bias): our models
# have them only with --lm-head knover (docs/knover.md).
KNOVER_LM_HEAD_KEYS = (
    'lm_transform.0.weight',
    'lm_transform.0.bias',
    'lm_transform.2.weight',
    'lm_transform.2.bias',
    'lm_bias',
)
# optimizer state and counters that save_persistables checkpoints hold next to the parameters
_IGNORED = re.compile(r'(_moment[12]_\d+|_beta[12]_pow_acc_\d+|^learning_rate_\d+|@.*|^tmp_\d+)$')
PAD_LOGIT = -1e4  # output bias of the appended padding row: exp(-1e4) == 0 in float32


@dataclass
class KnoverConfig:
    """The architecture a Knover parameter dict implies (``24L.json``/``32L.json`` fields)."""

    n_layers: int
    hidden_size: int
    ffn_size: int
    vocab_size: int  # Knover's, [MASK] included (8001)
    n_positions: int
    n_types: int
    n_latent: int | None  # None for the NSP model

    @property
    def mask_id(self) -> int:
        """Knover's [MASK] is the last id (8000 of 8001)."""
        return self.vocab_size - 1


def infer_config(params: dict[str, np.ndarray], where: str = '<params>') -> KnoverConfig:
    """Sizes from the parameter shapes; the number of heads is not stored (16 for 24L, 32
    for 32L: ``num_attention_heads`` of the json config)."""
    for name in ('word_embedding', 'pos_embedding', 'sent_embedding'):
        if name not in params:
            raise KnoverFormatError(f'{where}: no {name}; expected a Knover PLATO-2 / NSP model')
    layers = {int(m.group(1)) for k in params if (m := re.match(r'encoder_layer_(\d+)_', k))}
    if not layers or layers != set(range(max(layers) + 1)):
        raise KnoverFormatError(f'{where}: encoder layers {sorted(layers)}; expected 0..n-1')
    vocab, hidden = params['word_embedding'].shape
    latent = params.get('latent_embedding')
    return KnoverConfig(
        n_layers=len(layers),
        hidden_size=hidden,
        ffn_size=params['encoder_layer_0_ffn_fc_0.w_0'].shape[1],
        vocab_size=vocab,
        n_positions=params['pos_embedding'].shape[0],
        n_types=params['sent_embedding'].shape[0],
        n_latent=None if latent is None else latent.shape[1],
    )


def _backbone(n_layers: int) -> dict[str, tuple[str, bool]]:
    """``our name -> (Knover name, transpose)`` for embeddings, blocks and the final norm.

    Paddle ``fc`` weights are ``[in, out]``; ``torch.nn.Linear`` keeps ``[out, in]``.
    """
    table = {
        'embeddings.tokens.weight': ('word_embedding', False),
        'embeddings.positions.weight': ('pos_embedding', False),
        'embeddings.types.weight': ('sent_embedding', False),
        'stack.final_norm.weight': ('post_encoder_layer_norm_scale', False),
        'stack.final_norm.bias': ('post_encoder_layer_norm_bias', False),
    }
    for i in range(n_layers):
        ours, theirs = f'stack.layers.{i}.', f'encoder_layer_{i}_'
        table.update({
            ours + 'norm_attention.weight': (theirs + 'pre_att_layer_norm_scale', False),
            ours + 'norm_attention.bias': (theirs + 'pre_att_layer_norm_bias', False),
            ours + 'attention.query.weight': (theirs + 'multi_head_att_query_fc.w_0', True),
            ours + 'attention.query.bias': (theirs + 'multi_head_att_query_fc.b_0', False),
            ours + 'attention.out.weight': (theirs + 'multi_head_att_output_fc.w_0', True),
            ours + 'attention.out.bias': (theirs + 'multi_head_att_output_fc.b_0', False),
            ours + 'norm_ffn.weight': (theirs + 'pre_ffn_layer_norm_scale', False),
            ours + 'norm_ffn.bias': (theirs + 'pre_ffn_layer_norm_bias', False),
            ours + 'ffn.fc_in.weight': (theirs + 'ffn_fc_0.w_0', True),
            ours + 'ffn.fc_in.bias': (theirs + 'ffn_fc_0.b_0', False),
            ours + 'ffn.fc_out.weight': (theirs + 'ffn_fc_1.w_0', True),
            ours + 'ffn.fc_out.bias': (theirs + 'ffn_fc_1.b_0', False),
        })  # fmt: skip
    return table


def _fused_key_value(n_layers: int) -> dict[str, tuple[str, str]]:
    """``our fused key_value Linear -> (Knover key fc, Knover value fc)``, concatenated
    along the output dimension (keys first, as ``MultiHeadAttention`` chunks them)."""
    table = {}
    for i in range(n_layers):
        theirs = f'encoder_layer_{i}_multi_head_att_'
        for kind in ('weight', 'bias'):
            suffix = 'w_0' if kind == 'weight' else 'b_0'
            table[f'stack.layers.{i}.attention.key_value.{kind}'] = (
                f'{theirs}key_fc.{suffix}',
                f'{theirs}value_fc.{suffix}',
            )
    return table


_LM_HEAD = {
    'lm_transform.0.weight': ('mask_lm_trans_fc.w_0', True),
    'lm_transform.0.bias': ('mask_lm_trans_fc.b_0', False),
    'lm_transform.2.weight': ('mask_lm_trans_layer_norm_scale', False),
    'lm_transform.2.bias': ('mask_lm_trans_layer_norm_bias', False),
    'lm_bias': ('mask_lm_out_fc.b_0', False),
}
_PLATO_EXTRA = {
    'recognition.weight': ('recognition_fc.w_0', True),
    'recognition.bias': ('recognition_fc.b_0', False),
    'recognition_bias': ('recognition_bias', False),
    'latent_embedding': ('latent_embedding', True),  # Knover [hidden, K] -> ours [K, hidden]
    'bow_transform.0.weight': ('bow_trans_fc.w_0', True),
    'bow_transform.0.bias': ('bow_trans_fc.b_0', False),
    'bow_transform.2.weight': ('bow_trans_layer_norm_scale', False),
    'bow_transform.2.bias': ('bow_trans_layer_norm_bias', False),
    'bow_bias': ('bow_out_fc.b_0', False),
}
_NSP_EXTRA = {
    'pooler.weight': ('pooled_fc.w_0', True),
    'pooler.bias': ('pooled_fc.b_0', False),
    'classifier.weight': ('next_sent_fc.w_0', True),
    'classifier.bias': ('next_sent_fc.b_0', False),
}
# output biases over the vocabulary: they get the padding entry too
_VOCAB_BIASES = ('lm_bias', 'bow_bias')


def _convert(
    params: dict[str, np.ndarray],
    extra: dict[str, tuple[str, bool]],
    where: str,
    pad_row: bool,
    prefix: str,
    mask_embedding: bool,
) -> tuple[dict[str, np.ndarray], KnoverConfig]:
    config = infer_config(params, where)
    table = {**_backbone(config.n_layers), **_LM_HEAD, **extra}
    fused = _fused_key_value(config.n_layers)
    used = {theirs for theirs, _ in table.values()} | {t for pair in fused.values() for t in pair}
    unknown = sorted(k for k in params if k not in used and not _IGNORED.search(k))
    if unknown:
        raise KnoverFormatError(
            f'{where}: parameters with no place in our model: {unknown[:8]}; expected only '
            'the names of docs/knover.md'
        )
    missing = sorted(t for t in used if t not in params)
    if missing:
        raise KnoverFormatError(f'{where}: missing parameters {missing[:8]}')
    ours: dict[str, np.ndarray] = {}
    for name, (theirs, transpose) in table.items():
        value = np.asarray(params[theirs], dtype=np.float32)
        ours[name] = np.ascontiguousarray(value.T if transpose else value)
    for name, (key, value) in fused.items():  # ours: one Linear for keys then values
        transpose = name.endswith('weight')
        parts = [np.asarray(params[t], dtype=np.float32) for t in (key, value)]
        ours[name] = np.concatenate([p.T if transpose else p for p in parts], axis=0)
    if mask_embedding:  # recognition / masked-LM input: Knover looks up the [MASK] word vector
        ours['mask_embedding'] = ours['embeddings.tokens.weight'][config.mask_id].copy()
    if pad_row:  # our padding token: an extra id after [MASK], never produced, never attended
        hidden = config.hidden_size
        tokens = ours['embeddings.tokens.weight']
        ours['embeddings.tokens.weight'] = np.concatenate([tokens, np.zeros((1, hidden), 'f4')])
        for name in _VOCAB_BIASES:
            if name in ours:
                ours[name] = np.concatenate([ours[name], np.array([PAD_LOGIT], 'f4')])
    return {prefix + k: v for k, v in ours.items()}, config


def convert_plato(
    params: dict[str, np.ndarray],
    where: str = '<Plato>',
    pad_row: bool = True,
    prefix: str = 'transformer.',
    mask_embedding: bool = True,
) -> tuple[dict[str, np.ndarray], KnoverConfig]:
    """Knover ``Plato`` parameters -> our ``plato2`` state dict (numpy), and the sizes.

    ``pad_row`` appends our padding id after Knover's 8001 (a zero embedding; ``PAD_LOGIT`` in
    the output biases), because Knover's own padding id 0 is also its ``<unk>``. The keys in
    :data:`KNOVER_LM_HEAD_KEYS` need ``--lm-head knover`` (docs/knover.md).
    ``mask_embedding=False`` leaves out ``mask_embedding`` (a copy of the [MASK] word vector)
    for models whose [M] slot reads the token table itself (the mask-token switch).
    """
    if 'latent_embedding' not in params:
        raise KnoverFormatError(f'{where}: no latent_embedding; expected the Plato model')
    return _convert(params, _PLATO_EXTRA, where, pad_row, prefix, mask_embedding)


def convert_nsp(
    params: dict[str, np.ndarray],
    where: str = '<NSP>',
    pad_row: bool = True,
    prefix: str = 'transformer.',
    mask_embedding: bool = True,
) -> tuple[dict[str, np.ndarray], KnoverConfig]:
    """Knover ``NSPModel`` parameters -> our ``plato2_evaluator`` state dict (numpy).

    There is no ``cls_embedding``: Knover's [CLS] is the token id 1 at position 0 of the
    context (the evaluator's [CLS]-token switch of docs/knover.md).
    """
    if 'next_sent_fc.w_0' not in params:
        raise KnoverFormatError(f'{where}: no next_sent_fc.w_0; expected the NSP model')
    return _convert(params, _NSP_EXTRA, where, pad_row, prefix, mask_embedding)
