"""Request counts and latencies per endpoint, for tests and benchmarks."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

SAMPLES = 10_000


@dataclass
class EndpointStats:
    count: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    total_s: float = 0.0
    max_s: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))

    def document(self) -> dict[str, Any]:
        ordered = sorted(self.recent)

        def quantile(q: float) -> float | None:
            return ordered[int(q * (len(ordered) - 1))] if ordered else None

        return {
            "count": self.count,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "mean_s": self.total_s / self.count if self.count else None,
            "p50_s": quantile(0.5),
            "p99_s": quantile(0.99),
            "max_s": self.max_s,
        }


class Stats:
    def __init__(self) -> None:
        self.endpoints: dict[str, EndpointStats] = {}
        self.batches_created = 0
        self.requests_created = 0
        self.max_processing_requests = 0
        self.queue_full = 0

    def record(self, endpoint: str, status: int, seconds: float) -> None:
        stats = self.endpoints.setdefault(endpoint, EndpointStats())
        stats.count += 1
        stats.statuses[status] += 1
        stats.total_s += seconds
        stats.max_s = max(stats.max_s, seconds)
        stats.recent.append(seconds)

    def batch_created(self, requests: int, processing_now: int) -> None:
        self.batches_created += 1
        self.requests_created += requests
        self.max_processing_requests = max(self.max_processing_requests, processing_now)

    def document(self) -> dict[str, Any]:
        return {
            "endpoints": {k: v.document() for k, v in sorted(self.endpoints.items())},
            "batches_created": self.batches_created,
            "requests_created": self.requests_created,
            "max_processing_requests": self.max_processing_requests,
            "queue_full": self.queue_full,
        }
