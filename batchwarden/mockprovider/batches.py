"""The mock provider's batches: lifecycle, item outcomes and result lines.

Nothing here runs on a timer. A batch's state is a function of the clock:
it was created at `created_at`, its processing takes `processing_s`, it
expires at `expires_at`, and a cancel fixes an earlier end. Reading a batch
computes where it is now, so thousands of batches cost no tasks.

Each item draws, once, at creation, from the batch's seeded generator: the
fraction of the processing time after which it is done, its outcome
(succeeded, errored or expired by the configured mix), its error type, and
its output tokens. At the end, an item not done by the cancel (or by the
expiry) is canceled (or expired). The same seed gives the same outcomes.

Result lines are produced one at a time from these draws, so a batch of
100,000 items never exists as one string. Durations are in provider time;
`time_scale` makes the provider's clock run faster than the wall's (3600:
an hour per second), while every timestamp shown stays wall-clock time.
"""

from __future__ import annotations

import json
import random
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

DAY_S = 86_400.0
MAX_OUTPUT_TOKENS = 128_000
OUTCOMES = ("succeeded", "errored", "expired")
SUCCEEDED, ERRORED, EXPIRED = range(3)


@dataclass(frozen=True)
class Duration:
    """A processing time: fixed, or drawn per batch from a distribution."""

    kind: str = "fixed"
    a: float = 2.0
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Duration:
        """`2`, `uniform:1,5` or `exponential:3` (a mean), in seconds."""
        kind, _, rest = text.partition(":")
        try:
            if not rest:
                return cls("fixed", float(kind))
            values = [float(v) for v in rest.split(",")]
            if kind == "uniform" and len(values) == 2 and 0 <= values[0] <= values[1]:
                return cls("uniform", *values)
            if kind == "exponential" and len(values) == 1 and values[0] > 0:
                return cls("exponential", values[0])
        except ValueError:
            pass
        raise ValueError(
            f"processing time {text!r}: use SECONDS, uniform:LOW,HIGH"
            " or exponential:MEAN"
        )

    def draw(self, rng: random.Random) -> float:
        if self.kind == "uniform":
            return rng.uniform(self.a, self.b)
        if self.kind == "exponential":
            return rng.expovariate(1 / self.a)
        return self.a


@dataclass
class Behaviour:
    """How batches behave; changeable at runtime for batches made after."""

    processing: Duration = field(default_factory=Duration)
    lifetime_s: float = DAY_S
    archive_after_s: float = 29 * DAY_S
    cancel_delay_s: float = 1.0
    time_scale: float = 1.0
    mix: tuple[float, float, float] = (1.0, 0.0, 0.0)
    error_types: dict[str, float] = field(
        default_factory=lambda: {"invalid_request_error": 1.0}
    )
    # Most requests in progress at once (the account's processing queue);
    # a create that would go past it is answered 429.
    queue_limit: int | None = None

    def real(self, provider_seconds: float) -> float:
        return provider_seconds / self.time_scale


@dataclass
class Item:
    custom_id: str
    model: str
    max_tokens: int
    input_tokens: int


