"""The API fuzzed from its own OpenAPI document (schemathesis): a real
`batchwarden run` process on PostgreSQL, with the mock provider; no input
may produce a 5xx, a response outside the document, a logged exception, or
a job that never ends.
"""

from __future__ import annotations

import time

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tests.replicas import Replica

TOKEN = "fuzz-token-3c9e"
TERMINAL = ("completed", "failed", "cancelled", "expired")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture
def replica(pg_url, mock_url):
    flags = (
        "--provider-url",
        mock_url,
        "--api-tokens",
        TOKEN,
        "--poll-interval",
        "0.2",
    )
    replica = Replica(pg_url, "fuzzed", *flags, probe=False)
    yield replica
    replica.stop()


@pytest.mark.slow
def test_no_input_makes_the_api_fail(replica):
    schema = schemathesis.openapi.from_url(f"{replica.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:
        fuzz_operation(operation)
    assert_every_job_ends(replica.url)
    crashes = [event for event in replica.events() if "exception" in event]
    assert crashes == [], crashes
    assert "Traceback" not in replica.log_path.read_text()


def fuzz_operation(operation) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        case.call_and_validate(
            headers={"authorization": f"Bearer {TOKEN}"}, checks=CHECKS, timeout=30
        )

    fuzz()


def assert_every_job_ends(url: str) -> None:
    """Whatever requests the fuzzer submitted, the pipeline takes the job to
    a terminal status. (Jobs tracking made-up provider batch ids fail only
    after the provider's 60 s propagation window; they have 0 items until
    then, and a test of their own.)"""
    headers = {"authorization": f"Bearer {TOKEN}"}
    deadline = time.monotonic() + 60
    while True:
        jobs = httpx.get(f"{url}/v1/jobs?limit=1000", headers=headers).json()["jobs"]
        open_jobs = [
            job
            for job in jobs
            if job["status"] not in TERMINAL and job["item_count"] > 0
        ]
        if not open_jobs:
            return
        assert time.monotonic() < deadline, open_jobs
        time.sleep(0.2)
