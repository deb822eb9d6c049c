"""A job's progress on a terminal, shared by `submit --wait` and the demo.

On a terminal the bar is redrawn in place; into a file or a pipe a line is
written only when it changes, so logs stay short.
"""

from __future__ import annotations

from typing import TextIO

import trio

from batchwarden.states import ItemStatus
from batchwarden.store import SqlStore
from batchwarden.store.records import JobDetail

WIDTH = 30


def progress_line(detail: JobDetail) -> str:
    total = detail.job.item_count
    done = total - detail.item_counts.get(ItemStatus.PENDING, 0)
    bar = "#" * (WIDTH * done // total if total else 0)
    return f"[{bar:<{WIDTH}}] {done:>4}/{total} items  {detail.job.status.value}"


async def follow(
    store: SqlStore,
    job_id: str,
    stream: TextIO | None,
    *,
    interval_s: float = 0.25,
) -> JobDetail:
    """Wait until the job is terminal, drawing progress on `stream` (if any);
    return the job's final detail."""
    shown = ""
    live = stream is not None and stream.isatty()
    while True:
        detail = await store.job_detail(job_id)
        line = progress_line(detail)
        if stream is not None and line != shown:
            stream.write("\r" + line if live else line + "\n")
            stream.flush()
        shown = line
        if detail.job.status.terminal:
            if live:
                stream.write("\n")
            return detail
        await trio.sleep(interval_s)


def outcome_line(detail: JobDetail) -> str:
    counts = ", ".join(f"{n} {s.value}" for s, n in detail.item_counts.items() if n)
    return f"job {detail.job.status.value}: {counts or 'no items'}"
