"""How fast the mock provider serves, measured from a separate client process.

1. Retrieve requests per second: the mock runs as `batchwarden
   mock-provider` in its own process; this process keeps CONNECTIONS
   keep-alive connections busy with `GET /v1/messages/batches/{id}` for
   SECONDS. The client is a bare socket loop, so that it costs less than the
   server it measures. Baseline in the same run: the same client against a
   trio server that answers a fixed response without parsing, the most this
   client and machine can do.
2. Streaming the results of a 100,000-item batch: bytes and seconds through
   plain HTTP, then the same through the `anthropic` SDK (which parses each
   line), and the mock's resident memory before and after.

    python benchmarks/mock_provider_bench.py [--seconds 5] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import anthropic
import httpx
import trio

SCRIPT = Path(sys.executable).parent / "batchwarden"
HEADERS = "x-api-key: bench\r\nanthropic-version: 2023-06-01\r\n"


def start_mock(*flags: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [str(SCRIPT), "mock-provider", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().split()[-1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _read_response(stream: trio.SocketStream, buffer: bytearray) -> bytearray:
    while b"\r\n\r\n" not in buffer:
        buffer += await stream.receive_some(65536)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = bytearray(rest)
    while len(body) < length:
        body += await stream.receive_some(65536)
    return body[length:]


async def hammer(port: int, path: str, seconds: float, connections: int) -> int:
    """Requests completed in `seconds` over keep-alive connections."""
    request = f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{HEADERS}\r\n".encode()
    done = 0

    async def one_connection() -> None:
        nonlocal done
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        leftover = bytearray()
        async with stream:
            while True:
                await stream.send_all(request)
                leftover = await _read_response(stream, leftover)
                done += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for _ in range(connections):
                nursery.start_soon(one_connection)
    return done


async def fixed_server(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The baseline: answers every request with the same bytes, unparsed."""
    body = b'{"id":"msgbatch_x","type":"message_batch"}'
    reply = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    async def answer(stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    return
                buffer += data
                while b"\r\n\r\n" in buffer:
                    _, _, buffer = buffer.partition(b"\r\n\r\n")
                    await stream.send_all(reply)
        except trio.BrokenResourceError:
            return

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, answer, listeners)
        task_status.started(listeners[0].socket.getsockname()[1])


async def baseline(seconds: float, connections: int) -> int:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(fixed_server)
        done = await hammer(port, "/", seconds, connections)
        nursery.cancel_scope.cancel()
    return done


def make_batch(url: str, count: int) -> str:
    client = anthropic.Anthropic(api_key="bench", base_url=url, timeout=120)
    requests = [
        {
            "custom_id": f"item-{i:06d}",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 300,
                "messages": [{"role": "user", "content": f"Summarise case {i}."}],
            },
        }
        for i in range(count)
    ]
    batch = client.messages.batches.create(requests=requests)
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(0.1)
    return batch.id


def stream_raw(url: str, batch_id: str) -> tuple[int, float]:
    started = time.perf_counter()
    size = 0
    headers = {"x-api-key": "bench", "anthropic-version": "2023-06-01"}
    path = f"{url}/v1/messages/batches/{batch_id}/results"
    with httpx.stream("GET", path, headers=headers, timeout=120) as response:
        for chunk in response.iter_raw():
            size += len(chunk)
    return size, time.perf_counter() - started


def stream_sdk(url: str, batch_id: str) -> tuple[int, float]:
    client = anthropic.Anthropic(api_key="bench", base_url=url, timeout=120)
    started = time.perf_counter()
    count = sum(1 for _ in client.messages.batches.results(batch_id))
    return count, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--items", type=int, default=100_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}; mock and client in separate processes"
    )
    process, url = start_mock("--processing-time", "0.5")
    try:
        port = int(url.rsplit(":", 1)[1])
        batch_id = make_batch(url, 10)
        path = f"/v1/messages/batches/{batch_id}"
        served = trio.run(hammer, port, path, args.seconds, args.connections)
        floor = trio.run(baseline, args.seconds, args.connections)
        print(
            f"retrieve: {served / args.seconds:,.0f} requests/s over"
            f" {args.connections} connections; baseline (fixed answer, same client)"
            f" {floor / args.seconds:,.0f}/s; ratio {floor / served:.2f}x"
        )
        before = rss_mb(process.pid)
        big = make_batch(url, args.items)
        after_create = rss_mb(process.pid)
        size, raw_s = stream_raw(url, big)
        after_stream = rss_mb(process.pid)
        count, sdk_s = stream_sdk(url, big)
        print(
            f"results of {args.items:,} items: {size / 1e6:.1f} MB in {raw_s:.2f} s"
            f" raw HTTP ({args.items / raw_s:,.0f} lines/s); {count:,} parsed by the"
            f" SDK in {sdk_s:.2f} s"
        )
        print(
            f"mock RSS: {before:.0f} MB before, {after_create:.0f} MB holding the"
            f" batch, {after_stream:.0f} MB after streaming it"
        )
        for _ in range(3):
            make_batch(url, args.items)
        print(
            f"mock RSS after 3 more batches of {args.items:,}:"
            f" {rss_mb(process.pid):.0f} MB"
        )
        stats = httpx.get(f"{url}/_mock/stats").json()
        print("mock stats (retrieve):", json.dumps(stats["endpoints"]["retrieve"]))
    finally:
        process.terminate()
        process.wait(timeout=10)


if __name__ == "__main__":
    main()
