"""A TCP proxy that can go silent: it stops forwarding but keeps every
connection open, as a network partition looks to both ends."""

from __future__ import annotations

import select
import socket
import threading


class SilenceableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.silent = threading.Event()
        self.closed = threading.Event()
        self.silenced_at: float | None = None
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def silence(self) -> float:
        import time

        self.silenced_at = time.time()
        self.silent.set()
        return self.silenced_at

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for sock in self._sockets:
            sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._sockets += [client, upstream]
            threading.Thread(
                target=self._pump, args=(client, upstream), daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        while not self.closed.is_set():
            if self.silent.is_set():
                self.closed.wait(0.1)
                continue
            try:
                ready, _, _ = select.select([a, b], [], [], 0.05)
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        a.close()
                        b.close()
                        return
                    peers[sock].sendall(data)
            except OSError:
                return
