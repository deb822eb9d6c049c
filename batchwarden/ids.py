"""Identifiers: time-ordered, so that newer jobs sort after older ones."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def _sortable(random_bytes: int = 10) -> str:
    """48 bits of milliseconds and 80 random bits, in Crockford base32."""
    value = int(time.time() * 1000) << (8 * random_bytes)
    value |= int.from_bytes(os.urandom(random_bytes))
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
