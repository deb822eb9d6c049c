"""Finds a PostgreSQL server for the tests, or starts a throwaway one.

Order: `BATCHWARDEN_TEST_DATABASE_URL`, then 127.0.0.1:5432, then a server
of our own in a temporary directory, from the system's PostgreSQL binaries.
Tests never skip for want of PostgreSQL: if none can be found or started,
the session fails and says why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "pg_ctl").exists():
            return candidate
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if versions:
        return Path(versions[-1]).parent
    raise RuntimeError(
        "no PostgreSQL answers and no PostgreSQL binaries were found to start one:"
        " install PostgreSQL (Debian: postgresql) or set"
        " BATCHWARDEN_TEST_DATABASE_URL"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ThrowawayServer:
    """A PostgreSQL cluster in a temporary directory, gone after `stop`."""

    def __init__(self, *settings: str) -> None:
        """`settings`: server settings such as `track_commit_timestamp=on`."""
        self.settings = settings
        self.bindir = _bindir()
        self.root = Path(tempfile.mkdtemp(prefix="bw-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, *argv: str) -> list[str]:
        # PostgreSQL refuses to run as root; run it as the postgres user then.
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def start(self) -> str:
        run = subprocess.run
        initdb = str(self.bindir / "initdb")
        command = [initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres"]
        run(self._as_owner(*command), check=True, capture_output=True)
        pg_ctl = str(self.bindir / "pg_ctl")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {setting}" for setting in self.settings)
        start = [pg_ctl, "-D", str(self.data), "-o", options, "-w", "start"]
        log = ["-l", str(self.root / "log")]
        run(self._as_owner(*start, *log), check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while not answers(self.url):
            if time.monotonic() > deadline:
                raise RuntimeError(f"throwaway PostgreSQL did not start: {self.root}")
            time.sleep(0.1)
        return self.url

    def restart(self) -> None:
        # The log file keeps the server's output off our pipes, which
        # would otherwise stay open for as long as the server runs.
        pg_ctl = str(self.bindir / "pg_ctl")
        command = [pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "restart"]
        command += ["-l", str(self.root / "log")]
        subprocess.run(self._as_owner(*command), check=True, capture_output=True)

    def stop(self) -> None:
        pg_ctl = str(self.bindir / "pg_ctl")
        command = [pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"]
        subprocess.run(self._as_owner(*command), capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def with_database(url: str, name: str) -> str:
    """The same server URL, pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))
