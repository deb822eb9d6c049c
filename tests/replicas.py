"""Real `batchwarden run` processes for election tests and benchmarks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).parent / "batchwarden"


class Replica:
    def __init__(
        self, database_url: str, name: str, *flags: str, probe: bool = True
    ) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkstemp(prefix=f"bw-{name}-", suffix=".log")[1])
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "BATCHWARDEN_DATABASE_URL": database_url,
            "BATCHWARDEN_LOG_FORMAT": "json",
        }
        command = [str(SCRIPT), "run", "--instance-id", name, "--port", "0"]
        if probe:
            command += ["--leader-actor", "tests.leader_probe:probe"]
        command += flags
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                command, stderr=log, stdout=subprocess.DEVNULL, env=env, cwd=ROOT
            )
        self.url = self._wait_listening()

    def _wait_listening(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                if line.startswith("batchwarden listening on "):
                    return line.split()[-1]
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited:\n{self.log_path.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text()}")

    def signal(self, signum: int) -> float:
        """Send a signal; return the wall-clock time it was sent."""
        sent = time.time()
        self.process.send_signal(signum)
        return sent

    def events(self) -> list[dict]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def messages(self) -> list[str]:
        return [event["message"] for event in self.events()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)


def probe_rows(database_url: str) -> list[tuple[int, str, float]]:
    """(term, holder, epoch seconds) of every leader-only action, in order."""
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT term, holder, extract(epoch FROM at)::float8"
            " FROM probe_actions ORDER BY at"
        ).fetchall()


def wait_for(predicate, timeout: float = 20.0, step: float = 0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(
        f"not true within {timeout} s: {predicate.__doc__ or predicate}"
    )


def current_leader(database_url: str) -> tuple[str, int]:
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT holder, term FROM leader WHERE id = 1"
        ).fetchone()


def first_action_after(database_url: str, term: int) -> tuple[int, str, float] | None:
    """The first leader-only action of a term newer than `term`."""
    with psycopg.connect(database_url) as connection:
        return connection.execute(
            "SELECT term, holder, extract(epoch FROM at)::float8 FROM probe_actions"
            " WHERE term > %s ORDER BY at LIMIT 1",
            (term,),
        ).fetchone()
