"""The mock provider, driven only through the official `anthropic` SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anthropic
import httpx
import httpx2
import pytest
import trio

from batchwarden.mockprovider import (
    Behaviour,
    Duration,
    FaultPlan,
    MockProvider,
    serve_mock,
)

SCRIPT = Path(sys.executable).parent / "batchwarden"


def requests(count: int, prefix: str = "item") -> list[dict]:
    return [
        {
            "custom_id": f"{prefix}-{i:05d}",
            "params": {
                "model": "claude-sonnet-4-5",
                "max_tokens": 50,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(count)
    ]


class Mock:
    """A provider served in the test's nursery, and an SDK client for it."""

    def __init__(self, provider: MockProvider, port: int) -> None:
        self.provider = provider
        self.url = f"http://127.0.0.1:{port}"
        self.client = anthropic.AsyncAnthropic(
            api_key="test-key", base_url=self.url, max_retries=0, timeout=5.0
        )

    async def control(self, method: str, path: str, body=None):
        async with httpx.AsyncClient(base_url=self.url) as http:
            response = await http.request(method, path, json=body)
        return response

    async def records(self, batch_id: str) -> list[dict]:
        response = await self.control("GET", f"/_mock/batches/{batch_id}/records")
        return [json.loads(line) for line in response.text.splitlines()]

    async def wait_ended(self, batch_id: str):
        with trio.fail_after(10):
            while True:
                batch = await self.client.messages.batches.retrieve(batch_id)
                if batch.processing_status == "ended":
                    return batch
                await trio.sleep(0.05)

    async def results(self, batch_id: str) -> list:
        stream = await self.client.messages.batches.results(batch_id)
        return [line async for line in stream]


@pytest.fixture
async def start_mock(nursery):
    async def start(**settings) -> Mock:
        behaviour = Behaviour(processing=Duration("fixed", 0.2))
        for name, value in settings.pop("behaviour", {}).items():
            setattr(behaviour, name, value)
        provider = MockProvider(behaviour=behaviour, seed=7, **settings)
        port = await nursery.start(serve_mock, provider)
        return Mock(provider, port)

    return start


async def test_a_batch_goes_from_create_to_streamed_results(start_mock):
    mock = await start_mock(
        behaviour={"mix": (0.8, 0.1, 0.1)},
    )
    created = await mock.client.messages.batches.create(requests=requests(200))
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 200
    assert created.results_url is None
    assert created.id.startswith("msgbatch_")

    ended = await mock.wait_ended(created.id)
    assert ended.ended_at is not None and ended.results_url is not None
    results = await mock.results(created.id)
    records = await mock.records(created.id)
    assert [r.custom_id for r in results] == [r["custom_id"] for r in records]
    assert [r.result.type for r in results] == [r["outcome"] for r in records]
    counts = ended.request_counts
    by_type = {t: [r.result.type for r in results].count(t) for t in _TYPES}
    assert by_type == {t: getattr(counts, t) for t in _TYPES}
    assert by_type["succeeded"] > 100 and by_type["errored"] > 5
    first = next(r for r in results if r.result.type == "succeeded")
    record = next(r for r in records if r["custom_id"] == first.custom_id)
    assert first.result.message.usage.output_tokens == record["output_tokens"]
    assert first.result.message.model == "claude-sonnet-4-5"


_TYPES = ("succeeded", "errored", "canceled", "expired")


