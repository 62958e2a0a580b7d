"""SentencePiece dictionary for ParlAI (PLATO-2's 8K BPE vocabulary, or any .model file).

``--dict-class parlai_ext.sentencepiece_dict:SentencePieceDictionaryAgent``, or an agent whose
``dictionary_class()`` returns it. ParlAI 1.7.2 has no SentencePiece tokenizer (its
``--dict-tokenizer`` knows re/split/space/nltk/bpe/gpt2/bytelevelbpe). This
:class:`~parlai.core.dict.DictionaryAgent` subclass either trains a SentencePiece model on the
texts that ``parlai build_dict`` shows it (``act`` collects them, ``save`` trains) or wraps an
existing ``.model`` file (``--spm-model-file``).

Ids: the SentencePiece model *is* the vocabulary (``len(dict)`` = its piece count). A trained
model reserves ``__null__`` = 0 (SentencePiece's pad), ``__start__`` = 1 (bos), ``__end__`` = 2
(eos), ``__unk__`` = 3 (unk) and, by default, the control symbol ``__newln__`` = 4 that stands
for ``\\n`` (ParlAI's turn delimiter). A loaded model keeps its own ids: its pad/bos/eos/unk
pieces are renamed to ParlAI's tokens and those it lacks are appended after its last piece.
Tokens added later (``--person-tokens``, fp16 padding, agent special tokens) are appended too
and matched as whole tokens in the text.

Files: ``save(path)`` writes ``path`` (ParlAI's ``token<TAB>count`` listing, in id order, for
people and for the extra tokens), ``path.spm.model`` (the SentencePiece model; what ``load``
reads) and ``path.opt``. See ``docs/dictionary.md``.
"""

from __future__ import annotations

import io
import json
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sentencepiece as spm
from parlai.core.build_data import make_dir, modelzoo_path
from parlai.core.dict import DictionaryAgent, escape, unescape
from parlai.core.opt import Opt
from parlai.core.params import ParlaiParser
from parlai.utils import logging
from parlai.utils.io import PathManager

from parlai_ext.io import atomic_write

SPM_MODEL_SUFFIX = '.spm.model'
KNOVER_MASK_TOKEN = '[MASK]'
DEFAULT_NEWLINE_TOKEN = '__newln__'
NORMALIZATION_RULES = ('nmt_nfkc', 'nfkc', 'nmt_nfkc_cf', 'nfkc_cf', 'identity')
_NEWLINE = '\n'  # how vec2txt writes the newline id (a str: the tables must pickle)
_BPE_TOKENIZERS = ('bpe', 'gpt2', 'bytelevelbpe', 'slow_bytelevel_bpe')
_BATCH_MIN = 32  # from this many texts on, one SentencePiece list call beats a loop


@dataclass
class _SpmState:
    """Everything derived from one SentencePiece model, shared by reference between copies.

    ``render`` maps the ids that are not plain SentencePiece text (ParlAI's special tokens,
    control pieces, appended tokens) to what ``vec2txt`` writes for them.
    """

    model_bytes: bytes
    processor: spm.SentencePieceProcessor
    n_pieces: int
    newline_id: int | None = None
    render: dict[int, str] = field(default_factory=dict)
    atomic: list[str] = field(default_factory=list)  # appended tokens, matched whole in text
    atomic_re: re.Pattern | None = None
    from_model_file: bool = False

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state['processor'] = None  # rebuilt from model_bytes (pickling for worker processes)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.processor = _processor(self.model_bytes)


def _processor(model_bytes: bytes) -> spm.SentencePieceProcessor:
    # one thread: ParlAI encodes one short text at a time; a pool only adds overhead
    return spm.SentencePieceProcessor(model_proto=model_bytes, num_threads=1)


