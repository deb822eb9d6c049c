"""Validation of submitted requests, shared by the CLI and the REST API.

A request has the shape the provider's batch create call takes:
`{"custom_id": "...", "params": {...}}`. Checks here catch what would make
the provider reject the whole provider batch (a bad `custom_id`, a duplicate,
a missing `model`), so that a bad job fails at submission, with the line or
index of every bad request, and nothing is written.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from batchwarden.errors import InvalidRequests

MAX_REQUESTS = 100_000
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
ROLES = ("user", "assistant")


@dataclass(frozen=True, slots=True)
class NotJson:
    """Stands for a line that did not parse, so that its problem is reported
    in line order with the others."""

    reason: str


@dataclass(frozen=True, slots=True)
class Request:
    """One validated request: its `custom_id` and its params as JSON text."""

    custom_id: str
    params: str

    @property
    def size(self) -> int:
        """Bytes this request adds to a provider batch's create body."""
        return len(self.params.encode()) + len(self.custom_id) + 32


def check_request(value: object) -> list[str]:
    """The problems of one request, each naming its field; [] if none."""
    if isinstance(value, NotJson):
        return [f"not valid JSON ({value.reason})"]
    if not isinstance(value, dict):
        return ["must be a JSON object with custom_id and params"]
    problems = [f"{key}: unknown field" for key in value if key not in _FIELDS]
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
        problems.append("custom_id: must be 1-64 characters of a-z, A-Z, 0-9, _ or -")
    params = value.get("params")
    if not isinstance(params, dict):
        problems.append("params: must be an object")
    else:
        problems.extend(f"params.{p}" for p in _check_params(params))
    return problems


_FIELDS = ("custom_id", "params")


def _check_params(params: dict) -> list[str]:
    problems = []
    model = params.get("model")
    if not isinstance(model, str) or not model:
        problems.append("model: must be a non-empty string")
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        problems.append("max_tokens: must be a whole number")
    elif max_tokens < 1:
        problems.append("max_tokens: must be at least 1")
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        problems.append("messages: must be a non-empty list")
    else:
        problems.extend(_check_messages(messages))
    return problems


def _check_messages(messages: list) -> list[str]:
    problems = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            problems.append(f"{where}: must be an object")
            continue
        if message.get("role") not in ROLES:
            problems.append(f"{where}.role: must be one of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, (str, list)) or not content:
            problems.append(f"{where}.content: must be a non-empty string or list")
    return problems


def validate_requests(values: Iterable[tuple[str, object]]) -> list[Request]:
    """Requests from (label, parsed value) pairs, or InvalidRequests naming
    every bad one by its label (`line 3`, `requests[2]`)."""
    problems: list[str] = []
    requests: list[Request] = []
    first_seen: dict[str, str] = {}
    for label, value in values:
        found = check_request(value)
        if found:
            problems.extend(f"{label}: {p}" for p in found)
            continue
        custom_id = value["custom_id"]
        if custom_id in first_seen:
            problems.append(
                f"{label}: custom_id {custom_id!r} repeats {first_seen[custom_id]}"
            )
            continue
        first_seen[custom_id] = label
        params = json.dumps(value["params"], separators=(",", ":"))
        requests.append(Request(custom_id, params))
    problems.extend(_count_problems(len(requests) + len(problems)))
    if problems:
        raise InvalidRequests(problems)
    return requests


def _count_problems(count: int) -> list[str]:
    if count == 0:
        return ["no requests: a job needs at least one"]
    if count > MAX_REQUESTS:
        return [f"{count} requests: a job takes at most {MAX_REQUESTS}"]
    return []


def parse_jsonl(lines: Iterable[str]) -> list[Request]:
    """Requests from JSON lines; blank lines are skipped, lines count from 1."""
    return validate_requests(_parsed_lines(lines))


def _parsed_lines(lines: Iterable[str]) -> Iterable[tuple[str, object]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"line {number}", NotJson(exc.msg)