async def test_cancel_mid_way_ends_with_remaining_items_canceled(start_mock):
    mock = await start_mock(
        behaviour={"processing": Duration("fixed", 2.0), "cancel_delay_s": 0.2}
    )
    created = await mock.client.messages.batches.create(requests=requests(300))
    await trio.sleep(1.0)
    canceling = await mock.client.messages.batches.cancel(created.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    ended = await mock.wait_ended(created.id)
    counts = ended.request_counts
    assert counts.canceled > 50 and counts.succeeded > 50
    assert counts.canceled + counts.succeeded == 300
    results = await mock.results(created.id)
    assert sum(r.result.type == "canceled" for r in results) == counts.canceled


async def test_a_batch_that_outlives_its_lifetime_expires(start_mock):
    mock = await start_mock(
        behaviour={"processing": Duration("fixed", 4.0), "lifetime_s": 0.3}
    )
    created = await mock.client.messages.batches.create(requests=requests(100))
    assert created.expires_at < created.created_at.replace(year=2100)
    ended = await mock.wait_ended(created.id)
    assert ended.request_counts.expired > 80
    results = await mock.results(created.id)
    assert {r.result.type for r in results} <= {"succeeded", "expired"}


async def test_time_scale_runs_a_day_in_seconds(start_mock):
    mock = await start_mock(
        behaviour={"processing": Duration("fixed", 3600.0), "time_scale": 7200.0}
    )
    created = await mock.client.messages.batches.create(requests=requests(3))
    lifetime = created.expires_at - created.created_at
    assert lifetime.total_seconds() == pytest.approx(86_400 / 7200, abs=0.01)
    ended = await mock.wait_ended(created.id)
    assert ended.request_counts.succeeded == 3


async def test_archived_results_are_gone(start_mock):
    mock = await start_mock(behaviour={"archive_after_s": 0.4})
    created = await mock.client.messages.batches.create(requests=requests(2))
    await mock.wait_ended(created.id)
    await trio.sleep(0.5)
    batch = await mock.client.messages.batches.retrieve(created.id)
    assert batch.archived_at is not None
    with pytest.raises(anthropic.NotFoundError, match="archived"):
        await mock.results(created.id)


async def test_list_pages_newest_first(start_mock):
    mock = await start_mock()
    made = [
        (await mock.client.messages.batches.create(requests=requests(1))).id
        for _ in range(5)
    ]
    first = await mock.client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == [made[4], made[3]]
    assert first.has_more
    listed = [b.id async for b in mock.client.messages.batches.list(limit=2)]
    assert listed == list(reversed(made))
    newer = await mock.client.messages.batches.list(limit=2, before_id=made[1])
    assert [b.id for b in newer.data] == [made[3], made[2]]


async def test_delete_refuses_a_processing_batch_then_forgets_an_ended_one(
    start_mock,
):
    mock = await start_mock()
    created = await mock.client.messages.batches.create(requests=requests(1))
    with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
        await mock.client.messages.batches.delete(created.id)
    await mock.wait_ended(created.id)
    deleted = await mock.client.messages.batches.delete(created.id)
    assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        await mock.client.messages.batches.retrieve(created.id)


async def test_the_same_seed_gives_the_same_outcomes(start_mock):
    outcomes = []
    for _ in range(2):
        mock = await start_mock(behaviour={"mix": (0.5, 0.3, 0.2)})
        created = await mock.client.messages.batches.create(requests=requests(50))
        await mock.wait_ended(created.id)
        outcomes.append([r["outcome"] for r in await mock.records(created.id)])
    assert outcomes[0] == outcomes[1]
    assert len(set(outcomes[0])) == 3


# -- validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "requests: must hold from 1 to 100000 items, got 0"),
        ([{"custom_id": "a b", "params": {}}], "requests.0.custom_id"),
        (requests(1) + requests(1), "requests.1.custom_id: Duplicate custom_id"),
        (
            [{"custom_id": "a", "params": {"model": "m"}}],
            "requests.0.params.max_tokens",
        ),
    ],
)
async def test_invalid_creates_are_rejected_like_the_real_api(
    start_mock, body, message
):
    mock = await start_mock()
    with pytest.raises(anthropic.BadRequestError) as raised:
        await mock.client.messages.batches.create(requests=body)
    assert message in raised.value.message
    assert raised.value.body["error"]["type"] == "invalid_request_error"


async def test_too_many_requests_are_rejected(start_mock):
    mock = await start_mock()
    with pytest.raises(anthropic.BadRequestError, match="got 100001"):
        await mock.client.messages.batches.create(requests=requests(100_001))


async def test_missing_headers_are_rejected(start_mock):
    mock = await start_mock(api_key="right-key")
    async with httpx.AsyncClient(base_url=mock.url) as http:
        no_key = await http.get("/v1/messages/batches")
        wrong = await http.get(
            "/v1/messages/batches",
            headers={"x-api-key": "wrong", "anthropic-version": "2023-06-01"},
        )
        no_version = await http.get(
            "/v1/messages/batches", headers={"x-api-key": "right-key"}
        )
    assert (no_key.status_code, wrong.status_code) == (401, 401)
    assert no_key.json()["error"]["type"] == "authentication_error"
    assert no_version.status_code == 400
    assert "anthropic-version" in no_version.json()["error"]["message"]
    with pytest.raises(anthropic.AuthenticationError):
        await mock.client.messages.batches.list()


async def test_an_unknown_batch_is_not_found(start_mock):
    mock = await start_mock()
    with pytest.raises(anthropic.NotFoundError):
        await mock.client.messages.batches.retrieve("msgbatch_nope")


