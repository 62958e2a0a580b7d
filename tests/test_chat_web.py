"""``parlai chat_web`` and the candidates display (``parlai_ext/candidates.py``).

The candidate records and their text table by hand; the HTTP interface against a fake agent that
emits ``plato2_candidates``; the page in headless Chromium (Debian's ``chromium`` +
``chromium-driver``, driven as in ``test_interactive_web.py``; skipped without them): offline (no
request leaves the server, the stylesheet applies), the candidates table of the fake agent cell by
cell, and the zoo PLATO-2's 20 candidates through the real command; ``parlai interactive
--show-candidates`` on the zoo model.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import PARLAI_BIN
from test_interactive_web import (  # noqa: F401 (fixtures)
    _stop,
    _wait_for_port,
    chromedriver,
    small_plato2,
)

from parlai_ext.candidates import (
    CANDIDATES_FIELD,
    add_show_candidates_option,
    candidate_records,
    format_candidates,
    latent_id_search,
    message_candidates,
)
from parlai_ext.scripts.chat_web import ChatSession, check_opt, make_server, static_files

K = 20  # the small PLATO-2's latent values (n_latent)
MESSAGE = 'hi , how are you today ?'


# --- candidate records and their text table ------------------------------------------------------
def test_candidate_records_score_is_ranking_minus_penalty_first_is_chosen():
    records = candidate_records(
        texts=['c', 'b', 'a'],
        latents=[2, 1, 0],
        logprobs=[-2.0, -1.0, -3.0],
        ranking_scores=[0.7, 0.5, 0.9],
        penalties=[0.0, 0.0, 1000.0],
    )
    assert [r['text'] for r in records] == ['c', 'b', 'a']  # the agent's order, kept
    assert [r['latent'] for r in records] == [2, 1, 0]
    assert [r['score'] for r in records] == pytest.approx([0.7, 0.5, 0.9 - 1000.0])
    assert [r['evaluator'] for r in records] == [0.7, 0.5, 0.9]
    assert [r['logprob'] for r in records] == [-2.0, -1.0, -3.0]
    assert [r['penalty'] for r in records] == [0.0, 0.0, 1000.0]
    assert [r['chosen'] for r in records] == [True, False, False]
    by_logprob = candidate_records(['x'], [4], [-2.0], [-0.5], [0.0], evaluator=False)
    assert by_logprob[0]['evaluator'] is None and by_logprob[0]['score'] == -0.5
    with pytest.raises(ValueError, match='one entry per candidate'):
        candidate_records(['a', 'b'], [0], [0.0], [0.0], [0.0])
    # n_tokens (the logprob ranking's divisor) only when given, one per candidate
    assert 'n_tokens' not in by_logprob[0]
    counted = candidate_records(['x', 'y'], [0, 1], [-2.0, -1.0], [0.1, 0.2], [0.0, 0.0],
                                n_tokens=[3, 5])  # fmt: skip
    assert [r['n_tokens'] for r in counted] == [3, 5]
    with pytest.raises(ValueError, match='one entry per candidate'):
        candidate_records(['x', 'y'], [0, 1], [-2.0, -1.0], [0.1, 0.2], [0.0, 0.0], n_tokens=[3])


@pytest.mark.parametrize('length_penalty, order', [(0.0, [1, 0, 2]), (0.65, [1, 2, 0])])
def test_latent_id_search_names_the_hypothesis_of_each_candidate(length_penalty, order):
    """Row j of a K-hypothesis sampling search decodes latent j and emits token 3 + j first.

    Sums of log-probabilities: row 0 -2.0 (ends at step 1), row 1 -0.6 (step 1), row 2 -2.2
    (step 2; a length penalty ranks it above row 0), row 3 never ends: not a candidate."""
    import torch
    from parlai.core.torch_generator_agent import TopKSampling

    search_cls = latent_id_search(TopKSampling)
    assert latent_id_search(TopKSampling) is search_cls  # one class per ParlAI search
    search = search_cls(1, 4, min_length=0, length_penalty=length_penalty, eos_token=2)
    steps = [
        {0: (3, -2.0), 1: (4, -0.5), 2: (5, -1.0), 3: (7, -0.1)},
        {0: (2, 0.0), 1: (2, -0.1), 2: (6, -1.0), 3: (7, -0.1)},
        {0: (7, 0.0), 1: (7, 0.0), 2: (2, -0.2), 3: (7, -0.1)},
    ]
    for step, picks in enumerate(steps):
        logprobs = torch.full((4, 8), -100.0)
        for row, (token, logprob) in picks.items():
            logprobs[row, token] = logprob
        search.advance(logprobs, step)
    ranked = search.get_rescored_finished()
    assert search.latent_ids == order
    totals, lengths = {0: -2.0, 1: -0.6, 2: -2.2}, {0: 3, 1: 3, 2: 4}  # lengths with BOS, EOS
    assert [float(score) for _, score, _ in ranked] == pytest.approx(
        [totals[z] / ((1 + lengths[z]) / 6) ** length_penalty for z in order]
    )
    for (tokens, _, _), latent in zip(ranked, search.latent_ids, strict=True):
        assert tokens.tolist()[:2] == [1, 3 + latent]  # BOS, then the row's own first token


def test_message_candidates_reads_the_field_else_beam_texts_else_text_candidates():
    field = [
        {'text': 'fine .', 'latent': 3, 'score': 0.8, 'logprob': -4.0, 'evaluator': 0.8,
         'penalty': 0.0, 'chosen': True},
        {'text': 'ok .', 'latent': 11, 'score': float('nan'), 'chosen': False},
    ]  # fmt: skip
    got = message_candidates({'text': 'fine .', CANDIDATES_FIELD: field, 'beam_texts': [('x', 1)]})
    assert got[0] == field[0]
    assert got[1] == {'text': 'ok .', 'latent': 11, 'score': None, 'logprob': None,
                      'evaluator': None, 'penalty': None, 'chosen': False}  # fmt: skip
    json.dumps(got, allow_nan=False)  # NaN became None: the page gets valid JSON
    # ParlAI's beam: (text, score) pairs; the reply's text is marked chosen (its first copy)
    beam = message_candidates({'text': 'b', 'beam_texts': [('a', -1.0), ('b', -2.0), ('b', -3.0)]})
    assert [(c['text'], c['score'], c['chosen']) for c in beam] == [
        ('a', -1.0, False), ('b', -2.0, True), ('b', -3.0, False),
    ]  # fmt: skip
    assert all(c['latent'] is None and c['evaluator'] is None for c in beam)
    ranked = message_candidates({'text': 'q', 'text_candidates': ['p', 'q']})
    assert [(c['text'], c['score'], c['chosen']) for c in ranked] == [
        ('p', None, False), ('q', None, True),
    ]  # fmt: skip
    assert message_candidates({'text': 'alone'}) == []


def test_format_candidates_table():
    table = format_candidates(
        [
            {
                'text': 'i am  fine .',
                'latent': 7,
                'score': 0.91234,
                'evaluator': 0.91234,
                'logprob': -5.678,
                'penalty': 0.0,
                'chosen': True,
            },
            {'text': 'x' * 120, 'latent': None, 'score': -1.5},
        ]  # fmt: skip
    )
    assert table.splitlines() == [
        '[2 candidates, best first; * = the reply]',
        '    #   z    score evaluator  logprob penalty  text',
        '*   1   7    0.912     0.912    -5.68     0.0  i am fine .',
        '    2   -   -1.500         -        -       -  ' + 'x' * 97 + '...',
    ]
    assert format_candidates([]).startswith('[no candidates')


def test_show_candidates_option_prints_after_each_reply(capsys):
    from parlai.agents.local_human.local_human import LocalHumanAgent
    from parlai.core.params import ParlaiParser

    class Human(LocalHumanAgent):  # a subclass: ParlAI's own class stays as it is here
        pass

    add_show_candidates_option(Human)
    add_show_candidates_option(Human)  # idempotent: one option, one print
    parser = ParlaiParser(False, False)
    Human.add_cmdline_args(parser)
    assert parser.parse_args([])['show_candidates'] is False
    reply = {'id': 'Model', 'text': 'fine .', 'episode_done': False,
             'beam_texts': [('fine .', -1.0), ('ok .', -2.0)]}  # fmt: skip
    for flag, shown in (('false', False), ('true', True)):
        opt = parser.parse_args(['--show-candidates', flag])
        human = Human(opt)
        capsys.readouterr()
        human.observe(reply)
        out = capsys.readouterr().out
        assert 'fine .' in out  # ParlAI's own display of the reply
        assert ('[2 candidates, best first' in out) is shown
        assert out.count('*   1   -   -1.000') == int(shown)


# --- the HTTP interface, with a fake agent ---------------------------------------------------------
class FakeAgent:
    """Replies 'reply N' with three candidates in the PLATO-2 field (reply N has latent N+6)."""

    def __init__(self):
        self.seen: list[dict] = []
        self.resets = 0

    def observe(self, message):
        self.seen.append(dict(message))

    def act(self):
        n = len(self.seen)
        candidates = candidate_records(
            texts=[f'reply {n}', f'other {n}', 'blocked .'],
            latents=[n + 6, 2, 15],
            logprobs=[-4.25, -3.5, -1.0],
            ranking_scores=[0.875, 0.5, 0.95],
            penalties=[0.0, 0.0, 1000.0],
        )
        return {'id': 'Fake', 'text': f'reply {n}', 'episode_done': False,
                CANDIDATES_FIELD: candidates}  # fmt: skip

    def reset(self):
        self.resets += 1
        self.seen.clear()


@pytest.fixture
def fake_server():
    """``parlai chat_web``'s server on a fake agent, in a thread; yields (url, agent)."""
    agent = FakeAgent()
    server = make_server(ChatSession(agent, 'fake-model'), '127.0.0.1', 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}/', agent
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method='POST')
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def test_interact_returns_the_reply_and_its_candidates(fake_server):
    url, agent = fake_server
    status, data = _post(url + 'interact', json.dumps({'text': '  hello  '}).encode())
    assert status == 200
    assert agent.seen == [{'text': 'hello', 'episode_done': False}]
    assert data['text'] == 'reply 1' and data['episode_done'] is False
    assert [(c['text'], c['latent'], c['chosen']) for c in data['candidates']] == [
        ('reply 1', 7, True), ('other 1', 2, False), ('blocked .', 15, False),
    ]  # fmt: skip
    assert data['candidates'][2]['score'] == pytest.approx(0.95 - 1000.0)
    assert _post(url + 'reset', b'') == (200, {})
    assert agent.resets == 1
    for body, reason in (
        (b'hello', 'not JSON'),
        (b'{"text": "   "}', 'text: empty'),
        (b'["hello"]', 'expected a JSON object'),
        (json.dumps({'text': 'y' * 4001}).encode(), 'at most 4000'),
    ):
        status, data = _post(url + 'interact', body)
        assert status == 400 and reason in data['error']
    assert agent.seen == []  # refused requests never reach the agent
    assert _post(url + 'nothing', b'{}')[0] == 404


