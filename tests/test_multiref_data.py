"""Pseudo references (``parlai generate_pseudo_refs``) and the multi-reference teacher
(``-t multiref_ext``): resuming, Table 4 data settings, same contexts as the original teacher."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_parlai
from parlai.core.agents import create_agent
from parlai.core.dict import DictionaryAgent
from parlai.core.params import ParlaiParser
from parlai.core.teachers import create_task_agent_from_taskname

from parlai_ext.scripts.generate_pseudo_refs import GeneratePseudoRefs, iterate_examples
from parlai_ext.tasks import common
from parlai_ext.tasks.common import MalformedDataError
from parlai_ext.tasks.demo.agents import generate_split
from parlai_ext.tasks.multiref.agents import RECORD_FORMAT

ONE_THREAD = {'OMP_NUM_THREADS': '1'}
HRED = [
    '-m', 'mr_hred', '--embedding-size', '16', '--hidden-size', '24', '--floor-size', '4',
    '--dropout', '0',
]  # fmt: skip


def _save_model(folder, model_args: list[str]) -> str:
    """An untrained model with a dictionary of the demo dialogues (sampling needs no skill)."""
    model_file = str(folder / 'model')
    opt = ParlaiParser(True, True).parse_args(
        [*model_args, '-mf', model_file, '--dict-file', model_file + '.dict']
    )
    dictionary = DictionaryAgent(opt)
    for split in ('train', 'valid'):
        for dialogue in generate_split(split):
            for pair in dialogue:
                for utterance in pair:
                    dictionary.add_to_dict(dictionary.tokenize(utterance))
    dictionary.save(model_file + '.dict', sort=True)
    agent = create_agent(opt)
    agent.save(model_file)
    return model_file


@pytest.fixture(scope='module')
def hred_model(tmp_path_factory):
    return _save_model(tmp_path_factory.mktemp('hred'), HRED)


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def _generate(model_file, outfile, *extra: str) -> None:
    GeneratePseudoRefs.main(
        '-mf', model_file, '-t', 'ext_demo', '-dt', 'valid', '-o', str(outfile),
        '--num-hyps', '2', '-bs', '16', '--progress', 'false', *extra,
    )  # fmt: skip


def test_pseudo_refs_resume_without_duplicates_or_losses(hred_model, tmp_path):
    full = tmp_path / 'full.jsonl'
    run_parlai(
        'generate_pseudo_refs', '-mf', hred_model, '-t', 'ext_demo', '-dt', 'valid',
        '-o', str(full), '--num-hyps', '2', '-bs', '16', env=ONE_THREAD,
    )  # fmt: skip
    reference = _lines(full)
    episodes = generate_split('valid')
    assert len(reference) == sum(len(d) for d in episodes)  # every example, once
    (text0, reply0), (text1, reply1) = episodes[0][:2]
    assert reference[1]['context'] == [text0, reply0, text1] and reference[1]['response'] == reply1
    assert reference[len(episodes[0])]['context'] == [episodes[1][0][0]]  # a new episode
    assert all(len(r['hypotheses']) == 2 == len(r['logprobs']) for r in reference)
    meta = json.load(open(str(full) + '.meta.json'))
    assert meta['num_hyps'] == 2 and meta['topp'] == 0.95

    # interrupted after 37 lines, the last write cut in the middle of a line
    resumed = tmp_path / 'resumed.jsonl'
    _generate(hred_model, resumed, '--max-new-contexts', '37')
    assert len(_lines(resumed)) == 37
    with open(resumed, 'a') as handle:
        handle.write('{"index": 37, "episode": 9, "turn": 0, "cont')
    _generate(hred_model, resumed, '--max-new-contexts', '50')
    assert len(_lines(resumed)) == 87
    _generate(hred_model, resumed)
    _generate(hred_model, resumed)  # already complete: nothing added
    lines = _lines(resumed)
    assert [r['index'] for r in lines] == list(range(len(reference)))
    assert [(r['context'], r['response']) for r in lines] == [
        (r['context'], r['response']) for r in reference
    ]
    assert all(len(r['hypotheses']) == 2 for r in lines)

    with pytest.raises(ValueError, match='other settings'):
        _generate(hred_model, resumed, '--num-hyps', '3')


def test_resume_refuses_a_file_of_other_data(hred_model, tmp_path):
    out = tmp_path / 'hyps.jsonl'
    _generate(hred_model, out, '--max-new-contexts', '5')
    lines = _lines(out)
    lines[-1]['response'] = 'something else'
    out.write_text(''.join(json.dumps(r) + '\n' for r in lines))
    with pytest.raises(ValueError, match='does not match'):
        _generate(hred_model, out)


def test_any_generator_model_file_works(tmp_path):
    ut = [
        '-m', 'unified_transformer', '--n-layers', '1', '--embedding-size', '16',
        '--n-heads', '2', '--ffn-size', '32',
    ]  # fmt: skip
    model_file = _save_model(tmp_path, ut)
    out = tmp_path / 'ut.jsonl'
    _generate(model_file, out, '--max-new-contexts', '6', '--num-hyps', '3')
    lines = _lines(out)
    assert len(lines) == 6 and all(len(r['hypotheses']) == 3 for r in lines)


@pytest.mark.parametrize('model_args', [HRED, ['-m', 'unified_transformer', '--n-layers', '1',
    '--embedding-size', '16', '--n-heads', '2', '--ffn-size', '32']])  # fmt: skip
def test_batched_decoder_drives_the_model_as_parlai_search(model_args, tmp_path):
    """With a nucleus this small both decoders are greedy: the batched loop must reproduce
    ParlAI's search token for token (encoder, incremental decoder, min length, forced end)."""
    model_file = _save_model(tmp_path, model_args)
    texts = {}
    for decoder in ('batched', 'parlai'):
        out = tmp_path / f'{decoder}.jsonl'
        _generate(model_file, out, '--max-new-contexts', '12', '--hyp-topp', '1e-9',
                  '--hyp-max-len', '7', '--hyp-decoder', decoder)  # fmt: skip
        texts[decoder] = [r['hypotheses'] for r in _lines(out)]
        assert json.load(open(str(out) + '.meta.json'))['decoder'] == decoder
    assert texts['batched'] == texts['parlai']
    assert any(h[0] for h in texts['batched'])  # untrained, but not all empty
    with pytest.raises(ValueError, match='other settings'):  # no mixing decoders in a file
        _generate(model_file, tmp_path / 'parlai.jsonl', '--hyp-decoder', 'batched',
                  '--hyp-topp', '1e-9', '--hyp-max-len', '7')  # fmt: skip


