"""P2Bot through ParlAI's loops: supervised training, receiver, self-play (frozen user, resume),
self-chat, and the HF-initialised transmitter/receiver (tiny checkpoints made here)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import run_parlai
from parlai.core.agents import create_agent, create_agent_from_model_file
from parlai.core.params import ParlaiParser
from parlai.core.worlds import create_task
from parlai.scripts.train_model import TrainModel
from parlai_inprocess import run_script
from test_p2bot import TOPICS, fixture_words, tiny_hf_lm, write_both

TINY = ['--n-layers', '1', '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A supervised transmitter and a receiver trained with `parlai train_model`'s arguments,
    in this process (two start-ups of torch + ParlAI less; the self-play trainings below run
    the stock command), their reports read from ParlAI's log."""
    root = tmp_path_factory.mktemp('p2bot')
    data = write_both(root, 10)
    common = ['--personachat-file', str(data), '--p2bot-train-episodes', '8']
    common += ['--datapath', str(root / 'data')]
    tx_out = run_script(
        TrainModel, '-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay:supervised',
        *common, *TINY, '-mf', str(root / 'tx'), '-bs', '4', '-eps', '2',
        '--p2bot-synth-candidates', '4', '--rank-candidates', 'true',
        '--metrics', 'ext_p2bot', '-vmt', 'ppl', '--label-truncate', '12',
    )  # fmt: skip
    rx_out = run_script(
        TrainModel, '-m', 'p2bot_receiver', '-t', 'p2bot_selfplay:receiver', *common,
        *TINY, '-mf', str(root / 'rx'), '-bs', '4', '-eps', '3', '-lr', '1e-3',
        '--tau-anneal-steps', '4', '--receiver-eval-distractors', '3', '-vmt', 'rec_hits@1',
    )  # fmt: skip
    return {'root': root, 'data': data, 'common': common, 'tx_out': tx_out, 'rx_out': rx_out}


def final_report(stdout: str, split: str = 'valid') -> str:
    return stdout.split(f'{split}:')[-1]


def test_supervised_transmitter_reports_ppl_f1_and_hits(trained):
    report = final_report(trained['tx_out'].stdout + trained['tx_out'].stderr)
    for name in ('ppl', 'f1', 'ext_hits@1', 'ext_mrr', 'nup_acc', 'bleu-4'):
        assert name in report, name
    dictionary = (trained['root'] / 'tx.dict').read_text().split('\n')
    assert [line.split('\t')[0] for line in dictionary[4:8]] == [
        '__p2_persona__',
        '__p2_partner__',
        '__p2_self__',
        '__p2_cls__',
    ]


def test_receiver_trains_and_anneals_tau(trained):
    agent = create_agent_from_model_file(str(trained['root'] / 'rx'))
    assert float(agent.model.tau) == pytest.approx(0.5)  # τ reached --tau-end after 4 updates
    persona = ['i keep bees in my garden.', 'i play the cello.']
    scores = agent.perception_scores(['my bees made honey again'] * 2, [persona, persona[::-1]])
    assert scores.shape == (2,) and torch.allclose(scores[0], scores[1], atol=1e-5)
    assert 'rec_hits@1' in final_report(trained['rx_out'].stdout + trained['rx_out'].stderr)


def _selfplay_args(
    trained, model_file: Path, steps: int, log: Path, init: bool = True
) -> list[str]:
    root = trained['root']
    return [
        'train_model', '-m', 'p2bot_transmitter', '-t', 'p2bot_selfplay', *trained['common'],
        *(['--init-model', str(root / 'tx')] if init else []), '-mf', str(model_file),
        '--selfplay-receiver-model', str(root / 'rx'), '-bs', '3', '-lr', '1e-6',
        '--max-train-steps', str(steps), '--log-every-n-steps', '1',
        '--selfplay-max-len', '6', '--selfplay-log-file', str(log),
        '--skip-generation', 'true', '-vstep', '100', '-vmt', 'ppl',
    ]  # fmt: skip