def test_options_are_checked_before_the_model_loads():
    check_opt({'port': 0, 'model_file': 'm'})
    check_opt({'port': 65535, 'model': 'plato2'})
    with pytest.raises(ValueError, match='--port 65536: expected 0'):
        check_opt({'port': 65536, 'model_file': 'm'})
    with pytest.raises(ValueError, match='--port -1'):
        check_opt({'port': -1, 'model_file': 'm'})
    with pytest.raises(ValueError, match='needs a model'):
        check_opt({'port': 8080, 'model_file': None, 'model': None})


def test_page_is_self_contained(fake_server):
    """No absolute URL anywhere in the page's files: nothing to fetch from a CDN."""
    files = static_files()
    assert set(files) == {'index.html', 'chat.css', 'chat.js'}
    for name, content in files.items():
        assert not re.search(rb'(https?:)?//[a-z0-9.-]+\.[a-z]{2,}', content, re.I), name
    url, _ = fake_server
    with urllib.request.urlopen(url + 'static/chat.css', timeout=30) as response:
        assert response.headers['Content-Type'] == 'text/css; charset=utf-8'
        assert response.read() == files['chat.css']
    with urllib.request.urlopen(url, timeout=30) as response:
        assert response.read() == files['index.html']
    with pytest.raises(urllib.error.HTTPError, match='404'):
        urllib.request.urlopen(url + 'static/../chat_web.py', timeout=30)


