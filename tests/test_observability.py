"""Metrics, traces and logs of live replicas while a job flows."""

from __future__ import annotations

import http.server
import re
import threading
import time

import httpx
import pytest
import trio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from tests.harness import Harness
from tests.replicas import Replica
from tests.test_grafana import check_exposition

PARAMS = {"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "q"}]}


def job_body(count: int) -> dict:
    items = [{"custom_id": f"o{i}", "params": PARAMS} for i in range(count)]
    return {"requests": items}


def sample(exposition: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a scrape, or None if it is not there."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:\{{{re.escape(wanted)}\}})? (\S+)$"
    if labels:
        pattern = rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$"
    found = re.search(pattern, exposition, re.M)
    return float(found.group(1)) if found else None


def wait_until(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


@pytest.mark.slow
def test_metrics_of_live_replicas_follow_leadership_and_work(pg_url, mock_url):
    flags = ("--provider-url", mock_url, "--anthropic-api-key", "k")
    flags += ("--poll-interval", "0.2")
    replicas = [Replica(pg_url, name, *flags, probe=False) for name in ("m1", "m2")]
    try:
        scrape = [lambda r=r: httpx.get(f"{r.url}/metrics").text for r in replicas]
        leaders = wait_until(
            lambda: (
                [sample(s(), "batchwarden_leader") for s in scrape]
                if sum(sample(s(), "batchwarden_leader") or 0 for s in scrape) == 1
                else None
            )
        )
        assert sorted(leaders) == [0.0, 1.0]
        leader = scrape[leaders.index(1.0)]
        before = sample(leader(), "batchwarden_polls_total", outcome="success") or 0
        job = httpx.post(f"{replicas[0].url}/v1/jobs", json=job_body(40)).json()

        def completed() -> str | None:
            text = leader()
            done = sample(text, "batchwarden_jobs", status="completed")
            return text if done else None

        text = wait_until(completed)
        assert sample(text, "batchwarden_polls_total", outcome="success") > before
        stored = sum(
            sample(text, "batchwarden_items_ingested_total", status=status) or 0
            for status in ("succeeded", "errored", "expired", "canceled")
        )
        assert stored == 40
        assert sample(text, "batchwarden_job_transitions_total", status="completed")
        assert sample(text, "batchwarden_poll_cycle_seconds_count") > 0
        assert sample(
            text,
            "batchwarden_provider_request_seconds_count",
            operation="create",
            outcome="success",
        )
        assert sample(text, "batchwarden_db_pool_max") >= 1
        check_exposition(text)
        follower = scrape[leaders.index(0.0)]()
        assert sample(follower, "batchwarden_jobs", status="completed") is None
        check_exposition_lint_only(follower)

        events = [e for r in replicas for e in r.events()]
        created = [e for e in events if e["message"].startswith("created provider")]
        assert created and created[0]["job_id"] == job["id"]
        assert created[0]["term"] >= 1 and created[0]["instance"] in ("m1", "m2")
    finally:
        for replica in replicas:
            replica.stop()


def check_exposition_lint_only(exposition: str) -> None:
    from tests.test_grafana import run_promtool

    linted = run_promtool("check", "metrics", stdin=exposition)
    assert linted.returncode == 0, linted.stdout + linted.stderr


@pytest.fixture(scope="session")
def span_exporter():
    """One in-memory exporter for the session: OpenTelemetry takes a global
    tracer provider once per process."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


async def test_spans_form_the_tree_of_a_job(nursery, sqlite_url, span_exporter):
    span_exporter.clear()
    harness = Harness(nursery, sqlite_url)
    await harness.start_servers()
    url = await harness.serve()
    async with httpx.AsyncClient(base_url=url) as client:
        body = {**job_body(30), "callback_url": harness.receiver.url}
        job = (await client.post("/v1/jobs", json=body)).json()
        assert (await client.get(f"/v1/jobs/{job['id']}")).status_code == 200
        with trio.fail_after(30):
            while not named(span_exporter, "batchwarden.callback"):
                await trio.sleep(0.05)
    spans = span_exporter.get_finished_spans()
    by_id = {span.context.span_id: span for span in spans}

    def parent_name(span) -> str | None:
        parent = by_id.get(span.parent.span_id) if span.parent else None
        return parent.name if parent else None

    (batch_id,) = {
        s.attributes["batchwarden.provider_batch_id"]
        for s in spans
        if s.name == "provider.create" or s.name == "provider.retrieve"
        if "batchwarden.provider_batch_id" in s.attributes
    }
    retrieves = [s for s in spans if s.name == "provider.retrieve"]
    assert retrieves and {parent_name(s) for s in retrieves} == {
        "batchwarden.poll_cycle"
    }
    assert all(
        s.attributes["batchwarden.provider_batch_id"] == batch_id for s in retrieves
    )
    (ingest,) = [s for s in spans if s.name == "batchwarden.ingest"]
    assert ingest.attributes["batchwarden.job_id"] == job["id"]
    (results,) = [s for s in spans if s.name == "provider.results"]
    assert parent_name(results) == "batchwarden.ingest"
    (delivery,) = named(span_exporter, "batchwarden.callback")
    assert delivery.attributes["batchwarden.job_id"] == job["id"]
    (request,) = named(span_exporter, "GET /v1/jobs/{job_id}")
    assert request.kind is trace.SpanKind.SERVER
    assert request.attributes["http.response.status_code"] == 200
    request_id = request.context.span_id
    inside = [s for s in spans if s.parent and s.parent.span_id == request_id]
    assert job["id"] in {s.attributes.get("batchwarden.job_id") for s in inside}


def named(exporter: InMemorySpanExporter, name: str) -> list:
    return [span for span in exporter.get_finished_spans() if span.name == name]


class Collector(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that keeps every body it is sent."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        length = int(self.headers.get("content-length", 0))
        Collector.bodies.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.slow
def test_spans_are_exported_over_otlp_only_when_an_endpoint_is_set(
    sqlite_url, mock_url, monkeypatch
):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Collector.bodies = []
    flags = ("--provider-url", mock_url, "--anthropic-api-key", "k")
    flags += ("--poll-interval", "0.2")
    try:
        quiet = Replica(sqlite_url, "quiet", *flags, probe=False)
        job = httpx.post(f"{quiet.url}/v1/jobs", json=job_body(5)).json()
        wait_until(lambda: httpx.get(f"{quiet.url}/v1/jobs/{job['id']}").json()
                   ["status"] == "completed")  # fmt: skip
        quiet.stop()
        assert Collector.bodies == []

        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
        monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
        traced = Replica(sqlite_url, "traced", *flags, probe=False)
        try:
            job = httpx.post(f"{traced.url}/v1/jobs", json=job_body(5)).json()
            sent = wait_until(lambda: b"".join(b for _, b in Collector.bodies))
            wait_until(lambda: b"batchwarden.ingest" in b"".join(
                b for _, b in Collector.bodies))  # fmt: skip
        finally:
            traced.stop()
        paths = {path for path, _ in Collector.bodies}
        assert paths == {"/v1/traces"}
        assert b"batchwarden.poll_cycle" in sent or b"provider." in sent
        assert job["id"].encode() in b"".join(b for _, b in Collector.bodies)
    finally:
        server.shutdown()