def test_selfplay_runs_and_logs_rewards(trained, tmp_path):
    model_file, log = tmp_path / 'sp', tmp_path / 'sp.jsonl'
    # in this process with the command line's arguments (one start-up less): the killed and
    # resumed test below runs the same self-play training through the stock command
    first = run_script(TrainModel, *_selfplay_args(trained, model_file, 2, log)[1:])
    text = first.stdout + first.stderr
    for name in ('rs1', 'rs2', 'rs3', 'reward', 'rl_loss', 'sp_reply_len'):
        assert name in text, name
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r['update'] for r in records] == [1, 2]
    assert len(records[0]['dialogue']) == 6  # x1, a1, x2, a2, x3, a3 (N = 3)
    assert records[0]['dialogue'][0] in {t[1] + ' .' for t in TOPICS}  # opener from the data
    for r in records:  # Eq. 10 with the paper's λ holds for the logged means, by value
        assert math.isfinite(r['reward']) and r['rs2'] <= 0.0  # RS.2 is a log-probability
        assert r['reward'] == pytest.approx(0.4 * r['rs1'] + 0.1 * r['rs2'] + 0.5 * r['rs3'])
        assert 1 <= r['sp_reply_len'] <= 6  # --selfplay-max-len 6
    stats = json.loads(Path(str(model_file) + '.trainstats').read_text())
    assert stats['train_steps'] == 2
    # resuming after a crash: test_selfplay_killed_and_resumed_keeps_user_a_and_logs_each_update_once


def test_frozen_user_does_not_change_while_the_learner_does(trained):
    root = trained['root']
    parser = ParlaiParser(True, True)
    opt = parser.parse_args(
        [
            '-m',
            'p2bot_transmitter',
            '-t',
            'p2bot_selfplay',
            *trained['common'],
            '--init-model',
            str(root / 'tx'),
            '--selfplay-receiver-model',
            str(root / 'rx'),
            '-bs',
            '2',
            '-lr',
            '1e-2',
            '--selfplay-max-len',
            '5',
            '-dt',
            'train',
        ]  # fmt: skip
    )
    learner = create_agent(opt)
    world = create_task(opt, learner)
    assert type(world).__name__ == 'SelfPlayWorld' and world.rollouts == 2
    user_before = {k: v.clone() for k, v in world.user.model.state_dict().items()}
    learner_before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    world.parley()
    world.parley()
    assert all(torch.equal(v, world.user.model.state_dict()[k]) for k, v in user_before.items())
    assert not all(torch.equal(v, learner.model.state_dict()[k]) for k, v in learner_before.items())
    assert all(not p.requires_grad for p in world.user.model.parameters())
    assert learner._number_training_updates == 2


def test_self_chat_with_two_personas(trained, tmp_path):
    root = trained['root']
    outfile = tmp_path / 'chats'
    run_parlai(
        'self_chat', '-mf', str(root / 'tx'), '-t', 'p2bot_selfplay',
        '--personachat-file', str(trained['data']), '--num-self-chats', '2',
        '--selfchat-max-turns', '4', '--outfile', str(outfile), '--datapath', str(root / 'data'),
        '--display-examples', 'false',
    )  # fmt: skip
    chats = [json.loads(line) for line in Path(str(outfile) + '.jsonl').read_text().splitlines()]
    assert len(chats) == 2
    for chat in chats:
        first, second = (message['text'] for message in chat['context'])
        assert first.startswith('your persona:') and second.startswith('your persona:')
        assert first != second
        opener, reply = chat['dialog'][0]
        assert opener['text'] in {t[1] + ' .' for t in TOPICS}  # the data's first utterance
        # the second speaker's context holds its persona, not only the opener
        assert reply['metrics']['clen'] > 3 + len(opener['text'].split())
        assert all(turn[1]['text'] for turn in chat['dialog'])


def _train_in_process(args: list[str], steps: int = 2):
    parser = ParlaiParser(True, True)
    opt = parser.parse_args([*args, '-dt', 'train'])
    agent = create_agent(opt)
    world = create_task(opt, agent)
    for _ in range(steps):
        world.parley()
    return agent, world


def test_transmitter_from_a_local_hf_causal_lm(trained, tmp_path):
    directory = tiny_hf_lm(tmp_path / 'lm', fixture_words())
    agent, _ = _train_in_process(
        [
            '-m',
            'p2bot_transmitter',
            '-t',
            'p2bot_selfplay:supervised',
            *trained['common'],
            '--hf-model-dir',
            str(directory),
            '-mf',
            str(tmp_path / 'hf_tx'),
            '-bs',
            '2',
            '--label-truncate',
            '8',
        ]  # fmt: skip
    )
    # the tokenizer's vocabulary plus the added special tokens, embeddings resized to match
    assert '__p2_cls__' in agent.dict.tok2ind and agent.dict.null_token != agent.dict.end_token
    hf = agent.model.transmitter.backbone.model
    assert hf.get_input_embeddings().weight.shape[0] == len(agent.dict)
    assert agent._number_training_updates == 2
    context = agent.context_vec(['i keep bees in my garden.'], ['my bees made honey again .'])
    reply = agent.generate([context])[0]
    assert reply[-1].item() == agent.END_IDX or len(reply) == 8
    agent.save(str(tmp_path / 'hf_tx'))
    reloaded = create_agent_from_model_file(str(tmp_path / 'hf_tx'))
    assert torch.equal(reloaded.generate([context])[0], reply)


