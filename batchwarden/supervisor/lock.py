"""The leader lock: a PostgreSQL advisory lock, or a file lock beside SQLite.

A `LockSession` is one attempt at leadership: `acquire` waits for the lock
for a bounded time, `check` proves it is still held (the heartbeat),
`release` gives it back, `abort` drops the connection without a word.

On PostgreSQL the lock lives on a dedicated connection, outside the pool,
in autocommit mode: a pool recycles connections, and a recycled connection
silently drops a session lock. The connection tells the server to notice a
silent client (`tcp_keepalives_*`, `idle_session_timeout`) and tells the
client to give up on a silent server (`tcp_user_timeout`). Waiting is a
blocking `pg_advisory_lock` under `lock_timeout`: the server grants the
lock the moment the holder's session ends, so a crashed or resigning leader
is replaced in milliseconds rather than at the next tick of a retry loop.

On SQLite there is no server to hold a lock: an exclusive `flock` on
`<database>.leader` keeps a second process on the same file a follower.
It cannot span hosts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import psycopg
import trio

from batchwarden.config import Settings
from batchwarden.errors import ConfigError, StoreUnavailable

log = logging.getLogger(__name__)

# pg_advisory_lock key of the leader lock ("bw-lead" in ASCII).
LEADER_LOCK_KEY = 0x62772D6C656164


class LockSession(Protocol):
    async def acquire(self, wait_s: float) -> bool: ...

    async def check(self) -> None:
        """Return if the lock is surely held; raise otherwise."""

    async def release(self) -> None: ...

    async def abort(self) -> None: ...


@dataclass(frozen=True)
class LockTiming:
    """The timeouts that decide how fast leadership moves, and their rule.

    The leader trusts itself until `trust_window_s` after the start of its
    last good heartbeat. PostgreSQL frees a silent leader's lock no sooner
    than `server_release_s`: the keepalive probes' time for a dead peer, or
    `idle_session_timeout` for a live but frozen one. The leader must step
    down first, so `trust_window_s < server_release_s` is checked at
    start-up.
    """

    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 1.0
    trust_window_s: float = 2.0
    acquire_wait_s: float = 2.0
    poll_interval_s: float | None = None
    keepalives_idle_s: int = 1
    keepalives_interval_s: int = 1
    keepalives_count: int = 2
    idle_session_timeout_s: float = 3.0
    tcp_user_timeout_s: float = 2.0

    @classmethod
    def from_settings(cls, settings: Settings) -> LockTiming:
        return cls(
            heartbeat_interval_s=settings.heartbeat_interval,
            heartbeat_timeout_s=settings.heartbeat_timeout,
            trust_window_s=settings.trust_window,
            acquire_wait_s=settings.lock_wait,
            poll_interval_s=settings.lock_poll_interval,
            keepalives_idle_s=settings.keepalives_idle,
            keepalives_interval_s=settings.keepalives_interval,
            keepalives_count=settings.keepalives_count,
            idle_session_timeout_s=settings.idle_session_timeout,
            tcp_user_timeout_s=settings.tcp_user_timeout,
        )

    @property
    def server_release_s(self) -> float:
        probes = self.keepalives_idle_s + self.keepalives_interval_s * (
            self.keepalives_count
        )
        return min(probes, self.idle_session_timeout_s)

    def check(self) -> None:
        if self.heartbeat_timeout_s > self.trust_window_s:
            raise ConfigError(
                f"heartbeat timeout ({self.heartbeat_timeout_s} s) must not exceed"
                f" the trust window ({self.trust_window_s} s)"
            )
        if self.heartbeat_interval_s + self.heartbeat_timeout_s > self.trust_window_s:
            raise ConfigError(
                "heartbeat interval + timeout must fit in the trust window, or a"
                " healthy leader would step down between two heartbeats"
            )
        if not self.trust_window_s < self.server_release_s:
            raise ConfigError(
                f"trust window ({self.trust_window_s} s) must be shorter than the"
                f" time PostgreSQL takes to free a silent leader's lock"
                f" ({self.server_release_s} s: keepalives or idle_session_timeout),"
                " or two replicas could both act as leader"
            )


class PgLockSession:
    def __init__(self, url: str, instance_id: str, timing: LockTiming) -> None:
        self._url = url
        self._instance_id = instance_id
        self._timing = timing
        self._connection: psycopg.Connection | None = None

    def _connect(self) -> psycopg.Connection:
        timing = self._timing
        options = " ".join(
            [
                f"-c tcp_keepalives_idle={timing.keepalives_idle_s}",
                f"-c tcp_keepalives_interval={timing.keepalives_interval_s}",
                f"-c tcp_keepalives_count={timing.keepalives_count}",
                f"-c idle_session_timeout={int(timing.idle_session_timeout_s * 1000)}",
            ]
        )
        return psycopg.connect(
            self._url,
            autocommit=True,
            application_name=f"batchwarden-lock:{self._instance_id}"[:63],
            options=options,
            connect_timeout=max(1, int(timing.heartbeat_timeout_s * 2)),
            keepalives=1,
            keepalives_idle=timing.keepalives_idle_s,
            keepalives_interval=timing.keepalives_interval_s,
            keepalives_count=timing.keepalives_count,
            tcp_user_timeout=int(timing.tcp_user_timeout_s * 1000),
        )

    async def _call(self, work) -> object:
        """Run `work(connection)` in a thread; a cancel reaches the server."""
        connection = self._connection
        try:
            return await trio.to_thread.run_sync(
                partial(work, connection), abandon_on_cancel=True
            )
        except trio.Cancelled:
            trio.lowlevel.start_thread_soon(
                partial(connection.cancel_safe, timeout=1.0), lambda _: None
            )
            raise
        except psycopg.Error as exc:
            raise StoreUnavailable(f"lock connection: {exc}".splitlines()[0]) from None

    async def acquire(self, wait_s: float) -> bool:
        if self._connection is None or self._connection.closed:
            try:
                self._connection = await trio.to_thread.run_sync(
                    self._connect, abandon_on_cancel=True
                )
            except psycopg.Error as exc:
                raise StoreUnavailable(f"lock connection: {exc}") from None

        if self._timing.poll_interval_s is not None:
            return await self._poll(wait_s, self._timing.poll_interval_s)

        def wait(connection: psycopg.Connection) -> bool:
            connection.execute(f"SET lock_timeout = {int(wait_s * 1000)}")
            try:
                connection.execute("SELECT pg_advisory_lock(%s)", (LEADER_LOCK_KEY,))
            except psycopg.errors.LockNotAvailable:
                return False
            return True

        return bool(await self._call(wait))

    async def _poll(self, wait_s: float, interval_s: float) -> bool:
        """The alternative to a blocking wait, kept to measure against it:
        `pg_try_advisory_lock` every interval, with jitter."""

        def attempt(connection: psycopg.Connection) -> bool:
            query = "SELECT pg_try_advisory_lock(%s)"
            return connection.execute(query, (LEADER_LOCK_KEY,)).fetchone()[0]

        with trio.move_on_after(wait_s):
            while not await self._call(attempt):
                await trio.sleep(interval_s * random.uniform(0.5, 1.5))
            return True
        return False

    async def check(self) -> None:
        def held(connection: psycopg.Connection) -> bool:
            row = connection.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                " AND pid = pg_backend_pid() AND granted"
                " AND classid = %s AND objid = %s AND objsubid = 1",
                (LEADER_LOCK_KEY >> 32, LEADER_LOCK_KEY & 0xFFFFFFFF),
            ).fetchone()
            return row[0] == 1

        if not await self._call(held):
            raise StoreUnavailable("the leader lock is no longer held")

    async def release(self) -> None:
        def unlock(connection: psycopg.Connection) -> None:
            connection.execute("SELECT pg_advisory_unlock(%s)", (LEADER_LOCK_KEY,))
            connection.close()

        if self._connection is not None and not self._connection.closed:
            await self._call(unlock)

    async def abort(self) -> None:
        """Close without unlocking; the server frees the lock on disconnect."""
        connection, self._connection = self._connection, None
        if connection is not None:
            trio.lowlevel.start_thread_soon(connection.close, lambda _: None)


class FileLockSession:
    """An exclusive flock on a file beside the SQLite database."""

    POLL_S = 0.05

    def __init__(self, database_path: str) -> None:
        self.path = Path(f"{database_path}.leader")
        self._fd: int | None = None

    async def acquire(self, wait_s: float) -> bool:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        with trio.move_on_after(wait_s):
            while True:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return True
                except BlockingIOError:
                    await trio.sleep(self.POLL_S)
        return False

    async def check(self) -> None:
        """A flock lasts as long as this process holds the descriptor."""

    async def release(self) -> None:
        await self.abort()

    async def abort(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
