"""P2Bot's Hugging Face dictionary (imported only with ``--hf-model-dir``: it imports
``transformers``). The old path ``parlai_ext.agents.p2bot_model:P2BotHFDictionaryAgent``
(and ``parlai_ext.agents.p2bot:...``) still resolves, lazily."""

from __future__ import annotations

from parlai_ext.agents.hf_dict import HfDictionaryAgent
from parlai_ext.agents.p2bot_model import P2BOT_TOKENS, P2BotDictionaryAgent


class P2BotHFDictionaryAgent(HfDictionaryAgent, P2BotDictionaryAgent):
    """The shared Hugging Face dictionary (:class:`~parlai_ext.agents.hf_dict.HfDictionaryAgent`:
    ParlAI's special-token roles, saved beside the model file) plus the four P2Bot tokens,
    added after the roles' tokens (so the ids of older model files stay)."""

    EXTRA_SPECIAL_TOKENS = P2BOT_TOKENS


__all__ = ['P2BotHFDictionaryAgent']
