"""The leader's pipeline under load, against the mock provider in its own
process, each figure next to a floor measured in the same run.

(a) One poll cycle over N running provider batches (default 10,000): the
    poller's cycle (read the open batches, retrieve each at
    PROVIDER_CONCURRENCY, write every change in one statement) against the
    same retrieve calls from a bare SDK client at the same concurrency.
(b) Ingestion of one batch of M items (default 100,000): the item fetcher
    (stream, parse, write in fenced chunks) against a bare COPY of the same
    rows into an unindexed table (the faster of text and binary COPY); with
    the process's peak RSS while ingesting, for M and for M/5, to show it
    does not follow batch size. Beside it, where the time goes: the CPU
    seconds of this process, of the store's PostgreSQL backends and of the
    mock during the ingest, and a second floor, a bare binary COPY of the
    same rows into a table with `item_results`' primary key (the key that
    stores each result once), with its backend's CPU seconds.
(c) J jobs of K items (default 500 x 100) from submit to delivered callback
    with a replica running, against a bare client doing the provider's part
    (create, poll until ended, stream results) at the same concurrency.

    python benchmarks/load.py [--batches 10000] [--items 100000] [--jobs 500]
                              [--phases abc] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path

import anthropic
import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchwarden.actors.fetcher import ingest  # noqa: E402
from batchwarden.actors.messages import FetchQueue  # noqa: E402
from batchwarden.actors.poller import poll_cycle  # noqa: E402
from batchwarden.actors.submitter import submit  # noqa: E402
from batchwarden.config import Secret, Settings  # noqa: E402
from batchwarden.mockprovider.http import serve  # noqa: E402
from batchwarden.providers.anthropic import AnthropicProvider  # noqa: E402
from batchwarden.store import open_store  # noqa: E402
from batchwarden.store.queries import INCOMING_COLUMNS, incoming_row  # noqa: E402
from batchwarden.supervisor import run as supervisor  # noqa: E402
from batchwarden.supervisor.leadership import LeaderContext  # noqa: E402
from batchwarden.telemetry.metrics import Metrics  # noqa: E402
from benchmarks.common import ScratchDatabase, add_postgres_url, machine  # noqa: E402
from tests.harness import Receiver, free_port, requests  # noqa: E402

SCRIPT = Path(sys.executable).parent / "batchwarden"
CONCURRENCY = 16


def start_mock(processing: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen(
        [str(SCRIPT), "mock-provider", "--port", "0", "--processing-time", processing],
        stdout=subprocess.PIPE,
        text=True,
    )
    return process, process.stdout.readline().split()[-1]


def context_for(store, url: str, mock_url: str, term: int) -> LeaderContext:
    settings = Settings(
        database_url=url,
        provider_url=mock_url,
        anthropic_api_key=Secret("bench"),
        provider_concurrency=CONCURRENCY,
        results_chunk=10_000,
    )
    return LeaderContext(store, settings, term, Metrics())


def provider(mock_url: str) -> AnthropicProvider:
    return AnthropicProvider(base_url=mock_url, api_key="bench", timeout_s=120)


# -- (a) a poll cycle ---------------------------------------------------------


async def poll_phase(url: str, mock_url: str, count: int) -> tuple[float, float]:
    async with open_store(url, instance_id="bench") as store:
        term = await store.bump_term("bench")
        context = context_for(store, url, mock_url, term)
        adapter = provider(mock_url)
        for _ in range(count):
            await store.create_job(requests(1))
        jobs = await store.claim_jobs(term=term, limit=count)
        async with trio.open_nursery() as nursery:
            limiter = trio.CapacityLimiter(CONCURRENCY)
            for job in jobs:
                nursery.start_soon(_submit_limited, limiter, context, adapter, job)
        ids = [b.provider_batch_id for b in await store.open_batches(limit=count)]
        send, _receive = trio.open_memory_channel(count)
        started = time.perf_counter()
        await poll_cycle(context, adapter, FetchQueue(send))
        ours = time.perf_counter() - started
    return ours, await bare_retrieves(mock_url, ids)


async def _submit_limited(limiter, context, adapter, job) -> None:
    async with limiter:
        await submit(context, adapter, job)


async def bare_retrieves(mock_url: str, ids: list[str]) -> float:
    client = anthropic.AsyncAnthropic(base_url=mock_url, api_key="bench", max_retries=0)
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(batch_id: str) -> None:
        async with limiter:
            await client.messages.batches.retrieve(batch_id)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for batch_id in ids:
            nursery.start_soon(one, batch_id)
    return time.perf_counter() - started


# -- (b) ingestion ------------------------------------------------------------


class PeakRss:
    """Samples this process's resident memory every 10 ms while active."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        self.start_mb = rss_mb()
        threading.Thread(target=self._sample, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak_mb = max(self.peak_mb, rss_mb())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class CpuSeconds:
    """User and system CPU seconds of processes, from /proc, over a span:
    this process, the mock's, and the database backends named `bench`
    (those that start during the span count from zero)."""

    def __init__(self, url: str, mock_pid: int) -> None:
        self.url = url
        self.pids = {"ours": [os.getpid()], "mock": [mock_pid]}
        self.spent: dict[str, float] = {}

    def __enter__(self) -> CpuSeconds:
        self.pids["postgres"] = backend_pids(self.url)
        self.start = {
            pid: cpu_seconds(pid) for pids in self.pids.values() for pid in pids
        }
        return self

    def __exit__(self, *exc_info) -> None:
        self.pids["postgres"] = sorted(
            {*self.pids["postgres"], *backend_pids(self.url)}
        )
        for name, pids in self.pids.items():
            self.spent[name] = sum(
                cpu_seconds(pid) - self.start.get(pid, 0.0) for pid in pids
            )


def backend_pids(url: str) -> list[int]:
    with psycopg.connect(url, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name LIKE %s",
            ("batchwarden:bench%",),
        ).fetchall()
    return [pid for (pid,) in rows]


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def ingest_phase(url: str, mock_url: str, mock_pid: int, count: int):
    async with open_store(url, instance_id="bench") as store:
        term = await store.bump_term("bench")
        context = context_for(store, url, mock_url, term)
        adapter = provider(mock_url)
        await store.create_job(requests(count, prefix="big"))
        [job] = await store.claim_jobs(term=term, limit=1)
        await submit(context, adapter, job)
        await trio.sleep(0.6)
        await poll_cycle(context, adapter, FetchQueue(trio.open_memory_channel(1)[0]))
        [batch] = await store.unfetched_batches()
        pokes, _ = trio.open_memory_channel(1)
        with PeakRss() as memory, CpuSeconds(url, mock_pid) as cpu:
            started = time.perf_counter()
            await ingest(context, adapter, batch, pokes)
            seconds = time.perf_counter() - started
        rows = []
        async with aclosing(adapter.results(batch.provider_batch_id)) as pieces:
            async for piece in pieces:
                rows += map(incoming_row, piece)
    floor = await trio.to_thread.run_sync(copy_floor, url, rows)
    keyed = await trio.to_thread.run_sync(keyed_floor, url, batch, rows)
    return Ingest(seconds, memory, cpu.spent, floor, *keyed)


@dataclass
class Ingest:
    seconds: float
    memory: PeakRss
    cpu: dict[str, float]
    floor_s: float
    keyed_s: float
    keyed_backend_cpu: float


def copy_floor(url: str, rows: list[tuple]) -> float:
    """The faster of a text and a binary COPY of the rows into an unindexed
    table (batchwarden itself writes results with a binary COPY)."""
    with psycopg.connect(url) as connection:
        connection.execute(
            "CREATE TABLE floor_results (custom_id text, status text, result text,"
            " input_tokens bigint, output_tokens bigint,"
            " cache_creation_input_tokens bigint, cache_read_input_tokens bigint,"
            " model text, error_type text)"
        )
        connection.commit()
        times = []
        for binary in (False, True):
            connection.execute("TRUNCATE floor_results")
            connection.commit()
            times.append(_timed_copy(connection, rows, binary))
        return min(times)


def keyed_floor(url: str, batch, rows: list[tuple]) -> tuple[float, float]:
    """A bare binary COPY of the same rows, with the columns batchwarden
    stores, into a table with `item_results`' primary key: (seconds, the
    backend's CPU seconds)."""
    head = (batch.job_id,)
    tail = (1, batch.id)
    records = [head + row[:1] + tail + row[1:] + (1,) for row in rows]
    columns = ("job_id", "custom_id", "attempt", "batch_id", *INCOMING_COLUMNS[1:])
    columns += ("term",)
    with psycopg.connect(url) as connection:
        connection.execute("CREATE TABLE floor_keyed (LIKE item_results INCLUDING ALL)")
        connection.commit()
        (pid,) = connection.execute("SELECT pg_backend_pid()").fetchone()
        types = ["text", "text", "int4", "int8", "text", "text"] + ["int8"] * 4
        types += ["text", "text", "int8"]
        cpu, started = cpu_seconds(pid), time.perf_counter()
        statement = (
            f"COPY floor_keyed ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        )
        with connection.cursor().copy(statement) as copy:
            copy.set_types(types)
            for record in records:
                copy.write_row(record)
        connection.commit()
        return time.perf_counter() - started, cpu_seconds(pid) - cpu


def _timed_copy(connection: psycopg.Connection, rows: list[tuple], binary: bool):
    statement = f"COPY floor_results ({', '.join(INCOMING_COLUMNS)}) FROM STDIN"
    types = ["text"] * 3 + ["int8"] * 4 + ["text"] * 2
    started = time.perf_counter()
    with connection.cursor().copy(statement + " (FORMAT BINARY)" * binary) as copy:
        if binary:
            copy.set_types(types)
        for row in rows:
            copy.write_row(row)
    connection.commit()
    return time.perf_counter() - started


# -- (c) jobs end to end -----------------------------------------------------------


async def jobs_phase(url: str, mock_url: str, jobs: int, items: int):
    receiver = Receiver(port=free_port())
    settings = Settings(
        database_url=url,
        port=0,
        provider_url=mock_url,
        anthropic_api_key=Secret("bench"),
        poll_interval=0.5,
        provider_concurrency=CONCURRENCY,
        instance_id="bench-replica",
        callback_allowlist=("127.0.0.1",),
    )
    client = open_store(url, instance_id="bench-client")
    async with client as store, trio.open_nursery() as nursery:
        await nursery.start(_serve_receiver, receiver)
        nursery.start_soon(supervisor.run, settings)
        started = time.perf_counter()
        for number in range(jobs):
            await store.create_job(
                requests(items, prefix=f"j{number}"), callback_url=receiver.url
            )
        with trio.fail_after(600):
            while len(receiver.received) < jobs:
                await trio.sleep(0.05)
        ours = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return ours, await bare_jobs(mock_url, jobs, items)


async def _serve_receiver(receiver: Receiver, *, task_status) -> None:
    await serve(receiver.handle, "127.0.0.1", receiver.port, task_status=task_status)


async def bare_jobs(mock_url: str, jobs: int, items: int) -> float:
    client = anthropic.AsyncAnthropic(base_url=mock_url, api_key="bench", max_retries=0)
    limiter = trio.CapacityLimiter(CONCURRENCY)

    async def one(number: int) -> None:
        body = [
            {"custom_id": r.custom_id, "params": json.loads(r.params)}
            for r in requests(items, prefix=f"bare{number}")
        ]
        async with limiter:
            batch = await client.messages.batches.create(requests=body)
        while True:
            await trio.sleep(0.5)
            async with limiter:
                state = await client.messages.batches.retrieve(batch.id)
            if state.processing_status == "ended":
                break
        async with limiter:
            async for _ in await client.messages.batches.results(batch.id):
                pass

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for number in range(jobs):
            nursery.start_soon(one, number)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--job-items", type=int, default=100)
    parser.add_argument(
        "--phases", default="abc", help="which phases to run, e.g. b (default abc)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the ingest phase at full size"
    )
    add_postgres_url(parser)
    args = parser.parse_args()
    # As `batchwarden run` does once its modules are loaded.
    supervisor.freeze_startup_heap()
    print(machine(), "; mock provider in its own process; PostgreSQL store")
    if "a" in args.phases:
        run_poll(args)
    mock, mock_url = start_mock("0.5")
    try:
        if "b" in args.phases:
            run_ingest(args, mock, mock_url)
        if "c" in args.phases:
            run_jobs(args, mock_url)
    finally:
        mock.terminate()


def run_poll(args: argparse.Namespace) -> None:
    mock, mock_url = start_mock("3600")
    try:
        with ScratchDatabase(args.postgres_url) as url:
            ours, floor = trio.run(poll_phase, url, mock_url, args.batches)
        print(
            f"(a) poll cycle over {args.batches:,} batches: {ours:.2f} s;"
            f" bare retrieves {floor:.2f} s; ratio {ours / floor:.2f}x"
        )
    finally:
        mock.terminate()


def run_ingest(args: argparse.Namespace, mock: subprocess.Popen, mock_url: str):
    for count in (args.items // 5, *[args.items] * args.rounds):
        with ScratchDatabase(args.postgres_url) as url:
            run = trio.run(ingest_phase, url, mock_url, mock.pid, count)
        seconds, memory, floor = run.seconds, run.memory, run.floor_s
        print(
            f"(b) ingest {count:,} items: {count / seconds:,.0f} items/s"
            f" ({seconds:.2f} s); bare COPY {count / floor:,.0f} items/s;"
            f" ratio {seconds / floor:.2f}x; RSS {memory.start_mb:.0f} MB before,"
            f" peak {memory.peak_mb:.0f} MB while ingesting"
        )
        spent = ", ".join(f"{name} {cpu:.2f}" for name, cpu in run.cpu.items())
        print(
            f"    CPU seconds while ingesting: {spent}; bare COPY into a table"
            f" with the primary key {run.keyed_s:.2f} s"
            f" ({run.keyed_s / floor:.2f}x the bare COPY),"
            f" its backend's CPU {run.keyed_backend_cpu:.2f} s"
        )


def run_jobs(args: argparse.Namespace, mock_url: str) -> None:
    with ScratchDatabase(args.postgres_url) as url:
        ours, floor = trio.run(jobs_phase, url, mock_url, args.jobs, args.job_items)
    print(
        f"(c) {args.jobs} jobs x {args.job_items} items, submit to callback:"
        f" {ours:.2f} s; bare client doing the provider's part {floor:.2f} s;"
        f" ratio {ours / floor:.2f}x"
    )


if __name__ == "__main__":
    main()
