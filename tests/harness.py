"""End-to-end harness: a replica, the mock provider and a webhook receiver,
all real HTTP servers in the test's nursery."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from functools import partial

import trio
from standardwebhooks.webhooks import Webhook

from batchwarden.config import Secret, Settings
from batchwarden.intake import Request
from batchwarden.mockprovider import Behaviour, Duration, MockProvider, serve_mock
from batchwarden.mockprovider.http import Request as HttpRequest
from batchwarden.mockprovider.http import Response, serve
from batchwarden.states import JobStatus
from batchwarden.supervisor import run as supervisor

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Receiver:
    """A webhook receiver whose behaviour a test changes: `ok`, `error`
    (500 with Retry-After), `slow` (answers after `slow_s`)."""

    mode: str = "ok"
    slow_s: float = 5.0
    received: list[tuple[dict, str]] = field(default_factory=list)
    delivered: trio.Event = field(default_factory=trio.Event)
    port: int = 0

    async def handle(self, request: HttpRequest) -> Response:
        body = request.body.decode()
        self.received.append((request.headers, body))
        if self.mode == "error":
            return Response(500, b"{}", headers=[("retry-after", "0")])
        if self.mode == "slow":
            await trio.sleep(self.slow_s)
        self.delivered.set()
        return Response(200, b"{}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def verified(self) -> list[dict]:
        """Every received body whose Standard Webhooks signature checks out."""
        checker = Webhook(SECRET)
        return [checker.verify(body, headers) for headers, body in self.received]


def requests(count: int, prefix: str = "item") -> list[Request]:
    params = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "say hi"}],
    }
    return [Request(f"{prefix}-{i:06d}", json.dumps(params)) for i in range(count)]


class Harness:
    def __init__(self, nursery: trio.Nursery, database_url: str) -> None:
        self.nursery = nursery
        self.database_url = database_url
        self.provider = MockProvider(
            behaviour=Behaviour(processing=Duration("fixed", 0.3)), seed=11
        )
        self.receiver = Receiver()
        self.provider_url = ""

    async def start_servers(self, *, receiver: bool = True) -> None:
        port = await self.nursery.start(serve_mock, self.provider)
        self.provider_url = f"http://127.0.0.1:{port}"
        self.receiver.port = free_port()
        if receiver:
            await self.start_receiver()

    async def start_receiver(self) -> None:
        handle = self.receiver.handle
        await self.nursery.start(serve, handle, "127.0.0.1", self.receiver.port)

    def settings(self, **overrides) -> Settings:
        values = {
            "database_url": self.database_url,
            "port": 0,
            "provider_url": self.provider_url,
            "instance_id": "e2e-replica",
            "poll_interval": 0.1,
            "webhook_secret": Secret(SECRET),
            "callback_backoff": 0.05,
            "results_chunk": 1000,
            "callback_allowlist": ("127.0.0.1",),
        }
        return Settings(**{**values, **overrides})

    async def serve(self, **overrides) -> str:
        """A replica in the test's nursery; returns its HTTP base URL."""
        settings = self.settings(**overrides)
        return await self.nursery.start(
            partial(supervisor.run, settings, announce=False)
        )

    async def start_replica(self, **overrides) -> ReplicaTask:
        task = ReplicaTask(trio.CancelScope(), trio.Event())
        settings = self.settings(**overrides)

        async def replica() -> None:
            try:
                with task.scope:
                    await supervisor.run(settings)
            finally:
                task.stopped.set()

        self.nursery.start_soon(replica)
        return task


@dataclass
class ReplicaTask:
    """A replica run in the test's nursery: cancel `scope` to stop it;
    `stopped` is set once it has shut down (and released its lock)."""

    scope: trio.CancelScope
    stopped: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


async def wait_terminal(store, job_id: str, timeout: float = 30.0):
    with trio.fail_after(timeout):
        while True:
            job = await store.get_job(job_id)
            if job.status.terminal:
                return job
            await trio.sleep(0.05)


async def wait_callback(store, job_id: str, status: str, timeout: float = 30.0):
    with trio.fail_after(timeout):
        while True:
            detail = await store.job_detail(job_id)
            if detail.callback is not None and detail.callback.status == status:
                return detail
            await trio.sleep(0.05)


TERMINAL = tuple(s for s in JobStatus if s.terminal)
