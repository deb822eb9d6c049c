"""Logging: one logger per module, text or one JSON object per line.

Structured fields travel in `extra` under stable keys (`job_id`, `batch_id`,
`term`, `attempt`, `instance`, ...); the JSON format emits them as top-level
keys, the text format appends them as key=value pairs.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

KEYS = ("instance", "term", "job_id", "batch_id", "attempt", "sleep_s", "error")


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
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The pool logs each failed reconnect; the store reports the failure once.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
