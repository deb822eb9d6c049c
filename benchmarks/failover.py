"""Hand-over time between real `batchwarden run` replicas on PostgreSQL.

Two replicas run the probe actor (a fenced write every 20 ms). Each round
signals the leader and measures, on this machine's clock, from the signal
to the new leader's first leader-only action (its first probe row, stamped
by the database). The signalled replica is started again as a follower
before the next round.

Then the silenced leader: its connections go through a proxy that stops
forwarding. Measured from the silence: when the leader stepped down (its
log), and when PostgreSQL let another replica take the lock (the new
term's first action); the gap between them is the safety margin.

    python benchmarks/failover.py [--rounds 20] [--silenced-rounds 3] [--poll 0.5]

The SIGKILL rounds run again with the lock taken by a try-loop
(`--lock-poll-interval`) instead of a blocking wait, for comparison.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
from datetime import datetime
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ScratchDatabase, add_postgres_url, machine  # noqa: E402
from tests import leader_probe  # noqa: E402
from tests.proxy import SilenceableProxy  # noqa: E402
from tests.replicas import (  # noqa: E402
    Replica,
    current_leader,
    first_action_after,
    wait_for,
)


def handovers(url: str, signum: int, rounds: int, *flags: str) -> list[float]:
    replicas = {name: Replica(url, name, *flags) for name in ("a", "b")}
    times = []
    try:
        for _ in range(rounds):
            holder, term = wait_for(lambda: current_leader(url))
            wait_for(lambda t=term: first_action_after(url, t - 1))
            leader = replicas[holder]
            sent = leader.signal(signum)
            _, _, at = wait_for(lambda t=term: first_action_after(url, t), timeout=30)
            times.append(at - sent)
            leader.process.wait(timeout=30)
            replicas[holder] = Replica(url, holder, *flags)
    finally:
        for replica in replicas.values():
            replica.stop()
    return times


def silenced(url: str, port: int, rounds: int) -> list[tuple[float, float]]:
    results = []
    for number in range(rounds):
        proxy = SilenceableProxy(port)
        proxied = url.replace(f":{port}/", f":{proxy.port}/")
        quiet = None
        other = None
        try:
            before = newest_probed_term(url)
            quiet = Replica(proxied, f"quiet{number}")
            wait_for(lambda q=quiet.name: current_leader(url)[0] == q, timeout=30)
            wait_for(lambda b=before: first_action_after(url, b))
            other = Replica(url, f"other{number}")
            silenced_at = proxy.silence()
            _, _, taken = wait_for(
                lambda b=before: first_action_after(url, b + 1), timeout=30
            )
            stepped = wait_for(lambda q=quiet: step_down_time(q), timeout=30)
            results.append((stepped - silenced_at, taken - silenced_at))
        finally:
            proxy.close()
            for replica in (quiet, other):
                if replica is not None:
                    replica.stop()
    return results


def newest_probed_term(url: str) -> int:
    with psycopg.connect(url) as connection:
        query = "SELECT coalesce(max(term), 0) FROM probe_actions"
        return connection.execute(query).fetchone()[0]


def step_down_time(replica: Replica) -> float | None:
    for event in replica.events():
        if event["message"].startswith("stepped down"):
            return datetime.fromisoformat(event["ts"]).timestamp()
    return None


def summary(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return (
        f"{name:<8} n={len(times)}  median {statistics.median(times) * 1000:6.1f} ms"
        f"  p95 {p95 * 1000:6.1f} ms  max {ordered[-1] * 1000:6.1f} ms"
    )


def create_probe_table(connection: psycopg.Connection) -> None:
    connection.execute(leader_probe.TABLE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--silenced-rounds", type=int, default=3)
    parser.add_argument("--poll", type=float, default=0.5, help="try-loop interval")
    add_postgres_url(parser)
    args = parser.parse_args()
    print(machine())
    print(
        "default timing: heartbeat 0.5 s, timeout 1 s, trust window 2 s,"
        " idle_session_timeout 3 s"
    )
    print("hand-over: from the signal to the new leader's first leader-only action")
    for name, signum in (("SIGKILL", signal.SIGKILL), ("SIGTERM", signal.SIGTERM)):
        with ScratchDatabase(args.postgres_url, create_probe_table) as url:
            print(summary(name, handovers(url, signum, args.rounds)), flush=True)
    print(f"the alternative: a try-loop every {args.poll} s with jitter")
    with ScratchDatabase(args.postgres_url, create_probe_table) as url:
        poll = ("--lock-poll-interval", str(args.poll))
        times = handovers(url, signal.SIGKILL, args.rounds, *poll)
        print(summary("SIGKILL", times), flush=True)
    port = int(args.postgres_url.split("@")[1].split("/")[0].split(":")[1])
    with ScratchDatabase(args.postgres_url, create_probe_table) as url:
        for stepped, taken in silenced(url, port, args.silenced_rounds):
            print(
                f"silenced leader: stepped down after {stepped:.2f} s; PostgreSQL let"
                f" another lead after {taken:.2f} s; margin {taken - stepped:.2f} s"
            )


if __name__ == "__main__":
    main()
