"""A scripted HTTP endpoint on 127.0.0.1 for the built-in ``http.post`` kind (the ``hook`` fixture).

Each path answers its scripted responses in turn (the last one forever); every request is
recorded in arrival order. A path may be gated: its requests are recorded on arrival and
answered only once the test opens the gate, so a test can hold a job mid-request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

__all__ = ["GATE_TIMEOUT", "Hook", "hook"]

#: Seconds a gated request waits for its gate before it is answered anyway (a test that forgot to open it).
GATE_TIMEOUT = 60.0


@dataclass
class Hook:
    """A scripted HTTP endpoint: each path answers its responses in turn, the last one forever."""

    url: str
    script: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    received: list[tuple[str, dict[str, str], Any]] = field(default_factory=list)
    gates: dict[str, threading.Event] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str) -> tuple[int, str]:
        with self.lock:
            replies = self.script.get(path, [(599, "no script for this path")])
            return replies.pop(0) if len(replies) > 1 else replies[0]

    def requests_to(self, path: str) -> list[tuple[str, dict[str, str], Any]]:
        with self.lock:
            return [request for request in self.received if request[0] == path]

    def paths(self) -> list[str]:
        """The paths requested, in the order the requests arrived."""
        with self.lock:
            return [request[0] for request in self.received]

    def gate(self, path: str) -> threading.Event:
        """Hold this path's answers until the returned event is set."""
        with self.lock:
            return self.gates.setdefault(path, threading.Event())


class _Server(ThreadingHTTPServer):
    """The HTTP server, holding the ``Hook`` its handlers answer from."""

    hook: Hook


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = _Server(("127.0.0.1", 0), _Handler)
    host, port = server.server_address[:2]
    endpoint = Hook(url=f"http://{host!s}:{port}")
    server.hook = endpoint
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        for gate in list(endpoint.gates.values()):
            gate.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        assert isinstance(self.server, _Server)
        endpoint = self.server.hook
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        with endpoint.lock:
            endpoint.received.append((self.path, dict(self.headers.items()), json.loads(raw or b"null")))
            gate = endpoint.gates.get(self.path)
        if gate is not None:
            gate.wait(GATE_TIMEOUT)
        status, body = endpoint.answer(self.path)
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test inspects ``Hook.received`` instead."""
