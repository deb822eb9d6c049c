"""Callback sender: the outbox -> signed webhooks, retried with backoff.

Owns: delivering callback rows. It leases due callbacks (so a new leader
knows which were in flight), POSTs each with the Standard Webhooks headers
(`webhook-id` stable across attempts, `webhook-timestamp`, and with
`WEBHOOK_SECRET` a `webhook-signature` made by the `standardwebhooks`
library), and records every attempt. Any 2xx is delivered. Otherwise the
next attempt waits `CALLBACK_BACKOFF * 2^(attempt-1)`, jittered, or the
receiver's `Retry-After` if longer (capped at an hour); after
`CALLBACK_MAX_ATTEMPTS` the callback is `exhausted`, visible on the job.

Before each attempt the URL's host is resolved and checked against the
callback policy (`callback_urls`), and the POST goes to the address that
passed: a host that now resolves to a private address (DNS rebinding) gets
a failed attempt, not a request.

It wakes when the item fetcher writes a callback (a coalesced poke) and
once a second for retries that came due.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

import httpx
import trio
from standardwebhooks.webhooks import Webhook

from batchwarden.actors.backoff import schedule
from batchwarden.actors.messages import CallbackDue
from batchwarden.callback_urls import CallbackPolicy, CallbackRefused, Destination
from batchwarden.store.pipeline import Callback
from batchwarden.supervisor.leadership import LeaderContext
from batchwarden.telemetry.tracing import tracer

log = logging.getLogger(__name__)

BATCH = 16
CONCURRENCY = 8
IDLE_S = 1.0
MAX_RETRY_AFTER_S = 3600.0


async def callback_sender(
    context: LeaderContext, pokes: trio.MemoryReceiveChannel[CallbackDue]
) -> None:
    settings = context.settings
    secret = settings.webhook_secret
    signer = Webhook(secret.reveal()) if secret is not None else None
    limiter = trio.CapacityLimiter(CONCURRENCY)
    policy = CallbackPolicy(settings.callback_allowlist)
    async with httpx.AsyncClient(timeout=settings.callback_timeout) as client:
        sender = Sender(client, signer, policy)
        while True:
            due = await context.store.lease_callbacks(
                term=context.term, limit=BATCH, lease_s=settings.callback_timeout + 5
            )
            async with trio.open_nursery() as nursery:
                for callback in due:
                    nursery.start_soon(_deliver, context, sender, limiter, callback)
            if len(due) < BATCH:
                with trio.move_on_after(IDLE_S):
                    await pokes.receive()


async def _deliver(
    context: LeaderContext,
    sender: Sender,
    limiter: trio.CapacityLimiter,
    callback: Callback,
) -> None:
    attempt = callback.attempts + 1
    attributes = {
        "batchwarden.job_id": callback.job_id,
        "batchwarden.webhook_id": callback.id,
        "batchwarden.attempt": attempt,
    }
    span = tracer.start_as_current_span("batchwarden.callback", attributes=attributes)
    async with limiter:
        with span:
            started = time.perf_counter()
            status_code, error, retry_after = await sender.post(callback)
            duration = time.perf_counter() - started
    next_at = _next_attempt(context, attempt, retry_after)
    status = await context.store.record_attempt(
        callback,
        status_code=status_code,
        error=error,
        duration_s=duration,
        next_attempt_at=next_at,
        term=context.term,
    )
    if status == "delivered":
        waited = datetime.now(UTC) - callback.created_at
        context.metrics.callback_delivery.observe(waited.total_seconds())
    context.metrics.callbacks.labels(status).inc()
    extra = {"job_id": callback.job_id, "attempt": attempt}
    if status == "delivered":
        log.info("callback delivered", extra=extra)
    elif status == "exhausted":
        log.error("callback exhausted: %s", error, extra=extra)
    else:
        log.info("callback failed, will retry: %s", error, extra=extra)


class Sender:
    """Signs and POSTs callbacks to checked, pinned addresses."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        signer: Webhook | None,
        policy: CallbackPolicy,
    ) -> None:
        self.client = client
        self.signer = signer
        self.policy = policy

    async def post(
        self, callback: Callback
    ) -> tuple[int | None, str | None, float | None]:
        """(status code, error, retry-after seconds) of one attempt."""
        try:
            destination = await self.policy.resolve(callback.url)
        except CallbackRefused as exc:
            return None, str(exc), None
        try:
            response = await self._send(destination, callback)
        except httpx.HTTPError as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500], None
        if 200 <= response.status_code < 300:
            return response.status_code, None, None
        return (
            response.status_code,
            f"HTTP {response.status_code}",
            _retry_after(response.headers.get("retry-after")),
        )

    async def _send(
        self, destination: Destination, callback: Callback
    ) -> httpx.Response:
        """POST to the checked addresses in turn until one accepts a
        connection: the check and the connection see the same answer."""
        url = httpx.URL(callback.url)
        headers = self._headers(callback)
        headers["host"] = url.netloc.decode("ascii")
        # TLS still verifies the certificate against the URL's host name.
        extensions = {"sni_hostname": destination.host} if url.scheme == "https" else {}
        last = len(destination.addresses) - 1
        for index, address in enumerate(destination.addresses):
            try:
                return await self.client.post(
                    url.copy_with(host=str(address)),
                    content=callback.payload,
                    headers=headers,
                    extensions=extensions,
                )
            except httpx.ConnectError:
                if index == last:
                    raise
        raise AssertionError("a destination has at least one address")

    def _headers(self, callback: Callback) -> dict[str, str]:
        stamp = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": callback.id,
            "webhook-timestamp": str(int(stamp.timestamp())),
        }
        if self.signer is not None:
            signature = self.signer.sign(callback.id, stamp, callback.payload)
            headers["webhook-signature"] = signature
        return headers


def _retry_after(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else None
    except ValueError:
        return None


def _next_attempt(
    context: LeaderContext, attempt: int, retry_after: float | None
) -> datetime | None:
    settings = context.settings
    if attempt >= settings.callback_max_attempts:
        return None
    delay = max(schedule(attempt, settings.callback_backoff), retry_after or 0.0)
    return datetime.now(UTC) + timedelta(seconds=delay)
