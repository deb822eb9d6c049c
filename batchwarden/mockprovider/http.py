"""A small HTTP/1.1 server on trio and h11, made for injecting faults.

A framework would hide what this server must do on purpose: stop a
response midway, reset a connection, answer nothing. Here a handler returns
a `Response` that says how to end (`complete`, `close` without the final
chunk, or `reset`), and whether to `hang` first. Each connection is a task
of the listener's nursery; keep-alive connections idle past `IDLE_S` are
closed.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import h11
import trio

log = logging.getLogger(__name__)

IDLE_S = 75.0
MAX_BODY = 256_000_000 + 1_000_000
READ_SIZE = 65_536


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    stream: Iterable[bytes] | None = None
    end: str = "complete"  # or "close" (no final chunk) or "reset"
    hang_s: float = 0.0


class BodyTooLarge(Exception):
    pass


Handler = Callable[[Request], Awaitable[Response]]


async def serve(
    handler: Handler,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port when listening."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]

    async def connection(stream: trio.SocketStream) -> None:
        await _serve_connection(stream, handler)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, connection, listeners)
        task_status.started(bound)


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    connection = h11.Connection(h11.SERVER)
    try:
        while True:
            with trio.move_on_after(IDLE_S):
                request = await _read_request(stream, connection)
            if request is None:
                return
            response = await _answer(handler, request)
            if not await _send(stream, connection, response):
                return
            if connection.our_state is not h11.DONE:
                return
            connection.start_next_cycle()
    except BodyTooLarge:
        await _send(stream, connection, _too_large())
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return
    finally:
        await stream.aclose()


async def _answer(handler: Handler, request: Request) -> Response:
    """The handler's response; a bug in it is a 500 and a log line, and the
    server goes on serving."""
    try:
        return await handler(request)
    except Exception:
        log.exception("handler failed on %s %s", request.method, request.path)
        body = b'{"type":"error","error":{"type":"api_error","message":"mock bug"}}'
        return Response(500, body)


async def _read_request(
    stream: trio.SocketStream, connection: h11.Connection
) -> Request | None:
    head: h11.Request | None = None
    body = bytearray()
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(READ_SIZE)
            connection.receive_data(data)
            if not data and head is None:
                return None
        elif isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise BodyTooLarge
        elif isinstance(event, h11.EndOfMessage):
            return _request(head, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _request(head: h11.Request, body: bytes) -> Request:
    target = urlsplit(head.target.decode("latin-1"))
    headers = {k.decode().lower(): v.decode("latin-1") for k, v in head.headers}
    return Request(
        method=head.method.decode(),
        path=target.path,
        query=dict(parse_qsl(target.query)),
        headers=headers,
        body=body,
    )


async def _send(
    stream: trio.SocketStream, connection: h11.Connection, response: Response
) -> bool:
    """Send a response; False if the connection must close afterwards."""
    if response.hang_s:
        await trio.sleep(response.hang_s)
        return False
    headers = [("content-type", response.content_type), *response.headers]
    if response.stream is None:
        headers.append(("content-length", str(len(response.body))))
    head = h11.Response(status_code=response.status, headers=headers)
    if response.stream is None:
        data = connection.send(head) + connection.send(h11.Data(data=response.body))
        await stream.send_all(data + connection.send(h11.EndOfMessage()))
        return True
    await stream.send_all(connection.send(head))
    for chunk in response.stream:
        await stream.send_all(connection.send(h11.Data(data=chunk)))
    if response.end == "reset":
        linger = struct.pack("ii", 1, 0)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
        return False
    if response.end == "close":
        return False
    await stream.send_all(connection.send(h11.EndOfMessage()))
    return True


def _too_large() -> Response:
    body = (
        b'{"type":"error","error":{"type":"request_too_large",'
        b'"message":"Request exceeds the maximum allowed number of bytes."}}'
    )
    return Response(413, body, headers=[("connection", "close")])
