"""What a job cost: token usage by model times a configurable price table.

Prices are in US dollars per million tokens, for batch use (the provider
bills batches at half the price of single calls), set with `PRICES`: a JSON
object, or `@path` to a JSON file, mapping a model to its four prices:

    {"claude-sonnet-4-5": {"input": 1.5, "output": 7.5,
                           "cache_write": 1.875, "cache_read": 0.15}}

No prices ship with batchwarden: prices change, and a wrong default would
be worse than none. A price key matches a model of that name or a dated
version of it (`claude-sonnet-4-5` prices `claude-sonnet-4-5-20250929`);
the longest matching key wins. Models with no price are listed, not
guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the store imports this module to price jobs
    from batchwarden.store.records import Usage

PER_TOKENS = 1_000_000
KINDS = {
    "input": "input_tokens",
    "output": "output_tokens",
    "cache_write": "cache_creation_input_tokens",
    "cache_read": "cache_read_input_tokens",
}


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    cache_write: float = 0.0
    cache_read: float = 0.0

    def of(self, usage: Usage) -> float:
        dollars = sum(
            getattr(self, kind) * getattr(usage, tokens)
            for kind, tokens in KINDS.items()
        )
        return dollars / PER_TOKENS


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price] = field(default_factory=dict)

    def price_of(self, model: str) -> Price | None:
        matches = [
            key for key in self.prices if model == key or model.startswith(key + "-")
        ]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, usage_by_model: dict[str, Usage]) -> dict[str, Any] | None:
        """The cost document of a job, or None without a price table."""
        if not self.prices:
            return None
        by_model, unpriced = {}, []
        for model, usage in sorted(usage_by_model.items()):
            price = self.price_of(model)
            if price is None:
                unpriced.append(model)
            else:
                by_model[model] = round(price.of(usage), 6)
        return {
            "currency": "USD",
            "total": round(sum(by_model.values()), 6),
            "by_model": by_model,
            "unpriced_models": unpriced,
        }


def parse_prices(text: str) -> PriceTable:
    """A price table from JSON or `@file`; ValueError names the problem."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise ValueError(f"cannot read {text[1:]}: {exc.strerror}") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON ({exc.msg})") from None
    if not isinstance(document, dict):
        raise ValueError("must be a JSON object of model -> prices")
    return PriceTable({model: _price(model, spec) for model, spec in document.items()})


def _price(model: str, value: Any) -> Price:
    if not isinstance(value, dict):
        raise ValueError(f"{model}: must be an object of prices")
    unknown = set(value) - set(KINDS)
    if unknown:
        raise ValueError(f"{model}.{sorted(unknown)[0]}: unknown price")
    for kind in ("input", "output"):
        if kind not in value:
            raise ValueError(f"{model}.{kind}: missing")
    for kind, number in value.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(f"{model}.{kind}: must be a number")
        if number < 0:
            raise ValueError(f"{model}.{kind}: must not be negative")
    return Price(**{kind: float(number) for kind, number in value.items()})


NO_PRICES = PriceTable()
