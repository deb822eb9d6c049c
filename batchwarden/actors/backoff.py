"""Backoff: doubling delays with jitter and a cap, reset after a success."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, first_s: float = 0.5, cap_s: float = 60.0) -> None:
        self.first_s, self.cap_s = first_s, cap_s
        self._next = first_s

    def next(self, at_least_s: float | None = None) -> float:
        delay = self._next * random.uniform(0.5, 1.0)
        self._next = min(self._next * 2, self.cap_s)
        return max(delay, at_least_s or 0.0)

    def reset(self) -> None:
        self._next = self.first_s


def schedule(attempt: int, base_s: float, cap_s: float = 3600.0) -> float:
    """The delay before retry `attempt` (1-based): doubling, jittered."""
    return min(base_s * 2 ** (attempt - 1), cap_s) * random.uniform(0.75, 1.0)
