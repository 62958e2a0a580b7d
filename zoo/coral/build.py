"""``zoo:coral/dailydialog_small/...``: a small CORAL generator (mix-policy) and its ESIM reward model, trained on DailyDialog.

Model card: ``dailydialog_small/README.md``. Licence: trained on DailyDialog (CC BY-NC-SA 4.0), so the weights are for non-commercial use under the same terms.
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder

ENTRY = 'dailydialog_small'
VERSION = 'v1'
FILES = [
    'model', 'model.opt', 'model.dict', 'model.dict.opt',
    'reward', 'reward.opt', 'reward.dict', 'reward.dict.opt',
]  # fmt: skip
BUILD = (
    'bash zoo/coral/make_dailydialog_small.sh  # trains it on ../shared/data, see the model card'
)


def download(datapath: str) -> None:
    install_entry(datapath, 'coral', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
