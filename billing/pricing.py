"""
What an observation costs: our price table first, Langfuse's cost as fallback.

Prices are USD per one million tokens, as providers publish them, and stay
``Decimal`` end to end. Cached input tokens are priced on their own (they are
an order of magnitude cheaper). The first matching pattern wins, so put
specific names (``gpt-4o-mini``) before their prefixes (``gpt-4o``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

MILLION = Decimal(1_000_000)


class PriceSource:
    PRICE_TABLE = "price_table"
    LANGFUSE = "langfuse"
    NONE = "none"

    choices = [
        (PRICE_TABLE, "Our price table"),
        (LANGFUSE, "Langfuse cost"),
        (NONE, "Not priced"),
    ]


@dataclass(frozen=True)
class ModelPrice:
    pattern: re.Pattern
    input: Decimal
    output: Decimal
    cached_input: Decimal

    def cost(
        self, *, input_tokens: int, output_tokens: int, cached_tokens: int
    ) -> Decimal:
        return (
            input_tokens * self.input
            + output_tokens * self.output
            + cached_tokens * self.cached_input
        ) / MILLION


def _price(pattern: str, input: str, output: str, cached: str) -> ModelPrice:  # noqa: A002
    return ModelPrice(
        re.compile(pattern), Decimal(input), Decimal(output), Decimal(cached)
    )


PRICE_TABLE: tuple[ModelPrice, ...] = (
    _price(r"^gpt-4o-mini(-\d{4}-\d{2}-\d{2})?$", "0.15", "0.60", "0.075"),
    _price(r"^gpt-4o(-\d{4}-\d{2}-\d{2})?$", "2.50", "10.00", "1.25"),
    _price(r"^o3-mini(-\d{4}-\d{2}-\d{2})?$", "1.10", "4.40", "0.55"),
    _price(r"^claude-3-5-sonnet(-\d{8}|-latest)?$", "3.00", "15.00", "0.30"),
    _price(r"^claude-3-5-haiku(-\d{8}|-latest)?$", "0.80", "4.00", "0.08"),
    _price(r"^gemini-1\.5-pro(-\d{3})?$", "1.25", "5.00", "0.3125"),
    _price(r"^text-embedding-3-small$", "0.02", "0", "0"),
)


def price_for_model(model: str | None) -> ModelPrice | None:
    if not model:
        return None
    for price in PRICE_TABLE:
        if price.pattern.match(model):
            return price
    return None
