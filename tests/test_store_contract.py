"""One contract for both stores: every test here runs on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from functools import partial

import pytest
import trio

from batchwarden.errors import (
    ConfigError,
    Conflict,
    IllegalTransition,
    JobNotFound,
    StaleTerm,
)
from batchwarden.states import ALLOWED, ItemStatus, JobStatus
from batchwarden.store import connect
from batchwarden.store.schema import MIGRATIONS
from tests.helpers import PATHS, errored, requests, succeeded

ALL_PAIRS = [(a, b) for a in JobStatus for b in JobStatus]


async def job_in(store, status: JobStatus, term: int, count: int = 3):
    job, _ = await store.create_job(requests(count))
    for step in PATHS[status]:
        if step is JobStatus.CANCELLED:
            await store.cancel_job(job.id)
        else:
            await store.transition(job.id, step, term=term)
    return await store.get_job(job.id)


# -- migrations -------------------------------------------------------------


async def test_migrations_apply_from_empty_then_find_nothing_to_do(database_url):
    store = connect(database_url, instance_id="migrator")
    await store.open()
    try:
        assert await store.migrate() == [m.version for m in MIGRATIONS]
        assert await store.migrate() == []
        assert (await store.leader()).term == 0
    finally:
        await store.close()


async def test_concurrent_migrations_apply_each_version_once(database_url):
    stores = [connect(database_url, instance_id=f"r{i}") for i in range(4)]
    applied: list[list[int]] = []
    for store in stores:
        await store.open()

    async def migrate(store):
        applied.append(await store.migrate())

    try:
        async with trio.open_nursery() as nursery:
            for store in stores:
                nursery.start_soon(migrate, store)
    finally:
        for store in stores:
            await store.close()
    assert sorted(v for versions in applied for v in versions) == [
        m.version for m in MIGRATIONS
    ]


async def test_a_schema_newer_than_the_code_is_refused(store):
    await store._run(
        lambda tx: tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at)"
            " VALUES (999, 'future', 'now')"
        ),
        write=True,
    )
    with pytest.raises(ConfigError, match="version 999"):
        await store.migrate()


# -- the job state machine -------------------------------------------------


@pytest.mark.parametrize("source", list(JobStatus), ids=str)
async def test_every_transition_pair_from_a_status(store, source):
    term = await store.bump_term("test")
    for target in JobStatus:
        job = await job_in(store, source, term)
        if target in ALLOWED[source]:
            moved = await store.transition(job.id, target, term=term)
            assert moved.status is target
            assert (moved.finished_at is not None) == target.terminal
        else:
            with pytest.raises(IllegalTransition) as raised:
                await store.transition(job.id, target, term=term)
            assert str(raised.value) == (
                f"job {job.id} cannot go from {source} to {target}"
            )
            assert await store.get_job(job.id) == job


async def test_cancel_by_user_only_moves_a_created_job(store):
    term = await store.bump_term("test")
    created = await job_in(store, JobStatus.CREATED, term)
    assert (await store.cancel_job(created.id)).status is JobStatus.CANCELLED
    pending = await job_in(store, JobStatus.PENDING, term)
    with pytest.raises(IllegalTransition):
        await store.cancel_job(pending.id)
    assert await store.get_job(pending.id) == pending


async def test_transition_of_an_unknown_job_says_so(store):
    term = await store.bump_term("test")
    with pytest.raises(JobNotFound, match="job_missing"):
        await store.transition("job_missing", JobStatus.PENDING, term=term)


async def test_a_failed_job_keeps_its_reason(store):
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.PENDING, term)
    failed = await store.transition(
        job.id, JobStatus.FAILED, term=term, error="provider rejected the batch"
    )
    assert failed.error == "provider rejected the batch"


# -- jobs, items and results ------------------------------------------------


async def test_idempotency_key_returns_the_original_job(store):
    first, created = await store.create_job(
        requests(2), idempotency_key="k1", request_digest="d1"
    )
    again, created_again = await store.create_job(
        requests(2), idempotency_key="k1", request_digest="d1"
    )
    assert created and not created_again
    assert again == first
    with pytest.raises(Conflict, match="k1"):
        await store.create_job(requests(3), idempotency_key="k1", request_digest="d2")
    assert len(await store.list_jobs()) == 1


async def test_listing_pages_by_cursor_newest_first(store):
    made = [(await store.create_job(requests(1)))[0].id for _ in range(5)]
    first = await store.list_jobs(limit=2)
    second = await store.list_jobs(limit=2, before=first[-1].id)
    third = await store.list_jobs(limit=2, before=second[-1].id)
    shown = [job.id for job in first + second + third]
    assert shown == list(reversed(made))
    term = await store.bump_term("test")
    await store.transition(made[0], JobStatus.PENDING, term=term)
    pending = await store.list_jobs(status=JobStatus.PENDING)
    assert [job.id for job in pending] == [made[0]]


async def test_results_written_in_chunks_are_all_stored(store):
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term, count=2500)
    batch = await store.add_provider_batch(
        job.id, attempt=1, request_count=2500, term=term, provider_batch_id="msgbatch_1"
    )
    rows = [
        succeeded(f"req-{i:06d}") if i % 5 else errored(f"req-{i:06d}")
        for i in range(2500)
    ]
    for start in range(0, 2500, 1000):
        chunk = rows[start : start + 1000]
        outcome = await store.write_results(job.id, batch.id, 1, chunk, term=term)
        assert (outcome.stored, outcome.already_stored, outcome.unknown) == (
            len(chunk),
            0,
            0,
        )
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.SUCCEEDED] == 2000
    assert detail.item_counts[ItemStatus.ERRORED] == 500
    assert detail.item_counts[ItemStatus.PENDING] == 0
    assert detail.usage.input_tokens == 2000 * 10
    assert detail.usage.output_tokens == 2000 * 20
    items = [item async for item in store.iter_items(job.id, chunk=700)]
    assert [item.custom_id for item in items] == [r.custom_id for r in rows]
    assert [item.result for item in items] == [r.result for r in rows]


async def test_writing_the_same_results_twice_leaves_the_same_rows(store):
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term, count=50)
    batch = await store.add_provider_batch(
        job.id, attempt=1, request_count=50, term=term
    )
    rows = [succeeded(f"req-{i:06d}") for i in range(50)]
    await store.write_results(job.id, batch.id, 1, rows[:30], term=term)
    before = [item async for item in store.iter_items(job.id)]
    again = await store.write_results(job.id, batch.id, 1, rows[:30], term=term)
    assert (again.stored, again.already_stored) == (0, 30)
    assert [item async for item in store.iter_items(job.id)] == before
    overlap = await store.write_results(job.id, batch.id, 1, rows[20:], term=term)
    assert (overlap.stored, overlap.already_stored) == (20, 10)
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.SUCCEEDED] == 50
    assert detail.usage.input_tokens == 50 * 10


async def test_retry_rounds_are_listed_only_while_their_job_runs(store):
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term)
    await store.add_provider_batch(
        job.id,
        attempt=2,
        request_count=1,
        first_position=0,
        processing_status="creating",
        term=term,
    )
    assert await store.retry_rounds() == [(job.id, 2)]
    await store.fail_job(job.id, "the provider rejected the retry", term=term)
    assert await store.retry_rounds() == []


async def _end(store, job_id: str, how: str, term: int) -> None:
    if how == "user cancel":
        await store.cancel_job(job_id)
        return
    await store.claim_jobs(term=term, limit=1)
    if how == "cancel before submission":
        await store.cancel_pending(job_id, term=term)
    elif how == "provider rejection":
        await store.fail_job(job_id, "rejected", term=term)
    else:
        batch = await store.add_provider_batch(
            job_id, attempt=1, request_count=2, provider_batch_id="msgbatch_1",
            first_position=0, term=term,
        )  # fmt: skip
        await store.vanish(batch.id, job_id, term=term)


@pytest.mark.parametrize(
    "how, status",
    [
        ("user cancel", "cancelled"),
        ("cancel before submission", "cancelled"),
        ("provider rejection", "failed"),
        ("batch vanished", "failed"),
    ],
)
async def test_every_way_a_job_ends_writes_its_callback(store, how, status):
    term = await store.bump_term("test")
    job, _ = await store.create_job(requests(2), callback_url="http://x.test/hook")
    await _end(store, job.id, how, term)
    assert (await store.get_job(job.id)).status.value == status
    due = await store.lease_callbacks(term=term, limit=10, lease_s=5)
    assert [(c.job_id, json.loads(c.payload)["type"]) for c in due] == [
        (job.id, f"job.{status}")
    ]


async def test_a_result_repeated_within_one_chunk_is_stored_once(store):
    """The fast path (one COPY) meets a duplicate key; nothing of it stays,
    and the careful path stores each result once."""
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term, count=5)
    batch = await store.add_provider_batch(
        job.id, attempt=1, request_count=5, term=term
    )
    rows = [succeeded(f"req-{i:06d}") for i in (0, 1, 2, 1, 3, 4)]
    outcome = await store.write_results(job.id, batch.id, 1, rows, term=term)
    assert (outcome.stored, outcome.already_stored, outcome.unknown) == (5, 1, 0)
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.SUCCEEDED] == 5
    assert detail.usage.input_tokens == 5 * 10


async def test_results_for_unknown_custom_ids_are_counted_not_stored(store):
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term, count=3)
    batch = await store.add_provider_batch(
        job.id, attempt=1, request_count=3, term=term
    )
    rows = [succeeded("req-000000"), succeeded("stranger-1"), succeeded("stranger-2")]
    outcome = await store.write_results(job.id, batch.id, 1, rows, term=term)
    assert (outcome.stored, outcome.already_stored, outcome.unknown) == (1, 0, 2)
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.SUCCEEDED] == 1
    assert detail.item_counts[ItemStatus.PENDING] == 2


@pytest.mark.parametrize(
    ("custom_ids", "stored"),
    [
        (["req-000000", "req-000001\nreq-000000"], 1),
        ([""], 0),
        (["", "req-000001\n"], 0),
    ],
    ids=["known ids joined by a newline", "the empty id alone", "empty and newline"],
)
async def test_custom_ids_that_split_into_known_ones_are_still_unknown(
    store, custom_ids, stored
):
    """A stray id made of known ids and newlines (or the empty id) is not
    taken for the known ids it contains."""
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term, count=3)
    batch = await store.add_provider_batch(
        job.id, attempt=1, request_count=3, term=term
    )
    rows = [succeeded(custom_id) for custom_id in custom_ids]
    outcome = await store.write_results(job.id, batch.id, 1, rows, term=term)
    assert (outcome.stored, outcome.unknown) == (stored, len(custom_ids) - stored)
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.PENDING] == 3 - stored


async def test_an_item_shows_its_latest_attempt(store):
    term = await store.bump_term("test")
    job = await job_in(store, JobStatus.RUNNING, term, count=1)
    first = await store.add_provider_batch(
        job.id, attempt=1, request_count=1, term=term
    )
    await store.write_results(job.id, first.id, 1, [errored("req-000000")], term=term)
    second = await store.add_provider_batch(
        job.id, attempt=2, request_count=1, term=term
    )
    await store.write_results(
        job.id, second.id, 2, [succeeded("req-000000")], term=term
    )
    [item] = [item async for item in store.iter_items(job.id)]
    assert item.status is ItemStatus.SUCCEEDED
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.SUCCEEDED] == 1
    assert detail.item_counts[ItemStatus.ERRORED] == 0
    assert [b.attempt for b in detail.provider_batches] == [1, 2]


async def test_unknown_job_reads_raise_job_not_found(store):
    with pytest.raises(JobNotFound):
        await store.job_detail("job_nope")
    with pytest.raises(JobNotFound):
        [item async for item in store.iter_items("job_nope")]


# -- fencing ----------------------------------------------------------------


async def test_terms_rise_and_are_logged(store):
    first = await store.bump_term("replica-a")
    second = await store.bump_term("replica-b")
    assert second == first + 1
    leader = await store.leader()
    assert (leader.holder, leader.term) == ("replica-b", second)
    log = await store._run(
        lambda tx: tx.all("SELECT term, holder FROM leader_terms ORDER BY term"),
        write=False,
    )
    assert log == [(first, "replica-a"), (second, "replica-b")]


async def test_a_stale_term_write_is_rejected_and_changes_nothing(store):
    old = await store.bump_term("replica-a")
    job = await job_in(store, JobStatus.RUNNING, old, count=2)
    batch = await store.add_provider_batch(job.id, attempt=1, request_count=2, term=old)
    new = await store.bump_term("replica-b")
    with pytest.raises(StaleTerm) as raised:
        await store.transition(job.id, JobStatus.COMPLETED, term=old)
    assert (raised.value.held, raised.value.current) == (old, new)
    with pytest.raises(StaleTerm):
        await store.write_results(
            job.id, batch.id, 1, [succeeded("req-000000")], term=old
        )
    with pytest.raises(StaleTerm):
        await store.add_provider_batch(job.id, attempt=2, request_count=2, term=old)
    assert await store.get_job(job.id) == job
    detail = await store.job_detail(job.id)
    assert detail.item_counts[ItemStatus.PENDING] == 2
    assert len(detail.provider_batches) == 1


async def test_a_term_bump_waits_for_an_open_fenced_transaction(database_url):
    """The term cannot change between two statements of a fenced
    transaction: a bump from another replica waits until it commits, and
    the old term's next write is then rejected."""
    async with _two_stores(database_url) as (leader, rival):
        term = await leader.bump_term("leader")
        job = await job_in(leader, JobStatus.PENDING, term)
        first_done, may_finish = threading.Event(), threading.Event()

        def two_statements(tx):
            tx.execute("UPDATE jobs SET error = 'first' WHERE id = %s", (job.id,))
            first_done.set()
            may_finish.wait(10)
            tx.execute("UPDATE jobs SET status = 'running' WHERE id = %s", (job.id,))

        bumped: list[int] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader._fenced, term, two_statements)
            await trio.to_thread.run_sync(first_done.wait, 10)
            nursery.start_soon(_bump_into, rival, bumped)
            await trio.sleep(0.3)
            assert bumped == [], "the bump went through a fenced transaction"
            may_finish.set()
        assert bumped == [term + 1]
        assert (await leader.get_job(job.id)).status is JobStatus.RUNNING
        with pytest.raises(StaleTerm):
            await leader.transition(job.id, JobStatus.COMPLETED, term=term)


