"""PPG's Hugging Face dictionary (imported only with ``--hf-model-dir``: it imports
``transformers``). The old path ``parlai_ext.agents.ppg:PpgHfDictionaryAgent`` still
resolves, lazily."""

from __future__ import annotations

from parlai.core.opt import Opt

from parlai_ext.agents.hf_dict import HfDictionaryAgent
from parlai_ext.agents.ppg import LEGACY_ADDED_TOKENS, is_legacy_hf_dict


class PpgHfDictionaryAgent(HfDictionaryAgent):
    """The tokenizer of ``--hf-model-dir`` as a ParlAI dictionary (the shared one, issue #20).

    Model files saved before the shared piece (a ``.dict`` without a ``.dict.hf`` folder
    beside it) added, for GPT-2-style tokenizers, ``__start__`` = V then ``__null__`` = V+1;
    the shared dictionary adds ``__null__`` = V, ``__start__`` = V+1. Such files keep their
    own order, so their embedding rows keep their meaning.
    """

    def override_special_tokens(self, opt: Opt) -> None:
        if is_legacy_hf_dict(opt):
            tok = self.hf_tokenizer
            if getattr(self, 'base_vocab_size', None) is None:
                self.base_vocab_size = len(tok)
            encoder_style = tok.cls_token is not None and tok.sep_token is not None
            if not encoder_style:
                start_missing = tok.bos_token in (None, tok.eos_token)
                null_missing = tok.pad_token in (None, tok.eos_token)
                missing = [
                    token
                    for token, needed in zip(LEGACY_ADDED_TOKENS, (start_missing, null_missing))
                    if needed and token not in tok.get_vocab()
                ]
                if missing:
                    tok.add_tokens(missing, special_tokens=True)
        super().override_special_tokens(opt)


__all__ = ['PpgHfDictionaryAgent']