# --- the page in headless Chromium -----------------------------------------------------------------
READ_ROWS = """
return Array.from(document.querySelectorAll('#log .row')).map(row => [
    row.className, row.querySelector('.speaker').textContent, row.querySelector('.text').textContent,
    row.querySelector('.meta') ? row.querySelector('.meta').textContent : null]);
"""
READ_TABLE = """
return Array.from(document.querySelectorAll('#candBody tr')).map(
    tr => [tr.className, ...Array.from(tr.cells).map(td => td.textContent)]);
"""
# every resource the page loaded, and whether the stylesheet applied (the bar's accent colour)
READ_LOADS = """
return [performance.getEntriesByType('resource').map(e => e.name),
        getComputedStyle(document.querySelector('.bar')).backgroundColor,
        getComputedStyle(document.querySelector('.layout')).display];
"""


def _eventually(browser, script: str, timeout: float = 10):
    """The value of ``script`` once it is truthy (or the last value after ``timeout``)."""
    deadline = time.monotonic() + timeout
    value = browser.script(script)
    while not value and time.monotonic() < deadline:
        time.sleep(0.05)
        value = browser.script(script)
    return value


MODEL_NAME = "return document.getElementById('model').textContent"


def _send(browser, text: str, n_rows: int, timeout: float, log: Path | None = None) -> list:
    browser.command('POST', f'/element/{browser.element("#userIn")}/value', {'text': text})
    browser.command('POST', f'/element/{browser.element("#respond")}/click', {})
    deadline = time.monotonic() + timeout
    rows = browser.script(READ_ROWS)
    while len(rows) < n_rows and time.monotonic() < deadline:
        time.sleep(0.1)
        rows = browser.script(READ_ROWS)
    assert len(rows) == n_rows, f'{rows}\n{log.read_text()[-4000:] if log else ""}'
    return rows


