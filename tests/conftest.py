"""Shared fixtures: real PostgreSQL (found or started) and real SQLite files."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from batchwarden.store import open_store
from tests.pgserver import DEFAULT_URL, ThrowawayServer, answers, with_database


@pytest.fixture(scope="session")
def pg_server_url():
    """A PostgreSQL server URL; a throwaway server if none answers.

    BATCHWARDEN_TEST_THROWAWAY_PG=1 forces the throwaway server, to check
    that path on a machine that has a server running.
    """
    url = os.environ.get("BATCHWARDEN_TEST_DATABASE_URL")
    if url:
        if not answers(url):
            pytest.fail(f"BATCHWARDEN_TEST_DATABASE_URL does not answer: {url}")
        yield url
        return
    if os.environ.get("BATCHWARDEN_TEST_THROWAWAY_PG") != "1" and answers(DEFAULT_URL):
        yield DEFAULT_URL
        return
    server = ThrowawayServer()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server_url):
    """A new, empty database of its own for each test."""
    name = "bw_test_" + secrets.token_hex(6)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    yield with_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'batchwarden.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request):
    """Each test that takes it runs once per store."""
    return request.getfixturevalue(f"{request.param.replace('postgres', 'pg')}_url")


@pytest.fixture
async def store(database_url):
    async with open_store(database_url, instance_id="test-replica") as opened:
        yield opened


@pytest.fixture
def mock_url():
    """A `batchwarden mock-provider` process; its base URL."""
    script = Path(sys.executable).parent / "batchwarden"
    command = [str(script), "mock-provider", "--port", "0", "--processing-time", "0.5"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    yield process.stdout.readline().split()[-1]
    process.terminate()
    process.wait(timeout=10)
