"""Each fix of parlai_ext.compat, tested where ParlAI breaks without it."""

import importlib.util
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import run_parlai

NO_PKG_RESOURCES = importlib.util.find_spec('pkg_resources') is None


def _python(code: str, **env):
    return subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        env=dict(os.environ, **env),
        timeout=120,
    )


@pytest.mark.skipif(not NO_PKG_RESOURCES, reason='this setuptools still ships pkg_resources')
def test_parlai_opt_imports_without_pkg_resources_only_with_the_fix():
    code = 'import sys, parlai.core.opt, rouge.rouge; print("pkg_resources" in sys.modules)'
    broken = _python(code, PARLAI_EXT_HOOK='0')
    assert broken.returncode != 0 and 'pkg_resources' in broken.stderr
    fixed = _python(code)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip() == 'False'  # the shim is gone once ParlAI has imported


def test_dictionary_txt2vec_to_numpy_array():
    from parlai.core.dict import DictionaryAgent
    from parlai.core.params import ParlaiParser

    opt = ParlaiParser(True, True).parse_args([])
    dictionary = DictionaryAgent(opt)
    dictionary.add_token('hello')
    vec = dictionary.txt2vec('hello world', vec_type=np.ndarray)
    assert isinstance(vec, np.ndarray)
    assert vec.tolist() == [dictionary['hello'], dictionary[dictionary.unk_token]]
    assert not hasattr(np, 'int')  # the global numpy stays untouched


def test_reduce_on_plateau_scheduler_builds_decays_and_resumes():
    from parlai.nn.lr_scheduler import ReduceOnPlateauLRScheduler

    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = ReduceOnPlateauLRScheduler(
        optimizer, patience=1, decay=0.5, warmup_updates=-1, warmup_rate=1e-4
    )
    for _ in range(3):  # no improvement after the first: decays once patience (1) runs out
        scheduler.valid_step({'loss': 1.0})
    assert optimizer.param_groups[0]['lr'] == pytest.approx(0.5)
    state = scheduler.get_state_dict()
    resumed = ReduceOnPlateauLRScheduler(
        optimizer, patience=1, decay=0.5, warmup_updates=-1, warmup_rate=1e-4
    )
    resumed.load_state({'lr_scheduler': state})
    assert resumed.scheduler.best == scheduler.scheduler.best
    assert resumed.scheduler.num_bad_epochs == scheduler.scheduler.num_bad_epochs


def test_rouge_metrics_work_offline():
    from parlai.core.metrics import RougeMetric

    # normalised: "cat sat on mat" vs "cat sat down on mat": LCS 4, P 4/4, R 4/5;
    # bigrams: 3 predicted, 4 in the reference, 2 shared
    recall = RougeMetric.compute_many('the cat sat on the mat', ['the cat sat down on the mat'])
    assert None not in recall, 'py-rouge was silently dropped'
    assert [m.value() for m in recall] == pytest.approx([0.8, 0.5, 0.8])
    f_measure = RougeMetric.compute_many(
        'the cat sat on the mat', ['the cat sat down on the mat'], measure='f'
    )
    assert f_measure[2].value() == pytest.approx(2 * 1.0 * 0.8 / 1.8)


def test_hf_gpt2_reorders_a_transformers_cache_object():
    import parlai.agents.hugging_face.gpt2 as gpt2
    from transformers import DynamicCache

    keys = torch.arange(12, dtype=torch.float).view(2, 1, 3, 2)
    cache = DynamicCache()
    cache.update(keys, keys + 100, 0)
    reordered = gpt2.HFGPT2Model.reorder_decoder_incremental_state(
        None, cache, torch.tensor([1, 0])
    )
    assert torch.equal(reordered.layers[0].keys, keys[[1, 0]])


