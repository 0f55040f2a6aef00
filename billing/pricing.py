"""
What an observation costs: our price data first, Langfuse's cost as fallback.

Prices are data, not code: ``model_prices.json`` next to this module holds one
entry per model in the shape of Langfuse's default model prices
(``worker/src/constants/default-model-prices.json`` in langfuse/langfuse):
``modelName``, ``matchPattern`` (a regex such as ``(?i)^(openai/)?(gpt-4o)$``:
case-insensitive, provider prefix optional) and ``prices``, USD per unit of a
usage key, written as decimal strings. Other fields (``tokenizerId``,
``note``, ...) are ignored. The entries are copied from Langfuse's file, the
default pricing tier only: Langfuse's newer file has ``pricingTiers`` (fast
mode, flex, large context) chosen by model parameters or prompt size that we
do not see, so an observation in such a tier is billed at the standard price.
Entries Langfuse does not ship (or ships without prices) say so in a ``note``.
A free self-hosted model gets an entry with explicit ``"0"`` prices: a model
without an entry is never billed as 0.

Rules of ``price_usage``, applied to one observation:

- Usage keys are Langfuse's ``usageDetails`` keys (``input``, ``output``,
  ``cache_read_input_tokens``, ``cache_creation_input_tokens``,
  ``output_reasoning_tokens``, ``input_audio_tokens``, ...), each a separate
  bucket, priced at its own price, as Langfuse prices them.
- ``total`` is a sum of the others and is never priced on its own, with one
  exception taken from Langfuse: an entry that prices ``total`` (embedding
  and legacy completion models) prices the whole usage by its total (the
  ``total`` count if given, else the sum of the others), covering every key.
  A usage that has nothing but ``total`` is priced by such an entry or not at
  all by ours.
- Every key with a positive count must be covered. A key our matched entry
  does not price falls back to Langfuse's cost for that key
  (``costDetails[key]``); if Langfuse itemised nothing (no ``costDetails``
  besides ``total``), to Langfuse's ``totalCost`` for the whole observation,
  ours dropped. The source is ``langfuse`` whenever a Langfuse figure is used.
- An unknown model (or none) takes Langfuse's ``totalCost``.
- A Langfuse cost of 0 or none for positive counts means Langfuse had no price
  either: the observation is unpriced (``cost`` None, with a reason), never a
  $0 bill. If Langfuse itemised its cost but not the key we lack, it did not
  price that key, so its total cannot cover it either: unpriced too.
- No usage, or every count 0, costs 0 (source ``none``) and is not unpriced,
  unless Langfuse reports a cost for it (a cost ingested without usage):
  then that cost.
- Negative counts are rejected when the observation is read, not here.

Money stays ``Decimal`` end to end.

The prices in force live in the database (``billing.models.ModelPrice``,
edited in the admin, seeded from ``model_prices.json``); each row is valid
for a period, so an observation is priced with the prices in force at its
start, as Langfuse does, and repricing a period later finds the same ones.
A ``PriceTable`` holds them for pricing: the first rule, in table order,
whose pattern matches the model and that is in force at the time wins
(Langfuse's patterns are anchored, so they do not overlap).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType

PRICES_FILE = Path(__file__).with_name("model_prices.json")
TOTAL = "total"
# Keys Langfuse's integrations use for cached (cache read) input, most common
# first; the summary columns use them.
CACHE_READ_KEYS = (
    "cache_read_input_tokens",
    "input_cached_tokens",
    "input_cache_read",
    "cached_tokens",
)


class PriceSource:
    PRICE_TABLE = "price_table"
    LANGFUSE = "langfuse"
    NONE = "none"

    choices = [
        (PRICE_TABLE, "Our price table"),
        (LANGFUSE, "Langfuse cost"),
        (NONE, "Not priced"),
    ]


@dataclass(frozen=True, eq=False)
class PriceRule:
    """
    One entry of the price data: a model pattern and USD per usage unit,
    in force from ``valid_from`` (None: always) until ``valid_to``
    (exclusive; None: until further notice). ``id`` is its row in the price
    table, None for rules that are not stored (the shipped file, tests).
    """

    model_name: str
    pattern: re.Pattern[str]
    prices: Mapping[str, Decimal]
    id: int | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None

    def in_force(self, at: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_to is None or at < self.valid_to
        )

    @property
    def by_total(self) -> bool:
        """Priced by the total count alone (embeddings, legacy completions)."""
        return TOTAL in self.prices

    def matches(self, model: str) -> bool:
        # Langfuse matches with Postgres' `~`, a search; its patterns anchor.
        return self.pattern.search(model) is not None

    def covers(self, key: str) -> bool:
        return self.by_total or key in self.prices

    def cost_by_key(self, usage: Mapping[str, int]) -> dict[str, Decimal]:
        """The cost of each key of ``usage`` this entry prices."""
        if self.by_total:
            count = usage.get(TOTAL)
            if count is None:
                count = sum(n for key, n in usage.items() if key != TOTAL)
            return {TOTAL: count * self.prices[TOTAL]}
        return {
            key: count * self.prices[key]
            for key, count in usage.items()
            if key != TOTAL and key in self.prices
        }

    def cost(self, usage: Mapping[str, int]) -> Decimal:
        """
        The cost of the part of ``usage`` this entry covers (see ``covers``;
        ``price_usage`` decides what happens to the rest).
        """
        return sum(self.cost_by_key(usage).values(), Decimal(0))


@dataclass(frozen=True)
class Priced:
    """What one observation costs. ``cost`` None: unpriced, never bill as 0."""

    cost: Decimal | None
    source: str  # a PriceSource value
    reason: str = ""  # why unpriced, for operators
    # Our rule that priced it (all or part), for traceability.
    rule: PriceRule | None = field(default=None, compare=False)


class PriceTable:
    """
    Price rules in table order. ``price_for`` is called once per observation:
    which rules match a model is worked out once per model name (the patterns
    are regexes) and kept, for a bounded number of names (they are provider
    data: any string).
    """

    MATCHES_KEPT = 4096

    def __init__(self, rules: Iterable[PriceRule]) -> None:
        self.rules = tuple(rules)
        self._matching: dict[str, tuple[PriceRule, ...]] = {}

    def __len__(self) -> int:
        return len(self.rules)

    def price_for(self, model: str | None, at: datetime) -> PriceRule | None:
        """The first rule whose pattern matches ``model`` and in force at ``at``."""
        if not model:
            return None
        matching = self._matching.get(model)
        if matching is None:
            if len(self._matching) >= self.MATCHES_KEPT:
                self._matching.clear()
            matching = tuple(rule for rule in self.rules if rule.matches(model))
            self._matching[model] = matching
        return next((rule for rule in matching if rule.in_force(at)), None)


def load_prices(path: Path = PRICES_FILE) -> tuple[PriceRule, ...]:
    """Read and check price data; raise ValueError on a bad entry."""
    entries = json.loads(path.read_text(), parse_float=Decimal)
    if not isinstance(entries, list):
        raise ValueError(f"{path.name}: expected a list of model entries.")
    prices = tuple(price_rule_from_entry(entry, path.name) for entry in entries)
    names = [price.model_name for price in prices]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{path.name}: duplicate modelName {duplicates}.")
    return prices


def price_rule(
    model_name: str,
    prices: Mapping[str, str | int | Decimal],
    *,
    match_pattern: str | None = None,
    **validity,
) -> PriceRule:
    """
    An entry as the price data would hold it: ``prices`` in USD per unit;
    the pattern defaults to the name itself, case-insensitive. ``validity``:
    ``id``, ``valid_from``, ``valid_to``.
    """
    pattern = match_pattern or f"(?i)^{re.escape(model_name)}$"
    entry = {"modelName": model_name, "matchPattern": pattern, "prices": prices}
    return price_rule_from_entry(entry, "price_rule", **validity)


def price_rule_from_entry(entry: Mapping, source: str, **validity) -> PriceRule:
    """
    A rule from an entry in the shape of Langfuse's model prices; raise
    ValueError, saying what is wrong, on a bad one.
    """
    name = entry.get("modelName") if isinstance(entry, Mapping) else None
    where = f"{source}: model {name!r}"
    if not isinstance(name, str) or not name:
        raise ValueError(f"{source}: an entry without modelName.")
    try:
        pattern = re.compile(entry["matchPattern"])
    except (KeyError, TypeError, re.error) as exc:
        raise ValueError(f"{where}: bad matchPattern ({exc}).") from None
    raw = entry.get("prices")
    if not isinstance(raw, Mapping) or not raw:
        raise ValueError(f"{where}: no prices.")
    prices = {}
    for key, value in raw.items():
        try:
            price = Decimal(str(value))
        except InvalidOperation:
            price = Decimal("NaN")
        if not price.is_finite() or price < 0:
            raise ValueError(f"{where}: bad price {value!r} for {key!r}.")
        prices[key] = price
    if TOTAL in prices and len(prices) > 1:
        # Langfuse would price both and bill the total alone: ambiguous data.
        raise ValueError(f"{where}: a total price goes alone.")
    return PriceRule(name, pattern, MappingProxyType(prices), **validity)


# What the price table is seeded with (and what tests price with).
SHIPPED_PRICES: tuple[PriceRule, ...] = load_prices()


def price_usage(
    *,
    prices: PriceTable,
    at: datetime,
    model: str | None,
    usage: Mapping[str, int],
    langfuse_cost: Decimal | None,
    langfuse_cost_details: Mapping[str, Decimal] | None = None,
) -> Priced:
    """
    Price one observation's usage, started at ``at``, by the rules of the
    module docstring.
    """
    counts = {key: n for key, n in usage.items() if n > 0}
    if set(counts) != {TOTAL}:
        counts.pop(TOTAL, None)  # a sum of the others
    langfuse_total = langfuse_cost if langfuse_cost and langfuse_cost > 0 else None
    if not counts:
        if langfuse_total is not None:
            return Priced(langfuse_total, PriceSource.LANGFUSE)
        return Priced(Decimal(0), PriceSource.NONE)
    price = prices.price_for(model, at)
    if price is None:
        if langfuse_total is not None:
            return Priced(langfuse_total, PriceSource.LANGFUSE)
        return Priced(
            None,
            PriceSource.NONE,
            f"unknown model {model or '(none)'!r} and no Langfuse cost",
        )
    ours = price.cost(counts)
    missing = [key for key in counts if not price.covers(key)]
    if not missing:
        return Priced(ours, PriceSource.PRICE_TABLE, rule=price)
    details = langfuse_cost_details or {}
    if set(details) - {TOTAL}:
        theirs = [details.get(key) for key in missing]
        if all(cost is not None and cost > 0 for cost in theirs):
            return Priced(
                ours + sum(theirs, Decimal(0)), PriceSource.LANGFUSE, rule=price
            )
    elif langfuse_total is not None:
        return Priced(langfuse_total, PriceSource.LANGFUSE)
    keys = ", ".join(repr(key) for key in missing)
    return Priced(
        None,
        PriceSource.NONE,
        f"no price for usage {keys} of model {model!r} and no Langfuse cost for it",
    )


def token_totals(usage: Mapping[str, int]) -> tuple[int, int, int]:
    """
    Sum usage into the (input, output, cached) summary columns of the ledger.

    By key, case-insensitive: cache reads (``CACHE_READ_KEYS``, or any key
    containing ``cache_read`` or ``cached``) are cached; other ``input*`` and
    ``prompt*`` keys and cache writes (``*cache_creation*``,
    ``*cache_write*``) are input; ``output*``, ``completion*``,
    ``candidates*`` (Gemini's output) and reasoning keys (``*reasoning*``,
    ``*thought*``) are output; ``total`` is a sum and is skipped; any other
    key counts as input. The columns are a summary for operators and the
    usage API; the cost is priced per key.
    """
    input_, output, cached = 0, 0, 0
    for key, count in usage.items():
        name = key.lower()
        if name == TOTAL:
            continue
        if name in CACHE_READ_KEYS or "cache_read" in name or "cached" in name:
            cached += count
        elif name.startswith(("output", "completion", "candidates")) or any(
            word in name for word in ("reasoning", "thought")
        ):
            output += count
        else:
            input_ += count  # input*, prompt*, cache writes, unknown keys
    return input_, output, cached
