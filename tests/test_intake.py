"""Request validation: every problem named by line and field."""

from __future__ import annotations

import json

import pytest

from batchwarden.errors import InvalidRequests
from batchwarden.intake import MAX_REQUESTS, parse_jsonl, validate_requests
from tests.helpers import request_line


def lines(*values) -> list[str]:
    return [v if isinstance(v, str) else json.dumps(v) for v in values]


def problems_of(*values) -> list[str]:
    with pytest.raises(InvalidRequests) as raised:
        parse_jsonl(lines(*values))
    return raised.value.problems


def test_good_lines_become_requests_in_order_and_blank_lines_are_skipped():
    parsed = parse_jsonl(lines(request_line("a"), "", request_line("b")))
    assert [r.custom_id for r in parsed] == ["a", "b"]
    assert json.loads(parsed[0].params)["model"] == "claude-sonnet-4-5"


def test_a_malformed_line_is_named_by_its_number():
    assert problems_of(request_line("a"), '{"custom_id": "b",') == [
        "line 2: not valid JSON (Expecting property name enclosed in double quotes)"
    ]


def test_a_duplicate_custom_id_names_both_lines():
    assert problems_of(request_line("a"), request_line("b"), request_line("a")) == [
        "line 3: custom_id 'a' repeats line 1"
    ]


def test_each_bad_field_is_named():
    bad = {"custom_id": "has space", "params": {"max_tokens": 0, "messages": []}}
    bad["extra"] = 1
    assert problems_of(bad) == [
        "line 1: extra: unknown field",
        "line 1: custom_id: must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
        "line 1: params.model: must be a non-empty string",
        "line 1: params.max_tokens: must be at least 1",
        "line 1: params.messages: must be a non-empty list",
    ]


def test_message_roles_and_content_are_checked():
    line = request_line("a")
    line["params"]["messages"] = [{"role": "system", "content": ""}, "hi"]
    assert problems_of(line) == [
        "line 1: params.messages[0].role: must be one of user, assistant",
        "line 1: params.messages[0].content: must be a non-empty string or list",
        "line 1: params.messages[1]: must be an object",
    ]


def test_an_empty_file_is_an_error():
    assert problems_of("", "  ") == ["no requests: a job needs at least one"]


def test_more_than_the_provider_limit_is_an_error():
    values = ((f"[{i}]", request_line(f"r{i}")) for i in range(MAX_REQUESTS + 1))
    with pytest.raises(InvalidRequests) as raised:
        validate_requests(values)
    assert raised.value.problems == [
        f"{MAX_REQUESTS + 1} requests: a job takes at most {MAX_REQUESTS}"
    ]
