"""A mock of Anthropic's Message Batches API: a real HTTP server with faults.

Tests, the demo and the benchmarks meet "the provider" here. Start it with
`batchwarden mock-provider`, or in-process with `serve_mock` (a trio
function that reports its bound port and serves until cancelled).
"""

from __future__ import annotations

import trio

from batchwarden.mockprovider.batches import Behaviour, Duration
from batchwarden.mockprovider.faults import FaultPlan
from batchwarden.mockprovider.http import serve
from batchwarden.mockprovider.provider import MockProvider

__all__ = ["Behaviour", "Duration", "FaultPlan", "MockProvider", "serve_mock"]


async def serve_mock(
    provider: MockProvider,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `provider` until cancelled; reports the bound port."""
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve, provider.handle, host, port)
        provider.base_url = f"http://{host}:{bound}"
        task_status.started(bound)
