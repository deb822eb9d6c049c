"""Costs from token usage and a price table."""

from __future__ import annotations

import json

import pytest

from batchwarden.pricing import Price, PriceTable, parse_prices
from batchwarden.store.records import Usage


def test_a_price_key_matches_dated_versions_and_the_longest_key_wins():
    table = PriceTable({"claude": Price(9, 9), "claude-haiku-4-5": Price(1, 5)})
    assert table.price_of("claude-haiku-4-5-20251001") == Price(1, 5)
    assert table.price_of("claude-haiku-4-5") == Price(1, 5)
    assert table.price_of("claude-other") == Price(9, 9)
    assert table.price_of("claudette") is None


def test_cost_counts_every_kind_of_token_and_lists_unpriced_models():
    table = PriceTable({"a": Price(1.0, 2.0, 3.0, 0.5)})
    usage = {"a": Usage(1_000_000, 500_000, 100_000, 2_000_000), "b": Usage(5, 5)}
    assert table.cost(usage) == {
        "currency": "USD",
        "total": pytest.approx(1.0 + 1.0 + 0.3 + 1.0),
        "by_model": {"a": pytest.approx(3.3)},
        "unpriced_models": ["b"],
    }
    assert PriceTable().cost(usage) is None


def test_prices_come_from_json_or_a_file(tmp_path):
    document = {"m": {"input": 1, "output": 2.5, "cache_read": 0.1}}
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(document))
    assert parse_prices(json.dumps(document)) == parse_prices(f"@{path}")
    assert parse_prices(f"@{path}").prices["m"] == Price(1.0, 2.5, 0.0, 0.1)
