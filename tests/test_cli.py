"""The `batchwarden` command, run as a real process on both stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from batchwarden import service
from batchwarden.mockprovider import Duration
from batchwarden.states import JobStatus
from tests.harness import Harness
from tests.helpers import request_line

SCRIPT = Path(sys.executable).parent / "batchwarden"
EXAMPLE = Path(__file__).parent.parent / "examples" / "requests.jsonl"


@pytest.fixture
def cli(database_url, tmp_path):
    env = {**os.environ, "BATCHWARDEN_DATABASE_URL": database_url}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(SCRIPT), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=60,
        )

    return run


def write_lines(path: Path, *values) -> str:
    path.write_text(
        "".join((v if isinstance(v, str) else json.dumps(v)) + "\n" for v in values)
    )
    return str(path)


def all_jobs(cli) -> list[dict]:
    listed = cli("jobs", "--json")
    assert listed.returncode == 0, listed.stderr
    return json.loads(listed.stdout)["jobs"]


def test_submit_then_inspect_a_job(cli, tmp_path):
    submitted = cli(
        "submit", str(EXAMPLE), "--json", "--metadata", '{"team": "search"}'
    )
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["status"] == "created"
    assert job["request_counts"]["pending"] == 10
    assert job["metadata"] == {"team": "search"}

    status = cli("status", job["id"], "--json")
    assert json.loads(status.stdout) == job
    assert [j["id"] for j in all_jobs(cli)] == [job["id"]]

    results = cli("results", job["id"])
    lines = [json.loads(line) for line in results.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == [
        f"explain-{i:03d}" for i in range(10)
    ]
    assert {line["status"] for line in lines} == {"pending"}

    output = tmp_path / "out.jsonl"
    saved = cli("results", job["id"], "--output", str(output))
    assert saved.stdout.strip() == f"wrote 10 items to {output}"
    assert output.read_text() == results.stdout


def test_cancel_moves_a_created_job_and_refuses_an_ended_one(cli):
    job_id = cli("submit", str(EXAMPLE)).stdout.split()[0]
    cancelled = cli("cancel", job_id, "--json")
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    again = cli("cancel", job_id)
    assert again.returncode == 4
    assert again.stderr == f"error: job {job_id} has already ended: cancelled\n"


def test_a_malformed_line_fails_the_submit_and_writes_nothing(cli, tmp_path):
    path = write_lines(tmp_path / "bad.jsonl", request_line("a"), "{not json")
    failed = cli("submit", path)
    assert failed.returncode == 2
    assert failed.stderr == (
        f"error: {path} line 2: not valid JSON"
        " (Expecting property name enclosed in double quotes)\n"
    )
    assert all_jobs(cli) == []


def test_a_duplicate_custom_id_fails_the_submit_and_writes_nothing(cli, tmp_path):
    path = write_lines(
        tmp_path / "dup.jsonl", request_line("a"), request_line("b"), request_line("a")
    )
    failed = cli("submit", path)
    assert failed.returncode == 2
    assert failed.stderr == f"error: {path} line 3: custom_id 'a' repeats line 1\n"
    assert all_jobs(cli) == []


def test_every_bad_line_is_reported_on_a_line_of_its_own(cli, tmp_path):
    missing_model = request_line("b")
    del missing_model["params"]["model"]
    path = write_lines(tmp_path / "two.jsonl", "[]", missing_model)
    failed = cli("submit", path)
    assert failed.returncode == 2
    assert failed.stderr.splitlines() == [
        f"error: {path} line 1: must be a JSON object with custom_id and params",
        f"error: {path} line 2: params.model: must be a non-empty string",
    ]


def test_an_unknown_job_is_a_one_line_error(cli):
    for verb in ("status", "results", "cancel"):
        failed = cli(verb, "job_unknown")
        assert failed.returncode == 3
        assert failed.stderr == "error: no job with id 'job_unknown'\n"
        assert failed.stdout == ""


def test_a_bad_setting_is_named(cli):
    failed = cli("jobs", "--database-url", "mysql://nope")
    assert failed.returncode == 2
    assert failed.stderr.startswith("error: --database-url must start with")


def test_migrate_reports_what_it_applied(cli):
    first = cli("migrate", "--json")
    assert json.loads(first.stdout) == {"applied": [1, 2, 3]}
    assert cli("migrate").stdout == "schema is up to date\n"


def test_leader_shows_that_nobody_leads_yet(cli):
    shown = cli("leader", "--json")
    assert json.loads(shown.stdout) == {"instance_id": None, "term": 0, "since": None}


def test_track_registers_a_provider_batch_once(cli):
    tracked = cli("track", "msgbatch_abc123", "--json")
    assert tracked.returncode == 0, tracked.stderr
    job = json.loads(tracked.stdout)
    assert (job["status"], job["item_count"]) == ("running", 0)
    assert [b["id"] for b in job["provider_batches"]] == ["msgbatch_abc123"]
    again = cli("track", "msgbatch_abc123")
    assert again.returncode == 4
    assert "provider batch msgbatch_abc123 already belongs to a job" in again.stderr


def test_run_on_an_open_address_without_tokens_exits_with_the_reason(cli):
    refused = cli("run", "--host", "0.0.0.0", "--port", "0")
    assert refused.returncode == 2
    assert "BATCHWARDEN_API_TOKENS is empty" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_submit_refuses_a_private_callback_url(cli):
    refused = cli("submit", str(EXAMPLE), "--callback-url", "http://10.0.0.7/hook")
    assert refused.returncode == 2
    assert "10.0.0.7, a private, loopback or link-local address" in refused.stderr
    assert all_jobs(cli) == []


async def test_submit_wait_shows_progress_and_prints_the_ended_job(
    nursery, database_url, tmp_path
):
    harness = Harness(nursery, database_url)
    await harness.start_servers()
    await harness.serve()
    env = {
        **os.environ,
        "BATCHWARDEN_DATABASE_URL": database_url,
        "BATCHWARDEN_CALLBACK_ALLOWLIST": "127.0.0.1",
    }
    command = [str(SCRIPT), "submit", str(EXAMPLE), "--wait", "--json"]
    command += ["--callback-url", harness.receiver.url]
    with trio.fail_after(60):
        waited = await trio.run_process(
            command, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    assert waited.returncode == 0, waited.stderr
    job = json.loads(waited.stdout)
    assert job["status"] == "completed" and sum(job["request_counts"].values()) == 10
    progress = waited.stderr.decode().splitlines()
    assert progress[-1].endswith("10/10 items  completed")
    assert all(line.startswith("[") for line in progress)
    nursery.cancel_scope.cancel()


async def test_submit_wait_exits_6_when_the_job_ends_otherwise(
    nursery, database_url, store
):
    harness = Harness(nursery, database_url)
    await harness.start_servers()
    harness.provider.behaviour.processing = Duration("fixed", 60)
    await harness.serve()
    env = {**os.environ, "BATCHWARDEN_DATABASE_URL": database_url}
    command = [str(SCRIPT), "submit", str(EXAMPLE), "--wait"]
    waiting = await trio.lowlevel.open_process(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    with trio.fail_after(60):
        job_id = (await waiting.stdout.receive_some(4096)).decode().split()[0]
        await wait_status(store, job_id, JobStatus.RUNNING)
        await service.cancel_job(store, job_id)
        rest = b""
        while chunk := await waiting.stdout.receive_some(4096):
            rest += chunk
        assert await waiting.wait() == 6
    assert rest.decode().splitlines()[-1] == "job cancelled: 10 canceled"
    nursery.cancel_scope.cancel()


async def wait_status(store, job_id: str, status: JobStatus) -> None:
    while (await store.get_job(job_id)).status is not status:
        await trio.sleep(0.05)
