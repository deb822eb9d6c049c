"""The leader SIGKILLed in the middle of ingesting results: real processes
(two replicas, the mock provider) on real PostgreSQL, a real receiver."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from tests.harness import SECRET
from tests.receiver import ThreadedReceiver
from tests.replicas import Replica, current_leader, wait_for

pytestmark = pytest.mark.slow

SCRIPT = Path(sys.executable).parent / "batchwarden"
ITEMS = 20_000


@pytest.fixture
def receiver():
    receiver = ThreadedReceiver()
    yield receiver
    receiver.down()


def job_state(url: str, job_id: str) -> tuple[str, int]:
    with psycopg.connect(url) as connection:
        status = connection.execute(
            "SELECT status FROM jobs WHERE id = %s", (job_id,)
        ).fetchone()[0]
        stored = connection.execute(
            "SELECT count(*) FROM item_results WHERE job_id = %s", (job_id,)
        ).fetchone()[0]
    return status, stored


def test_leader_killed_mid_ingestion_loses_and_repeats_nothing(
    pg_url, mock_url, receiver, tmp_path
):
    flags = [
        "--provider-url", mock_url, "--poll-interval", "0.1",
        "--results-chunk", "200", "--webhook-secret", SECRET,
        "--callback-allowlist", "127.0.0.1",
    ]  # fmt: skip
    os.environ.setdefault("ANTHROPIC_API_KEY", "test-key")
    replicas = {n: Replica(pg_url, n, *flags, probe=False) for n in ("a", "b")}
    try:
        requests = tmp_path / "job.jsonl"
        with requests.open("w") as out:
            for i in range(ITEMS):
                params = {"model": "m", "max_tokens": 16, "messages": [
                    {"role": "user", "content": f"q{i}"}]}  # fmt: skip
                out.write(json.dumps({"custom_id": f"q{i:05d}", "params": params}))
                out.write("\n")
        env = {
            **os.environ,
            "BATCHWARDEN_DATABASE_URL": pg_url,
            "BATCHWARDEN_CALLBACK_ALLOWLIST": "127.0.0.1",
        }
        submitted = subprocess.run(
            [str(SCRIPT), "submit", str(requests), "--callback-url", receiver.url],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        job_id = submitted.stdout.split()[0]
        wait_for(lambda: job_state(pg_url, job_id)[1] > 0, timeout=60, step=0.002)
        leader = replicas[current_leader(pg_url)[0]]
        leader.signal(signal.SIGKILL)
        status, stored = job_state(pg_url, job_id)
        assert status == "running" and 0 < stored < ITEMS, "killed too late"
        wait_for(lambda: job_state(pg_url, job_id)[0] == "completed", timeout=60)
        with psycopg.connect(pg_url) as connection:
            rows, distinct, attempts = connection.execute(
                "SELECT count(*), count(DISTINCT custom_id), max(attempt)"
                " FROM item_results WHERE job_id = %s",
                (job_id,),
            ).fetchone()
            terms = connection.execute(
                "SELECT DISTINCT term FROM item_results WHERE job_id = %s", (job_id,)
            ).fetchall()
        assert (rows, distinct, attempts) == (ITEMS, ITEMS, 1)
        failures = [m for r in replicas.values() for m in r.messages()]
        assert not [m for m in failures if m.startswith("a worker failed")]
        assert len(terms) >= 2, "both leaders stored part of the results"
        wait_for(lambda: receiver.deliveries, timeout=30)
        checker = Webhook(SECRET)
        deliveries = receiver.deliveries
        payloads = [checker.verify(d.body, d.headers) for d in deliveries]
        assert {p["data"]["id"] for p in payloads} == {job_id}
        assert payloads[0]["data"]["request_counts"]["succeeded"] == ITEMS
        assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    finally:
        for replica in replicas.values():
            replica.stop()
