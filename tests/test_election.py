"""Leader election with real `batchwarden run` processes on real PostgreSQL.

Every replica runs the probe actor (tests/leader_probe.py), whose fenced
writes are the record of who acted as leader, in which term, and when.
"""

from __future__ import annotations

import signal
import time

import httpx
import psycopg
import pytest

from tests import leader_probe
from tests.pgserver import ThrowawayServer
from tests.proxy import SilenceableProxy
from tests.replicas import (
    Replica,
    current_leader,
    first_action_after,
    probe_rows,
    wait_for,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def probe_db(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as connection:
        connection.execute(leader_probe.TABLE)
    return pg_url


@pytest.fixture
def replicas(probe_db):
    started: list[Replica] = []

    def start(
        name: str, *flags: str, url: str | None = None, probe: bool = True
    ) -> Replica:
        replica = Replica(url or probe_db, name, *flags, probe=probe)
        started.append(replica)
        return replica

    yield start
    for replica in started:
        replica.stop()


def leader_of(replicas_by_name: dict, url: str) -> Replica:
    holder = wait_for(lambda: current_leader(url)[0])
    wait_for(lambda: first_action_after(url, 0))
    return replicas_by_name[holder]


def leader_gauges(replicas: list[Replica]) -> list[float]:
    values = []
    for replica in replicas:
        text = httpx.get(f"{replica.url}/metrics", timeout=5).text
        line = next(x for x in text.splitlines() if x.startswith("batchwarden_leader "))
        values.append(float(line.split()[1]))
    return values


def test_three_replicas_have_exactly_one_leader(replicas, probe_db):
    started = [replicas(name) for name in ("r1", "r2", "r3")]
    leader = leader_of({r.name: r for r in started}, probe_db)
    time.sleep(2.0)
    rows = probe_rows(probe_db)
    assert {(term, holder) for term, holder, _ in rows} == {(1, leader.name)}
    with psycopg.connect(probe_db) as connection:
        terms = connection.execute("SELECT term, holder FROM leader_terms").fetchall()
    assert terms == [(1, leader.name)]
    gauges = leader_gauges(started)
    assert sorted(gauges) == [0.0, 0.0, 1.0]
    assert gauges[started.index(leader)] == 1.0
    shown = httpx.get(f"{started[0].url}/v1/leader", timeout=5).json()
    assert (shown["instance_id"], shown["term"]) == (leader.name, 1)
    follower = next(r for r in started if r is not leader)
    assert httpx.get(f"{follower.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{follower.url}/readyz", timeout=5).json() == {"status": "ready"}
    metrics = httpx.get(f"{follower.url}/metrics", timeout=5).text
    assert "batchwarden_leader_term 1.0" in metrics


def test_sigkill_of_the_leader_hands_over_to_another(replicas, probe_db):
    by_name = {r.name: r for r in (replicas("a"), replicas("b"))}
    leader = leader_of(by_name, probe_db)
    killed_at = leader.signal(signal.SIGKILL)
    term, holder, at = wait_for(lambda: first_action_after(probe_db, 1), timeout=10)
    assert term == 2 and holder != leader.name
    assert at - killed_at < 5.0
    assert max(r[2] for r in probe_rows(probe_db) if r[0] == 1) < at


def test_sigterm_of_the_leader_releases_the_lock(replicas, probe_db):
    by_name = {r.name: r for r in (replicas("a"), replicas("b"))}
    leader = leader_of(by_name, probe_db)
    stopped_at = leader.signal(signal.SIGTERM)
    assert leader.process.wait(timeout=30) == 0
    term, holder, at = wait_for(lambda: first_action_after(probe_db, 1), timeout=10)
    assert (term, holder) == (2, next(n for n in by_name if n != leader.name))
    assert "released the leader lock" in leader.messages()
    # Released, not timed out: sooner than the server's idle_session_timeout.
    assert at - stopped_at < 3.0


def test_a_silenced_leader_steps_down_before_anyone_else_leads(replicas, probe_db):
    port = int(probe_db.split("@127.0.0.1:")[1].split("/")[0])
    proxy = SilenceableProxy(port)
    try:
        proxied = probe_db.replace(f":{port}/", f":{proxy.port}/")
        quiet = replicas("quiet", url=proxied)
        wait_for(lambda: current_leader(probe_db)[0] == "quiet")
        wait_for(lambda: first_action_after(probe_db, 0))
        other = replicas("other")
        silenced_at = proxy.silence()
        term, holder, taken_at = wait_for(
            lambda: first_action_after(probe_db, 1), timeout=15
        )
        assert (term, holder) == (2, "other")
        step_down = wait_for(lambda: _step_down_time(quiet), timeout=10)
        assert step_down - silenced_at <= 2.0 + 0.5  # within the trust window
        assert step_down < taken_at
        assert "leading in term 2" in other.messages()
    finally:
        proxy.close()


def _step_down_time(replica: Replica) -> float | None:
    for event in replica.events():
        if event["message"].startswith("stepped down"):
            from datetime import datetime

            return datetime.fromisoformat(event["ts"]).timestamp()
    return None


def test_a_paused_leader_cannot_write_after_the_next_term_begins(replicas, probe_db):
    by_name = {r.name: r for r in (replicas("a"), replicas("b"))}
    leader = leader_of(by_name, probe_db)
    leader.signal(signal.SIGSTOP)
    term, holder, taken_at = wait_for(
        lambda: first_action_after(probe_db, 1), timeout=15
    )
    assert holder != leader.name
    leader.signal(signal.SIGCONT)
    wait_for(lambda: _step_down_time(leader), timeout=10)
    time.sleep(0.5)
    old_rows = [r for r in probe_rows(probe_db) if r[1] == leader.name]
    assert old_rows and max(r[2] for r in old_rows) < taken_at
    assert all(r[0] == 1 for r in old_rows)
    assert leader.process.poll() is None, "the old leader keeps running as follower"


def test_replicas_recover_from_a_postgresql_restart(replicas):
    server = ThrowawayServer()
    url = server.start()
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CREATE DATABASE election")
        database = url.rsplit("/", 1)[0] + "/election"
        with psycopg.connect(database, autocommit=True) as connection:
            connection.execute(leader_probe.TABLE)
        replicas("a", url=database)
        replicas("b", url=database)
        wait_for(lambda: first_action_after(database, 0))
        server.restart()
        restarted_at = time.time()
        term, _, at = wait_for(lambda: first_action_after(database, 1), timeout=30)
        assert at > restarted_at and term >= 2
    finally:
        server.stop()


def test_on_sqlite_a_second_process_stays_a_follower(replicas, sqlite_url):
    first = replicas("first", url=sqlite_url, probe=False)
    wait_for(lambda: leader_gauges([first]) == [1.0])
    second = replicas("second", url=sqlite_url, probe=False)
    time.sleep(1.0)
    assert leader_gauges([first, second]) == [1.0, 0.0]
    warning = "SQLite: leadership is a file lock on this host only"
    assert any(m.startswith(warning) for m in second.messages())
    first.signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0
    wait_for(lambda: leader_gauges([second]) == [1.0])
    shown = httpx.get(f"{second.url}/v1/leader", timeout=5).json()
    assert (shown["instance_id"], shown["term"]) == ("second", 2)
