"""Item retries on a job whose items often end retryably: how many requests
each attempt's provider batches held, and how the items ended.

The mock provider (in this process) ends items by the given outcome mix;
errored items get invalid_request_error, overloaded_error or api_error in
equal parts. A replica on a SQLite file in a new temporary directory runs
the job with ITEM_MAX_ATTEMPTS.

    python benchmarks/retries.py [--items 400] [--max-attempts 3]
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from batchwarden.store import open_store  # noqa: E402
from benchmarks.common import machine  # noqa: E402
from tests.harness import Harness, requests, wait_terminal  # noqa: E402


async def run(items: int, max_attempts: int) -> None:
    url = f"sqlite:///{tempfile.mkdtemp(prefix='bw-retries-')}/retries.db"
    async with (
        open_store(url, instance_id="retries") as store,
        trio.open_nursery() as nursery,
    ):
        harness = Harness(nursery, url)
        await harness.start_servers()
        behaviour = harness.provider.behaviour
        behaviour.mix = (0.5, 0.3, 0.2)
        kinds = ("invalid_request_error", "overloaded_error", "api_error")
        behaviour.error_types = dict.fromkeys(kinds, 1.0)
        await harness.start_replica(item_max_attempts=max_attempts)
        job, _ = await store.create_job(requests(items))
        ended = await wait_terminal(store, job.id, timeout=120)
        detail = await store.job_detail(job.id)
        held = collections.Counter()
        for batch in detail.provider_batches:
            held[batch.attempt] += batch.request_count
        rows = [row async for row in store.iter_items(job.id)]
        outcomes = collections.Counter(row.status.value for row in rows)
        attempts = collections.Counter(row.attempts for row in rows)
        print(f"job {ended.status.value}; requests by attempt: {dict(held)}")
        print(f"items by outcome: {dict(outcomes)}")
        print(f"items by attempts: {dict(sorted(attempts.items()))}")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--max-attempts", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    print("mix: 50% succeeded, 30% errored, 20% expired")
    trio.run(run, args.items, args.max_attempts)


if __name__ == "__main__":
    main()
