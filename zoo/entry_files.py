"""The file lists of the zoo entries (``FILES`` of each ``zoo/<system>/build.py``).

A shipped model is its weights ``<name>``, its options ``<name>.opt``, its dictionary
``<name>.dict`` and the dictionary's options ``<name>.dict.opt``; a model over a pretrained
Hugging Face backbone also keeps its tokenizer in ``<name>.dict.hf/``.
"""

from __future__ import annotations

from collections.abc import Sequence

# the tokenizer folder of a model over SmolLM2 (a chat model: its chat template too)
CHAT_LM_TOKENIZER_FILES: tuple[str, ...] = (
    'chat_template.jinja', 'config.json', 'parlai_ext_hf.json', 'tokenizer.json',
    'tokenizer_config.json',
)  # fmt: skip
# the tokenizer folder of a model over all-MiniLM-L6-v2 (an encoder: no chat template)
ENCODER_TOKENIZER_FILES: tuple[str, ...] = (
    'config.json', 'parlai_ext_hf.json', 'tokenizer.json', 'tokenizer_config.json',
)  # fmt: skip


def model_files(name: str, tokenizer_files: Sequence[str] = ()) -> list[str]:
    """The files of the model ``name`` in an entry's folder, in install order.

    :param tokenizer_files: the files of its ``<name>.dict.hf/`` tokenizer folder (none for a
        model with a ParlAI dictionary only).
    """
    files = [name, f'{name}.opt', f'{name}.dict', f'{name}.dict.opt']
    return files + [f'{name}.dict.hf/{file}' for file in tokenizer_files]
