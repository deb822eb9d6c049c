"""Logging: one logger per module, text or one JSON object per line.

Structured fields travel in `extra` under stable keys (`job_id`, `batch_id`,
`term`, `attempt`, `instance`, ...); the JSON format emits them as top-level
keys, the text format appends them as key=value pairs. `instance` and `term`
need not be passed: the supervisor binds the instance for the whole process
and the lock holder binds the term around its workers (context variables,
which trio tasks inherit from the task that starts them), and every record
logged under them carries both.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

KEYS = ("instance", "term", "job_id", "batch_id", "attempt", "sleep_s", "error")


_BOUND: dict[str, ContextVar[object | None]] = {
    "instance": ContextVar("instance", default=None),
    "term": ContextVar("term", default=None),
}


@contextlib.contextmanager
def bound(key: str, value: object) -> Iterator[None]:
    """Records logged inside (in this task and tasks it starts) carry
    `key=value` unless they name `key` themselves."""
    token = _BOUND[key].set(value)
    try:
        yield
    finally:
        _BOUND[key].reset(token)


class BoundFields(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, variable in _BOUND.items():
            value = variable.get()
            if value is not None and not hasattr(record, key):
                setattr(record, key, value)
        return True


def _fields(record: logging.LogRecord) -> dict[str, object]:
    return {key: getattr(record, key) for key in KEYS if hasattr(record, key)}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        document = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        return json.dumps(document, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{text} {pairs}" if pairs else text


def configure(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(BoundFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The pool logs each failed reconnect; the store reports the failure once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
