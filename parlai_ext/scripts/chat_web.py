"""``parlai chat_web``: chat with a model in the browser, and see what each reply was chosen from.

A self-contained page (``parlai_ext/web/``: HTML, CSS and JavaScript served by this script, no
CDN, so it looks the same offline) with the conversation on the left and, beside it, the
candidates of the selected reply: for PLATO-2 the K candidates (one per latent value z) with
their score, evaluator score, log-probability and penalty, the chosen one marked
(:mod:`parlai_ext.candidates`). Other generators show their beam (``beam_texts``)::

    parlai chat_web -mf zoo:plato2/dailydialog_smollm2/model --port 8080
    # then open http://localhost:8080/

``--port 0`` picks a free port; the address is printed as ``chat_web: serving on URL``.
The HTTP interface: ``POST /interact`` with ``{"text": "..."}`` answers
``{"text", "candidates", "episode_done"}``; ``POST /reset`` starts a new conversation;
``GET /info`` gives the model file. ParlAI's stock ``parlai interactive_web`` still exists.
"""

from __future__ import annotations

import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from parlai.core.agents import create_agent
from parlai.core.params import ParlaiParser
from parlai.core.script import ParlaiScript, register_script

from parlai_ext.candidates import message_candidates

STATIC_TYPES = {
    '.html': 'text/html; charset=utf-8',
    '.css': 'text/css; charset=utf-8',
    '.js': 'text/javascript; charset=utf-8',
}
MAX_BODY_BYTES = 64 * 1024
MAX_TEXT_CHARS = 4000


def static_files() -> dict[str, bytes]:
    """The page's files by name (``index.html``, ``chat.css``, ``chat.js``), from the package."""
    root = resources.files('parlai_ext').joinpath('web')
    files = {}
    for entry in root.iterdir():
        suffix = '.' + entry.name.rsplit('.', 1)[-1]
        if entry.is_file() and suffix in STATIC_TYPES:
            files[entry.name] = entry.read_bytes()
    if 'index.html' not in files:
        raise FileNotFoundError(f'{root}: index.html missing: parlai_ext/web was not installed')
    return files


class ChatSession:
    """One conversation with one agent; requests are served one at a time (the agent keeps
    the dialogue history, so concurrent turns would interleave)."""

    def __init__(self, agent: Any, model: str = '') -> None:
        self.agent = agent
        self.model = model
        self.lock = threading.Lock()

    def interact(self, text: str) -> dict[str, Any]:
        """The agent's reply to ``text``, with the candidates it was chosen from."""
        with self.lock:
            self.agent.observe({'text': text, 'episode_done': False})
            reply = self.agent.act()
        return {
            'text': str(reply.get('text', '')),
            'candidates': message_candidates(reply),
            'episode_done': bool(reply.get('episode_done', False)),
        }

    def reset(self) -> None:
        with self.lock:
            self.agent.reset()


class BadRequest(ValueError):
    """A request this server refuses (answered 400 with the reason)."""


def parse_interact_body(body: bytes) -> str:
    """The message text of a ``POST /interact`` body: a JSON object with a non-blank "text"."""
    try:
        payload = json.loads(body.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f'body: not JSON ({error}); expected {{"text": "your message"}}') from None
    if not isinstance(payload, dict) or not isinstance(payload.get('text'), str):
        raise BadRequest('body: expected a JSON object {"text": "your message"}')
    text = payload['text'].strip()
    if not text:
        raise BadRequest('text: empty; expected a message')
    if len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f'text: {len(text)} characters; expected at most {MAX_TEXT_CHARS}')
    return text


def make_handler(session: ChatSession, files: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    """The request handler class of a server bound to ``session``."""

    class ChatHandler(BaseHTTPRequestHandler):
        server_version = 'parlai-ext-chat'

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header('Content-Type', content_type)
            self.send_header('Content-Length', str(len(body)))
            self.send_header('Cache-Control', 'no-store')
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self._send(status, json.dumps(payload).encode('utf-8'), 'application/json')

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split('?', 1)[0]
            name = 'index.html' if path in ('/', '/index.html') else None
            if path.startswith('/static/'):
                name = path[len('/static/') :]
            if name in files:
                suffix = '.' + name.rsplit('.', 1)[-1]
                self._send(HTTPStatus.OK, files[name], STATIC_TYPES[suffix])
            elif path == '/info':
                self._json(HTTPStatus.OK, {'model': session.model})
            else:
                self._json(HTTPStatus.NOT_FOUND, {'error': f'{path}: no such page'})

        def do_POST(self) -> None:  # noqa: N802
            try:
                length = int(self.headers.get('Content-Length') or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY_BYTES:
                self._json(
                    HTTPStatus.BAD_REQUEST,
                    {'error': f'Content-Length: expected 0 to {MAX_BODY_BYTES} bytes'},
                )
                return
            body = self.rfile.read(length)
            if self.path == '/interact':
                try:
                    text = parse_interact_body(body)
                except BadRequest as error:
                    self._json(HTTPStatus.BAD_REQUEST, {'error': str(error)})
                    return
                self._json(HTTPStatus.OK, session.interact(text))
            elif self.path == '/reset':
                session.reset()
                self._json(HTTPStatus.OK, {})
            else:
                self._json(HTTPStatus.NOT_FOUND, {'error': f'{self.path}: no such action'})

    return ChatHandler


def make_server(
    session: ChatSession, host: str = 'localhost', port: int = 0
) -> ThreadingHTTPServer:
    """A bound (not yet serving) HTTP server for ``session``; ``port`` 0 picks a free one."""
    server = ThreadingHTTPServer((host, port), make_handler(session, static_files()))
    server.daemon_threads = True
    return server


def setup_args(parser: ParlaiParser | None = None) -> ParlaiParser:
    if parser is None:
        parser = ParlaiParser(True, True, 'Chat with a model in the browser, with its candidates')
    group = parser.add_argument_group('Web chat')
    group.add_argument('--host', default='localhost', help='address to listen on (0.0.0.0: all)')
    group.add_argument('--port', type=int, default=8080, help='port to listen on (0: a free one)')
    parser.set_defaults(interactive_mode=True, task='interactive')
    return parser


def check_opt(opt) -> None:
    """Options checked before the model loads."""
    if not 0 <= opt['port'] <= 65535:
        raise ValueError(f'--port {opt["port"]}: expected 0 (a free port) to 65535')
    if not opt.get('model_file') and not opt.get('model'):
        raise ValueError('chat_web needs a model: -mf MODEL_FILE (or -m AGENT)')


@register_script('chat_web')
class ChatWeb(ParlaiScript):
    """Serve the chat page (``parlai_ext/web``) for one model until interrupted."""

    @classmethod
    def setup_args(cls) -> ParlaiParser:
        return setup_args()

    def run(self) -> None:
        check_opt(self.opt)
        agent = create_agent(self.opt, requireModelExists=True)
        session = ChatSession(agent, self.opt.get('model_file') or self.opt.get('model') or '')
        server = make_server(session, self.opt['host'], self.opt['port'])
        host, port = server.server_address[:2]
        print(f'chat_web: serving on http://{host}:{port}/ (Ctrl-C stops)', flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


if __name__ == '__main__':
    ChatWeb.main()