# -- faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("429", anthropic.RateLimitError),
        ("500", anthropic.InternalServerError),
        ("529", anthropic.OverloadedError),
        ("hang", anthropic.APITimeoutError),
    ],
)
async def test_request_faults_surface_as_the_sdks_exceptions(start_mock, kind, error):
    mock = await start_mock()
    created = await mock.client.messages.batches.create(requests=requests(1))
    plan = {"hang_s": 30, "retry_after_s": 7, "rates": {"retrieve": {kind: 1.0}}}
    await mock.control("PUT", "/_mock/faults", plan)
    client = mock.client.with_options(timeout=0.5)
    with pytest.raises(error) as raised:
        await client.messages.batches.retrieve(created.id)
    if kind == "429":
        assert raised.value.response.headers["retry-after"] == "7"
    stats = (await mock.control("GET", "/_mock/stats")).json()
    assert stats["faults_injected"] == {"retrieve": {kind: 1}}


async def test_a_malformed_body_fails_to_parse(start_mock):
    """The SDK lets the JSON error through: the provider adapter translates it."""
    mock = await start_mock(faults=FaultPlan(rates={"create": {"malformed": 1.0}}))
    with pytest.raises(json.JSONDecodeError):
        await mock.client.messages.batches.create(requests=requests(1))


@pytest.mark.parametrize(
    ("kind", "error"),
    [("truncate", httpx2.RemoteProtocolError), ("drop", httpx2.ReadError)],
)
async def test_a_broken_results_stream_raises_midway(start_mock, kind, error):
    mock = await start_mock()
    created = await mock.client.messages.batches.create(requests=requests(5000))
    await mock.wait_ended(created.id)
    await mock.control("PUT", "/_mock/faults", {"rates": {"results": {kind: 1.0}}})
    received = []
    # The SDK's transport (httpx2) reports the break; the adapter translates it.
    with pytest.raises(error):
        stream = await mock.client.messages.batches.results(created.id)
        async for line in stream:
            received.append(line.custom_id)
    assert 0 < len(received) < 5000


async def test_unknown_custom_ids_appear_in_results(start_mock):
    mock = await start_mock(faults=FaultPlan(rates={"results": {"unknown_ids": 1.0}}))
    created = await mock.client.messages.batches.create(requests=requests(10))
    await mock.wait_ended(created.id)
    ids = [r.custom_id for r in await mock.results(created.id)]
    assert len(ids) == 13
    assert sum(i.startswith("unknown-") for i in ids) == 3


async def test_faults_change_at_runtime_and_are_counted(start_mock):
    mock = await start_mock()
    created = await mock.client.messages.batches.create(requests=requests(1))
    await mock.client.messages.batches.retrieve(created.id)
    await mock.control("PUT", "/_mock/faults", {"rates": {"*": {"500": 1.0}}})
    for _ in range(3):
        with pytest.raises(anthropic.InternalServerError):
            await mock.client.messages.batches.retrieve(created.id)
    bad = await mock.control("PUT", "/_mock/faults", {"rates": {"poll": {"500": 1}}})
    assert bad.status_code == 400
    assert "endpoint must be one of" in bad.json()["error"]["message"]
    await mock.control("PUT", "/_mock/faults", {})
    await mock.client.messages.batches.retrieve(created.id)
    stats = (await mock.control("GET", "/_mock/stats")).json()
    assert stats["faults_injected"] == {"retrieve": {"500": 3}}
    assert stats["endpoints"]["retrieve"]["count"] == 5
    assert stats["endpoints"]["retrieve"]["statuses"] == {"200": 2, "500": 3}


async def test_latency_is_added_with_jitter(start_mock):
    mock = await start_mock(faults=FaultPlan(latency_s=0.2, jitter_s=0.05))
    started = trio.current_time()
    await mock.client.messages.batches.list()
    assert trio.current_time() - started >= 0.2


# -- the command, with the sync client ------------------------------------------------


@pytest.fixture
def mock_process():
    process = subprocess.Popen(
        [str(SCRIPT), "mock-provider", "--port", "0", "--processing-time", "0.2"]
        + ["--seed", "1", "--fault", "cancel:529=1"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ},
    )
    line = process.stdout.readline()
    assert line.startswith("mock provider listening on http://127.0.0.1:")
    yield line.split()[-1]
    process.terminate()
    assert process.wait(timeout=10) == 0


def test_the_command_serves_the_sync_client(mock_process):
    client = anthropic.Anthropic(
        api_key="k", base_url=mock_process, max_retries=0, timeout=5.0
    )
    created = client.messages.batches.create(requests=requests(20))
    with pytest.raises(anthropic.OverloadedError):
        client.messages.batches.cancel(created.id)
    batch = client.messages.batches.retrieve(created.id)
    while batch.processing_status != "ended":
        batch = client.messages.batches.retrieve(created.id)
    results = list(client.messages.batches.results(created.id))
    assert [r.custom_id for r in results] == [f"item-{i:05d}" for i in range(20)]
    assert all(r.result.type == "succeeded" for r in results)
    assert [b.id for b in client.messages.batches.list()] == [created.id]
    client.messages.batches.delete(created.id)