def test_receiver_from_a_local_hf_encoder(trained, tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path / 'enc'
    directory.mkdir()
    words = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *fixture_words()]
    (directory / 'vocab.txt').write_text('\n'.join(words) + '\n')
    BertTokenizerFast(vocab_file=str(directory / 'vocab.txt')).save_pretrained(directory)
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(words),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )  # fmt: skip
    ).save_pretrained(directory)
    agent, _ = _train_in_process(
        [
            '-m',
            'p2bot_receiver',
            '-t',
            'p2bot_selfplay:receiver',
            *trained['common'],
            '--hf-model-dir',
            str(directory),
            '-mf',
            str(tmp_path / 'hf_rx'),
            '-bs',
            '2',
        ]  # fmt: skip
    )
    assert agent._number_training_updates == 2
    ids = agent.encode_sentence('i keep bees')
    assert ids[0] == agent.dict.hf_tokenizer.cls_token_id  # [CLS] ... [SEP], as BERT expects
    assert ids[-1] == agent.dict.hf_tokenizer.sep_token_id
    scores = agent.persona_scores(
        ['my bees made honey again'], [['i keep bees in my garden.'], ['i play the cello.']]
    )
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # a checkpoint reloads to the same scores, building the encoders from the config only
    # (the pretrained weight file is not needed any more)
    agent.save(str(tmp_path / 'hf_rx'))
    (directory / 'model.safetensors').unlink()
    reloaded = create_agent_from_model_file(str(tmp_path / 'hf_rx'))
    again = reloaded.persona_scores(
        ['my bees made honey again'], [['i keep bees in my garden.'], ['i play the cello.']]
    )
    assert torch.allclose(again, scores)


def test_probe_script_ranks_personas_with_receiver_random_and_ir(trained):
    out = run_parlai(
        'p2bot_probe', '--personachat-file', str(trained['data']), '--p2bot-train-episodes',
        '8', '-dt', 'valid', '--receiver-eval-distractors', '3', '--receiver-model-file',
        str(trained['root'] / 'rx'), '--report-filename', str(trained['root'] / 'probe.json'),
    )  # fmt: skip
    report = json.loads((trained['root'] / 'probe.json').read_text())
    assert set(report) == {'random', 'ir_tfidf', 'receiver'}
    assert all(values['exs'] == 4 for values in report.values())  # 2 dialogues x 2 sides
    assert 'receiver' in out.stdout and 'cand_sent_mrr' in out.stdout
    for name in ('ir_tfidf', 'receiver'):
        values = report[name]
        assert 0.0 < values['sent_mrr'] <= values['cand_sent_mrr'] <= 1.0
        assert 0.25 <= values['mrr'] <= 1.0  # 4 candidates: the worst rank is 4


def test_selfplay_killed_and_resumed_keeps_user_a_and_logs_each_update_once(trained, tmp_path):
    """kill -9 in the middle of self-play, then the same command again (issue #19.1)."""
    import os
    import signal
    import subprocess
    import time

    from conftest import PARLAI_BIN

    model_file, log = tmp_path / 'sp', tmp_path / 'sp.jsonl'
    args = _selfplay_args(trained, model_file, 400, log)
    args += ['--save-every-n-secs', '0.01']  # a checkpoint after (nearly) every update
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    proc = subprocess.Popen(
        [str(PARLAI_BIN), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, 'self-play ended before it could be killed'
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not model_file.exists() and Path(str(model_file) + '.checkpoint').exists()
    done = json.loads(Path(str(model_file) + '.checkpoint.trainstats').read_text())['train_steps']
    assert done >= 1
    # the same command again (ParlAI resumes from <mf>.checkpoint), two more updates
    resumed = run_parlai(*_selfplay_args(trained, model_file, done + 2, log))
    user_lines = [
        line for line in (resumed.stdout + resumed.stderr).splitlines() if 'frozen user A' in line
    ]
    assert user_lines and user_lines[0].endswith(str(trained['root'] / 'tx'))
    saved = json.loads(Path(str(model_file) + '.opt').read_text())
    assert saved['selfplay_user_model'] == str(trained['root'] / 'tx')
    records = [json.loads(line) for line in log.read_text().splitlines()]
    updates = [r['update'] for r in records]
    # every update once, in order (the checkpoint's weights may be one update ahead of its
    # trainstats when the kill fell between the two writes; the log follows the weights)
    assert updates == list(range(1, len(updates) + 1)) and len(updates) in (done + 2, done + 3)
