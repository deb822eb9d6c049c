"""What the benchmarks share: the machine line, a scratch database, flags."""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import sqlite3
from collections.abc import Callable

import psycopg

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def machine() -> str:
    return (
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def add_postgres_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BATCHWARDEN_TEST_DATABASE_URL", DEFAULT_POSTGRES),
        help="a server where the benchmark may create and drop a database",
    )


class ScratchDatabase:
    """A database of its own on the server, dropped afterwards."""

    def __init__(
        self, server_url: str, prepare: Callable[[psycopg.Connection], None] = None
    ) -> None:
        self.server_url = server_url
        self.name = "bw_bench_" + secrets.token_hex(4)
        self.url = server_url.rsplit("/", 1)[0] + "/" + self.name
        self.prepare = prepare

    def __enter__(self) -> str:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {self.name}")
        if self.prepare is not None:
            with psycopg.connect(self.url, autocommit=True) as connection:
                self.prepare(connection)
        return self.url

    def __exit__(self, *exc_info) -> None:
        with psycopg.connect(self.server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE {self.name} WITH (FORCE)")
