"""The lock holder's states, on trio's virtual clock (exact times).

Timing used throughout: heartbeat every 0.5 s, each under a 1.0 s deadline,
trust window 2.0 s. The lock session is scripted: each heartbeat takes a
given time and then answers, or fails.
"""

from __future__ import annotations

import pytest
import trio

from batchwarden.actors.lock_holder import LockHolder
from batchwarden.config import Settings
from batchwarden.errors import StaleTerm, StoreUnavailable
from batchwarden.supervisor.leadership import Leadership, LockAcquired
from batchwarden.supervisor.lock import LockTiming
from batchwarden.telemetry.metrics import Metrics

TIMING = LockTiming(
    heartbeat_interval_s=0.5, heartbeat_timeout_s=1.0, trust_window_s=2.0
)


class ScriptedSession:
    """Heartbeat answers from a script: seconds to answer, or an exception."""

    def __init__(self, script, events: list) -> None:
        self.script = list(script)
        self.events = events

    async def check(self) -> None:
        step = self.script.pop(0) if self.script else 0.0
        if isinstance(step, Exception):
            raise step
        await trio.sleep(step)

    async def acquire(self, wait_s: float) -> bool:
        return True

    async def release(self) -> None:
        self.events.append(("release", trio.current_time()))

    async def abort(self) -> None:
        self.events.append(("abort", trio.current_time()))


def worker(events: list, fail_at: float | None = None, error=None):
    async def act(context) -> None:
        events.append(("worker started", trio.current_time(), context.term))
        try:
            if fail_at is not None:
                await trio.sleep_until(fail_at)
                raise error
            await trio.sleep_forever()
        finally:
            events.append(("worker stopped", trio.current_time()))

    return act


def holder(events: list, actors, stopping=None) -> LockHolder:
    terms = iter(range(7, 100))

    async def begin_term() -> int:
        return next(terms)

    settings = Settings(instance_id="unit")
    return LockHolder(
        store=None,
        settings=settings,
        timing=TIMING,
        leadership=Leadership("unit", Metrics()),
        actors=actors,
        stopping=trio.Event() if stopping is None else stopping,
        begin_term=begin_term,
    )


async def test_healthy_heartbeats_keep_the_workers_running(autojump_clock):
    events: list = []
    session = ScriptedSession([0.05] * 1000, events)
    lock_holder = holder(events, [worker(events)])
    with trio.move_on_after(60):
        await lock_holder.hold(LockAcquired(session, trio.current_time()))
    assert events[0] == ("worker started", 0.0, 7)
    assert events[1:] == [("worker stopped", 60.0), ("abort", 60.0)]


async def test_a_hung_heartbeat_steps_down_at_its_deadline(autojump_clock):
    events: list = []
    session = ScriptedSession([0.1, 0.1, 3600.0], events)
    lock_holder = holder(events, [worker(events)])
    reason = await lock_holder.hold(LockAcquired(session, 0.0))
    assert reason == "heartbeat timed out"
    # Heartbeats start at 0.5, 1.1 and 1.7; the third gives up at 2.7.
    assert events[1:] == [("worker stopped", 2.7), ("abort", 2.7)]


async def test_slow_answers_cannot_extend_trust(autojump_clock):
    """Each answer takes 0.9 s (inside the 1 s deadline), so the window is
    anchored at each heartbeat's start: workers stop when it runs out."""
    events: list = []
    session = ScriptedSession([0.9] * 10, events)
    lock_holder = holder(events, [worker(events)])
    reason = await lock_holder.hold(LockAcquired(session, 0.0))
    assert reason == "trust window expired"
    # The first heartbeat starts at 0.5 and answers at 1.4: trust lasts to
    # 2.5 (anchored at the end it would last to 3.4). The next starts at 1.9
    # and is still waiting for its answer (at 2.8) when trust runs out.
    assert events[1][0] == "worker stopped"
    assert events[1][1] == pytest.approx(2.5)
    assert events[2][0] == "abort"


async def test_a_failed_heartbeat_cancels_workers_before_closing_the_lock(
    autojump_clock,
):
    events: list = []
    session = ScriptedSession([0.0, StoreUnavailable("connection lost")], events)
    lock_holder = holder(events, [worker(events)])
    reason = await lock_holder.hold(LockAcquired(session, 0.0))
    assert reason == "heartbeat failed"
    assert [e[0] for e in events] == ["worker started", "worker stopped", "abort"]
    assert events[1][1] == events[2][1] == 1.0


async def test_a_newer_term_found_by_a_worker_steps_down(autojump_clock):
    events: list = []
    session = ScriptedSession([0.0] * 100, events)
    failing = worker(events, fail_at=5.0, error=StaleTerm(7, 8))
    lock_holder = holder(events, [failing, worker(events)])
    reason = await lock_holder.hold(LockAcquired(session, 0.0))
    assert reason == "stale term"
    assert not lock_holder.leadership.leading
    assert events[-1] == ("abort", 5.0)


async def test_a_worker_that_loses_the_database_steps_down_without_a_crash(
    autojump_clock, caplog
):
    events: list = []
    session = ScriptedSession([0.0] * 100, events)
    lost = StoreUnavailable("PostgreSQL: terminating connection")
    lock_holder = holder(events, [worker(events, fail_at=3.0, error=lost)])
    reason = await lock_holder.hold(LockAcquired(session, 0.0))
    assert reason == "database unavailable"
    assert events[-1] == ("abort", 3.0)
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_shutdown_releases_the_lock(autojump_clock):
    events: list = []
    stopping = trio.Event()
    session = ScriptedSession([0.0] * 100, events)
    lock_holder = holder(events, [worker(events)], stopping)
    with trio.move_on_after(3.0):
        stopping.set()
        await lock_holder.hold(LockAcquired(session, 0.0))
    assert events[-1] == ("release", 3.0)


async def test_a_term_that_cannot_start_in_the_window_runs_no_worker(autojump_clock):
    events: list = []

    async def slow_term() -> int:
        await trio.sleep(5)
        return 1

    lock_holder = holder(events, [worker(events)])
    lock_holder.begin_term = slow_term
    reason = await lock_holder.hold(LockAcquired(ScriptedSession([], events), 0.0))
    assert reason == "term bump failed"
    assert events == [("abort", 2.0)]


def test_timing_that_lets_two_leaders_overlap_is_refused():
    from batchwarden.errors import ConfigError

    with pytest.raises(ConfigError, match="two replicas could both act as leader"):
        LockTiming(trust_window_s=5.0, idle_session_timeout_s=3.0).check()
    with pytest.raises(ConfigError, match="fit in the trust window"):
        LockTiming(heartbeat_interval_s=1.5, heartbeat_timeout_s=1.0).check()
    LockTiming().check()
