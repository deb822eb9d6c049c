"""Result ingest speed of both stores, next to a floor measured in the same run.

For each store: create a job of N items, then write N results (~700 bytes
each) through `write_results` in chunks, fenced by a term, as the item
fetcher does. The floor is the cheapest way to put the same rows in the same
database: a bare COPY into an unindexed table on PostgreSQL, a bare
`executemany` INSERT on SQLite.

    python benchmarks/store_bench.py [--items 100000] [--chunk 10000] [--rounds 3]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchwarden.intake import Request  # noqa: E402
from batchwarden.states import ItemStatus, JobStatus  # noqa: E402
from batchwarden.store import open_store  # noqa: E402
from batchwarden.store.queries import INCOMING_COLUMNS, incoming_row  # noqa: E402
from batchwarden.store.records import ResultRow, Usage  # noqa: E402
from benchmarks.common import ScratchDatabase, add_postgres_url, machine  # noqa: E402

FLOOR_TABLE = (
    "CREATE TABLE floor_results (custom_id text, status text, result text,"
    " input_tokens bigint, output_tokens bigint,"
    " cache_creation_input_tokens bigint, cache_read_input_tokens bigint,"
    " model text, error_type text)"
)


def make_rows(count: int) -> list[ResultRow]:
    rows = []
    for i in range(count):
        text = f"answer {i}: " + "lorem ipsum dolor sit amet " * 18
        message = {
            "id": f"msg_{i:024d}",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 31, "output_tokens": 120},
        }
        result = json.dumps({"type": "succeeded", "message": message})
        rows.append(
            ResultRow(
                custom_id=f"item-{i:07d}",
                status=ItemStatus.SUCCEEDED,
                result=result,
                usage=Usage(input_tokens=31, output_tokens=120),
                model="claude-sonnet-4-5",
            )
        )
    return rows


async def ingest(url: str, rows: list[ResultRow], chunk: int) -> float:
    """Seconds to store every row through the store's fenced write."""
    async with open_store(url, instance_id="bench") as store:
        requests = [Request(r.custom_id, '{"model":"m"}') for r in rows]
        job, _ = await store.create_job(requests)
        term = await store.bump_term("bench")
        await store.transition(job.id, JobStatus.PENDING, term=term)
        await store.transition(job.id, JobStatus.RUNNING, term=term)
        batch = await store.add_provider_batch(
            job.id, attempt=1, request_count=len(rows), term=term
        )
        started = time.perf_counter()
        for start in range(0, len(rows), chunk):
            part = rows[start : start + chunk]
            outcome = await store.write_results(job.id, batch.id, 1, part, term=term)
            assert outcome.stored == len(part), outcome
        return time.perf_counter() - started


def pg_floor(url: str, rows: list[ResultRow]) -> float:
    tuples = [incoming_row(r) for r in rows]
    with psycopg.connect(url) as connection:
        connection.execute(FLOOR_TABLE)
        connection.commit()
        started = time.perf_counter()
        with connection.cursor() as cursor:
            columns = ", ".join(INCOMING_COLUMNS)
            with cursor.copy(f"COPY floor_results ({columns}) FROM STDIN") as copy:
                for row in tuples:
                    copy.write_row(row)
        connection.commit()
        return time.perf_counter() - started


def sqlite_floor(path: str, rows: list[ResultRow]) -> float:
    tuples = [incoming_row(r) for r in rows]
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")
    connection.execute(FLOOR_TABLE)
    marks = ", ".join("?" for _ in INCOMING_COLUMNS)
    started = time.perf_counter()
    connection.execute("BEGIN")
    connection.executemany(f"INSERT INTO floor_results VALUES ({marks})", tuples)
    connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return elapsed


def report(name: str, count: int, ours: list[float], floors: list[float]) -> None:
    ours_s, floor_s = statistics.median(ours), statistics.median(floors)
    ratios = sorted(o / f for o, f in zip(ours, floors, strict=True))
    print(
        f"{name:<10} ours {count / ours_s:>9,.0f} items/s ({ours_s:.2f} s)"
        f"   floor {count / floor_s:>9,.0f} items/s ({floor_s:.2f} s)"
        f"   ratio median {statistics.median(ratios):.2f}x"
        f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)})"
    )


def postgres_round(server_url: str, rows: list[ResultRow], chunk: int):
    with ScratchDatabase(server_url) as url:
        ours = trio.run(ingest, url, rows, chunk)
        return ours, pg_floor(url, rows)


def sqlite_round(rows: list[ResultRow], chunk: int):
    with tempfile.TemporaryDirectory() as folder:
        ours = trio.run(ingest, f"sqlite:///{folder}/bench.db", rows, chunk)
        return ours, sqlite_floor(f"{folder}/floor.db", rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    add_postgres_url(parser)
    args = parser.parse_args()
    rows = make_rows(args.items)
    size = sum(len(r.result) for r in rows) / len(rows)
    print(machine())
    print(
        f"{args.items:,} results of {size:.0f} bytes each, chunks of {args.chunk:,},"
        f" median of {args.rounds} rounds; floor: PostgreSQL bare COPY into an"
        " unindexed table, SQLite bare executemany"
    )
    for name, one_round in (
        ("postgres", lambda: postgres_round(args.postgres_url, rows, args.chunk)),
        ("sqlite", lambda: sqlite_round(rows, args.chunk)),
    ):
        timings = [one_round() for _ in range(args.rounds)]
        report(name, args.items, [t[0] for t in timings], [t[1] for t in timings])


if __name__ == "__main__":
    main()
