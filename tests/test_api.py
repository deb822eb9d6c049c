"""The REST API through real HTTP: a replica (supervisor, hypercorn,
FastAPI) in the test's nursery, the mock provider and a webhook receiver,
on both stores."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from batchwarden.actors import poller
from batchwarden.config import Secret
from batchwarden.intake import MAX_REQUESTS
from batchwarden.mockprovider import Duration
from batchwarden.pricing import Price, PriceTable
from tests.harness import Harness, requests

TOKEN = "tok-7a1f0c"
PARAMS = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}


def body(count: int, prefix: str = "r", **extra) -> dict:
    items = [{"custom_id": f"{prefix}{i}", "params": PARAMS} for i in range(count)]
    return {"requests": items, **extra}


@pytest.fixture
async def harness(nursery, database_url, store):
    harness = Harness(nursery, database_url)
    harness.store = store
    await harness.start_servers()
    yield harness
    nursery.cancel_scope.cancel()


@pytest.fixture
async def api(harness):
    url = await harness.serve(api_tokens=(Secret(TOKEN),))
    headers = {"authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        yield client


async def wait_status(api: httpx.AsyncClient, job_id: str, *statuses: str) -> dict:
    with trio.fail_after(30):
        while True:
            document = (await api.get(f"/v1/jobs/{job_id}")).json()
            if document["status"] in statuses:
                return document
            await trio.sleep(0.05)


def problems(response: httpx.Response) -> list[str]:
    return response.json()["error"]["problems"]


async def test_a_job_created_over_the_api_runs_to_its_callback(api, harness):
    created = await api.post(
        "/v1/jobs",
        json=body(120, callback_url=harness.receiver.url, metadata={"team": "a"}),
    )
    assert created.status_code == 201, created.text
    job = created.json()
    # The leader may have claimed it already: the document is read after.
    assert job["status"] in ("created", "pending", "running")
    assert job["item_count"] == 120 and job["metadata"] == {"team": "a"}

    done = await wait_status(api, job["id"], "completed")
    assert sum(done["request_counts"].values()) == 120
    assert done["provider_batches"][0]["request_count"] == 120

    results = await api.get(f"/v1/jobs/{job['id']}/results")
    assert results.status_code == 200
    assert results.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in results.text.splitlines()]
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(120)]
    assert all(line["status"] != "pending" for line in lines)

    with trio.fail_after(30):
        await harness.receiver.delivered.wait()
    (payload,) = harness.receiver.verified()
    assert payload["data"]["id"] == job["id"]


async def test_v1_needs_a_valid_bearer_token_and_probes_stay_open(harness):
    url = await harness.serve(api_tokens=(Secret("one"), Secret(TOKEN)))
    async with httpx.AsyncClient(base_url=url) as client:
        missing = await client.get("/v1/jobs")
        wrong = await client.get("/v1/jobs", headers={"authorization": "Bearer x"})
        basic = await client.get("/v1/leader", headers={"authorization": "Basic eA=="})
        right = await client.get(
            "/v1/jobs", headers={"authorization": f"Bearer {TOKEN}"}
        )
        open_paths = [await client.get(p) for p in ("/healthz", "/readyz", "/metrics")]
    for refused in (missing, wrong, basic):
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"] == "Bearer"
        assert refused.json()["error"]["type"] == "unauthorized"
    assert "missing bearer token" in missing.json()["error"]["message"]
    assert right.status_code == 200
    assert [r.status_code for r in open_paths] == [200, 200, 200]


BAD_BODIES = [
    (b"{not json", "body: not valid JSON"),
    (b"[1, 2]", "body: must be a JSON object"),
    (b'{"requests": "many"}', "requests: must be a list of requests"),
    (b'{"requests": []}', "no requests: a job needs at least one"),
    (
        json.dumps({**body(1), "priority": 3}).encode(),
        "priority: unknown field",
    ),
    (
        json.dumps(body(1, metadata=[1])).encode(),
        "metadata: must be a JSON object",
    ),
    (
        json.dumps(body(1, callback_url="ftp://example.com/x")).encode(),
        "callback_url: must be an http:// or https:// URL with a host",
    ),
    (
        json.dumps(
            {"requests": [{"custom_id": "a", "params": {**PARAMS, "max_tokens": 0}}]}
        ).encode(),
        "requests[0]: params.max_tokens: must be at least 1",
    ),
    (
        json.dumps({"requests": [{"custom_id": "a", "params": PARAMS}] * 2}).encode(),
        "requests[1]: custom_id 'a' repeats requests[0]",
    ),
]


@pytest.mark.parametrize(("raw", "problem"), BAD_BODIES)
async def test_a_bad_body_is_a_422_naming_the_field_and_writes_nothing(
    api, raw, problem
):
    response = await api.post(
        "/v1/jobs", content=raw, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request"
    assert problem in "\n".join(problems(response))
    assert (await api.get("/v1/jobs")).json()["jobs"] == []


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://10.1.2.3/hook", "10.1.2.3"),
        ("http://169.254.169.254/latest/meta-data", "169.254.169.254"),
        ("http://[::1]:9000/hook", "::1"),
        ("http://localhost:9000/hook", "127.0.0.1"),
    ],
)
async def test_a_callback_to_a_private_address_is_refused(harness, url, address):
    base = await harness.serve(callback_allowlist=())
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post("/v1/jobs", json=body(1, callback_url=url))
    assert response.status_code == 422
    (problem,) = problems(response)
    assert address in problem and "CALLBACK_ALLOWLIST" in problem


async def test_more_than_the_request_limit_is_refused(api):
    response = await api.post("/v1/jobs", json=body(MAX_REQUESTS + 1))
    assert response.status_code == 422
    assert f"{MAX_REQUESTS + 1} requests: a job takes at most" in problems(response)[0]


async def test_a_body_over_the_size_limit_is_a_413_declared_or_streamed(harness):
    url = await harness.serve(max_body_bytes=2_000)
    raw = json.dumps(body(40)).encode()

    async def chunked():
        for start in range(0, len(raw), 500):
            yield raw[start : start + 500]

    async with httpx.AsyncClient(base_url=url) as client:
        declared = await client.post("/v1/jobs", content=raw)
        streamed = await client.post("/v1/jobs", content=chunked())
        small = await client.post("/v1/jobs", json=body(2))
    assert declared.status_code == streamed.status_code == 413
    assert "MAX_BODY_BYTES" in declared.json()["error"]["message"]
    assert small.status_code == 201


async def test_unknown_jobs_are_404_everywhere(api):
    missing = "job_00000000000000000000000000"
    for response in (
        await api.get(f"/v1/jobs/{missing}"),
        await api.get(f"/v1/jobs/{missing}/results"),
        await api.post(f"/v1/jobs/{missing}/cancel"),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found"


async def test_an_idempotent_retry_returns_the_original_job(api):
    key = {"idempotency-key": "order-42"}
    first = await api.post("/v1/jobs", json=body(3), headers=key)
    again = await api.post("/v1/jobs", json=body(3), headers=key)
    other = await api.post("/v1/jobs", json=body(4), headers=key)
    assert first.status_code == again.status_code == 201
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert other.status_code == 409
    assert len((await api.get("/v1/jobs")).json()["jobs"]) == 1


async def test_cancel_of_a_running_job_ends_it_and_a_second_cancel_is_409(api, harness):
    harness.provider.behaviour.processing = Duration("fixed", 60)
    job = (await api.post("/v1/jobs", json=body(5))).json()
    await wait_status(api, job["id"], "running")
    cancelled = await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    await wait_status(api, job["id"], "cancelled")
    again = await api.post(f"/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409
    assert "already ended: cancelled" in again.json()["error"]["message"]


async def test_pages_are_stable_while_jobs_are_created(api, harness):
    harness.provider.behaviour.processing = Duration("fixed", 60)
    made = []
    for number in range(25):
        job, _ = await harness.store.create_job(requests(1, prefix=f"p{number}"))
        made.append(job.id)
    seen, cursor = [], None
    while True:
        params = {"limit": 10, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/v1/jobs", params=params)).json()
        seen += [job["id"] for job in page["jobs"]]
        await harness.store.create_job(requests(1, prefix="late"))
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(made, reverse=True)


async def test_list_filters_by_status_and_checks_its_parameters(api, harness):
    job, _ = await harness.store.create_job(requests(1))
    await wait_status(api, job.id, "completed")
    done = (await api.get("/v1/jobs", params={"status": "completed"})).json()
    none = (await api.get("/v1/jobs", params={"status": "failed"})).json()
    assert [j["id"] for j in done["jobs"]] == [job.id] and none["jobs"] == []
    for params, field in [
        ({"status": "done"}, "query.status"),
        ({"limit": 0}, "query.limit"),
        ({"cursor": "nope"}, "query.cursor"),
    ]:
        response = await api.get("/v1/jobs", params=params)
        assert response.status_code == 422
        assert problems(response)[0].startswith(field)


async def test_the_leader_endpoint_names_the_leader(api):
    with trio.fail_after(10):
        while (leader := (await api.get("/v1/leader")).json())["term"] == 0:
            await trio.sleep(0.05)
    assert leader["instance_id"] == "e2e-replica" and leader["this_replica_leads"]


async def test_a_nul_character_in_a_request_is_carried_through_and_stored(api):
    """Found by the fuzz run: the mock echoes the model name, and PostgreSQL
    text cannot hold NUL; the job must still complete."""
    params = {**PARAMS, "model": "claude\u0000odd"}
    created = await api.post(
        "/v1/jobs", json={"requests": [{"custom_id": "nul", "params": params}]}
    )
    assert created.status_code == 201
    done = await wait_status(api, created.json()["id"], "completed", "failed")
    assert done["status"] == "completed"
    (line,) = (await api.get(f"/v1/jobs/{done['id']}/results")).text.splitlines()
    assert json.loads(line)["result"]["message"]["model"] == "claude\u0000odd"


@pytest.mark.parametrize("job_id", ["%00", "job_%00", "job_" + "z" * 27])
async def test_an_id_no_job_can_have_is_not_found(api, job_id):
    assert (await api.get(f"/v1/jobs/{job_id}")).status_code == 404
    assert (await api.post(f"/v1/jobs/{job_id}/cancel")).status_code == 404


async def create_at_provider(harness: Harness, count: int) -> str:
    """A provider batch the user created without batchwarden."""
    items = [{"custom_id": f"own-{i:03d}", "params": PARAMS} for i in range(count)]
    async with httpx.AsyncClient(base_url=harness.provider_url) as client:
        created = await client.post(
            "/v1/messages/batches",
            json={"requests": items},
            headers={"x-api-key": "user-key", "anthropic-version": "2023-06-01"},
        )
    assert created.status_code == 200, created.text
    return created.json()["id"]


async def test_a_job_can_track_a_provider_batch_created_elsewhere(api, harness):
    batch_id = await create_at_provider(harness, 30)
    created = await api.post(
        "/v1/jobs",
        json={"provider_batch_id": batch_id, "callback_url": harness.receiver.url},
    )
    assert created.status_code == 201, created.text
    assert created.json()["item_count"] == 0
    done = await wait_status(api, created.json()["id"], "completed")
    assert done["item_count"] == 30 and done["request_counts"]["pending"] == 0
    assert [b["id"] for b in done["provider_batches"]] == [batch_id]
    results = (await api.get(f"/v1/jobs/{done['id']}/results")).text.splitlines()
    custom_ids = sorted(json.loads(line)["custom_id"] for line in results)
    assert custom_ids == [f"own-{i:03d}" for i in range(30)]
    with trio.fail_after(30):
        await harness.receiver.delivered.wait()
    assert harness.receiver.verified()[0]["data"]["item_count"] == 30

    again = await api.post("/v1/jobs", json={"provider_batch_id": batch_id})
    assert again.status_code == 409
    assert f"provider batch {batch_id} already belongs to a job" in again.text


async def test_tracking_an_unknown_provider_batch_fails_the_job(
    api, harness, monkeypatch
):
    monkeypatch.setattr(poller, "PROPAGATION_S", 0.0)
    created = await api.post("/v1/jobs", json={"provider_batch_id": "msgbatch_nope"})
    ended = await wait_status(api, created.json()["id"], "failed")
    assert ended["error"] == "the provider no longer knows one of the job's batches"


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ({"provider_batch_id": "a b"}, "provider_batch_id: must be 1-128 characters"),
        ({"provider_batch_id": 7}, "provider_batch_id: must be a string"),
        (
            {"provider_batch_id": "x", **body(1)},
            "requests: give requests or provider_batch_id, not both",
        ),
    ],
)
async def test_a_bad_provider_batch_id_is_a_422(api, document, problem):
    response = await api.post("/v1/jobs", json=document)
    assert response.status_code == 422
    assert problem in "\n".join(problems(response))


async def test_a_jobs_tokens_and_cost_match_the_providers_usage(harness):
    prices = PriceTable({"claude-sonnet-4-5": Price(1.5, 7.5, 1.875, 0.15)})
    url = await harness.serve(prices=prices)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        created = (await client.post("/v1/jobs", json=body(200))).json()
        done = await wait_status(client, created["id"], "completed")
    expected = dict.fromkeys(done["usage"], 0)
    for batch in done["provider_batches"]:
        mock_batch = harness.provider.batches[batch["id"]]
        for index in range(len(mock_batch)):
            record = mock_batch.record(index)
            if record["outcome"] == "succeeded":
                expected["input_tokens"] += record["input_tokens"]
                expected["output_tokens"] += record["output_tokens"]
    assert done["usage"] == expected and expected["output_tokens"] > 0
    assert done["usage_by_model"] == {"claude-sonnet-4-5": expected}
    dollars = (expected["input_tokens"] * 1.5 + expected["output_tokens"] * 7.5) / 1e6
    assert done["cost"]["total"] == pytest.approx(dollars, abs=1e-6)
    assert done["cost"]["by_model"] == {"claude-sonnet-4-5": done["cost"]["total"]}
    assert done["cost"]["currency"] == "USD" and done["cost"]["unpriced_models"] == []
