"""Reaper: puts work a previous leader left half-done back into play.

At the start of each term and every `INTERVAL_S` after: pending jobs
claimed in an older term (their submitter died between claim and
submission) are claimed for this term and sent to the submitter; callbacks
leased by an older term (their delivery may or may not have happened) are
due again at once. Delivery is at least once, so a callback whose attempt
was in flight may arrive twice, with the same `webhook-id`.
"""

from __future__ import annotations

import logging

import trio

from batchwarden.actors.messages import SubmitJob
from batchwarden.supervisor.leadership import LeaderContext

log = logging.getLogger(__name__)

INTERVAL_S = 30.0


async def reaper(
    context: LeaderContext, submit: trio.MemorySendChannel[SubmitJob]
) -> None:
    store, term = context.store, context.term
    while True:
        for job_id in await store.reclaim_pending(term=term):
            log.info("resuming a stale pending job", extra={"job_id": job_id})
            await submit.send(SubmitJob(job_id))
        reclaimed = await store.reclaim_callbacks(term=term)
        if reclaimed:
            log.info("%d callbacks from an older term are due again", reclaimed)
        await trio.sleep(INTERVAL_S)
