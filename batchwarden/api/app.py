"""The HTTP app every replica serves: the REST API, health, readiness,
metrics and the leader.

Readiness means the database answers; leadership does not matter, so a
follower takes API traffic like the leader does (the API only reads and
writes the database; the leader's actors pick the work up from there).
`/v1` needs a bearer token when `API_TOKENS` is set; health, readiness and
metrics stay open for probes and scrapers.
"""

from __future__ import annotations

import contextlib

import trio
from fastapi import Depends, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST

from batchwarden import __version__
from batchwarden.api import schemas
from batchwarden.api.auth import require_token
from batchwarden.api.errors import install_handlers
from batchwarden.api.jobs import jobs_router
from batchwarden.config import Settings
from batchwarden.errors import RetryLater
from batchwarden.service import iso
from batchwarden.store import SqlStore
from batchwarden.supervisor.leadership import Leadership

READY_TIMEOUT_S = 2.0


def build_app(store: SqlStore, leadership: Leadership, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="batchwarden",
        version=__version__,
        description="Runs LLM batch jobs to completion.",
    )
    install_handlers(app)
    authorized = [Depends(require_token(settings.api_tokens))]
    app.include_router(jobs_router(store, settings), dependencies=authorized)

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> dict:
        """The event loop answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {}})
    async def readyz(response: Response) -> dict:
        """The database answers."""
        try:
            with trio.fail_after(READY_TIMEOUT_S):
                await store.ping()
        except (RetryLater, trio.TooSlowError) as exc:
            response.status_code = 503
            return {"status": "unavailable", "reason": str(exc) or "timed out"}
        return {"status": "ready"}

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        """Prometheus text format."""
        if not leadership.leading:
            await _refresh_seen_term(store, leadership)
        return Response(leadership.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/leader",
        tags=["operations"],
        response_model=schemas.Leader,
        responses=schemas.errors(),
        dependencies=authorized,
    )
    async def leader() -> dict:
        """The current leader, its term and since when."""
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
