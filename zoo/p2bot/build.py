"""``zoo:p2bot/convai2_dev_small/...``: a small P2Bot transmitter (after self-play) and its receiver, trained on 700 ConvAI2 episodes.

Model card: ``convai2_dev_small/README.md``. Licence: trained on ConvAI2 (CC BY 4.0).
"""

from __future__ import annotations

from parlai_ext.zoo.common import install_entry, shipped_folder

ENTRY = 'convai2_dev_small'
VERSION = 'v1'
FILES = [
    'model', 'model.opt', 'model.dict', 'model.dict.opt',
    'receiver', 'receiver.opt', 'receiver.dict', 'receiver.dict.opt',
]  # fmt: skip
BUILD = (
    'bash zoo/p2bot/make_convai2_dev_small.sh  # trains it on ../shared/data, see the model card'
)


def download(datapath: str) -> None:
    install_entry(datapath, 'p2bot', ENTRY, shipped_folder(__file__, ENTRY), FILES, VERSION, BUILD)
