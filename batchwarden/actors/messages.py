"""Messages between the leader's actors: small, named, immutable."""

from __future__ import annotations

from dataclasses import dataclass

from batchwarden.store.records import ProviderBatch


@dataclass(frozen=True, slots=True)
class SubmitJob:
    """Reaper -> submitter: a pending job whose submitter died."""

    job_id: str


@dataclass(frozen=True, slots=True)
class FetchResults:
    """Poller -> item fetcher: an ended batch whose results are not stored."""

    batch: ProviderBatch


@dataclass(frozen=True, slots=True)
class CallbackDue:
    """Item fetcher -> callback sender: a callback was written (a poke)."""


class FetchQueue:
    """The channel to the item fetcher, and which batches are in it or being
    fetched, so a poll cycle does not send the same batch twice."""

    def __init__(self, send: object) -> None:
        self.send_channel = send
        self.in_flight: set[int] = set()

    async def send(self, batch: ProviderBatch) -> None:
        if batch.id in self.in_flight:
            return
        self.in_flight.add(batch.id)
        await self.send_channel.send(FetchResults(batch))

    def done(self, batch_id: int) -> None:
        self.in_flight.discard(batch_id)
