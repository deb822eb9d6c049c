"""A webhook receiver in a thread, for tests that run replicas as processes.

It can go down (nothing listens on its port: connections are refused),
come back up on the same port, and turn slow (it answers only after
`delay` seconds). Every delivery it answered is kept with its headers,
body and arrival time; a request cut off mid-body (its sender died) is
not one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Delivery:
    at: float
    headers: dict[str, str]
    body: str


class _Server(ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, receiver: ThreadedReceiver) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.receiver = receiver


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (the http.server hook's name)
        length = int(self.headers["content-length"])
        body = self.rfile.read(length).decode(errors="replace")
        if len(body.encode()) < length:
            return  # the sender went away mid-body: no request, no answer
        receiver = self.server.receiver
        time.sleep(receiver.delay)
        receiver.deliveries.append(Delivery(time.time(), dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class ThreadedReceiver:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.delay = 0.0
        self._server: _Server | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def up(self) -> None:
        if self._server is None:
            self._server = _Server(self.port, self)
            self.port = self._server.server_address[1]
            threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def is_up(self) -> bool:
        return self._server is not None
