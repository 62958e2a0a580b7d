"""``zoo:plato2/dailydialog_small/{model,evaluator}``: a small PLATO-2 trained on DailyDialog.

``model`` is the stage-2.1 generator (K = 20 latents) whose options name ``evaluator`` (the
stage-2.2 evaluation model) for reranking; both share the 8K SentencePiece dictionary.
Model card: ``dailydialog_small/README.md``. Licence: trained on DailyDialog (CC BY-NC-SA 4.0),
so the weights are for non-commercial use under the same terms.
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder

ENTRY = 'dailydialog_small'
VERSION = 'v1'
FILES = [
    'model', 'model.opt', 'model.dict', 'model.dict.opt', 'model.dict.spm.model',
    'evaluator', 'evaluator.opt', 'evaluator.dict', 'evaluator.dict.opt',
    'evaluator.dict.spm.model',
]  # fmt: skip
BUILD = 'bash zoo/plato2/make_dailydialog_small.sh  # trains it on ../shared/data/dailydialog'


def download(datapath: str) -> None:
    install_entry(datapath, 'plato2', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
