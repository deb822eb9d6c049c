"""Lock retry: the follower's campaign for the leader lock.

Owns: the lock session while no one leads here. States:

    connecting -> waiting (blocking acquire, bounded by lock_wait)
        -> acquired: hand the session to the lock holder, then wait
           for it to report the end of leadership, and start over
        -> timed out: wait again on the same connection
        -> error: drop the connection, back off, reconnect

Waiting is a blocking `pg_advisory_lock` under `lock_timeout`, not a
try-loop: the server grants the lock the moment its holder's session ends,
so hand-over takes milliseconds. A try-loop with jitter would hand over
after half its interval on average, and load the server with attempts.
`benchmarks/failover.py` measures the hand-over this gives.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from batchwarden.actors.backoff import Backoff
from batchwarden.errors import RetryLater
from batchwarden.supervisor.leadership import LockAcquired, LockReleased
from batchwarden.supervisor.lock import LockSession, LockTiming
from batchwarden.telemetry.metrics import Metrics

log = logging.getLogger(__name__)


async def lock_retry(
    new_session: Callable[[], LockSession],
    timing: LockTiming,
    metrics: Metrics,
    acquired: trio.MemorySendChannel[LockAcquired],
    released: trio.MemoryReceiveChannel[LockReleased],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    task_status.started()
    backoff = Backoff(first_s=0.1, cap_s=5.0)
    session = new_session()
    while True:
        started = trio.current_time()
        try:
            with trio.fail_after(
                timing.acquire_wait_s + timing.heartbeat_timeout_s + 5
            ):
                got = await session.acquire(timing.acquire_wait_s)
        except (RetryLater, trio.TooSlowError) as exc:
            delay = backoff.next()
            log.warning(
                "cannot campaign for the lock: %s", exc, extra={"sleep_s": delay}
            )
            await session.abort()
            session = new_session()
            await trio.sleep(delay)
            continue
        metrics.lock_acquire.observe(trio.current_time() - started)
        if not got:
            continue
        backoff.reset()
        await acquired.send(LockAcquired(session, started))
        ended = await released.receive()
        log.info("leadership ended (%s); campaigning again", ended.reason)
        session = new_session()
