"""The leader's pipeline end to end, on both stores: a replica, the mock
provider over HTTP and a real webhook receiver."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from batchwarden import service
from batchwarden.actors import poller
from batchwarden.intake import Request
from batchwarden.mockprovider import Duration, FaultPlan
from batchwarden.states import ItemStatus, JobStatus
from batchwarden.store.queries import now
from tests.harness import Harness, requests, wait_callback, wait_terminal


@pytest.fixture
async def harness(nursery, database_url, store):
    harness = Harness(nursery, database_url)
    harness.store = store
    yield harness
    nursery.cancel_scope.cancel()


async def records(harness: Harness, job_id: str) -> dict[str, dict]:
    """The mock's outcome of every item of a job, by custom_id."""
    detail = await harness.store.job_detail(job_id)
    found = {}
    for batch in detail.provider_batches:
        mock_batch = harness.provider.batches[batch.provider_batch_id]
        for index in range(len(mock_batch)):
            record = mock_batch.record(index)
            found[record["custom_id"]] = record
    return found


async def test_a_job_completes_with_every_item_and_one_signed_callback(harness):
    await harness.start_servers()
    await harness.start_replica()
    job, _ = await harness.store.create_job(
        requests(1000), callback_url=harness.receiver.url, metadata={"team": "a"}
    )
    ended = await wait_terminal(harness.store, job.id)
    assert ended.status is JobStatus.COMPLETED
    detail = await wait_callback(harness.store, job.id, "delivered")
    assert detail.item_counts[ItemStatus.SUCCEEDED] == 1000
    items = [item async for item in harness.store.iter_items(job.id)]
    truth = await records(harness, job.id)
    assert len(items) == 1000
    for item in items:
        message = json.loads(item.result)["message"]
        assert (
            message["usage"]["output_tokens"] == truth[item.custom_id]["output_tokens"]
        )
    assert detail.usage.output_tokens == sum(r["output_tokens"] for r in truth.values())
    [payload] = harness.receiver.verified()
    assert payload["type"] == "job.completed"
    assert payload["data"]["id"] == job.id
    assert payload["data"]["request_counts"]["succeeded"] == 1000
    assert payload["data"]["metadata"] == {"team": "a"}
    headers = harness.receiver.received[0][0]
    assert headers["webhook-id"] == detail.callback.id


async def test_a_large_job_is_split_into_provider_batches(harness):
    await harness.start_servers()
    await harness.start_replica(batch_max_requests=1000)
    job, _ = await harness.store.create_job(
        requests(2500), callback_url=harness.receiver.url
    )
    assert (await wait_terminal(harness.store, job.id)).status is JobStatus.COMPLETED
    detail = await wait_callback(harness.store, job.id, "delivered")
    assert [b.request_count for b in detail.provider_batches] == [1000, 1000, 500]
    assert len({b.provider_batch_id for b in detail.provider_batches}) == 3
    items = [item async for item in harness.store.iter_items(job.id)]
    assert len({item.custom_id for item in items}) == 2500
    assert all(item.status is ItemStatus.SUCCEEDED for item in items)
    assert len(harness.receiver.received) == 1


async def test_outcomes_match_the_providers_item_by_item(harness):
    await harness.start_servers()
    harness.provider.behaviour.mix = (0.7, 0.2, 0.1)
    await harness.start_replica(item_max_attempts=1)
    job, _ = await harness.store.create_job(requests(500))
    ended = await wait_terminal(harness.store, job.id)
    assert ended.status is JobStatus.EXPIRED  # some items expired
    truth = await records(harness, job.id)
    items = [item async for item in harness.store.iter_items(job.id)]
    assert {i.custom_id: i.status.value for i in items} == {
        c: r["outcome"] for c, r in truth.items()
    }


HI = [{"role": "user", "content": "say hi"}]


def two_model_requests(count: int) -> list[Request]:
    models = ("claude-sonnet-4-5", "claude-haiku-4-5")
    return [
        Request(
            f"item-{i:06d}",
            json.dumps({"model": models[i % 2], "max_tokens": 64, "messages": HI}),
        )
        for i in range(count)
    ]


def token_counters(exposition: str) -> dict[tuple[str, str], float]:
    return {
        (sample.labels["model"], sample.labels["kind"]): sample.value
        for family in text_string_to_metric_families(exposition)
        if family.name == "batchwarden_tokens"
        for sample in family.samples
    }


