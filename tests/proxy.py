"""A TCP proxy that can go silent: it stops forwarding but keeps every
connection open, as a network partition looks to both ends."""

from __future__ import annotations

import select
import socket
import threading
import time


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
        self.silenced_at = time.time()
        self.silent.set()
        return self.silenced_at

    def resume(self) -> None:
        """The partition heals: forwarding starts again on every connection
        that both ends still hold open."""
        self.silent.clear()

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
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()  # the server is down: refuse, as it would
                continue
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            threading.Thread(
                target=self._pump, args=(client, upstream), daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        try:
            while not self.closed.is_set():
                if self.silent.is_set():
                    self.closed.wait(0.1)
                elif not self._forward(peers):
                    return
        except OSError:
            return
        finally:
            a.close()
            b.close()

    @staticmethod
    def _forward(peers: dict[socket.socket, socket.socket]) -> bool:
        """Pass on what either end sent; False once one end has closed."""
        ready, _, _ = select.select(list(peers), [], [], 0.05)
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return False
            peers[sock].sendall(data)
        return True
