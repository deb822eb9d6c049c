"""Faults the mock provider injects, set by flag or at runtime.

A fault plan is a rate per endpoint and kind, plus added latency. Each
request draws from the plan's seeded generator, so a seed repeats the same
sequence of faults for the same sequence of requests. Every injected fault
is counted by endpoint and kind.

Kinds, and what a client sees:

- `429`, `500`, `529`: the provider's error body with that status (`429`
  carries `retry-after`);
- `hang`: no answer for `hang_s`, past any sane client timeout;
- `malformed`: a 200 whose body is cut-off JSON;
- `truncate` (results): the stream stops midway, the connection closes
  without the final chunk;
- `drop` (results): the connection is reset midway;
- `unknown_ids` (results): lines for custom_ids the batch does not have.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = ("create", "retrieve", "list", "cancel", "delete", "results")
REQUEST_KINDS = ("429", "500", "529", "hang", "malformed")
STREAM_KINDS = ("truncate", "drop", "unknown_ids")
KINDS = REQUEST_KINDS + STREAM_KINDS


@dataclass
class FaultPlan:
    latency_s: float = 0.0
    jitter_s: float = 0.0
    retry_after_s: float = 1.0
    hang_s: float = 300.0
    rates: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> FaultPlan:
        """A plan from JSON; a ValueError names the first bad field."""
        if not isinstance(document, dict):
            raise ValueError("faults: must be a JSON object")
        plan = cls()
        for name in ("latency_s", "jitter_s", "retry_after_s", "hang_s"):
            if name in document:
                setattr(plan, name, _non_negative(name, document[name]))
        rates = document.get("rates", {})
        if not isinstance(rates, dict):
            raise ValueError("rates: must be an object of endpoint -> kind -> rate")
        for endpoint, kinds in rates.items():
            for kind, rate in (kinds or {}).items():
                plan.set_rate(endpoint, kind, rate)
        unknown = (
            set(document)
            - {"latency_s", "jitter_s", "retry_after_s"}
            - {
                "hang_s",
                "rates",
            }
        )
        if unknown:
            raise ValueError(f"{sorted(unknown)[0]}: unknown field")
        return plan

    def set_rate(self, endpoint: str, kind: str, rate: Any) -> None:
        targets = ENDPOINTS if endpoint == "*" else (endpoint,)
        if endpoint != "*" and endpoint not in ENDPOINTS:
            raise ValueError(f"rates.{endpoint}: endpoint must be one of {ENDPOINTS}")
        if kind not in KINDS:
            raise ValueError(f"rates.{endpoint}.{kind}: kind must be one of {KINDS}")
        value = _non_negative(f"rates.{endpoint}.{kind}", rate)
        if value > 1:
            raise ValueError(f"rates.{endpoint}.{kind}: must be from 0 to 1")
        for target in targets:
            self.rates.setdefault(target, {})[kind] = value

    def document(self) -> dict[str, Any]:
        return {
            "latency_s": self.latency_s,
            "jitter_s": self.jitter_s,
            "retry_after_s": self.retry_after_s,
            "hang_s": self.hang_s,
            "rates": self.rates,
        }


def _non_negative(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{name}: must be a number of at least 0")
    return float(value)


def parse_fault_flag(plan: FaultPlan, text: str) -> None:
    """Apply `ENDPOINT:KIND=RATE` (ENDPOINT may be `*`) to a plan."""
    target, _, rate = text.partition("=")
    endpoint, _, kind = target.partition(":")
    try:
        plan.set_rate(endpoint, kind, float(rate))
    except ValueError as exc:
        raise ValueError(f"--fault {text}: {exc}") from None


class Faults:
    """The plan in force, the draws, and the count of what was injected."""

    def __init__(self, plan: FaultPlan, seed: int | None) -> None:
        self.plan = plan
        self._rng = random.Random(seed)
        self.injected: Counter[tuple[str, str]] = Counter()

    def delay(self) -> float:
        plan = self.plan
        if plan.latency_s == 0 and plan.jitter_s == 0:
            return 0.0
        return plan.latency_s + self._rng.uniform(0, plan.jitter_s)

    def draw(self, endpoint: str, kinds: tuple[str, ...] = REQUEST_KINDS) -> str | None:
        """The fault to inject into this request, if any (counted)."""
        rates = self.plan.rates.get(endpoint)
        if not rates:
            return None
        for kind in kinds:
            rate = rates.get(kind, 0.0)
            if rate and self._rng.random() < rate:
                self.injected[(endpoint, kind)] += 1
                return kind
        return None

    def counts(self) -> dict[str, dict[str, int]]:
        shown: dict[str, dict[str, int]] = {}
        for (endpoint, kind), count in sorted(self.injected.items()):
            shown.setdefault(endpoint, {})[kind] = count
        return shown