async def test_a_claim_racing_a_user_cancel_leaves_the_job_cancelled(database_url):
    """A claim whose scan saw the job `created` must not move it once a
    concurrent cancel has committed: `cancelled` is terminal."""
    async with _two_stores(database_url) as (leader, user):
        term = await leader.bump_term("leader")
        job, _ = await user.create_job(requests(1))
        cancelled, may_commit = threading.Event(), threading.Event()

        def cancel_then_wait(tx):
            sql = "UPDATE jobs SET status = 'cancelled' WHERE id = %s"
            tx.execute(sql, (job.id,))
            cancelled.set()
            may_commit.wait(10)

        claimed: list = []

        async def claim() -> None:
            claimed.extend(await leader.claim_jobs(term=term, limit=10))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(user._run, cancel_then_wait, write=True))
            await trio.to_thread.run_sync(cancelled.wait, 10)
            nursery.start_soon(claim)
            await trio.sleep(0.3)
            may_commit.set()
        assert claimed == []
        assert (await leader.get_job(job.id)).status is JobStatus.CANCELLED


async def _bump_into(store, bumped: list[int]) -> None:
    bumped.append(await store.bump_term("rival"))


class _two_stores:
    """Two stores on one database, as two replicas would have."""

    def __init__(self, url: str) -> None:
        self.stores = [connect(url, instance_id=n) for n in ("leader", "rival")]

    async def __aenter__(self):
        for store in self.stores:
            await store.open()
        await self.stores[0].migrate()
        return self.stores

    async def __aexit__(self, *exc_info):
        for store in self.stores:
            await store.close()
