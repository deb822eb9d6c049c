"""A chaos soak: three `batchwarden run` replicas on PostgreSQL, the mock
provider with its faults on, and a webhook receiver, for a bounded time.

Jobs are submitted all along, through the REST API of whichever replica
answers, each with its own idempotency key, so a create whose answer was
lost is retried without making a second job. Some are cancelled. At random
moments the soak SIGKILLs or SIGSTOPs the leader, cuts its connections to
PostgreSQL off (a proxy that stops forwarding), restarts PostgreSQL, or
takes the receiver down or makes it slow. Each fault heals after a while.

Then everything heals, submission stops, and the soak waits until every
job has ended and every callback was delivered. `tests/chaos_checks.py`
then checks the database against the provider's records, the receiver's
log and the replicas' logs.

The server is a throwaway PostgreSQL of the soak's own, because it gets
restarted; it runs with `track_commit_timestamp`, so the checks can tell
which term was the newest when each result was committed. Each replica
reaches it through a proxy of its own, which is how one replica is cut off.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import psycopg

from tests.harness import SECRET
from tests.pgserver import ThrowawayServer
from tests.proxy import SilenceableProxy
from tests.receiver import ThreadedReceiver
from tests.replicas import Replica

SCRIPT = os.path.join(os.path.dirname(sys.executable), "batchwarden")
REPLICAS = ("r1", "r2", "r3")
FAULTS = ("sigkill", "sigstop", "silence", "postgres", "receiver")
TRUST_WINDOW_S = 2.0

MOCK_FLAGS = [
    "--processing-time", "uniform:1,4", "--cancel-delay", "0.5",
    "--outcomes", "succeeded=0.9,errored=0.06,expired=0.04",
    "--error-types", "invalid_request_error=1,overloaded_error=1",
    "--retry-after", "1", "--hang", "30",
    "--fault", "create:529=0.05", "--fault", "create:500=0.03",
    "--fault", "retrieve:429=0.03", "--fault", "retrieve:500=0.03",
    "--fault", "retrieve:malformed=0.02", "--fault", "retrieve:hang=0.005",
    "--fault", "results:truncate=0.1", "--fault", "results:drop=0.05",
    "--fault", "results:unknown_ids=0.05", "--fault", "cancel:500=0.1",
]  # fmt: skip

REPLICA_FLAGS = [
    "--poll-interval", "0.5", "--results-chunk", "100",
    "--webhook-secret", SECRET, "--callback-allowlist", "127.0.0.1",
    "--provider-timeout", "5", "--callback-timeout", "2",
    "--callback-backoff", "0.5", "--callback-max-attempts", "14",
    "--trust-window", str(TRUST_WINDOW_S),
]  # fmt: skip


@dataclass(frozen=True)
class SoakPlan:
    duration_s: float = 60.0
    seed: int = 1
    submit_every_s: float = 1.0
    max_items: int = 200
    fault_every_s: tuple[float, float] = (5.0, 10.0)
    cancel_share: float = 0.05
    drain_timeout_s: float = 240.0


@dataclass
class Incarnation:
    """One process of a replica: its log, and what was done to it."""

    name: str
    replica: Replica
    proxy: SilenceableProxy
    killed_at: float | None = None
    frozen: list[list[float | None]] = field(default_factory=list)
    silenced: list[list[float | None]] = field(default_factory=list)

    @property
    def impaired(self) -> bool:
        open_spans = [s for s in self.frozen + self.silenced if s[1] is None]
        return self.killed_at is not None or bool(open_spans)


@dataclass
class Submission:
    number: int
    body: dict
    job_id: str | None = None
    cancel_tried: bool = False
    cancel_answer: int | None = None


@dataclass
class Heal:
    at: float
    action: Callable[[], bool]
    what: str


class Soak:
    def __init__(self, plan: SoakPlan, say: Callable[[str], None] = print) -> None:
        self.plan = plan
        self.say = say
        self.random = random.Random(plan.seed)
        self.server = ThrowawayServer("track_commit_timestamp=on")
        self.incarnations: list[Incarnation] = []
        self.submissions: list[Submission] = []
        self.faults: Counter[str] = Counter()
        self.events: list[tuple[float, str, str]] = []
        self.heals: list[Heal] = []
        self.fault_order: list[str] = []
        self.started_at = self.ended_at = 0.0

    # -- the world ---------------------------------------------------------

    def __enter__(self) -> Soak:
        self.url = self.server.start()
        self.receiver = ThreadedReceiver()
        command = [SCRIPT, "mock-provider", "--port", "0"]
        command += ["--seed", str(self.plan.seed), *MOCK_FLAGS]
        self.mock = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.mock_url = self.mock.stdout.readline().split()[-1]
        os.environ.setdefault("ANTHROPIC_API_KEY", "soak-key")
        for name in REPLICAS:
            self._start(name)
        return self

    def __exit__(self, *exc_info) -> None:
        for incarnation in self.incarnations:
            incarnation.replica.stop()
            incarnation.proxy.close()
        self.mock.terminate()
        self.mock.wait(timeout=10)
        self.receiver.down()
        self.server.stop()

    def _start(self, name: str) -> bool:
        proxy = SilenceableProxy(self.server.port)
        proxied = self.url.replace(f":{self.server.port}/", f":{proxy.port}/")
        flags = ["--provider-url", self.mock_url, *REPLICA_FLAGS]
        try:
            replica = Replica(proxied, name, *flags, probe=False)
        except RuntimeError as exc:
            proxy.close()
            self.say(f"could not start {name} yet: {str(exc).splitlines()[0]}")
            return False
        self.incarnations.append(Incarnation(name, replica, proxy))
        return True

    def live(self, name: str) -> Incarnation:
        return [i for i in self.incarnations if i.name == name][-1]

    def leader(self) -> Incarnation | None:
        """The replica the leader row names, if it is in shape to be hit."""
        try:
            with psycopg.connect(self.url, connect_timeout=2) as connection:
                row = connection.execute("SELECT holder FROM leader").fetchone()
        except psycopg.OperationalError:
            return None
        if row is None or row[0] is None:
            return None
        incarnation = self.live(row[0])
        return None if incarnation.impaired else incarnation

    # -- the run -----------------------------------------------------------

    def run(self) -> None:
        plan = self.plan
        self.started_at = time.time()
        end = self.started_at + plan.duration_s
        next_fault = self.started_at + self.random.uniform(*plan.fault_every_s)
        next_submit = self.started_at
        while time.time() < end:
            self._heal_due(time.time())
            if time.time() >= next_fault and self._inject(self._next_fault()):
                next_fault = time.time() + self.random.uniform(*plan.fault_every_s)
            if time.time() >= next_submit:
                self._submit_one()
                next_submit += plan.submit_every_s
            time.sleep(0.05)
        self.say(f"soak over after {time.time() - self.started_at:.0f} s; healing")
        self._heal_all()
        self._finish_submissions()
        self._drain()
        self.ended_at = time.time()
        for incarnation in self.incarnations:
            if incarnation.killed_at is None:
                incarnation.replica.signal(signal.SIGTERM)
        for incarnation in self.incarnations:
            incarnation.replica.process.wait(timeout=30)

    def note(self, kind: str, detail: str) -> None:
        self.events.append((time.time(), kind, detail))
        self.say(f"{time.time() - self.started_at:7.1f} s  {kind}: {detail}")

    # -- faults ------------------------------------------------------------

    def _next_fault(self) -> str:
        """Kinds come in rounds, each round a new shuffle of all of them, so
        a soak of a few minutes still injects each kind."""
        if not self.fault_order:
            self.fault_order = self.random.sample(FAULTS, len(FAULTS))
        return self.fault_order[0]

    def _inject(self, kind: str) -> bool:
        """One fault of `kind`, counted under the label it returns; False,
        with nothing done, if it needs a leader and none is in shape."""
        if kind == "postgres":
            self.note(kind, "restarting PostgreSQL")
            self.server.restart()
            label = "postgres restart"
        elif kind == "receiver":
            label = self._receiver_fault()
        else:
            leader = self.leader()
            if leader is None:
                return False
            label = getattr(self, f"_{kind}")(leader)
        self.faults[label] += 1
        self.fault_order.pop(0)
        return True

    def _sigkill(self, leader: Incarnation) -> str:
        leader.killed_at = leader.replica.signal(signal.SIGKILL)
        self.note("sigkill", leader.name)
        delay = self.random.uniform(1.0, 3.0)
        self._later(delay, lambda: self._restart(leader.name), f"restart {leader.name}")
        return "leader SIGKILL"

    def _restart(self, name: str) -> bool:
        leader = self.live(name)
        leader.replica.process.wait(timeout=10)
        leader.proxy.close()
        return self._start(name)

    def _sigstop(self, leader: Incarnation) -> str:
        span = [leader.replica.signal(signal.SIGSTOP), None]
        leader.frozen.append(span)
        pause = self.random.uniform(1.0, 8.0)
        self.note("sigstop", f"{leader.name} for {pause:.1f} s")

        def resume() -> bool:
            span[1] = leader.replica.signal(signal.SIGCONT)
            return True

        self._later(pause, resume, f"SIGCONT {leader.name}")
        return "leader SIGSTOP"

    def _silence(self, leader: Incarnation) -> str:
        span = [leader.proxy.silence(), None]
        leader.silenced.append(span)
        pause = self.random.uniform(3.0, 10.0)
        self.note("silence", f"{leader.name} cut off from PostgreSQL for {pause:.1f} s")

        def resume() -> bool:
            leader.proxy.resume()
            span[1] = time.time()
            return True

        self._later(pause, resume, f"reconnect {leader.name}")
        return "leader cut off"

    def _receiver_fault(self) -> str:
        pause = self.random.uniform(3.0, 15.0)
        if self.random.random() < 0.5:
            self.receiver.down()
            label = "receiver down"
        else:
            self.receiver.delay = 3.0
            label = "receiver slow"
        self.note("receiver", f"{label} for {pause:.1f} s")

        def heal() -> bool:
            self.receiver.delay = 0.0
            self.receiver.up()
            return True

        self._later(pause, heal, "receiver up")
        return label

    def _heal_all(self) -> None:
        deadline = time.time() + 60
        while self.heals:
            if time.time() > deadline:
                raise AssertionError(f"could not heal: {[h.what for h in self.heals]}")
            self._heal_due(float("inf"))
            time.sleep(0.5 if self.heals else 0)

    def _later(self, delay: float, action: Callable[[], bool], what: str) -> None:
        self.heals.append(Heal(time.time() + delay, action, what))

    def _heal_due(self, now: float) -> None:
        due = sorted((h for h in self.heals if h.at <= now), key=lambda h: h.at)
        for heal in due:
            self.heals.remove(heal)
            if heal.action():
                self.note("heal", heal.what)
            else:
                self._later(1.0, heal.action, heal.what)

    # -- jobs --------------------------------------------------------------

    def _submit_one(self) -> None:
        number = len(self.submissions)
        count = self.random.randint(1, self.plan.max_items)
        requests = [
            {
                "custom_id": f"s{number}-{i}",
                "params": {
                    "model": "m",
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"{number}/{i}"}],
                },
            }
            for i in range(count)
        ]
        body = {
            "requests": requests,
            "callback_url": self.receiver.url,
            "metadata": {"soak": number},
        }
        self.submissions.append(Submission(number, body))
        self._send_pending()
        if self.random.random() < self.plan.cancel_share:
            self._cancel_one()

    def _send_pending(self) -> None:
        for submission in self.submissions:
            if submission.job_id is None:
                self._send(submission)

    def _send(self, submission: Submission) -> None:
        headers = {"Idempotency-Key": f"soak-{submission.number}"}
        for incarnation in self._answering():
            url = f"{incarnation.replica.url}/v1/jobs"
            try:
                response = httpx.post(
                    url, json=submission.body, headers=headers, timeout=5
                )
            except httpx.HTTPError:
                continue
            if response.status_code == 201:
                submission.job_id = response.json()["id"]
                return

    def _cancel_one(self) -> None:
        chosen = [s for s in self.submissions if s.job_id and s.cancel_answer is None]
        if not chosen:
            return
        submission = self.random.choice(chosen)
        submission.cancel_tried = True
        for incarnation in self._answering():
            url = f"{incarnation.replica.url}/v1/jobs/{submission.job_id}/cancel"
            try:
                response = httpx.post(url, timeout=5)
            except httpx.HTTPError:
                continue
            if response.status_code in (200, 409):
                submission.cancel_answer = response.status_code
                self.note("cancel", f"{submission.job_id}: {response.status_code}")
                return

    def _answering(self) -> list[Incarnation]:
        names = list(REPLICAS)
        self.random.shuffle(names)
        found = [self.live(name) for name in names]
        return [i for i in found if not i.impaired]

    def _finish_submissions(self) -> None:
        deadline = time.time() + 60
        while any(s.job_id is None for s in self.submissions):
            if time.time() > deadline:
                raise AssertionError("the API took no job for 60 s after healing")
            self._send_pending()
            time.sleep(0.5)

    def _drain(self) -> None:
        """Wait until every job has ended and every callback was delivered."""
        deadline = time.time() + self.plan.drain_timeout_s
        job_ids = [s.job_id for s in self.submissions]
        while True:
            open_jobs, undelivered = self._outstanding(job_ids)
            if not open_jobs and not undelivered:
                self.say(f"drained in {time.time() - self.started_at:.0f} s")
                return
            if time.time() > deadline:
                raise AssertionError(
                    f"not drained in {self.plan.drain_timeout_s} s: {open_jobs} jobs"
                    f" open, {undelivered} callbacks not delivered\n"
                    + self._stuck(job_ids)
                )
            time.sleep(1.0)

    def _outstanding(self, job_ids: list[str]) -> tuple[int, int]:
        with psycopg.connect(self.url, connect_timeout=5) as connection:
            return connection.execute(
                "SELECT count(*) FILTER (WHERE j.status IN"
                " ('created', 'pending', 'running')),"
                " count(*) FILTER (WHERE c.status IS DISTINCT FROM 'delivered')"
                " FROM jobs j LEFT JOIN callbacks c ON c.job_id = j.id"
                " WHERE j.id = ANY(%s)",
                (job_ids,),
            ).fetchone()

    def _stuck(self, job_ids: list[str]) -> str:
        """What is left open, and each replica's last log lines."""
        with psycopg.connect(self.url, connect_timeout=5) as connection:
            rows = connection.execute(
                "SELECT j.id, j.status, c.status, c.attempts, c.last_error,"
                " c.next_attempt_at, c.lease_term, l.holder, l.term"
                " FROM jobs j LEFT JOIN callbacks c ON c.job_id = j.id, leader l"
                " WHERE j.id = ANY(%s) AND (j.status IN"
                " ('created', 'pending', 'running')"
                " OR c.status IS DISTINCT FROM 'delivered')",
                (job_ids,),
            ).fetchall()
        lines = [repr(row) for row in rows[:10]]
        for incarnation in self.incarnations[-len(REPLICAS) :]:
            lines.append(f"-- {incarnation.name}: {incarnation.replica.log_path}")
            lines += incarnation.replica.messages()[-8:]
        return "\n".join(lines)

    # -- what the checks read ----------------------------------------------

    def mock_records(self, provider_batch_id: str) -> list[dict]:
        url = f"{self.mock_url}/_mock/batches/{provider_batch_id}/records"
        response = httpx.get(url, timeout=30)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line]

    def mock_statistics(self) -> dict:
        return httpx.get(f"{self.mock_url}/_mock/stats", timeout=30).json()
