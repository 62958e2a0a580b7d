"""``zoo:ppg/convai2_dev_small/...``: a small PPG set trained on 700 ConvAI2 episodes: the response generator after RL (``model``, which generates partner personas with ``ppg``), the persona generator after RL and the critic.

Model card: ``convai2_dev_small/README.md``. Licence: trained on ConvAI2 (CC BY 4.0).
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder

ENTRY = 'convai2_dev_small'
VERSION = 'v1'
FILES = [
    'model', 'model.opt', 'model.dict', 'model.dict.opt',
    'ppg', 'ppg.opt', 'ppg.dict', 'ppg.dict.opt',
    'critic', 'critic.opt', 'critic.dict', 'critic.dict.opt',
]  # fmt: skip
BUILD = 'bash zoo/ppg/make_convai2_dev_small.sh  # trains it on ../shared/data, see the model card'


def download(datapath: str) -> None:
    install_entry(datapath, 'ppg', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