def test_page_shows_candidates_beside_the_reply(chromedriver, fake_server):  # noqa: F811
    url, agent = fake_server
    browser = chromedriver
    browser.command('POST', '/url', {'url': url})
    assert browser.script('return document.title') == 'parlai-ext chat'
    assert _eventually(browser, MODEL_NAME) == 'fake-model'  # once /info came back
    resources, bar_colour, layout = browser.script(READ_LOADS)
    assert sorted(resources) == [url + 'info', url + 'static/chat.css', url + 'static/chat.js']
    assert (bar_colour, layout) == ('rgb(37, 99, 235)', 'grid')  # styled, with nothing external
    assert browser.script("return document.getElementById('candTable').hidden") is True

    rows = _send(browser, MESSAGE, 3, timeout=20)
    assert rows[1:] == [
        ['row you', 'You', MESSAGE, None],
        ['row model selected', 'Model', 'reply 1', 'chosen from 3 candidates · latent z = 7'],
    ]
    assert agent.seen == [{'text': MESSAGE, 'episode_done': False}]
    assert browser.script(READ_TABLE) == [
        ['chosen', '1 ★', '7', '0.875', '0.875', '-4.25', '0.0', 'reply 1'],
        ['', '2', '2', '0.500', '0.500', '-3.50', '0.0', 'other 1'],
        ['', '3', '15', '-999.050', '0.950', '-1.00', '1000.0', 'blocked .'],
    ]
    assert browser.script("return document.getElementById('candCount').textContent") == '(3)'

    rows = _send(browser, 'and you ?', 5, timeout=20)
    assert rows[4][2:] == ['reply 2', 'chosen from 3 candidates · latent z = 8']
    assert browser.script(READ_TABLE)[0][2] == '8'
    # clicking the first reply brings its candidates back beside it
    browser.script('document.querySelector(\'.row.model[data-reply="0"]\').click()')
    assert browser.script(READ_TABLE)[0][1:3] == ['1 ★', '7']
    assert [r[0] for r in browser.script(READ_ROWS)[1:]] == [
        'row you', 'row model selected', 'row you', 'row model',
    ]  # fmt: skip

    browser.command('POST', f'/element/{browser.element("#restart")}/click', {})
    deadline = time.monotonic() + 10
    while len(browser.script(READ_ROWS)) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [r[1] for r in browser.script(READ_ROWS)] == ['Instructions']
    assert agent.resets == 1
    assert browser.script(READ_TABLE) == []