async def test_tokens_are_counted_by_model_once_though_streams_break(harness):
    """The tokens counter matches the provider's usage of succeeded items,
    model by model, with results in many chunks, streams cut midway (a
    fetch that is repeated counts nothing twice) and stray custom_ids in
    the last chunk (dropped, so not counted)."""
    await harness.start_servers()
    harness.provider.behaviour.mix = (0.7, 0.2, 0.1)
    harness.provider.faults.plan = FaultPlan.from_document(
        {"rates": {"results": {"truncate": 0.4, "unknown_ids": 0.4}}}
    )
    url = await harness.serve(
        item_max_attempts=1, results_chunk=40, batch_max_requests=100
    )
    job, _ = await harness.store.create_job(two_model_requests(610))
    ended = await wait_terminal(harness.store, job.id, timeout=60)
    assert ended.status is JobStatus.EXPIRED, ended.error  # some items expired
    expected: dict[tuple[str, str], int] = {}
    for record in (await records(harness, job.id)).values():
        if record["outcome"] == "succeeded":
            for kind in ("input_tokens", "output_tokens"):
                key = (record["model"], kind)
                expected[key] = expected.get(key, 0) + record[kind]
    async with httpx.AsyncClient() as client:
        exposition = (await client.get(f"{url}/metrics")).text
    injected = harness.provider.faults.counts()["results"]
    assert injected["truncate"] > 0 and injected["unknown_ids"] > 0
    assert len({model for model, _ in expected}) == 2
    assert token_counters(exposition) == expected


async def attempts_at_the_provider(harness: Harness, job_id: str) -> dict:
    """Each item's outcomes, batch after batch, as the mock decided them."""
    detail = await harness.store.job_detail(job_id)
    seen: dict[str, list[dict]] = {}
    for batch in sorted(detail.provider_batches, key=lambda b: (b.attempt, b.id)):
        mock_batch = harness.provider.batches[batch.provider_batch_id]
        for index in range(len(mock_batch)):
            record = mock_batch.record(index)
            seen.setdefault(record["custom_id"], []).append(record)
    return seen


def retryable(record: dict) -> bool:
    return record["outcome"] == "expired" or record.get("error_type") in (
        "overloaded_error",
        "api_error",
    )


async def test_items_that_end_retryably_go_into_new_batches_up_to_the_budget(
    harness,
):
    await harness.start_servers()
    behaviour = harness.provider.behaviour
    behaviour.mix = (0.5, 0.3, 0.2)
    behaviour.error_types = {
        "invalid_request_error": 1.0,
        "overloaded_error": 1.0,
        "api_error": 1.0,
    }
    await harness.start_replica(item_max_attempts=3)
    job, _ = await harness.store.create_job(requests(400))
    ended = await wait_terminal(harness.store, job.id, timeout=60)
    seen = await attempts_at_the_provider(harness, job.id)
    assert len(seen) == 400
    for custom_id, outcomes in seen.items():
        for number, record in enumerate(outcomes[:-1], start=1):
            assert retryable(record), f"{custom_id} resubmitted after {record}"
            assert number < 3
        last = outcomes[-1]
        assert not retryable(last) or len(outcomes) == 3, custom_id
    items = {i.custom_id: i async for i in harness.store.iter_items(job.id)}
    assert {c: i.status.value for c, i in items.items()} == {
        c: outcomes[-1]["outcome"] for c, outcomes in seen.items()
    }
    assert {c: i.attempts for c, i in items.items()} == {
        c: len(outcomes) for c, outcomes in seen.items()
    }
    tries = [len(outcomes) for outcomes in seen.values()]
    assert max(tries) == 3 and tries.count(1) < 400, "no item was retried"
    invalid = [o for outcomes in seen.values() for o in outcomes
               if o.get("error_type") == "invalid_request_error"]  # fmt: skip
    assert invalid and all(seen[o["custom_id"]][-1] is o for o in invalid)
    expired = any(outcomes[-1]["outcome"] == "expired" for outcomes in seen.values())
    assert ended.status is (JobStatus.EXPIRED if expired else JobStatus.COMPLETED)
    detail = await harness.store.job_detail(job.id)
    assert sorted({b.attempt for b in detail.provider_batches}) == [1, 2, 3]