def _encode_plain(processor: spm.SentencePieceProcessor, texts: list[str]) -> list[list[int]]:
    # SentencePiece's list call costs ~35 us of set-up (a thread pool), so it only pays off
    # for large batches; a few lines (a dialogue context) go one call each
    if len(texts) >= _BATCH_MIN:
        return processor.encode(texts)
    return [processor.encode(text) for text in texts]


class SentencePieceDictionaryAgent(DictionaryAgent):
    """ParlAI dictionary backed by a SentencePiece model (trained here or loaded).

    Train one on a task, then use it (stock ParlAI scripts)::

        parlai build_dict -t ext_demo --dict-file /tmp/spm.dict \\
            --dict-class parlai_ext.sentencepiece_dict:SentencePieceDictionaryAgent \\
            --spm-vocab-size 200
    """

    @classmethod
    def add_cmdline_args(cls, parser: ParlaiParser, partial_opt: Opt | None = None) -> ParlaiParser:
        """ParlAI's dictionary options plus the ``--spm-*`` ones."""
        super().add_cmdline_args(parser, partial_opt=partial_opt)
        group = parser.add_argument_group('SentencePiece Dictionary Arguments')
        group.add_argument(
            '--spm-vocab-size',
            type=int,
            default=8000,
            help='pieces in the trained model, special tokens included (= len(dict))',
        )
        group.add_argument(
            '--spm-model-type',
            choices=['bpe', 'unigram'],
            default='bpe',
            help='SentencePiece training algorithm (PLATO-2: bpe)',
        )
        group.add_argument(
            '--spm-character-coverage',
            type=float,
            default=0.9995,
            help='share of characters the model covers; the rarest others become __unk__ '
            '(1.0 keeps every character seen)',
        )
        group.add_argument(
            '--spm-model-file',
            default=None,
            help='use this existing SentencePiece .model instead of training one',
        )
        group.add_argument(
            '--spm-newline-token',
            default=DEFAULT_NEWLINE_TOKEN,
            help='piece standing for "\\n" (a control symbol of trained models); '
            'empty: newlines are whitespace',
        )
        group.add_argument(
            '--spm-normalization',
            choices=list(NORMALIZATION_RULES),
            default='nmt_nfkc',
            help='SentencePiece normalisation rule of a trained model',
        )
        group.add_argument(
            '--spm-byte-fallback',
            type='bool',
            default=False,
            help='encode unknown characters as UTF-8 byte pieces (needs 256 more pieces)',
        )
        group.add_argument(
            '--spm-input-sentence-size',
            type=int,
            default=0,
            help='train on a sample of this many lines (0: all), drawn with --spm-seed',
        )
        group.add_argument(
            '--spm-seed', type=int, default=0, help='seed of the --spm-input-sentence-size sample'
        )
        group.add_argument(
            '--spm-knover-ids',
            type='bool',
            default=False,
            help="Knover's ids for a loaded model without a pad piece (PLATO-2's spm.model): "
            '[MASK] = the first id after the pieces (8000), then __null__ (8001)',
        )
        group.add_argument(
            '--spm-num-threads',
            type=int,
            default=1,
            help='training threads; the model depends on it (unigram), keep it fixed',
        )
        return parser

    def __init__(self, opt: Opt, shared: dict | None = None) -> None:
        if opt.get('dict_tokenizer') in _BPE_TOKENIZERS:
            raise ValueError(
                f'--dict-tokenizer {opt["dict_tokenizer"]} cannot be combined with '
                'SentencePieceDictionaryAgent: SentencePiece is the tokenizer'
            )
        self._spm: _SpmState | None = None
        self._texts: list[str] = []
        # ParlAI's __init__ adds the special tokens and calls self.load(dict_file) if it exists
        super().__init__(opt, shared)
        self.tokenizer = 'spm'
        self.tokenizer_fun = self.spm_tokenize
        if shared:
            self._spm = shared['spm_state']
            self.additional_special_tokens = shared.get('additional_special_tokens', [])
        elif self._spm is None and opt.get('spm_model_file'):
            path = modelzoo_path(opt.get('datapath'), opt['spm_model_file'])
            with PathManager.open(path, 'rb') as handle:
                self._install(handle.read())
            self._spm.from_model_file = True
            logging.info(f'SentencePiece model {path}: {len(self)} tokens')
        self._unk_token_idx = self.tok2ind.get(self.unk_token)

    # --- the SentencePiece model -----------------------------------------------------------
    @property
    def spm_processor(self) -> spm.SentencePieceProcessor:
        """The underlying :class:`sentencepiece.SentencePieceProcessor` (trained/loaded)."""
        return self._state().processor

    def _state(self) -> _SpmState:
        if self._spm is None:
            raise RuntimeError(
                'the SentencePiece dictionary has no model yet: build it with '
                '`parlai build_dict` (it trains on the observed texts in save()), '
                'or give --spm-model-file'
            )
        return self._spm

    def _install(self, model_bytes: bytes) -> None:
        """Make ``model_bytes`` the vocabulary: ids, ParlAI names of the special pieces."""
        sp = _processor(model_bytes)
        n_pieces = sp.get_piece_size()
        state = _SpmState(model_bytes=model_bytes, processor=sp, n_pieces=n_pieces)
        ind2tok = {i: sp.id_to_piece(i) for i in range(n_pieces)}
        for i in range(n_pieces):
            if sp.is_control(i):
                state.render[i] = ind2tok[i]
        roles = [
            (self.null_token, sp.pad_id()),
            (self.start_token, sp.bos_id()),
            (self.end_token, sp.eos_id()),
            (self.unk_token, sp.unk_id()),
        ]
        missing = []
        for token, index in roles:
            if not token:
                continue
            if index < 0:
                missing.append(token)
            else:
                ind2tok[index] = token
                state.render[index] = token
        tok2ind = {tok: i for i, tok in ind2tok.items()}
        for token, index in roles:  # ParlAI's names win over a same-named ordinary piece
            if token and index >= 0:
                tok2ind[token] = index
        self.tok2ind, self.ind2tok = tok2ind, ind2tok
        self._spm = state
        if self.opt.get('spm_knover_ids') and KNOVER_MASK_TOKEN not in self.tok2ind:
            self.add_token(KNOVER_MASK_TOKEN)  # Knover's [MASK] = n_pieces, before padding
        for token in missing:  # e.g. a released model without a pad piece: appended
            self.add_token(token)
        newline = self.opt.get('spm_newline_token', DEFAULT_NEWLINE_TOKEN)
        if newline and newline in self.tok2ind:
            state.newline_id = self.tok2ind[newline]
            state.render[state.newline_id] = _NEWLINE
        for token in tok2ind:
            self.freq.setdefault(token, 0)

    def add_token(self, word: str) -> None:
        """Add a token; after the model exists it gets the next id and is matched whole."""
        if self._spm is None or word in self.tok2ind:
            super().add_token(word)
            return
        super().add_token(word)
        state = self._spm
        state.render[self.tok2ind[word]] = word
        state.atomic.append(word)
        # longest first, so that '__p10__' is not read as '__p1__' + '0__'
        alternatives = sorted(state.atomic, key=lambda tok: (-len(tok), tok))
        state.atomic_re = re.compile('(' + '|'.join(map(re.escape, alternatives)) + ')')

    def add_additional_special_tokens(self, additional_special_tokens: list[str]) -> None:
        """Agent special tokens: appended ids, matched whole in the text (cf. ParlAI's re)."""
        self.additional_special_tokens = list(additional_special_tokens)
        for i, token in enumerate(self.additional_special_tokens):
            self.add_token(token)
            self.freq[token] = 1000000000 + 4 + i

    def is_prebuilt(self) -> bool:
        """True with ``--spm-model-file``: nothing to learn from the data."""
        return self._spm is not None and self._spm.from_model_file

    # --- building: collect texts, train in save() --------------------------------------------
    def act(self) -> dict:
        """During ``build_dict``: keep the observation's texts (one line each) for training."""
        if self._spm is not None:  # the vocabulary is fixed
            return {'id': 'Dictionary'}
        for textfield in self.textfields:
            source = self.observation.get(textfield)
            if source is None:
                continue
            for text in [source] if isinstance(source, str) else source:
                if not text:
                    continue
                if self.lower:
                    text = text.lower()
                self._texts.extend(line for line in text.split('\n') if line.strip())
        return {'id': 'Dictionary'}

    def train_spm(self, texts: list[str] | None = None) -> None:
        """Train the SentencePiece model on ``texts`` (default: what ``act`` collected).

        Deterministic: the same lines in the same order with the same options give a
        byte-identical model (one thread by default; the only sampling, with
        ``--spm-input-sentence-size``, is ours and seeded by ``--spm-seed``).
        """
        texts = self._texts if texts is None else texts
        if not texts:
            raise RuntimeError(
                'SentencePieceDictionaryAgent: no text to train on (was build_dict run on '
                'a task with text?); or give --spm-model-file'
            )
        if not self.unk_token:
            raise ValueError('SentencePiece needs an unknown token (--dict-unktoken)')
        opt = self.opt
        roles = [
            ('pad', self.null_token),
            ('bos', self.start_token),
            ('eos', self.end_token),
            ('unk', self.unk_token),
        ]
        kwargs: dict[str, Any] = {}
        next_id = 0
        for role, token in roles:
            if token:
                kwargs[f'{role}_id'], kwargs[f'{role}_piece'] = next_id, token
                next_id += 1
            else:
                kwargs[f'{role}_id'] = -1
        newline = opt.get('spm_newline_token', DEFAULT_NEWLINE_TOKEN)
        if newline in (self.null_token, self.start_token, self.end_token, self.unk_token):
            newline = None  # e.g. '__end__': newlines reuse that special piece
        sample_size = opt.get('spm_input_sentence_size', 0)
        if 0 < sample_size < len(texts):
            # our own seeded sample, in corpus order: SentencePiece's sampler ignores
            # set_random_generator_seed and differs from one process to the next
            keep = random.Random(opt.get('spm_seed', 0)).sample(range(len(texts)), sample_size)
            texts = [texts[i] for i in sorted(keep)]
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=writer,
                vocab_size=opt.get('spm_vocab_size', 8000),
                model_type=opt.get('spm_model_type', 'bpe'),
                character_coverage=opt.get('spm_character_coverage', 0.9995),
                normalization_rule_name=opt.get('spm_normalization', 'nmt_nfkc'),
                byte_fallback=bool(opt.get('spm_byte_fallback', False)),
                control_symbols=[newline] if newline else [],
                num_threads=opt.get('spm_num_threads', 1),
                input_sentence_size=0,
                shuffle_input_sentence=False,
                minloglevel=1,
                **kwargs,
            )
        except RuntimeError as err:
            raise RuntimeError(
                f'SentencePiece training on {len(texts)} lines failed: {err} '
                '(lower --spm-vocab-size for a small corpus)'
            ) from err
        self._install(writer.getvalue())
        self._texts = []
        self._unk_token_idx = self.tok2ind.get(self.unk_token)
        logging.info(f'trained a SentencePiece {opt.get("spm_model_type", "bpe")} model')

    # --- save / load ---------------------------------------------------------------------
    def save(self, filename: str | None = None, append: bool = False, sort: bool = True) -> None:
        """Write ``filename`` (token listing), ``filename.spm.model`` and ``filename.opt``.

        Trains the model first if ``build_dict`` just collected the texts. ``sort`` and
        ``append`` are ignored: the ids are those of the SentencePiece model. Each file is
        written atomically (a kill during a save leaves the old file or the new one), and a
        file whose content is unchanged is not rewritten (agents save their dictionary with
        every checkpoint).
        """
        filename = self.opt['dict_file'] if filename is None else filename
        if self._spm is None:
            self.train_spm()
        state = self._state()
        make_dir(os.path.dirname(filename))
        logging.info(f'Saving SentencePiece dictionary to {filename}')
        atomic_write(filename + SPM_MODEL_SUFFIX, state.model_bytes)
        lines = [
            f'{escape(self.ind2tok[i])}\t{self.freq.get(self.ind2tok[i], 0)}\n'
            for i in range(len(self.ind2tok))
        ]
        atomic_write(filename, ''.join(lines))
        atomic_write(filename + '.opt', json.dumps(self.opt, indent=4))

    def load(self, filename: str) -> None:
        """Load a dictionary saved by :meth:`save` (needs ``filename.spm.model`` beside it)."""
        model_path = filename + SPM_MODEL_SUFFIX
        if not PathManager.exists(model_path):
            raise FileNotFoundError(
                f'{model_path} not found: {filename} was not saved by '
                'SentencePieceDictionaryAgent (its SentencePiece model travels next to it)'
            )
        logging.info(f'loading SentencePiece dictionary from {filename}')
        with PathManager.open(model_path, 'rb') as handle:
            self._install(handle.read())
        with PathManager.open(filename, 'r', encoding='utf-8') as handle:
            rows = [line.rstrip('\n\r').split('\t') for line in handle]
        tokens = [unescape(row[0]) for row in rows]
        expected = [self.ind2tok[i] for i in range(len(self.ind2tok))]
        if len(tokens) < len(expected) and tokens == expected[: len(tokens)]:
            raise ValueError(
                f'{filename}: lists {len(tokens)} of the {len(expected)} pieces of {model_path} '
                '(cut by an interrupted save of an older version). Remedy: restore it from a '
                'copy of the run; it is the token listing of that model, one piece a line'
            )
        if tokens[: len(expected)] != expected:
            raise ValueError(
                f'{filename} does not list the pieces of {model_path} (mismatched files, '
                'or different --dict-*token options)'
            )
        for token in tokens[len(expected) :]:  # tokens appended after the model
            self.add_token(token)
        for token, row in zip(tokens, rows):
            if len(row) > 1 and row[1]:
                self.freq[token] = int(row[1])

    def sort(self, trim: bool = True) -> list[tuple[str, int]]:
        """No-op: ids are fixed by the SentencePiece model. Returns (token, count) by id."""
        return [(self.ind2tok[i], self.freq.get(self.ind2tok[i], 0)) for i in range(len(self))]

    def share(self) -> dict:
        """Share the model and id tables (by reference) with copies of this dictionary."""
        shared = super().share()
        shared['spm_state'] = self._spm
        shared['additional_special_tokens'] = getattr(self, 'additional_special_tokens', [])
        return shared

    # --- encoding / decoding -----------------------------------------------------------------
    def _chunks(self, text: str) -> list:
        """Split text at appended tokens and newlines: str pieces and token ids."""
        state = self._spm
        parts: list = []
        pieces = state.atomic_re.split(text) if state.atomic_re is not None else [text]
        for k, piece in enumerate(pieces):
            if k % 2:  # an appended token (a capture of atomic_re)
                parts.append(self.tok2ind[piece])
            elif state.newline_id is not None and '\n' in piece:
                for j, line in enumerate(piece.split('\n')):
                    if j:
                        parts.append(state.newline_id)
                    if line:
                        parts.append(line)
            elif piece:
                parts.append(piece)
        return parts

    def _encode_many(self, texts: list[str]) -> list[list[int]]:
        """Encode texts with one SentencePiece call over all their plain-text pieces."""
        state = self._state()
        if self.lower:
            texts = [text.lower() for text in texts]
        simple = state.atomic_re is None and (
            state.newline_id is None or not any('\n' in text for text in texts)
        )
        if simple:
            return _encode_plain(state.processor, texts)
        chunked = [self._chunks(text) for text in texts]
        plain = [part for parts in chunked for part in parts if isinstance(part, str)]
        encoded = iter(_encode_plain(state.processor, plain))
        out = []
        for parts in chunked:
            ids: list[int] = []
            for part in parts:
                if isinstance(part, str):
                    ids.extend(next(encoded))
                else:
                    ids.append(part)
            out.append(ids)
        return out

    def _encode(self, text: str) -> list[int]:
        state = self._state()
        if state.atomic_re is None and (state.newline_id is None or '\n' not in text):
            # the hot path: one C++ call
            return state.processor.encode(text.lower() if self.lower else text)
        return self._encode_many([text])[0]

    def spm_tokenize(self, text: str, building: bool = False) -> list[str]:
        """Pieces of ``text`` (as in ``tok2ind``; specials under ParlAI's names)."""
        return [self.ind2tok[i] for i in self._encode(text)]

    def tokenize(self, text: str, building: bool = False) -> list[str]:
        """SentencePiece pieces of ``text`` (lower-cased first with ``--dict-lower``)."""
        return self.spm_tokenize(text, building)

    def txt2vec(self, text: str, vec_type: type = list):
        """Ids of ``text``: one SentencePiece call unless it has newlines or appended tokens."""
        assert isinstance(text, str), f'Input to txt2vec must be string, not {type(text)}'
        ids = self._encode(text)
        if vec_type is list:
            return ids
        if vec_type in (tuple, set):
            return vec_type(ids)
        if vec_type is np.ndarray:
            return np.asarray(ids, dtype=np.int64)
        raise RuntimeError(f'Type {vec_type} not supported by dict')

    def txt2vec_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of many texts in one SentencePiece call (for batch preprocessing)."""
        return self._encode_many(list(texts))

    @staticmethod
    def _as_ids(vector) -> list[int]:
        if hasattr(vector, 'tolist'):  # tensors, numpy arrays
            ids = vector.tolist()
            return ids if isinstance(ids, list) else [ids]
        return [int(i) for i in vector]  # e.g. a list of 0-d tensors (TorchAgent._v2t)

    def _decode(self, ids: list[int], delimiter: str) -> str:
        state = self._state()
        n_pieces, render = state.n_pieces, state.render
        if not ids:
            return ''
        if render.keys().isdisjoint(ids) and min(ids) >= 0 and max(ids) < n_pieces:
            return state.processor.decode(ids)  # the hot path: one C++ call
        chunks: list = []
        run: list[int] = []
        for i in ids:
            if 0 <= i < n_pieces and i not in render:
                run.append(i)
                continue
            if run:
                chunks.append(state.processor.decode(run))
                run = []
            chunks.append(render.get(i, self.unk_token) if 0 <= i < len(self) else self.unk_token)
        if run:
            chunks.append(state.processor.decode(run))
        out: list[str] = []
        previous = _NEWLINE
        for chunk in chunks:
            if chunk == _NEWLINE:
                out.append('\n')
            elif chunk:
                if previous != _NEWLINE:
                    out.append(delimiter)
                out.append(chunk)
            else:
                continue
            previous = chunk
        return ''.join(out)

    def vec2txt(self, vector, delimiter: str = ' ') -> str:
        """Text of ids; special/appended tokens are written by name, separated by ``delimiter``."""
        return self._decode(self._as_ids(vector), delimiter)

    def vec2txt_batch(self, vectors, delimiter: str = ' ') -> list[str]:
        """Texts of many id vectors (one SentencePiece call when none has special tokens)."""
        state = self._state()
        batch = [self._as_ids(vector) for vector in vectors]
        plain = all(
            state.render.keys().isdisjoint(ids) and (not ids or max(ids) < state.n_pieces)
            for ids in batch
        )
        if plain and len(batch) >= _BATCH_MIN and all(not ids or min(ids) >= 0 for ids in batch):
            return state.processor.decode(batch)
        return [self._decode(ids, delimiter) for ids in batch]