@pytest.fixture
def plato2_chat_web(tmp_path, small_plato2):  # noqa: F811
    """``parlai chat_web`` on a tiny K = 20 PLATO-2 (greedy per latent); yields (url, log)."""
    log = tmp_path / 'chat_web.log'
    env = {'PARLAI_DATAPATH': str(tmp_path / 'data'), 'PYTHONUNBUFFERED': '1'}
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [str(PARLAI_BIN), 'chat_web', '-mf', small_plato2, '--inference', 'greedy',
             '--host', '127.0.0.1', '--port', '0'],
            stdout=out, stderr=subprocess.STDOUT, env={**dict(os.environ), **env},
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        found = None
        while found is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            found = re.search(r'chat_web: serving on (http://127\.0\.0\.1:(\d+)/)', log.read_text())
        assert found, f'chat_web did not start:\n{log.read_text()[-4000:]}'
        _wait_for_port(int(found.group(2)), proc, log, timeout=10)
        yield found.group(1), log
    finally:
        _stop(proc)


def test_plato2_page_shows_its_k_candidates(chromedriver, plato2_chat_web, small_plato2):  # noqa: F811
    url, log = plato2_chat_web
    browser = chromedriver
    browser.command('POST', '/url', {'url': url})
    assert _eventually(browser, MODEL_NAME) == small_plato2
    rows = _send(browser, MESSAGE, 3, timeout=45, log=log)
    reply = rows[2][2]
    assert rows[2][:2] == ['row model selected', 'Model'] and reply.strip()
    assert rows[2][3].startswith(f'chosen from {K} candidates')
    table = browser.script(READ_TABLE)
    assert len(table) == K  # one candidate per latent value
    chosen = [row for row in table if row[0] == 'chosen']
    assert len(chosen) == 1 and chosen[0][1] == '1 ★' and chosen[0][-1] == reply
    scores = [float(row[3]) for row in table]
    assert scores == sorted(scores, reverse=True)  # best first
    latents = [row[2] for row in table]
    # with the agent's plato2_candidates field: each latent value once; else the beam has none
    assert latents == ['-'] * K or sorted(map(int, latents)) == list(range(K))
    assert '"POST /interact HTTP/1.1" 200' in log.read_text()


def test_interactive_show_candidates_on_plato2(tmp_path, small_plato2):  # noqa: F811
    """``parlai interactive --show-candidates``: K candidates after the reply, the reply starred.

    The option is installed by ``parlai_ext.compat`` on ParlAI's ``LocalHumanAgent``; the
    script applies it itself as well (idempotent), so this test holds either way."""
    code = (
        'import sys\n'
        'from parlai.agents.local_human.local_human import LocalHumanAgent\n'
        'from parlai_ext.candidates import add_show_candidates_option\n'
        'add_show_candidates_option(LocalHumanAgent)\n'
        'from parlai.scripts.interactive import Interactive\n'
        'Interactive.main(*sys.argv[1:])\n'
    )
    proc = subprocess.run(
        [sys.executable, '-c', code, '-mf', small_plato2, '--inference', 'greedy', '--show-candidates',
         'true'],
        input=MESSAGE + '\n', capture_output=True, text=True, timeout=120,
        env={**dict(os.environ), 'PARLAI_DATAPATH': str(tmp_path / 'data')},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert f'[{K} candidates, best first; * = the reply]' in out, out[-3000:]
    lines = out[out.index(f'[{K} candidates') :].splitlines()[2 : 2 + K]
    assert [line.split()[1 if line.startswith('*') else 0] for line in lines] == [
        str(rank) for rank in range(1, K + 1)
    ]
    starred = [line for line in lines if line.startswith('*')]
    assert len(starred) == 1 and starred[0].startswith('*   1 ')
    reply = re.search(r'\[\w+\]: (.*)', out)
    assert reply, out[-3000:]
    assert starred[0].split(None, 7)[-1] == ' '.join(reply.group(1).split())
