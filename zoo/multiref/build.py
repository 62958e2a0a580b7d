"""``zoo:multiref/dailydialog_small/...``: a small VHRED-LGM (K = 5) trained on DailyDialog with pseudo references of a SmolLM2-135M teacher.

Model card: ``dailydialog_small/README.md``. Licence: trained on DailyDialog (CC BY-NC-SA 4.0), so the weights are for non-commercial use under the same terms.
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder
from parlai_ext.zoo.entry_files import model_files

ENTRY = 'dailydialog_small'
VERSION = 'v2'
FILES = model_files('model')
BUILD = (
    'bash zoo/multiref/make_dailydialog_small.sh  # trains it on ../shared/data, see the model card'
)


def download(datapath: str) -> None:
    install_entry(
        datapath, 'multiref', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD
    )
