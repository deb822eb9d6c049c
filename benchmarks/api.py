"""The REST API's create-and-read throughput, next to floors from the same run.

A `batchwarden run` replica on a scratch PostgreSQL database (with the mock
provider, whose batches stay in progress so the leader only submits) serves
the API; this process is the client, over keep-alive connections.

(a) create-and-read: each of C workers POSTs a job of K requests, then GETs
    it, N times in all. Floors: the same number of GET /healthz round trips
    (the HTTP stack with nothing behind it) and the same creates and reads
    made in this process straight through the service layer (the database
    work with no HTTP).
(b) one large create of 100,000 requests over HTTP, against the same
    create straight through the service layer.

    python benchmarks/api.py [--pairs 2000] [--items 10] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchwarden import service  # noqa: E402
from batchwarden.callback_urls import CallbackPolicy  # noqa: E402
from batchwarden.store import open_store  # noqa: E402
from benchmarks.common import ScratchDatabase, add_postgres_url, machine  # noqa: E402
from tests.harness import requests  # noqa: E402
from tests.replicas import Replica  # noqa: E402

SCRIPT = Path(sys.executable).parent / "batchwarden"
TOKEN = "bench-token"
PARAMS = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 64,
    "messages": [{"role": "user", "content": "Summarise the tides in one line."}],
}


def job_body(items: int, number: int) -> bytes:
    rows = [{"custom_id": f"n{number}-{i}", "params": PARAMS} for i in range(items)]
    return json.dumps({"requests": rows}).encode()


async def spread(count: int, concurrency: int, one) -> float:
    """Seconds to run `one(i)` for i in range(count) on `concurrency` tasks."""
    numbers = iter(range(count))

    async def worker() -> None:
        for number in numbers:
            await one(number)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return time.perf_counter() - started


async def api_pairs(url: str, pairs: int, items: int, concurrency: int) -> float:
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=60
    ) as client:

        async def one(number: int) -> None:
            created = await client.post("/v1/jobs", content=job_body(items, number))
            assert created.status_code == 201, created.text
            read = await client.get(f"/v1/jobs/{created.json()['id']}")
            assert read.status_code == 200, read.text

        await one(-1)  # warm the connection and the code paths
        return await spread(pairs, concurrency, one)


async def health_round_trips(url: str, count: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(number: int) -> None:
            assert (await client.get("/healthz")).status_code == 200

        return await spread(count, concurrency, one)


async def service_pairs(
    database_url: str, pairs: int, items: int, concurrency: int
) -> float:
    policy = CallbackPolicy()
    async with open_store(database_url, instance_id="bench-client") as store:

        async def one(number: int) -> None:
            batch = requests(items, prefix=f"s{number}")
            job, _ = await service.create_job(store, batch, policy=policy)
            service.job_document(await store.job_detail(job.id))

        return await spread(pairs, concurrency, one)


async def large_create(url: str, database_url: str, items: int) -> tuple[float, float]:
    body = job_body(items, 0)
    headers = {"authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as client:
        started = time.perf_counter()
        created = await client.post("/v1/jobs", content=body)
        over_http = time.perf_counter() - started
    assert created.status_code == 201, created.text
    async with open_store(database_url, instance_id="bench-client") as store:
        batch = requests(items, prefix="large")
        started = time.perf_counter()
        await service.create_job(store, batch, policy=CallbackPolicy())
        direct = time.perf_counter() - started
    return over_http, direct


def start_mock() -> tuple[subprocess.Popen, str]:
    command = [str(SCRIPT), "mock-provider", "--port", "0"]
    command += ["--processing-time", "86000"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    return process, process.stdout.readline().split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=2000)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--large", type=int, default=100_000)
    add_postgres_url(parser)
    args = parser.parse_args()
    print(machine())
    print(f"command: python benchmarks/api.py {' '.join(sys.argv[1:])}".rstrip())
    mock, mock_url = start_mock()
    os.environ.setdefault("ANTHROPIC_API_KEY", "bench")
    try:
        with ScratchDatabase(args.postgres_url) as database_url:
            run_phases(args, database_url, mock_url)
    finally:
        mock.terminate()
        mock.wait(timeout=10)


def run_phases(args: argparse.Namespace, database_url: str, mock_url: str) -> None:
    flags = ("--provider-url", mock_url, "--api-tokens", TOKEN)
    replica = Replica(database_url, "api-bench", *flags, probe=False)
    try:
        pairs, items, workers = args.pairs, args.items, args.concurrency
        api = trio.run(api_pairs, replica.url, pairs, items, workers)
        health = trio.run(health_round_trips, replica.url, 2 * pairs, workers)
        direct = trio.run(service_pairs, database_url, pairs, items, workers)
        large_http, large_direct = trio.run(
            large_create, replica.url, database_url, args.large
        )
    finally:
        replica.stop()
    floor = health + direct
    print(f"(a) {pairs} create-and-read pairs, jobs of {items}, {workers} workers:")
    print(f"    API             {api:7.2f} s  {pairs / api:7.0f} pairs/s")
    print(f"    floor: {2 * pairs} GET /healthz {health:6.2f} s")
    print(f"    floor: service layer, no HTTP {direct:6.2f} s")
    print(f"    API / (HTTP floor + service floor) = {api / floor:.2f}x")
    print(f"(b) one job of {args.large} requests:")
    print(f"    POST /v1/jobs {large_http:6.2f} s, service layer {large_direct:6.2f} s")
    print(f"    ratio {large_http / large_direct:.2f}x")


if __name__ == "__main__":
    main()
