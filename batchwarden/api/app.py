"""The HTTP app: health, readiness, metrics and the leader, on every replica.

Readiness means the database answers; leadership does not matter, so a
follower takes API traffic like the leader does.
"""

from __future__ import annotations

import contextlib

import trio
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from batchwarden import __version__
from batchwarden.errors import RetryLater
from batchwarden.service import iso
from batchwarden.store import SqlStore
from batchwarden.supervisor.leadership import Leadership

READY_TIMEOUT_S = 2.0


def build_app(store: SqlStore, leadership: Leadership) -> FastAPI:
    app = FastAPI(title="batchwarden", version=__version__)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz(response: Response) -> dict:
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                await store.ping()
        except (RetryLater, trio.TooSlowError) as exc:
            response.status_code = 503
            return {"status": "unavailable", "reason": str(exc) or "timed out"}
        return {"status": "ready"}

    @app.get("/metrics")
    async def metrics() -> Response:
        if not leadership.leading:
            await _refresh_seen_term(store, leadership)
        return Response(leadership.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/leader")
    async def leader() -> dict:
        with trio.fail_after(READY_TIMEOUT_S):
            record = await store.leader()
        return {
            "instance_id": record.holder,
            "term": record.term,
            "since": iso(record.since),
            "this_replica": leadership.instance_id,
            "this_replica_leads": leadership.leading,
        }

    return app


async def _refresh_seen_term(store: SqlStore, leadership: Leadership) -> None:
    """A follower reports the newest term it can see at scrape time."""
    with trio.move_on_after(READY_TIMEOUT_S), contextlib.suppress(RetryLater):
        leadership.metrics.leader_term.set((await store.leader()).term)