def test_auto_decoder_falls_back_to_parlai_for_agents_with_their_own_generation(tmp_path):
    model_file = _save_model(tmp_path, HRED)
    out = tmp_path / 'blocked.jsonl'
    _generate(model_file, out, '--max-new-contexts', '2', '--beam-block-ngram', '2')
    assert json.load(open(str(out) + '.meta.json'))['decoder'] == 'parlai'
    with pytest.raises(ValueError, match='--hyp-decoder parlai'):
        _generate(model_file, tmp_path / 'x.jsonl', '--beam-block-ngram', '2',
                  '--hyp-decoder', 'batched')  # fmt: skip


# --- the multi-reference teacher -----------------------------------------------------------
RECORDS = [
    {'index': 0, 'context': ['hi'], 'response': 'hello', 'hypotheses': ['h0a', 'h0b', 'h0c']},
    {
        'index': 1,
        'context': ['hi', 'hello', 'how are you ?'],
        'response': 'fine',
        'hypotheses': ['h1a', 'h1b', 'h1c'],
    },
]


def _teacher_examples(path, datatype: str = 'train:ordered', *extra: str) -> list[tuple]:
    opt = ParlaiParser(True, False).parse_args(
        ['-t', 'multiref_ext', '--multiref-file', str(path), '-dt', datatype, *extra]
    )
    teacher = create_task_agent_from_taskname(opt)[0]
    examples = []
    for _ in range(teacher.num_examples()):
        message = teacher.act()
        label = message.get('labels', message.get('eval_labels'))[0]
        examples.append((message['text'], label, message['multiref_source']))
        assert message['episode_done']
    return examples


@pytest.fixture
def refs_file(tmp_path):
    path = tmp_path / 'refs.jsonl'
    path.write_text(''.join(json.dumps(r) + '\n' for r in RECORDS))
    return path