async def test_a_rejected_job_fails_with_the_providers_message(harness):
    await harness.start_servers()
    await harness.start_replica()
    bad = requests(2)
    bad[1] = Request(bad[1].custom_id, json.dumps({"model": "m", "max_tokens": 0}))
    job, _ = await harness.store.create_job(bad)
    ended = await wait_terminal(harness.store, job.id)
    assert ended.status is JobStatus.FAILED
    assert "invalid_request_error" in ended.error
    assert "requests.1.params.max_tokens" in ended.error


async def test_cancel_of_a_running_job_keeps_the_results_that_arrived(harness):
    await harness.start_servers()
    harness.provider.behaviour.processing = Duration("fixed", 3.0)
    harness.provider.behaviour.cancel_delay_s = 0.2
    await harness.start_replica()
    job, _ = await harness.store.create_job(requests(300))
    with trio.fail_after(10):
        while (await harness.store.get_job(job.id)).status is not JobStatus.RUNNING:
            await trio.sleep(0.05)
    await trio.sleep(1.0)
    await service.cancel_job(harness.store, job.id)
    ended = await wait_terminal(harness.store, job.id)
    assert ended.status is JobStatus.CANCELLED
    detail = await harness.store.job_detail(job.id)
    counts = detail.item_counts
    assert counts[ItemStatus.CANCELED] > 0 and counts[ItemStatus.SUCCEEDED] > 0
    assert counts[ItemStatus.PENDING] == 0


FAULTS = [
    ("429", {"*": {"429": 0.3}}),
    ("500", {"*": {"500": 0.3}}),
    ("529", {"*": {"529": 0.3}}),
    ("hang", {"create": {"hang": 0.3}, "retrieve": {"hang": 0.2}}),
    ("malformed", {"*": {"malformed": 0.3}}),
    ("truncate", {"results": {"truncate": 0.6}}),
    ("drop", {"results": {"drop": 0.6}}),
    ("unknown_ids", {"results": {"unknown_ids": 1.0}}),
]


@pytest.mark.parametrize(("kind", "rates"), FAULTS, ids=[f[0] for f in FAULTS])
async def test_provider_faults_cost_time_but_lose_nothing(harness, kind, rates):
    await harness.start_servers()
    harness.provider.faults.plan = FaultPlan.from_document(
        {"rates": rates, "retry_after_s": 0.2, "hang_s": 5.0}
    )
    await harness.start_replica(provider_timeout=0.5, batch_max_requests=200)
    job, _ = await harness.store.create_job(
        requests(600), callback_url=harness.receiver.url
    )
    ended = await wait_terminal(harness.store, job.id, timeout=60)
    assert ended.status is JobStatus.COMPLETED, ended.error
    await wait_callback(harness.store, job.id, "delivered")
    items = [item async for item in harness.store.iter_items(job.id)]
    assert len(items) == len({item.custom_id for item in items}) == 600
    assert all(item.status is ItemStatus.SUCCEEDED for item in items)
    injected = harness.provider.faults.counts()
    assert sum(n for by_kind in injected.values() for n in by_kind.values()) > 0
    assert all(set(by_kind) == {kind} for by_kind in injected.values())
    assert (await harness.store.leader()).term == 1, "a fault cost leadership"


async def test_a_callback_survives_a_receiver_down_then_slow_then_up(harness):
    await harness.start_servers(receiver=False)
    await harness.start_replica(callback_timeout=0.3)
    job, _ = await harness.store.create_job(
        requests(10), callback_url=harness.receiver.url
    )
    await wait_terminal(harness.store, job.id)
    await wait_attempts(harness, job.id, 2)
    harness.receiver.mode, harness.receiver.slow_s = "slow", 1.0
    await harness.start_receiver()
    await wait_attempts(harness, job.id, 4)
    harness.receiver.mode = "ok"
    detail = await wait_callback(harness.store, job.id, "delivered")
    attempts = await harness.store.callback_attempts(detail.callback.id)
    assert attempts[0][1] is None and "Connect" in attempts[0][2]
    assert any("Timeout" in (error or "") for _, _, error in attempts)
    assert attempts[-1][1] == 200
    ids = {headers["webhook-id"] for headers, _ in harness.receiver.received}
    assert ids == {detail.callback.id}
    assert (await harness.store.leader()).term == 1, "a fault cost leadership"
    assert harness.receiver.verified()[-1]["data"]["id"] == job.id


