"""The Hugging Face tokenizer as a ParlAI dictionary (:class:`HfDictionaryAgent`).

Kept apart from :mod:`parlai_ext.agents.hf` because its base class,
``parlai.agents.hugging_face.dict.HuggingFaceDictionaryAgent``, imports ``transformers``
(and scikit-learn) at import time: ~0.75 s on every ``parlai`` start. This module is loaded
only when a dictionary over ``--hf-model-dir`` is built (``HfOrParlaiDictionaryAgent``
resolves its ``HF_CLASS`` then), or when the class is named. The old path
``parlai_ext.agents.hf:HfDictionaryAgent`` still resolves (a lazy module attribute there).
"""

from __future__ import annotations

import json
import os

import torch
from parlai.agents.hugging_face.dict import HuggingFaceDictionaryAgent
from parlai.core.opt import Opt

from parlai_ext.agents.hf_backbone import (
    SAVED_FOLDER_SUFFIX,
    SAVED_META,
    _read_meta,
    _short_name,
    _write_folder_atomically,
    base_folder,
    hf_model_name,
    saved_folder,
)
from parlai_ext.modules import hf


class HfDictionaryAgent(HuggingFaceDictionaryAgent):
    """A local Hugging Face tokenizer (``--hf-model-dir``) as a ParlAI dictionary.

    Roles: encoders with ``[CLS]``/``[SEP]`` (BERT, MiniLM) use ``[PAD] [CLS] [SEP] [UNK]`` as
    null/start/end/unk. Causal LMs use their EOS as end and their BOS as start; padding,
    start and end must be three distinct tokens (ParlAI masks padding out of the loss, so a
    padding token equal to the end token would never teach the model to stop), so missing or
    shared ones are added as ``__null__`` / ``__start__`` / ``__end__``. unk is the
    tokenizer's, or the end token. Subclasses add their own special tokens through
    :attr:`EXTRA_SPECIAL_TOKENS`. Models resize their embeddings to ``len(dict)``.

    Text is encoded without special tokens and without truncation (agents truncate).
    """

    EXTRA_SPECIAL_TOKENS: tuple[str, ...] = ()

    @property
    def add_special_tokens(self) -> bool:
        return False

    @property
    def skip_decode_special_tokens(self) -> bool:
        return True

    def get_tokenizer(self, opt: Opt):
        saved = saved_folder(opt)
        self.base_vocab_size: int | None = None
        if saved is not None:  # the tokenizer the model was trained with (tokens added)
            self.base_vocab_size = _read_meta(saved).get('base_vocab_size')
            return hf.load_tokenizer(saved)
        return hf.load_tokenizer(base_folder(opt))

    def share(self):
        shared = super().share()
        shared['base_vocab_size'] = self.base_vocab_size
        return shared

    def __init__(self, opt: Opt, shared=None) -> None:
        if shared:
            self.base_vocab_size = shared.get('base_vocab_size')
        super().__init__(opt, shared)

    def override_special_tokens(self, opt: Opt) -> None:
        tok = self.hf_tokenizer
        if getattr(self, 'base_vocab_size', None) is None:
            self.base_vocab_size = len(tok)
        encoder_style = tok.cls_token is not None and tok.sep_token is not None
        if encoder_style:
            start, end = tok.cls_token, tok.sep_token
            pad = tok.pad_token if tok.pad_token not in (None, start, end) else '__null__'
        else:
            end = tok.eos_token or '__end__'
            start = tok.bos_token if tok.bos_token not in (None, end) else '__start__'
            pad = tok.pad_token if tok.pad_token not in (None, end, start) else '__null__'
        roles = {}
        if tok.pad_token != pad:
            roles['pad_token'] = pad
        if not encoder_style:
            if tok.eos_token != end:
                roles['eos_token'] = end
            if tok.bos_token != start:
                roles['bos_token'] = start
        if roles:
            tok.add_special_tokens(roles)
        if self.EXTRA_SPECIAL_TOKENS:
            missing = [t for t in self.EXTRA_SPECIAL_TOKENS if t not in tok.get_vocab()]
            if missing:
                tok.add_special_tokens({'additional_special_tokens': missing})
        added = [t for t in (pad, start, end) if t not in tok.get_vocab()]
        if added:
            tok.add_tokens(added, special_tokens=True)
        self.null_token, self.start_token, self.end_token = pad, start, end
        self.unk_token = tok.unk_token or end
        self._unk_token_idx = tok.convert_tokens_to_ids(self.unk_token)
        self.tok2ind = dict(tok.get_vocab())
        self.ind2tok = {v: k for k, v in self.tok2ind.items()}
        for token in self.tok2ind:
            self.freq[token] = 1

    @property
    def added_token_ids(self) -> list[int]:
        """Ids the dictionary added to the checkpoint's vocabulary (new embedding rows)."""
        return list(range(self.base_vocab_size or len(self), len(self)))

    def txt2vec(self, text: str, vec_type=list) -> list[int]:
        return self.hf_tokenizer.encode(text, add_special_tokens=False)

    def vec2txt(self, vec, **kwargs) -> str:
        if torch.is_tensor(vec):
            vec = vec.tolist()
        return self.hf_tokenizer.decode(list(vec), skip_special_tokens=True).strip()

    def __len__(self) -> int:
        return len(self.hf_tokenizer)

    def save(self, filename: str | None = None, append: bool = False, sort: bool = True) -> None:
        """ParlAI's token list at ``filename``, and ``filename.hf/``: the tokenizer (with the
        added tokens), the base config and where the base came from (no machine paths are
        needed to reload: the config builds the network, the short name finds the base)."""
        filename = self.opt['dict_file'] if filename is None else filename
        super().save(filename, append=append, sort=False)
        source = saved_folder(self.opt) or base_folder(self.opt)
        name = hf_model_name(self.opt)
        previous = _read_meta(source) if os.path.isfile(os.path.join(source, SAVED_META)) else {}
        meta = {
            'hf_model_dir': name,
            'short_name': _short_name(name) or previous.get('short_name'),
            'gguf_file': self.opt.get('hf_gguf_file') or previous.get('gguf_file'),
            'base_vocab_size': self.base_vocab_size,
            'special_tokens': {
                'null': self.null_token,
                'start': self.start_token,
                'end': self.end_token,
                'unk': self.unk_token,
            },
        }

        def fill(folder: str) -> None:
            self.hf_tokenizer.save_pretrained(folder)
            hf.load_config(source).save_pretrained(folder)
            with open(os.path.join(folder, SAVED_META), 'w', encoding='utf-8') as f:
                json.dump(meta, f, indent=1)

        _write_folder_atomically(filename + SAVED_FOLDER_SUFFIX, fill)


__all__ = ['HfDictionaryAgent']
