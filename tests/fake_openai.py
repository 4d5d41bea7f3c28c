"""A tiny OpenAI-compatible chat-completions server for fault tests (stdlib only).

It listens on 127.0.0.1 on a free port, in a background thread, and answers
POST /v1/chat/completions with the shape `openai` expects:
`choices[0].logprobs.content[0].top_logprobs = [{"token", "logprob", "bytes"}, ...]`.

A `behaviour` picks how it misbehaves — "normal", "429", "500", "400", "hang"
(sleeps past the client timeout), "malformed" (a body that is not JSON) or
"no_logprobs" — optionally only for the first `first_n` requests or for prompts
where `fail_when(prompt)` is true; the others are answered normally. It records
every hit (per prompt too), the Authorization headers it saw, and the peak number of
requests in flight. It stops itself after `lifetime_s` so a broken test cannot leave
it running.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

BEHAVIOURS = ("normal", "429", "500", "400", "hang", "malformed", "no_logprobs")

# A realistic top-logprobs payload of a 0–100 judge (logprobs as a server returns them).
DEFAULT_PAYLOAD: dict[str, float] = {
    "85": -0.5108256237659907,   # p = 0.6
    " 90": -1.6094379124341003,  # p = 0.2
    "80": -2.3025850929940455,   # p = 0.1
    "CODE": -3.912023005428146,  # p = 0.02
    "abc": -4.605170185988091,   # p = 0.01
}

Payload = Mapping[str, float] | Callable[[str], Mapping[str, float]]


class FakeOpenAI:
    """Context manager: `with FakeOpenAI("429", first_n=2) as server: ... server.url`."""

    def __init__(self, behaviour: str = "normal", *, first_n: int | None = None,
                 fail_when: Callable[[str], bool] | None = None, payload: Payload | None = None,
                 hang_s: float = 5.0, delay_s: float = 0.0, lifetime_s: float = 60.0):
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.behaviour, self.first_n, self.fail_when = behaviour, first_n, fail_when
        self.payload = payload if payload is not None else DEFAULT_PAYLOAD
        self.hang_s, self.delay_s, self.lifetime_s = hang_s, delay_s, lifetime_s
        self.hits = 0
        self.prompts: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.inflight = self.max_inflight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._watchdog: threading.Timer | None = None
        self._port = 0

    # -- lifecycle

    @property
    def url(self) -> str:
        server = self._server
        port = server.server_address[1] if server is not None else self._port
        assert port, "server never started"
        return f"http://127.0.0.1:{port}/v1"

    def start(self) -> "FakeOpenAI":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))  # port 0: a free one
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        self._watchdog = threading.Timer(self.lifetime_s, self.stop)
        self._watchdog.daemon = True
        self._watchdog.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers at once
        if self._watchdog is not None and threading.current_thread() is not self._watchdog:
            self._watchdog.cancel()
        with self._lock:
            server, self._server = self._server, None  # idempotent: the watchdog may have stopped it
        if server is not None:
            self._port = server.server_address[1]
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling

    def _misbehaves(self, index: int, prompt: str) -> bool:
        if self.behaviour == "normal":
            return False
        if self.first_n is not None and index >= self.first_n:
            return False
        return self.fail_when is None or self.fail_when(prompt)

    def _top_logprobs(self, prompt: str) -> Mapping[str, float]:
        return self.payload(prompt) if callable(self.payload) else self.payload


def completion_body(top: Mapping[str, float], model: str, with_logprobs: bool = True) -> dict:
    """An OpenAI chat.completion object for a one-token answer with these top logprobs."""
    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top.items()]
    best = max(entries, key=lambda e: e["logprob"])
    logprobs = {"content": [{**best, "top_logprobs": entries}], "refusal": None} if with_logprobs else None
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": model,
        "choices": [{"index": 0, "finish_reason": "length", "logprobs": logprobs,
                     "message": {"role": "assistant", "content": best["token"]}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    }


def _make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout): nothing to deliver

        def _error(self, status: int, message: str) -> None:
            self._send(status, json.dumps({"error": {"message": message, "type": "fake", "code": status}}).encode())

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                self._send(200, json.dumps({"object": "list", "data": [{"id": "fake", "object": "model"}]}).encode())
            else:
                self._error(404, "not found")

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._error(404, "not found")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            prompt = body["messages"][-1]["content"]
            with fake._lock:
                index = fake.hits
                fake.hits += 1
                fake.prompts[prompt] += 1
                fake.auth_headers.append(self.headers.get("Authorization", ""))
                fake.inflight += 1
                fake.max_inflight = max(fake.max_inflight, fake.inflight)
            try:
                self._answer(body, prompt, index)
            finally:
                with fake._lock:
                    fake.inflight -= 1

        def _answer(self, body: dict, prompt: str, index: int) -> None:
            if fake.delay_s:
                fake._stopping.wait(fake.delay_s)
            behaviour = fake.behaviour if fake._misbehaves(index, prompt) else "normal"
            if behaviour == "429":
                return self._error(429, "rate limited")
            if behaviour == "500":
                return self._error(500, "internal error")
            if behaviour == "400":
                return self._error(400, "bad request")
            if behaviour == "hang":
                fake._stopping.wait(fake.hang_s)  # longer than the client's timeout
            if behaviour == "malformed":
                return self._send(200, b'{"id": "chatcmpl-fake", "choices": [{"index": 0, "mess')
            top = fake._top_logprobs(prompt)
            out = completion_body(top, body.get("model", "fake"), with_logprobs=behaviour != "no_logprobs")
            self._send(200, json.dumps(out).encode())

    return Handler