class MockBatch:
    def __init__(
        self,
        batch_id: str,
        items: list[Item],
        behaviour: Behaviour,
        rng: random.Random,
        now: float,
    ) -> None:
        self.id = batch_id
        self.created_at = now
        self.processing_s = behaviour.real(behaviour.processing.draw(rng))
        self.expires_at = now + behaviour.real(behaviour.lifetime_s)
        self.archive_at = now + behaviour.real(behaviour.archive_after_s)
        self.cancel_delay_s = behaviour.real(behaviour.cancel_delay_s)
        self.cancel_initiated_at: float | None = None
        self._final: tuple[float, str] | None = None
        self._final_counts: dict[str, int] | None = None
        self.custom_ids = [item.custom_id for item in items]
        self.models = [sys.intern(item.model) for item in items]
        self.input_tokens = array("I", (item.input_tokens for item in items))
        self._draw_outcomes(items, behaviour, rng)

    def _draw_outcomes(
        self, items: list[Item], behaviour: Behaviour, rng: random.Random
    ) -> None:
        error_names = list(behaviour.error_types)
        error_weights = list(behaviour.error_types.values())
        self.error_names = error_names
        self.done_at = array("d", (rng.random() for _ in items))
        self.outcome = array("B", rng.choices(range(3), behaviour.mix, k=len(items)))
        self.error_type = array(
            "B", rng.choices(range(len(error_names)), error_weights, k=len(items))
        )
        # A reply is at most MAX_OUTPUT_TOKENS long, whatever max_tokens asks.
        limits = (min(max(1, item.max_tokens), MAX_OUTPUT_TOKENS) for item in items)
        self.output_tokens = array("I", (rng.randint(1, top) for top in limits))

    def __len__(self) -> int:
        return len(self.custom_ids)

    # -- lifecycle -----------------------------------------------------------

    @property
    def natural_end(self) -> float:
        return self.created_at + self.processing_s

    @property
    def ends_at(self) -> float:
        end = min(self.natural_end, self.expires_at)
        if self.cancel_initiated_at is not None:
            end = min(end, self.cancel_initiated_at + self.cancel_delay_s)
        return end

    def status(self, now: float) -> str:
        if now >= self.ends_at:
            return "ended"
        if self.cancel_initiated_at is not None:
            return "canceling"
        return "in_progress"

    def cancel(self, now: float) -> None:
        if self.cancel_initiated_at is None and self.status(now) == "in_progress":
            self.cancel_initiated_at = now

    def _cutoff(self) -> tuple[float, str]:
        """Items done after this fraction of processing end as the label."""
        if self.cancel_initiated_at is not None and self.ends_at < self.natural_end:
            done = self.cancel_initiated_at - self.created_at
            return done / self.processing_s, "canceled"
        if self.expires_at < self.natural_end:
            done = self.expires_at - self.created_at
            return done / self.processing_s, "expired"
        return 2.0, ""

    def final_outcome(self, index: int) -> str:
        """The item's outcome once the batch has ended."""
        if self._final is None:
            self._final = self._cutoff()
        cutoff, label = self._final
        if self.done_at[index] >= cutoff:
            return label
        return OUTCOMES[self.outcome[index]]

    def request_counts(self, now: float) -> dict[str, int]:
        counts = dict.fromkeys(
            ("processing", "succeeded", "errored", "canceled", "expired"), 0
        )
        if self.status(now) != "ended":
            counts["processing"] = len(self)
            return counts
        if self._final_counts is None:
            for index in range(len(self)):
                counts[self.final_outcome(index)] += 1
            self._final_counts = counts
        return dict(self._final_counts)

    def document(self, now: float, base_url: str) -> dict:
        ended = self.status(now) == "ended"
        return {
            "id": self.id,
            "type": "message_batch",
            "processing_status": self.status(now),
            "request_counts": self.request_counts(now),
            "created_at": rfc3339(self.created_at),
            "ended_at": rfc3339(self.ends_at) if ended else None,
            "expires_at": rfc3339(self.expires_at),
            "cancel_initiated_at": rfc3339(self.cancel_initiated_at),
            "archived_at": rfc3339(self.archive_at) if now >= self.archive_at else None,
            "results_url": f"{base_url}/v1/messages/batches/{self.id}/results"
            if ended
            else None,
        }

    # -- results ---------------------------------------------------------------

    def result_line(self, index: int) -> str:
        outcome = self.final_outcome(index)
        custom_id = self.custom_ids[index]
        if outcome == "succeeded":
            body = self._message(index)
        elif outcome == "errored":
            kind = self.error_names[self.error_type[index]]
            body = (
                '{"type":"errored","error":{"type":"error","error":'
                f'{{"type":"{kind}","message":"mock {kind} for {custom_id}"}}}}}}'
            )
        else:
            body = f'{{"type":"{outcome}"}}'
        return f'{{"custom_id":"{custom_id}","result":{body}}}\n'

    def _message(self, index: int) -> str:
        custom_id = self.custom_ids[index]
        usage = (
            f'{{"input_tokens":{self.input_tokens[index]},'
            f'"output_tokens":{self.output_tokens[index]},'
            '"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
            '"service_tier":"batch"}'
        )
        return (
            '{"type":"succeeded","message":{'
            f'"id":"msg_{self.id[9:21]}{index:08d}","type":"message",'
            f'"role":"assistant","model":{json.dumps(self.models[index])},'
            f'"content":[{{"type":"text","text":"Mock answer to {custom_id}."}}],'
            f'"stop_reason":"end_turn","stop_sequence":null,"usage":{usage}}}}}'
        )

    def result_lines(self) -> Iterator[str]:
        for index in range(len(self)):
            yield self.result_line(index)

    def record(self, index: int) -> dict:
        """What the mock decided for one item, for tests to check against."""
        outcome = self.final_outcome(index)
        record = {"custom_id": self.custom_ids[index], "outcome": outcome}
        if outcome == "errored":
            record["error_type"] = self.error_names[self.error_type[index]]
        if outcome == "succeeded":
            record["input_tokens"] = self.input_tokens[index]
            record["output_tokens"] = self.output_tokens[index]
            record["model"] = self.models[index]
        return record


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="microseconds")
    return stamp.replace("+00:00", "Z")