def test_teacher_table4_modes(refs_file):
    ctx0, ctx1 = 'hi', 'hi\nhello\nhow are you ?'
    assert _teacher_examples(refs_file, 'train:ordered', '--multiref-mode', 'gt') == [
        (ctx0, 'hello', 'gt'),
        (ctx1, 'fine', 'gt'),
    ]
    assert _teacher_examples(
        refs_file, 'train:ordered', '--multiref-mode', 'hyp', '--multiref-n-hyps', '2'
    ) == [(ctx0, 'h0a', 'hyp'), (ctx0, 'h0b', 'hyp'), (ctx1, 'h1a', 'hyp'), (ctx1, 'h1b', 'hyp')]
    both = _teacher_examples(
        refs_file, 'train:ordered', '--multiref-mode', 'gt+hyp', '--multiref-n-hyps', '1',
        '--multiref-context-turns', '1',
    )  # fmt: skip
    assert both == [
        (ctx0, 'hello', 'gt'),
        (ctx0, 'h0a', 'hyp'),
        ('how are you ?', 'fine', 'gt'),
        ('how are you ?', 'h1a', 'hyp'),
    ]
    assert len(_teacher_examples(refs_file, 'train:ordered', '--multiref-mode', 'hyp')) == 6
    with pytest.raises(ValueError, match='2 hypotheses|3 hypotheses'):
        _teacher_examples(refs_file, 'train:ordered', '--multiref-n-hyps', '4')


def test_teacher_eval_splits_use_the_ground_truth_only(refs_file, tmp_path):
    with pytest.raises(ValueError, match='--evaltask'):
        _teacher_examples(refs_file, 'valid')
    (tmp_path / 'split.valid.jsonl').write_text(refs_file.read_text())
    template = str(tmp_path / 'split.{split}.jsonl')
    assert [e[2] for e in _teacher_examples(template, 'valid', '--multiref-mode', 'hyp')] == [
        'gt',
        'gt',
    ]


def test_hred_sees_the_same_context_from_multiref_ext_as_from_the_original(hred_model, tmp_path):
    out = tmp_path / 'hyps.jsonl'
    _generate(hred_model, out, '--max-new-contexts', '30')
    agent = create_agent(
        ParlaiParser(True, True).parse_args(['-mf', hred_model, '--max-context-utts', '3'])
    )
    teacher = create_task_agent_from_taskname(
        ParlaiParser(True, False).parse_args(['-t', 'ext_demo', '-dt', 'valid'])
    )[0]
    original = []
    for position, message in iterate_examples(teacher):
        original.append(agent.observe(message)['context_utts'])
        agent.self_observe({})
        if position['index'] == 29:
            break
    agent.reset()
    from_file = []
    for text, label, _ in _teacher_examples(out, 'train:ordered', '--multiref-mode', 'gt'):
        from_file.append(agent.observe({'text': text, 'labels': [label], 'episode_done': True}))
        agent.self_observe({})
    assert [o['context_utts'] for o in from_file] == original
    assert max(len(c) for c in original) == 3


def test_cli_trains_on_hypotheses_and_validates_on_the_original(hred_model, tmp_path):
    out = tmp_path / 'hyps.jsonl'
    _generate(hred_model, out)
    model_file = str(tmp_path / 'student')
    run_parlai(
        'train_model', *HRED, '-t', 'multiref_ext', '--multiref-file', str(out),
        '--multiref-mode', 'gt+hyp', '--multiref-n-hyps', '2', '--evaltask', 'ext_demo',
        '-mf', model_file, '-bs', '16', '--max-train-steps', '12', '--short-final-eval', 'true',
        '--validation-max-exs', '16', '--log-every-n-steps', '4',
        env={**ONE_THREAD, 'PARLAI_DATAPATH': str(tmp_path / 'data')},
    )  # fmt: skip
    stats = json.load(open(model_file + '.trainstats'))
    lines = len(_lines(out))
    assert stats['train_reports'][0]['total_exs'] == 4 * 16  # first log after 4 steps
    assert stats['final_valid_report']['exs'] == 16  # ext_demo valid examples
    assert lines == sum(len(d) for d in generate_split('valid'))


# --- validation of the pseudo-reference file (issue 19.4) ----------------------------------
GOOD = json.dumps(RECORDS[0])


def _record(**changes) -> bytes:
    record = {**RECORDS[1], **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...}).encode()