CHECKSUM_AGENT = """
import hashlib, os
from parlai.utils.distributed import get_rank
from parlai_ext.agents.unified_transformer import UnifiedTransformerAgent


class ChecksumAgent(UnifiedTransformerAgent):
    \"\"\"Writes a hash of its parameters after every update, one file per worker.\"\"\"

    def train_step(self, batch):
        output = super().train_step(batch)
        self.updates = getattr(self, 'updates', 0) + 1
        weights = b''.join(p.detach().numpy().tobytes() for p in self.model.parameters())
        path = os.path.join(os.environ['CHECKSUM_DIR'], f'rank{get_rank()}.txt')
        with open(path, 'a') as f:
            f.write(f'{self.updates} {hashlib.sha256(weights).hexdigest()}\\n')
        return output
"""


def free_port() -> int:
    """A TCP port nobody listens on now (a fixed port lets two concurrent runs join each other)."""
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return probe.getsockname()[1]


def test_multiprocessing_train_and_eval_on_cpu(tmp_path):
    """CPU (gloo) distributed context, all_gather_list, DDP device_ids and Join device.

    Two workers train our agent under DDP; after every update both hold identical weights.
    """
    (tmp_path / 'checksum_agent.py').write_text(CHECKSUM_AGENT)
    env = {'PYTHONPATH': str(tmp_path), 'CHECKSUM_DIR': str(tmp_path)}
    dict_file = str(tmp_path / 'model.dict')
    model_file = str(tmp_path / 'model')
    # the dictionary in this process (the stock build_dict command has its own tests): one
    # start-up of torch + ParlAI less
    from parlai.scripts.build_dict import build_dict, setup_args

    build_dict(setup_args().parse_args(['-t', 'ext_demo', '--dict-file', dict_file]))
    workers = ['--distributed-world-size', '2']
    run_parlai(
        'multiprocessing_train', '-m', 'checksum_agent:ChecksumAgent', '-t', 'ext_demo',
        '-mf', model_file, '--dict-file', dict_file, '-bs', '16', '--num-epochs', '0.5',
        '--n-layers', '1', '--embedding-size', '32', '--n-heads', '2', '--ffn-size', '64',
        '-vtim', '100', '--port', str(free_port()), *workers, env=env, timeout=900,
    )  # fmt: skip
    stats = json.load(open(model_file + '.trainstats'))
    assert stats['final_valid_report']['exs'] > 0
    logs = [dict(line.split() for line in open(tmp_path / f'rank{r}.txt')) for r in (0, 1)]
    common_updates = set(logs[0]) & set(logs[1])
    assert len(common_updates) >= 10
    assert all(logs[0][u] == logs[1][u] for u in common_updates)
    assert len(set(logs[0].values())) == len(logs[0])  # the weights did change every update
    out = run_parlai(
        'multiprocessing_eval', '-mf', model_file, '-t', 'ext_demo', '-dt', 'valid',
        *workers, env=env, timeout=900,
    )  # fmt: skip
    assert 'ppl' in out.stdout + out.stderr


def test_train_model_seed_makes_the_initial_weights_reproducible(tmp_path):
    from parlai.scripts.train_model import TrainLoop, setup_args

    def initial_weights(init) -> list[torch.Tensor]:
        opt = setup_args().parse_args(
            ['-m', 'unified_transformer', '-t', 'integration_tests:nocandidate',
             '--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32',
             '-mf', str(tmp_path / 'model'), '--seed', '7']
        )  # fmt: skip
        loop = TrainLoop.__new__(TrainLoop)
        init(loop, opt)
        weights = [p.detach().clone() for p in loop.agent.model.parameters()]
        torch.rand(5)  # move the global generator on, as anything else in a process would
        return weights

    patched = TrainLoop.__init__
    first, second = initial_weights(patched), initial_weights(patched)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    unpatched = patched.__wrapped__
    first, second = initial_weights(unpatched), initial_weights(unpatched)
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_train_loop_seed_differs_per_worker_after_the_agent_is_built(monkeypatch):
    """Under DDP, worker r continues with seed + r (data order, samples), not all with seed."""
    from parlai.utils import distributed

    from parlai_ext.compat import reseed_per_worker

    seeds = []
    for rank in (None, 0, 1, 3):
        monkeypatch.setattr(distributed, 'is_distributed', lambda rank=rank: rank is not None)
        monkeypatch.setattr(distributed, 'get_rank', lambda rank=rank: rank or 0)
        reseed_per_worker({'seed': 7}, seeds.append)
        reseed_per_worker({'seed': None}, seeds.append)
        seeds.append(torch.initial_seed())
    # one process: untouched (train_model seeds it itself); without --seed torch gets 42 + rank
    assert seeds[1:] == [7, 42, 8, 43, 10, 45]


