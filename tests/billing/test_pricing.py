"""Pricing usage with our price data, and Langfuse's cost as fallback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from billing.emulators.langfuse import langfuse_cost
from billing.emulators.scenario import CHAT_MODELS, EMBEDDING_MODEL
from billing.pricing import (
    SHIPPED_PRICES,
    Priced,
    PriceSource,
    PriceTable,
    load_prices,
    price_rule,
    price_usage,
    token_totals,
)

SHIPPED = PriceTable(SHIPPED_PRICES)
NOW = datetime(2026, 11, 30, tzinfo=UTC)


def price_for_model(model, table=SHIPPED):
    return table.price_for(model, NOW)


def priced_by(table, **observation):
    return price_usage(prices=table, at=NOW, **observation)


# A model id each entry prices where its modelName is not one (Langfuse names
# some entries with dots and matches the ids with dashes).
MODEL_IDS = {
    "claude-3.5-sonnet-20241022": "claude-3-5-sonnet-20241022",
    "claude-3.5-sonnet-latest": "claude-3-5-sonnet-latest",
    "claude-3.5-haiku-latest": "claude-3-5-haiku-latest",
}
# Names the tests, the benchmarks and the scenario bill (bench/rollup.py
# names gemini-1.5-pro by its -002 version).
MODELS_IN_USE = (*CHAT_MODELS, EMBEDDING_MODEL, "gemini-1.5-pro-002")


def model_id(entry) -> str:
    return MODEL_IDS.get(entry.model_name, entry.model_name)


def every_key(entry) -> dict[str, int]:
    """A usage with a different count for every key the entry prices."""
    return {key: 1000 + 137 * n for n, key in enumerate(entry.prices)}


@pytest.mark.parametrize("entry", SHIPPED_PRICES, ids=lambda e: e.model_name)
def test_every_shipped_model_costs_what_langfuse_computes(entry):
    model = model_id(entry)
    usage = every_key(entry)

    priced = priced_by(SHIPPED, model=model, usage=usage, langfuse_cost=None)

    assert price_for_model(model) is entry
    langfuse = langfuse_cost(model, usage)
    assert priced == Priced(langfuse["total"], PriceSource.PRICE_TABLE)
    assert priced.cost > 0


@pytest.mark.parametrize("entry", SHIPPED_PRICES, ids=lambda e: e.model_name)
def test_every_shipped_model_costs_the_same_without_the_total(entry):
    # What the app reads has `total` dropped; Langfuse priced it with one.
    usage = {"input": 1234} if entry.by_total else every_key(entry)
    with_total = {**usage, "total": sum(usage.values())}

    priced = priced_by(SHIPPED, model=model_id(entry), usage=usage, langfuse_cost=None)

    assert priced.cost == langfuse_cost(model_id(entry), with_total)["total"]


@pytest.mark.parametrize("model", MODELS_IN_USE)
def test_models_in_use_stay_priced(model):
    assert price_for_model(model) is not None


def test_shipped_patterns_do_not_overlap():
    for entry in SHIPPED_PRICES:
        matching = [other for other in SHIPPED_PRICES if other.matches(model_id(entry))]
        assert matching == [entry]


def test_prices_are_decimal_per_unit():
    gpt_4o = price_for_model("gpt-4o")

    assert gpt_4o.prices["input"] == Decimal("0.0000025")
    assert all(isinstance(price, Decimal) for price in gpt_4o.prices.values())


def test_cache_write_and_reasoning_tokens_are_priced():
    sonnet = priced_by(
        SHIPPED,
        model="claude-sonnet-4-20250514",
        usage={
            "input": 1000,
            "cache_creation_input_tokens": 2000,
            "cache_read_input_tokens": 10_000,
            "output": 500,
        },
        langfuse_cost=None,
    )
    o3_mini = priced_by(
        SHIPPED,
        model="o3-mini",
        usage={"input": 1000, "output": 200, "output_reasoning_tokens": 800},
        langfuse_cost=None,
    )

    # $3 input, $3.75 cache write, $0.30 cache read, $15 output per million.
    assert sonnet == Priced(Decimal("0.0210"), PriceSource.PRICE_TABLE)
    # $1.10 input, $4.40 output and reasoning per million.
    assert o3_mini == Priced(Decimal("0.0055"), PriceSource.PRICE_TABLE)


def test_a_key_we_do_not_price_takes_langfuses_cost_for_that_key():
    priced = priced_by(
        SHIPPED,
        model="gpt-4o",
        usage={"input": 1000, "output": 100, "input_audio_tokens": 50},
        langfuse_cost=Decimal("0.0085"),
        langfuse_cost_details={
            "input": Decimal("0.0025"),
            "output": Decimal("0.001"),
            "input_audio_tokens": Decimal("0.005"),
            "total": Decimal("0.0085"),
        },
    )

    assert priced == Priced(Decimal("0.0085"), PriceSource.LANGFUSE)


def test_without_itemised_langfuse_cost_the_whole_observation_takes_its_total():
    priced = priced_by(
        SHIPPED,
        model="gpt-4o",
        usage={"input": 1000, "input_audio_tokens": 50},
        langfuse_cost=Decimal("0.009"),
        langfuse_cost_details={"total": Decimal("0.009")},
    )

    assert priced == Priced(Decimal("0.009"), PriceSource.LANGFUSE)


@pytest.mark.parametrize(
    ("cost", "details"),
    [
        (None, None),
        (Decimal(0), {"total": Decimal(0)}),
        # Langfuse itemised its cost but did not price the key either.
        (Decimal("0.0025"), {"input": Decimal("0.0025"), "total": Decimal("0.0025")}),
        (Decimal("0.0025"), {"input": Decimal("0.0025"), "input_audio_tokens": 0}),
    ],
)
def test_a_key_nobody_prices_leaves_the_observation_unpriced(cost, details):
    priced = priced_by(
        SHIPPED,
        model="gpt-4o",
        usage={"input": 1000, "input_audio_tokens": 50},
        langfuse_cost=cost,
        langfuse_cost_details=details,
    )

    assert (priced.cost, priced.source) == (None, PriceSource.NONE)
    assert "'input_audio_tokens'" in priced.reason and "'gpt-4o'" in priced.reason


def test_unknown_model_takes_langfuses_cost():
    priced = priced_by(
        SHIPPED,
        model="acme-distilled-v2",
        usage={"input": 100, "output": 100},
        langfuse_cost=Decimal("0.0123"),
    )

    assert priced == Priced(Decimal("0.0123"), PriceSource.LANGFUSE)


@pytest.mark.parametrize("model", ["local-llama-3-8b-ft", None, ""])
@pytest.mark.parametrize("cost", [None, Decimal(0)])
def test_unknown_model_without_langfuse_cost_is_unpriced_not_free(model, cost):
    priced = priced_by(
        SHIPPED, model=model, usage={"input": 100, "output": 10}, langfuse_cost=cost
    )

    assert (priced.cost, priced.source) == (None, PriceSource.NONE)
    name = model or "(none)"
    assert priced.reason == f"unknown model {name!r} and no Langfuse cost"


@pytest.mark.parametrize("usage", [{}, {"input": 0, "output": 0, "total": 0}])
def test_zero_usage_costs_zero_and_is_not_unpriced(usage):
    for model in ("gpt-4o", "local-llama-3-8b-ft", None):
        priced = priced_by(SHIPPED, model=model, usage=usage, langfuse_cost=None)

        assert priced == Priced(Decimal(0), PriceSource.NONE)
        assert priced.reason == ""


def test_a_cost_without_usage_is_langfuses():
    for model in ("gpt-4o", "local-llama-3-8b-ft"):
        priced = priced_by(SHIPPED, model=model, usage={}, langfuse_cost=Decimal("0.5"))

        assert priced == Priced(Decimal("0.5"), PriceSource.LANGFUSE)


@pytest.mark.parametrize(
    "model",
    [
        "GPT-4o",
        "openai/gpt-4o",
        "OpenAI/GPT-4O",
        "anthropic/claude-3-5-sonnet-20241022",
        "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        "google/gemini-2.5-flash",
        "googleai/Gemini-1.5-Pro",
    ],
)
def test_patterns_are_case_insensitive_and_take_provider_prefixes(model):
    assert price_for_model(model) is not None


@pytest.mark.parametrize(
    "model", ["gpt-4o-extra", "my-gpt-4o", "azure/gpt-4o", "claude-3-5-sonnet"]
)
def test_patterns_match_whole_names(model):
    assert price_for_model(model) is None


def test_total_is_not_counted_twice():
    usage = {"input": 1000, "output": 500, "total": 1500}

    priced = priced_by(SHIPPED, model="gpt-4o", usage=usage, langfuse_cost=None)

    assert priced.cost == Decimal("0.0075")  # 1000 * $2.50 + 500 * $10 per million
    assert token_totals(usage) == (1000, 500, 0)


def test_a_total_price_prices_the_whole_usage():
    embedding = price_for_model("text-embedding-3-small")  # $0.02 per million

    assert embedding.cost({"input": 1000, "total": 1000}) == Decimal("0.00002")
    assert embedding.cost({"input": 1000}) == Decimal("0.00002")
    assert embedding.cost({"total": 1000}) == Decimal("0.00002")


def test_a_usage_of_only_a_total_needs_a_total_price_or_langfuse():
    gpt_4o = {"model": "gpt-4o", "usage": {"total": 1000}}

    assert priced_by(SHIPPED, **gpt_4o, langfuse_cost=Decimal("0.004")) == Priced(
        Decimal("0.004"), PriceSource.LANGFUSE
    )
    assert priced_by(SHIPPED, **gpt_4o, langfuse_cost=None).cost is None


def test_token_totals_sum_keys_into_input_output_and_cached():
    usage = {
        "input": 1,
        "cache_creation_input_tokens": 2,
        "input_cache_creation_1h": 4,
        "input_audio_tokens": 8,
        "promptTokenCount": 16,
        "cache_read_input_tokens": 32,
        "input_cached_tokens": 64,
        "cachedContentTokenCount": 128,
        "output": 256,
        "output_reasoning_tokens": 512,
        "completion_tokens": 1024,
        "thoughtsTokenCount": 2048,
        "something_new": 4096,
        "total": 99_999,
    }

    assert token_totals(usage) == (
        1 + 2 + 4 + 8 + 16 + 4096,
        256 + 512 + 1024 + 2048,
        32 + 64 + 128,
    )


def test_bad_price_data_is_rejected(tmp_path):
    def load(entries):
        path = tmp_path / "prices.json"
        path.write_text(json.dumps(entries))
        return load_prices(path)

    good = {"modelName": "m", "matchPattern": "(?i)^m$", "prices": {"input": "1"}}
    assert load([good])[0].prices == {"input": Decimal(1)}
    for bad in (
        {**good, "matchPattern": "("},
        {**good, "prices": {}},
        {**good, "prices": {"input": "-1"}},
        {**good, "prices": {"input": "free"}},
        {**good, "prices": {"total": "1", "input": "1"}},
    ):
        with pytest.raises(ValueError, match="model 'm'"):
            load([bad])
    with pytest.raises(ValueError, match="duplicate"):
        load([good, good])


def test_a_free_model_is_priced_at_zero_not_unpriced():
    usage = {"input": 100, "output": 10}
    assert (
        priced_by(SHIPPED, model="Llama", usage=usage, langfuse_cost=None).cost is None
    )

    free = price_rule("llama", {"input": "0", "output": "0"})
    table = PriceTable((*SHIPPED_PRICES, free))
    priced = priced_by(table, model="Llama", usage=usage, langfuse_cost=None)

    assert priced == Priced(Decimal(0), PriceSource.PRICE_TABLE)
    assert price_for_model("Llama", table) is free


def test_the_emulator_bills_usage_sent_without_a_cost_as_langfuse_does(
    langfuse_emulator, langfuse_project, langfuse_api
):
    usage = {
        "input": 1000,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 10_000,
        "output": 500,
    }
    langfuse_emulator.emulator.add_observations(
        langfuse_project.public_key,
        [
            {
                "id": "gen-1",
                "traceId": "trace-1",
                "type": "GENERATION",
                "startTime": "2025-06-15T12:00:00.000Z",
                "model": "claude-sonnet-4-20250514",
                "usageDetails": usage,
            },
            {
                "id": "gen-2",
                "traceId": "trace-1",
                "type": "GENERATION",
                "startTime": "2025-06-15T12:00:01.000Z",
                "model": "local-llama-3-8b-ft",
                "usageDetails": {"input": 10},
            },
        ],
    )

    items = langfuse_api().observations.get_many(fields="core,usage").data
    served = {item.id: item for item in items}

    sonnet = served["gen-1"]
    assert sonnet.usage_details == {**usage, "total": 13_500}
    assert Decimal(str(sonnet.total_cost)) == Decimal("0.0210")
    details = {k: Decimal(str(v)) for k, v in sonnet.cost_details.items()}
    priced = priced_by(
        SHIPPED,
        model="claude-sonnet-4-20250514",
        usage=usage,
        langfuse_cost=Decimal(str(sonnet.total_cost)),
        langfuse_cost_details=details,
    )
    assert priced == Priced(Decimal("0.0210"), PriceSource.PRICE_TABLE)
    assert details == {
        "input": Decimal("0.003"),
        "cache_creation_input_tokens": Decimal("0.0075"),
        "cache_read_input_tokens": Decimal("0.003"),
        "output": Decimal("0.0075"),
        "total": Decimal("0.021"),
    }
    unknown = served["gen-2"]
    assert (unknown.total_cost, unknown.cost_details) == (None, {})


def test_the_rule_in_force_at_the_observation_start_prices_it():
    december = datetime(2026, 12, 1, tzinfo=UTC)
    old = price_rule("m", {"input": "0.000001"}, id=1, valid_to=december)
    new = price_rule("m", {"input": "0.000002"}, id=2, valid_from=december)
    table = PriceTable((old, new))
    usage = {"input": 1000}

    before = price_usage(
        prices=table,
        at=december - timedelta(seconds=1),
        model="m",
        usage=usage,
        langfuse_cost=None,
    )
    after = price_usage(
        prices=table, at=december, model="m", usage=usage, langfuse_cost=None
    )

    assert (before.cost, before.rule) == (Decimal("0.001"), old)
    assert (after.cost, after.rule) == (Decimal("0.002"), new)
    # Before the first rule's start: nothing of ours, no Langfuse cost.
    later = PriceTable((new,))
    assert (
        price_usage(
            prices=later, at=NOW, model="m", usage=usage, langfuse_cost=None
        ).cost
        is None
    )


def test_table_order_decides_between_matching_rules():
    broad = price_rule("all-gpt", {"input": "1"}, match_pattern="(?i)^gpt")
    exact = price_rule("gpt-x", {"input": "2"})

    assert price_for_model("gpt-x", PriceTable((broad, exact))) is broad
    assert price_for_model("gpt-x", PriceTable((exact, broad))) is exact


def test_matches_are_kept_for_a_bounded_number_of_models():
    table = PriceTable(SHIPPED_PRICES)
    for n in range(PriceTable.MATCHES_KEPT + 10):
        table.price_for(f"hostile-{n}", NOW)

    assert len(table._matching) <= PriceTable.MATCHES_KEPT
    assert table.price_for("gpt-4o", NOW).model_name == "gpt-4o"