async def wait_attempts(harness: Harness, job_id: str, count: int) -> None:
    with trio.fail_after(30):
        while True:
            detail = await harness.store.job_detail(job_id)
            if detail.callback is not None and detail.callback.attempts >= count:
                return
            await trio.sleep(0.05)


async def test_an_exhausted_callback_is_visible_on_the_job(harness):
    await harness.start_servers()
    harness.receiver.mode = "error"
    await harness.start_replica(callback_max_attempts=3)
    job, _ = await harness.store.create_job(
        requests(5), callback_url=harness.receiver.url
    )
    detail = await wait_callback(harness.store, job.id, "exhausted")
    assert detail.callback.attempts == 3
    assert detail.callback.last_error == "HTTP 500"
    assert len(harness.receiver.received) == 3


async def test_a_callback_address_refused_at_delivery_is_never_called(harness):
    """The check runs again before each attempt: a URL that passed when the
    job was created but resolves to a private address now (DNS rebinding,
    or an allowlist since narrowed) gets failed attempts, not requests."""
    await harness.start_servers()
    await harness.start_replica(callback_max_attempts=2, callback_allowlist=())
    job, _ = await harness.store.create_job(
        requests(3), callback_url=harness.receiver.url
    )
    detail = await wait_callback(harness.store, job.id, "exhausted")
    assert detail.callback.attempts == 2
    assert "resolves to 127.0.0.1, a private" in detail.callback.last_error
    assert harness.receiver.received == []


async def test_a_callback_goes_to_the_checked_address_with_the_url_host(harness):
    await harness.start_servers()
    await harness.start_replica(callback_allowlist=("localhost",))
    url = f"http://localhost:{harness.receiver.port}/hook"
    job, _ = await harness.store.create_job(requests(3), callback_url=url)
    await wait_callback(harness.store, job.id, "delivered")
    (headers, _), *_ = harness.receiver.received
    assert headers["host"] == f"localhost:{harness.receiver.port}"


async def test_a_job_left_pending_by_a_dead_leader_is_resumed(harness):
    await harness.start_servers()
    dead_term = await harness.store.bump_term("dead-leader")
    job, _ = await harness.store.create_job(requests(20))
    [claimed] = await harness.store.claim_jobs(term=dead_term, limit=1)
    assert claimed.status is JobStatus.PENDING
    await harness.start_replica()
    ended = await wait_terminal(harness.store, job.id)
    assert ended.status is JobStatus.COMPLETED
    assert (await harness.store.job_detail(job.id)).item_counts[
        ItemStatus.SUCCEEDED
    ] == 20


async def test_a_callback_leased_by_a_dead_leader_is_sent_again(harness):
    """A leader died while delivering: its lease (an hour ahead) must not
    hold the callback back once a new term begins."""
    await harness.start_servers(receiver=False)
    first = await harness.start_replica()
    job, _ = await harness.store.create_job(
        requests(3), callback_url=harness.receiver.url
    )
    await wait_attempts(harness, job.id, 1)
    await first.stop()
    dead_term = (await harness.store.leader()).term
    await harness.store._run(
        lambda tx: tx.execute(
            "UPDATE callbacks SET lease_term = %s, next_attempt_at = %s",
            (dead_term, now() + timedelta(hours=1)),
        ),
        write=True,
    )
    await harness.start_receiver()
    await harness.start_replica(instance_id="next-leader")
    detail = await wait_callback(harness.store, job.id, "delivered")
    assert (await harness.store.leader()).term == dead_term + 1
    assert harness.receiver.received[-1][0]["webhook-id"] == detail.callback.id


async def test_a_batch_the_provider_lost_fails_its_job_with_a_reason(
    harness, monkeypatch
):
    monkeypatch.setattr(poller, "PROPAGATION_S", 0.0)
    await harness.start_servers()
    harness.provider.behaviour.processing = Duration("fixed", 30.0)
    await harness.start_replica()
    job, _ = await harness.store.create_job(requests(5))
    with trio.fail_after(10):
        while (await harness.store.get_job(job.id)).status is not JobStatus.RUNNING:
            await trio.sleep(0.05)
    harness.provider.batches.clear()
    ended = await wait_terminal(harness.store, job.id)
    assert ended.status is JobStatus.FAILED
    assert ended.error == "the provider no longer knows one of the job's batches"