# --- fix 9: --dict-class swaps the dictionary only when asked (issue #25) --------------------


def test_agent_with_its_own_dictionary_keeps_it_under_another_models_default_dict_class():
    """ParlAI's test_torch_agent::test_truncate_metrics: the parser's default ``dict_class``
    comes from ``-m test_agents/unigram`` (ParlAI's DictionaryAgent); MockTorchAgent must still
    build its own MockDict (a swap gave clen 18 instead of 9)."""
    from parlai.agents.test_agents.test_agents import MockDict, MockTorchAgent
    from parlai.core.params import ParlaiParser

    parser = ParlaiParser()
    MockTorchAgent.add_cmdline_args(parser, partial_opt=None)
    parser.set_params(model='test_agents/unigram', truncate=5, no_cuda=True)
    opt = parser.parse_args([])
    assert opt['dict_class'] == 'parlai.core.dict:DictionaryAgent'  # the default at issue
    agent = MockTorchAgent(opt)
    assert isinstance(agent.dict, MockDict)
    text = "I'll be back. I'll be back. I'll be back."
    agent.observe({'text': text, 'labels': [text], 'episode_done': True})
    agent.act()
    assert agent._local_metrics['clen'][0].value() == 9
    assert agent._local_metrics['ctrunclen'][0].value() == 4


def test_requested_dict_class_only_when_asked_or_a_subclass():
    from parlai.agents.test_agents.test_agents import MockDict, MockTorchAgent
    from parlai.core.dict import DictionaryAgent

    from parlai_ext.agents.unified_transformer import UnifiedTransformerAgent
    from parlai_ext.compat import requested_dict_class
    from parlai_ext.sentencepiece_dict import SentencePieceDictionaryAgent

    spm_name = 'parlai_ext.sentencepiece_dict:SentencePieceDictionaryAgent'

    class SubDict(MockDict):
        pass

    def swap(agent_class, **opt):
        agent = agent_class.__new__(agent_class)
        agent.opt = opt
        return requested_dict_class(agent)

    default = 'parlai.core.dict:DictionaryAgent'
    # another model's default in the opt: the agent's own class
    assert swap(MockTorchAgent, dict_class=default, model='test_agents/unigram') is None
    assert swap(MockTorchAgent, dict_class=spm_name, model='transformer/generator') is None
    # asked for on the command line
    assert (
        swap(MockTorchAgent, dict_class=default, model='test_agents/unigram',
             override={'dict_class': default}) is DictionaryAgent
    )  # fmt: skip
    # the opt saved with this very agent (e.g. reloading a model trained with --dict-class)
    assert swap(UnifiedTransformerAgent, dict_class=spm_name, model='unified_transformer') is (
        SentencePieceDictionaryAgent
    )
    # a subclass of the agent's own dictionary: always safe
    name = f'{__name__}:SubDict'
    globals()['SubDict'] = SubDict
    try:
        assert swap(MockTorchAgent, dict_class=name, model='test_agents/unigram') is SubDict
    finally:
        del globals()['SubDict']
    # the agent's own class: nothing to swap
    assert swap(UnifiedTransformerAgent, dict_class=default, model='x') is None
