"""``parlai interactive_web -mf zoo:...`` in a real browser: headless Chromium chats with the zoo.

The browser is Debian's ``chromium`` driven by its ``chromium-driver`` through the W3C WebDriver
protocol, which is plain JSON over HTTP: a few ``urllib`` calls, so no Selenium (and no Selenium
Manager that could try to download a driver). Skipped only when either Debian package is missing.
ParlAI's stock page (tested here) takes its stylesheet from a CDN; our own offline page,
``parlai chat_web``, is tested in ``test_chat_web.py`` with the helpers of this file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import PARLAI_BIN

CHROMIUM = Path('/usr/bin/chromium')
CHROMEDRIVER = Path('/usr/bin/chromedriver')
MESSAGE = 'hi , how are you today ?'
# Headless on a closed network: no sandbox (root in CI), no GPU, no background traffic, and every
# host name but the loopback fails at once (the page links a stylesheet and a script on CDNs).
CHROMIUM_ARGS = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-quic',
    '--no-first-run', '--no-default-browser-check', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-extensions', '--no-proxy-server',
    '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1', '--window-size=1024,768',
]  # fmt: skip
# The page's chat rows (ParlAI's WEB_HTML): <article> in #parent, <strong>speaker</strong><br>text
READ_ROWS = """
return Array.from(document.querySelectorAll('#parent article p')).map(
    p => [p.querySelector('strong').textContent, p.lastChild.textContent.trim()]);
"""
ELEMENT = 'element-6066-11e4-a52e-4f735466cecf'  # the W3C WebDriver element reference key


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Return once ``port`` accepts connections; fail if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f'{proc.args[0]} exited {proc.returncode}:\n{log.read_text()[-4000:]}')
        try:
            with socket.create_connection(('127.0.0.1', port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f'nothing answers on port {port} after {timeout} s:\n{log.read_text()[-4000:]}')


def _stop(proc: subprocess.Popen) -> None:
    """End a process this test started (and, for its own process group, its children)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class WebDriver:
    """The handful of W3C WebDriver commands this test needs, sent to chromedriver."""

    def __init__(self, port: int):
        self.base = f'http://127.0.0.1:{port}'
        self.session = None

    def call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base + path, data=data, method=method,
            headers={'Content-Type': 'application/json; charset=utf-8'},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.load(response)['value']
        except urllib.error.HTTPError as error:  # WebDriver errors come as JSON bodies
            raise AssertionError(f'{method} {path}: {error.code} {error.read()[:2000]!r}') from None

    def start(self, user_data_dir: Path) -> None:
        options = {
            'binary': str(CHROMIUM),
            'args': [*CHROMIUM_ARGS, f'--user-data-dir={user_data_dir}'],
        }
        capabilities = {'browserName': 'chrome', 'goog:chromeOptions': options}
        reply = self.call('POST', '/session', {'capabilities': {'alwaysMatch': capabilities}})
        self.session = reply['sessionId']

    def quit(self) -> None:
        if self.session is not None:
            self.call('DELETE', f'/session/{self.session}')
            self.session = None

    def command(self, method: str, path: str, body: dict | None = None):
        return self.call(method, f'/session/{self.session}{path}', body)

    def element(self, css: str) -> str:
        return self.command('POST', '/element', {'using': 'css selector', 'value': css})[ELEMENT]

    def script(self, source: str):
        return self.command('POST', '/execute/sync', {'script': source, 'args': []})


@pytest.fixture
def chromedriver(tmp_path):
    """A chromedriver process and a headless Chromium session (both ended afterwards)."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        pytest.skip(
            f"{' and '.join(missing)} missing: the web test needs Debian's chromium and "
            'chromium-driver packages (apt-get install chromium chromium-driver)'
        )
    port = _free_port()
    log = tmp_path / 'chromedriver.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [str(CHROMEDRIVER), f'--port={port}'], stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Chromium is ended with it
        )  # fmt: skip
    driver = WebDriver(port)
    try:
        _wait_for_port(port, proc, log, timeout=20)
        driver.start(tmp_path / 'chromium-profile')
        yield driver
    finally:
        try:
            driver.quit()
        finally:
            _stop(proc)


@pytest.fixture(scope='session')
def small_plato2(tmp_path_factory) -> str:
    """A tiny PLATO-2 with K = 20 latents (``test_demo.tiny_plato2``, seconds to train): the
    web pages are tested on it rather than on the zoo's SmolLM2 entry, whose first start
    unpacks a 135M-parameter base (``test_zoo`` chats with that entry)."""
    from test_demo import tiny_plato2

    return tiny_plato2(tmp_path_factory.mktemp('small_plato2'), n_latent=20)


@pytest.fixture
def web_server(tmp_path, small_plato2):
    """``parlai interactive_web`` on a tiny K = 20 PLATO-2, greedy decoding; yields (url, log)."""
    port = _free_port()
    log = tmp_path / 'interactive_web.log'
    env = {**os.environ, 'PARLAI_DATAPATH': str(tmp_path / 'data'), 'PYTHONUNBUFFERED': '1'}
    with open(log, 'w') as out:
        proc = subprocess.Popen(
            [str(PARLAI_BIN), 'interactive_web', '-mf', small_plato2,
             '--inference', 'greedy', '--host', '127.0.0.1', '--port', str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for_port(port, proc, log, timeout=90)
        yield f'http://127.0.0.1:{port}/', log
    finally:
        _stop(proc)


def test_chat_page_shows_the_bots_reply(chromedriver, web_server):
    url, server_log = web_server
    browser = chromedriver
    browser.command('POST', '/url', {'url': url})
    assert browser.script('return document.title').strip() == 'Interactive Run'
    assert browser.script(READ_ROWS) == [
        ['Instructions', 'Enter a message, and the model will respond interactively.']
    ]
    browser.command('POST', f'/element/{browser.element("#userIn")}/value', {'text': MESSAGE})
    browser.command('POST', f'/element/{browser.element("#respond")}/click', {})

    deadline = time.monotonic() + 45  # one reply: 20 latent candidates, reranked (~7 s here)
    rows = browser.script(READ_ROWS)
    while len(rows) < 3 and time.monotonic() < deadline:
        time.sleep(0.25)
        rows = browser.script(READ_ROWS)
    assert len(rows) == 3, (
        f'no reply on the page after 45 s: {rows}\n{server_log.read_text()[-4000:]}'
    )
    (you, said), (model, reply) = rows[1:]
    assert (you, said) == ('You', MESSAGE)
    assert model == 'Model'
    assert reply.strip(), 'the bot replied with empty text'
    assert reply.strip() != MESSAGE, 'the page shows the echo of the user message, not a reply'
    assert '"POST /interact HTTP/1.1" 200' in server_log.read_text()  # it came from the server
    assert browser.script("return document.getElementById('userIn').value") == ''
