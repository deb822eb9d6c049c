"""Lock holder: turns a held lock into a term and a worker scope, and ends
both the moment leadership is in doubt.

Owns: the lock session from acquisition to step-down, and the worker scope.

    acquired -> end the previous holder's sessions -> bump the term
             -> leading: workers run in the worker scope; heartbeats run
                beside them
             -> in doubt: a heartbeat failed or was late, the trust window
                expired, a worker hit a newer term or lost the database,
                or a worker failed
             -> cancel the worker scope, then close the lock connection,
                then tell lock retry

Trust window: the worker scope's deadline *is* the trust window. It starts
at the start of the acquire call that won the lock and moves, after each
good heartbeat, to that heartbeat's start plus `trust_window_s`. Anchoring
at the start means a slow answer cannot extend trust. Trio cancels the
scope at the deadline even if the heartbeat is stuck in a dead socket, so
no worker acts past the window; PostgreSQL frees a silent leader's lock
only later (`LockTiming.check` enforces the inequality).

Shutdown (the supervisor cancels us while `stopping` is set): workers are
cancelled, then the lock is released in a shielded scope with a bounded
number of attempts, so the next leader is granted the lock at once instead
of waiting for the server to notice a closed socket.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import trio

from batchwarden import logs
from batchwarden.config import Settings
from batchwarden.errors import RetryLater, StepDown, StoreUnavailable
from batchwarden.store import SqlStore
from batchwarden.supervisor.leadership import (
    LeaderActor,
    LeaderContext,
    Leadership,
    LockAcquired,
    LockReleased,
)
from batchwarden.supervisor.lock import LockSession, LockTiming

log = logging.getLogger(__name__)

RELEASE_ATTEMPTS = 3


class LockHolder:
    def __init__(
        self,
        store: SqlStore,
        settings: Settings,
        timing: LockTiming,
        leadership: Leadership,
        actors: Sequence[LeaderActor],
        stopping: trio.Event,
        begin_term: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.begin_term = begin_term or self._bump_term
        self.timing = timing
        self.leadership = leadership
        self.actors = actors
        self.stopping = stopping

    async def run(
        self,
        acquired: trio.MemoryReceiveChannel[LockAcquired],
        released: trio.MemorySendChannel[LockReleased],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        task_status.started()
        async for lock in acquired:
            reason = await self.hold(lock)
            await released.send(LockReleased(reason))

    async def hold(self, lock: LockAcquired) -> str:
        reason = "shutdown"
        try:
            term = await self._begin_term(lock)
            if term is None:
                reason = "term bump failed"
            else:
                reason = await self._lead(lock, term)
        finally:
            with trio.CancelScope(shield=True):
                self.leadership.stepped_down(reason)
                await self._let_go(lock.session)
        return reason

    async def _begin_term(self, lock: LockAcquired) -> int | None:
        """A new term, started within the trust window that began with the
        acquisition; None if that cannot be done."""
        try:
            with trio.fail_at(lock.started + self.timing.trust_window_s):
                return await self.begin_term()
        except (RetryLater, trio.TooSlowError) as exc:
            log.warning("could not start a term: %s", exc)
            return None

    async def _bump_term(self) -> int:
        """End the previous holder's sessions, so that none of its open
        transactions holds the leader row, then bump the term."""
        previous = (await self.store.leader()).holder
        if previous and previous != self.settings.instance_id:
            await self.store.end_sessions(previous)
        return await self.store.bump_term(self.settings.instance_id)

    async def _lead(self, lock: LockAcquired, term: int) -> str:
        self.leadership.became_leader(term)
        worker_scope = trio.CancelScope(
            deadline=lock.started + self.timing.trust_window_s
        )
        reasons: list[str] = []
        # Every record the workers log carries the term (`logs.bound`).
        with logs.bound("term", term):
            async with trio.open_nursery() as nursery:

                async def heartbeats() -> None:
                    session = lock.session
                    reasons.append(await self._heartbeats(session, worker_scope))
                    nursery.cancel_scope.cancel()

                async def workers() -> None:
                    reasons.append(await self._workers(term, worker_scope))
                    nursery.cancel_scope.cancel()

                nursery.start_soon(heartbeats)
                nursery.start_soon(workers)
        return reasons[0] if reasons else "shutdown"

    async def _heartbeats(
        self, session: LockSession, worker_scope: trio.CancelScope
    ) -> str:
        timing = self.timing
        while True:
            await trio.sleep(timing.heartbeat_interval_s)
            started = trio.current_time()
            try:
                with trio.fail_after(timing.heartbeat_timeout_s):
                    await session.check()
            except trio.TooSlowError:
                return "heartbeat timed out"
            except RetryLater as exc:
                log.warning("heartbeat failed: %s", exc)
                return "heartbeat failed"
            self.leadership.metrics.heartbeat.observe(trio.current_time() - started)
            worker_scope.deadline = started + timing.trust_window_s

    async def _workers(self, term: int, worker_scope: trio.CancelScope) -> str:
        metrics = self.leadership.metrics
        context = LeaderContext(self.store, self.settings, term, metrics)
        reason = "trust window expired"
        with worker_scope:
            try:
                async with trio.open_nursery() as nursery:
                    for actor in self.actors:
                        nursery.start_soon(actor, context)
                    await trio.sleep_forever()
            except* StepDown as group:
                reason = "stale term"
                log.warning("a worker found a newer term: %s", group.exceptions[0])
            except* StoreUnavailable as group:
                # Expected when the server restarts or the network drops:
                # a new term starts once the database answers again.
                reason = "database unavailable"
                log.warning("a worker lost the database: %s", group.exceptions[0])
            except* Exception as group:
                reason = "worker failed"
                log.error("a worker failed", exc_info=group.exceptions[0])
        return reason

    async def _let_go(self, session: LockSession) -> None:
        """Release the lock on shutdown; drop the connection otherwise."""
        if not self.stopping.is_set():
            await session.abort()
            return
        for attempt in range(1, RELEASE_ATTEMPTS + 1):
            try:
                with trio.fail_after(1.0):
                    await session.release()
                log.info("released the leader lock")
                return
            except (RetryLater, trio.TooSlowError) as exc:
                log.warning("release attempt %d failed: %s", attempt, exc)
        await session.abort()