BAD_LINES = {  # line 2 of a file whose lines 1 and 3 are good -> expected message
    'context_string': (_record(context='hi there'), '"context" is a string, expected a list'),
    'hypotheses_string': (_record(hypotheses='h1a'), '"hypotheses" is a string, expected a list'),
    'context_empty_list': (_record(context=[]), '"context" is an empty list'),
    'context_number_turn': (_record(context=['hi', 3]), r'"context"\[1\] is a number'),
    'response_empty': (_record(response='  '), '"response" is empty'),
    'response_null': (_record(response=None), '"response" is null, expected a non-empty string'),
    'hypotheses_empty_list': (_record(hypotheses=[]), '"hypotheses" is an empty list'),
    'hypothesis_empty': (_record(hypotheses=['h1a', '']), r'"hypotheses"\[1\] is empty'),
    'hypothesis_null': (_record(hypotheses=['h1a', None]), r'"hypotheses"\[1\] is null'),
    'null': (b'null', 'the line is null, expected one JSON object per line'),
    'list': (b'["hi", "hello"]', 'the line is a list, expected one JSON object'),
    'missing_keys': (_record(response=..., hypotheses=...), 'missing response, hypotheses'),
    'not_json': (b'{"context": ["hi"', 'not JSON'),
    'not_utf8': (b'{"context": ["caf\xe9"], "response": "x", "hypotheses": ["y"]}',
                 'not valid UTF-8 \\(byte 0xe9'),
    'wrong_index': (_record(index=7), '"index" is 7, expected 1'),
}  # fmt: skip


def _write_lines(path, *lines: bytes) -> None:
    path.write_bytes(b''.join(line + b'\n' for line in lines))


def _third() -> bytes:
    return json.dumps({**RECORDS[0], 'index': 2, 'hypotheses': ['h2a', 'h2b', 'h2c']}).encode()


@pytest.mark.parametrize('case', sorted(BAD_LINES))
def test_each_malformed_record_names_file_and_line(case, tmp_path):
    line, message = BAD_LINES[case]
    path = tmp_path / 'refs.jsonl'
    _write_lines(path, GOOD.encode(), line, _third())
    with pytest.raises(MalformedDataError, match=rf'^{path}:2: {message}') as err:
        _teacher_examples(path)
    assert '--skip-malformed true' in str(err.value)
    # skipped: the bad context (all its references) is left out, the others are kept
    kept = _teacher_examples(path, 'train:ordered', '--skip-malformed', 'true')
    assert [label for _, label, _ in kept] == ['h0a', 'h0b', 'h0c', 'h2a', 'h2b', 'h2c']


def test_skip_malformed_counts_and_reports_once(tmp_path, monkeypatch):
    path = tmp_path / 'refs.jsonl'
    fourth = json.dumps({**RECORDS[0], 'index': 3, 'hypotheses': ['h3a']}).encode()
    _write_lines(path, GOOD.encode(), b'null', _record(index=2, hypotheses='x'), fourth)
    warnings = []
    monkeypatch.setattr(common.logging, 'warning', warnings.append)
    kept = _teacher_examples(path, 'train:ordered', '--skip-malformed', 'true')
    assert [label for _, label, _ in kept] == ['h0a', 'h0b', 'h0c', 'h3a']
    assert warnings == [
        f'multiref_ext: skipped 2 malformed line(s)/entries (2 contexts left out); first: '
        f'{path}:2: the line is null, expected {RECORD_FORMAT}'
    ]


def test_fewer_hypotheses_than_asked_is_a_record_error(refs_file, tmp_path):
    path = tmp_path / 'refs.jsonl'
    _write_lines(path, GOOD.encode(), _record(hypotheses=['h1a']))
    with pytest.raises(MalformedDataError, match=rf'^{path}:2: 1 hypotheses, expected at least'):
        _teacher_examples(path, 'train:ordered', '--multiref-n-hyps', '2')
    kept = _teacher_examples(
        path, 'train:ordered', '--multiref-n-hyps', '2', '--skip-malformed', 'true'
    )
    assert [label for _, label, _ in kept] == ['h0a', 'h0b']
    # ground truth only: the hypotheses are not used, so their number does not matter
    assert len(_teacher_examples(path, 'train:ordered', '--multiref-mode', 'gt')) == 2


