"""`batchwarden run`: the supervisor, root of the process tree.

    supervisor (this nursery; signals; exit code)
    |-- http server   every replica: /healthz, /readyz, /metrics, /v1/leader
    |-- lock retry    campaigns for the leader lock
    `-- lock holder   leads: term, heartbeats, the worker scope

SIGTERM or SIGINT sets `stopping` and cancels the nursery: the lock holder
cancels its workers and releases the lock in a shielded scope; the process
exits 0 well inside a 30-second grace period: the release takes at most
three 1-second attempts and closing the pool at most 5 seconds.
"""

from __future__ import annotations

import gc
import importlib
import logging
import signal
import sys
from collections.abc import Sequence

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from batchwarden import logs
from batchwarden.actors.lock_holder import LockHolder
from batchwarden.actors.lock_retry import lock_retry
from batchwarden.actors.pipeline import pipeline
from batchwarden.api.app import build_app
from batchwarden.config import Settings, check_exposure
from batchwarden.store import SqliteStore, SqlStore, connect
from batchwarden.supervisor.leadership import LeaderActor, Leadership
from batchwarden.supervisor.lock import (
    FileLockSession,
    LockTiming,
    PgLockSession,
)
from batchwarden.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


def load_actor(spec: str) -> LeaderActor:
    """`package.module:function` -> the function (for extra leader actors)."""
    module_name, _, name = spec.partition(":")
    return getattr(importlib.import_module(module_name), name)


def freeze_startup_heap() -> None:
    """Move what start-up made (modules, classes, the SDK's models) out of
    the cyclic collector's sight: they live as long as the process, and
    each full collection walked all of them again. Measured on an ingest
    of 100,000 results: a sixth of this process's CPU seconds."""
    gc.collect()
    gc.freeze()


def session_factory(settings: Settings, store: SqlStore, timing: LockTiming):
    if isinstance(store, SqliteStore):
        log.warning(
            "SQLite: leadership is a file lock on this host only; there is no"
            " election across hosts (use PostgreSQL for several replicas)"
        )
        return lambda: FileLockSession(str(store.path))
    return lambda: PgLockSession(settings.database_url, settings.instance_id, timing)


async def run(
    settings: Settings,
    actors: Sequence[LeaderActor] = (),
    *,
    announce: bool = True,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until SIGTERM or SIGINT (or cancelled). Once listening, report
    the HTTP address to `nursery.start` and, with `announce`, print it on
    stderr (scripts wait for that line)."""
    timing = LockTiming.from_settings(settings)
    timing.check()
    check_exposure(settings)
    store = connect(
        settings.database_url, instance_id=settings.instance_id, prices=settings.prices
    )
    await store.open()
    try:
        await store.migrate()
        with logs.bound("instance", settings.instance_id):
            await _supervise(settings, store, timing, actors, announce, task_status)
    finally:
        with trio.CancelScope(shield=True):
            await store.close()


async def _supervise(
    settings: Settings,
    store: SqlStore,
    timing: LockTiming,
    actors: Sequence[LeaderActor],
    announce: bool,
    task_status: trio.TaskStatus[str],
) -> None:
    metrics = Metrics()
    metrics.watch_pool(store.pool_stats)
    leadership = Leadership(settings.instance_id, metrics)
    stopping = trio.Event()
    actors = [pipeline, *actors]
    holder = LockHolder(store, settings, timing, leadership, actors, stopping)
    acquired_send, acquired_receive = trio.open_memory_channel(0)
    released_send, released_receive = trio.open_memory_channel(0)
    new_session = session_factory(settings, store, timing)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(_serve_http, settings, store, leadership)
            await nursery.start(holder.run, acquired_receive, released_send)
            await nursery.start(
                lock_retry,
                new_session,
                timing,
                metrics,
                acquired_send,
                released_receive,
            )
            log.info(
                "serving on %s", binds[0], extra={"instance": settings.instance_id}
            )
            if announce:
                print(
                    f"batchwarden listening on {binds[0]}", file=sys.stderr, flush=True
                )
            task_status.started(binds[0])
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                stopping.set()
                nursery.cancel_scope.cancel()
                break


async def _serve_http(
    settings: Settings,
    store: SqlStore,
    leadership: Leadership,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = HypercornConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 1.0
    app = build_app(store, leadership, settings)
    await hypercorn_serve(app, config, task_status=task_status)
