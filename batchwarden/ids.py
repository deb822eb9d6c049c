"""Identifiers: time-ordered, so that newer jobs sort after older ones.

Like a ULID: 48 bits of milliseconds, then 80 random bits. Within one
millisecond a process counts up from the last value instead of drawing new
random bits, so ids made by one process always sort in the order made.
"""

from __future__ import annotations

import os
import re
import threading
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
JOB_ID = re.compile(r"job_[0-9a-z]{26}")
_RANDOM_BITS = 80
_lock = threading.Lock()
_last = 0


def _next_value() -> int:
    global _last
    with _lock:
        value = int(time.time() * 1000) << _RANDOM_BITS
        value |= int.from_bytes(os.urandom(_RANDOM_BITS // 8))
        if value <= _last:
            value = _last + 1
        _last = value
        return value


def _sortable() -> str:
    value = _next_value()
    digits = []
    for _ in range(26):
        value, rest = divmod(value, 32)
        digits.append(_ALPHABET[rest])
    return "".join(reversed(digits))


def new_job_id() -> str:
    return "job_" + _sortable()


def new_callback_id() -> str:
    """The `webhook-id` of one callback, stable across its delivery attempts."""
    return "msg_" + _sortable()


def is_job_id(text: str) -> bool:
    """Whether `text` has the shape of a job id (so it is safe to look up)."""
    return JOB_ID.fullmatch(text) is not None