@pytest.mark.parametrize('content', [b'', b'\n\n  \n'])
def test_empty_file_is_an_error(content, tmp_path):
    path = tmp_path / 'refs.jsonl'
    path.write_bytes(content)
    with pytest.raises(MalformedDataError, match=rf'^{path}:1: the file is empty, expected'):
        _teacher_examples(path)


def test_everything_skipped_is_an_error(tmp_path):
    path = tmp_path / 'refs.jsonl'
    _write_lines(path, b'null', b'[]')
    with pytest.raises(MalformedDataError, match='no usable examples'):
        _teacher_examples(path, 'train:ordered', '--skip-malformed', 'true')


def test_blank_lines_crlf_bom_and_extra_keys_are_accepted(tmp_path):
    path = tmp_path / 'refs.jsonl'
    first = json.dumps({**RECORDS[0], 'logprobs': [-1.0, -2.0, -3.0], 'episode': 0})
    path.write_bytes(b'\xef\xbb\xbf' + first.encode() + b'\r\n\r\n')
    assert _teacher_examples(path, 'train:ordered', '--multiref-mode', 'gt') == [
        ('hi', 'hello', 'gt')
    ]


# --- the batched nucleus decoder against its exact law ---------------------------------------
def _first_token_law(agent, observation, top_p: float) -> torch.Tensor:
    """Exact law of the first sampled token: the teacher's next-token distribution after the
    start token (temperature applied, END banned by ``--beam-min-length`` 1), restricted to
    its nucleus of mass ``top_p``."""
    batch = agent.batchify([observation])
    model = agent.model
    with torch.no_grad():
        states = model.encoder(*agent._encoder_input(batch))
        start = agent._get_initial_decoder_input(1, 1, batch.text_vec.device)
        hidden, _ = model.decoder(start, states, None)
        logits = model.output(hidden[:, -1:, :])[0, 0].double() / agent.temperature
    assert agent.beam_min_length == 1  # ParlAI's default
    logits[agent.END_IDX] = float('-inf')
    probs = torch.softmax(logits, dim=-1)
    kept = torch.tensor([float(probs[probs > q].sum()) < top_p for q in probs])
    return probs * kept / (probs * kept).sum(), probs


@pytest.mark.parametrize('temperature', [1.0, 0.7])
def test_batched_nucleus_decoder_chi_square_at_p_0_9(hred_model, temperature):
    from scipy.stats import chisquare

    from parlai_ext.scripts.generate_pseudo_refs import batched_nucleus

    agent = create_agent(
        ParlaiParser(True, True).parse_args(['-mf', hred_model, '--temperature', str(temperature)])
    )
    agent.model.eval()
    with torch.no_grad():  # a peaked, untrained teacher: some tokens fall out of the nucleus
        agent.model.net.output_bias.copy_(torch.linspace(4, -4, len(agent.dict)))
    observation = agent.observe({'text': 'hello , how are you ?', 'episode_done': True})
    law, full = _first_token_law(agent, observation, 0.9)
    assert 3 < int((law > 0).sum()) < len(law) - 10  # the nucleus really cuts
    n = 6000
    batch = agent.batchify([observation] * n)
    torch.manual_seed(0)
    samples = batched_nucleus(agent, batch, max_len=2, top_p=0.9)  # token, then forced END
    assert all(text for text, _ in samples)  # END is banned at the first step
    ids = [agent.dict.tok2ind[text] for text, _ in samples]
    counts = torch.bincount(torch.tensor(ids), minlength=len(law)).double()
    assert counts[law == 0].sum() == 0  # nothing outside the nucleus
    support = law > 0
    pvalue = chisquare(counts[support].numpy(), (law[support] * n).numpy()).pvalue
    assert pvalue > 1e-3
    possible = full > 0  # power: the untruncated law is rejected
    assert chisquare(counts[possible].numpy(), (full[possible] * n).numpy()).pvalue < 1e-6
    # the score: log p(token) + log p(END | token) under the full (tempered) distribution
    text, score = samples[0]
    assert score <= math.log(full[agent.dict.tok2ind[text]]) + 1e-5


