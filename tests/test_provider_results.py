"""Results lines from the provider, parsed into rows the stores can hold."""

from __future__ import annotations

import json

import pytest

from batchwarden.providers.anthropic import LineSplitter, MalformedResult, parse_result
from batchwarden.states import ItemStatus


def line(custom_id: str, result: dict) -> str:
    return json.dumps({"custom_id": custom_id, "result": result}, separators=(",", ":"))


def succeeded(model, usage) -> dict:
    return {"type": "succeeded", "message": {"model": model, "usage": usage}}


def test_a_succeeded_line_keeps_its_text_and_usage():
    text = line("a", succeeded("m", {"input_tokens": 3, "output_tokens": 9}))
    row = parse_result(text)
    assert (row.custom_id, row.status, row.model) == ("a", ItemStatus.SUCCEEDED, "m")
    assert (row.usage.input_tokens, row.usage.output_tokens) == (3, 9)
    assert json.loads(row.result) == json.loads(text)["result"]


def test_odd_usage_and_model_values_are_stored_as_nothing_not_a_crash():
    usage = {"input_tokens": "7", "output_tokens": -1, "cache_read_input_tokens": 2**70}
    row = parse_result(line("a", succeeded("x\u0000y", usage)))
    assert row.model == "xy"
    assert row.usage.as_dict() == dict.fromkeys(row.usage.as_dict(), 0)
    assert parse_result(line("a", succeeded(["m"], None))).model is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        json.dumps({"custom_id": "a"}),
        json.dumps({"custom_id": "a", "result": {"type": "odd"}}),
        json.dumps({"custom_id": "a\u0000", "result": {"type": "expired"}}),
        json.dumps({"custom_id": 5, "result": {"type": "expired"}}),
    ],
)
def test_a_line_that_is_not_a_result_is_malformed(text):
    with pytest.raises(MalformedResult):
        parse_result(text)


def test_lines_split_across_reads_come_out_whole_and_once():
    text = '{"a":"é"}\r\n\n{"b":2}\n{"c":3}'.encode()
    for cut in range(1, len(text)):
        splitter = LineSplitter()
        lines = splitter.feed(text[:cut]) + splitter.feed(text[cut:]) + splitter.end()
        assert lines == ['{"a":"é"}', '{"b":2}', '{"c":3}'], cut
