"""The zoo entries' file lists (zoo/entry_files.py): exact names, and every shipped entry
folder holds exactly the files its ``build.py`` installs."""

from __future__ import annotations

import importlib
import os

import pytest

from parlai_ext import registry
from parlai_ext.zoo.common import shipped_folder
from parlai_ext.zoo.entry_files import (
    CHAT_LM_TOKENIZER_FILES,
    ENCODER_TOKENIZER_FILES,
    model_files,
)


def test_model_files_name_weights_options_dictionary_then_tokenizer_folder():
    assert model_files('model') == ['model', 'model.opt', 'model.dict', 'model.dict.opt']
    assert model_files('reward', ENCODER_TOKENIZER_FILES) == [
        'reward', 'reward.opt', 'reward.dict', 'reward.dict.opt',
        'reward.dict.hf/config.json', 'reward.dict.hf/parlai_ext_hf.json',
        'reward.dict.hf/tokenizer.json', 'reward.dict.hf/tokenizer_config.json',
    ]  # fmt: skip
    # the chat model's tokenizer folder has its chat template, the encoder's has none
    assert set(CHAT_LM_TOKENIZER_FILES) - set(ENCODER_TOKENIZER_FILES) == {'chat_template.jinja'}


@pytest.mark.parametrize('system', sorted(registry.ZOO))
def test_every_shipped_entry_folder_holds_exactly_its_files(system):
    build = importlib.import_module(f'{registry.ZOO[system]}.build')
    folder = shipped_folder(build.__file__, build.ENTRY)
    if not os.path.isdir(folder):
        pytest.skip(f'{folder} is not shipped')
    on_disk = {
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
    }
    assert len(build.FILES) == len(set(build.FILES))
    assert on_disk - {'README.md'} == set(build.FILES)