def test_one_encoding_per_context_gives_the_same_samples_as_n_encodings(hred_model, tmp_path):
    """--hyp-encode-once yes copies each context's encoder state to its N rows: under the same
    seed every row sees the logits it would see with N encodings, so the N full-distribution
    samples per context (p = 1) are the same, context by context."""
    lines = {}
    for mode in ('yes', 'no'):
        out = tmp_path / f'{mode}.jsonl'
        _generate(hred_model, out, '--max-new-contexts', '10', '--num-hyps', '3', '--hyp-topp',
                  '1.0', '--hyp-max-len', '6', '-bs', '12', '--hyp-encode-once', mode)  # fmt: skip
        lines[mode] = _lines(out)
    assert [r['hypotheses'] for r in lines['yes']] == [r['hypotheses'] for r in lines['no']]
    for yes, no in zip(lines['yes'], lines['no']):
        assert yes['logprobs'] == pytest.approx(no['logprobs'], abs=1e-3)
    hyps = [h for r in lines['yes'] for h in r['hypotheses']]
    assert len(set(hyps)) > len(hyps) // 2  # independent samples, not N copies of one


def test_encode_once_auto_only_for_encoders_without_randomness(hred_model, tmp_path):
    from parlai.core.agents import create_agent_from_model_file

    from parlai_ext.scripts.generate_pseudo_refs import resolve_encode_once

    hred = create_agent_from_model_file(hred_model)
    vhred = create_agent(
        ParlaiParser(True, True).parse_args(
            [
                '-m',
                'vhred',
                '--embedding-size',
                '8',
                '--hidden-size',
                '8',
                '--latent-size',
                '4',
                '--dict-file',
                hred_model + '.dict',
            ]  # fmt: skip
        )
    )
    assert not resolve_encode_once(hred, 'auto', 'batched')  # not known to be deterministic
    assert not resolve_encode_once(vhred, 'auto', 'batched')  # z is drawn in its encoder
    assert resolve_encode_once(vhred, 'yes', 'batched')
    assert not resolve_encode_once(hred, 'yes', 'parlai')  # ParlAI's search encodes each row
    from test_hf import tiny_checkpoint

    lm = create_agent(
        ParlaiParser(True, True).parse_args(
            [
                '-m',
                'hf_generator',
                '--hf-model-dir',
                tiny_checkpoint(tmp_path / 'lm', 'llama'),
                '--bf16',
                'false',
                '--datapath',
                str(tmp_path / 'data'),
            ]  # fmt: skip
        )
    )
    assert resolve_encode_once(lm, 'auto', 'batched')  # a causal LM's key/value cache
    assert not resolve_encode_once(lm, 'no', 'batched')


def test_component_weights_summary_reads_pi_and_the_model_options(tmp_path):
    """projects/multiref/component_weights.py: pi_k in order, the model's own options (not
    eval_model's defaults), components used = mean weight >= 1 / (2K); none for VHRED."""
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        'component_weights',
        os.path.join(
            os.path.dirname(__file__), '..', 'projects', 'multiref', 'component_weights.py'
        ),  # fmt: skip
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model_file = tmp_path / 'model'
    (tmp_path / 'model.opt').write_text(
        json.dumps({'model': 'vhred_lgm', 'latent_prior': 'lgm', 'lgm_kl': 'authors'})
    )
    report = {'pi_2': 0.05, 'pi_0': 0.6, 'pi_1': 0.35, 'pi_max': 0.7, 'exs': 200}
    path = tmp_path / 'valid.json'
    path.write_text(json.dumps({'opt': {'model_file': str(model_file), 'lgm_kl': 'exact'},
                                'report': report}))  # fmt: skip
    assert module.main([str(path)]) == 0
    summary = json.loads((tmp_path / 'component_weights.json').read_text())
    assert summary['pi_mean'] == [0.6, 0.35, 0.05] and summary['pi_max'] == 0.7
    assert summary['lgm_kl'] == 'authors' and summary['n_components'] == 3
    assert summary['used'] == 2 and summary['num_examples'] == 200  # 0.05 < 1/6
    assert module.component_weights(str(path)) == summary
    path.write_text(json.dumps({'opt': {}, 'report': {'ppl': 3.0}}))
    assert module.component_weights(str(path)) is None
    path.write_text('{"opt": {}}')
    with pytest.raises(SystemExit, match='valid.json:1: no "report"'):
        module.component_weights(str(path))
