"""
The price table in the database: loaded for pricing, seeded from the shipped
file, and changed only by ``model_price_save``, which audits every change.

Price rows are platform data, not a tenant's: their audit rows have no tenant
(migration 0018 lets every role write and read those).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from billing.audit import Actor, audit_log_write
from billing.models import ModelPrice, UnitPrice
from billing.pricing import SHIPPED_PRICES, PriceRule, PriceTable, price_rule


def price_table_load() -> PriceTable:
    """The price table as it stands, in table order (two queries)."""
    rows = ModelPrice.objects.order_by("id").prefetch_related("unit_prices")
    return PriceTable(price_rule_of(row) for row in rows)


def price_rule_of(row: ModelPrice) -> PriceRule:
    return price_rule(
        row.model_name,
        {unit.usage_key: unit.price for unit in row.unit_prices.all()},
        match_pattern=row.match_pattern,
        id=row.pk,
        valid_from=row.valid_from,
        valid_to=row.valid_to,
    )


def model_price_validate(
    *,
    model_name: str,
    match_pattern: str,
    valid_from: datetime | None,
    valid_to: datetime | None,
    pk: int | None = None,
) -> None:
    """
    Raise ValidationError, by field, for a pattern that is not a regular
    expression or a period that is empty or overlaps another row of the same
    model.
    """
    errors: dict[str, str] = {}
    try:
        re.compile(match_pattern)
    except re.error as exc:
        errors["match_pattern"] = f"Not a regular expression: {exc}."
    if valid_from and valid_to and valid_from >= valid_to:
        errors["valid_to"] = "Must be after the start of validity."
    else:
        overlapping = (
            ModelPrice.objects.filter(model_name=model_name)
            .exclude(pk=pk)
            .filter(_overlaps(valid_from, valid_to))
            .first()
        )
        if overlapping:
            errors["valid_from"] = (
                f"Overlaps the prices of {model_name} valid "
                f"{model_price_period(overlapping.valid_from, overlapping.valid_to)}: "
                "end those first."
            )
    if errors:
        raise ValidationError(errors)


def unit_prices_validate(unit_prices: Mapping[str, Decimal]) -> None:
    """Raise ValidationError unless ``unit_prices`` can price usage."""
    try:
        price_rule("model", unit_prices)
    except ValueError as exc:
        # "price_rule: model 'model': <what is wrong>."
        raise ValidationError(str(exc).rsplit("': ", 1)[-1].capitalize()) from None


def _overlaps(valid_from: datetime | None, valid_to: datetime | None) -> Q:
    condition = Q()
    if valid_from is not None:
        condition &= Q(valid_to__isnull=True) | Q(valid_to__gt=valid_from)
    if valid_to is not None:
        condition &= Q(valid_from__isnull=True) | Q(valid_from__lt=valid_to)
    return condition


def model_price_period(valid_from: datetime | None, valid_to: datetime | None) -> str:
    """When a price row is in force, in UTC, as operators read it."""
    if valid_from and valid_to:
        return f"{valid_from:%Y-%m-%d %H:%M} to {valid_to:%Y-%m-%d %H:%M}"
    if valid_from:
        return f"from {valid_from:%Y-%m-%d %H:%M}"
    return f"until {valid_to:%Y-%m-%d %H:%M}" if valid_to else "always"


def _snapshot(row: ModelPrice) -> dict[str, Any]:
    return {
        "model_name": row.model_name,
        "match_pattern": row.match_pattern,
        "valid_from": row.valid_from.isoformat() if row.valid_from else None,
        "valid_to": row.valid_to.isoformat() if row.valid_to else None,
        "note": row.note,
        "prices": {
            unit.usage_key: format(Decimal(unit.price).normalize(), "f")
            for unit in row.unit_prices.order_by("usage_key")
        },
    }


@transaction.atomic
def model_price_save(
    *,
    price: ModelPrice,
    unit_prices: Mapping[str, Decimal],
    actor: Actor,
    note: str = "",
) -> ModelPrice:
    """
    Create ``price`` (unsaved) or store the changes made to it, with exactly
    ``unit_prices``; audited. Raise ValidationError as
    ``model_price_validate`` and ``unit_prices_validate`` do. The ledger
    keeps what it billed: a changed price applies to usage synced from the
    next run on, and to the past only through ``manage.py reprice``.
    """
    model_price_validate(
        model_name=price.model_name,
        match_pattern=price.match_pattern,
        valid_from=price.valid_from,
        valid_to=price.valid_to,
        pk=price.pk,
    )
    unit_prices_validate(unit_prices)
    before: dict[str, Any] = {}
    if price.pk is not None:
        before = _snapshot(ModelPrice.objects.select_for_update().get(pk=price.pk))
    price.save()
    price.unit_prices.exclude(usage_key__in=list(unit_prices)).delete()
    for usage_key, value in unit_prices.items():
        UnitPrice.objects.update_or_create(
            model_price=price, usage_key=usage_key, defaults={"price": value}
        )
    after = _snapshot(price)
    if before != after:
        audit_log_write(
            actor=actor,
            action="price.change" if before else "price.create",
            obj=price,
            tenant=None,
            before={k: v for k, v in before.items() if after.get(k) != v},
            after={k: v for k, v in after.items() if before.get(k) != v},
            note=note,
        )
    return price


def shipped_prices_insert(
    model_price_model: type[ModelPrice],
    unit_price_model: type[UnitPrice],
    rules: Iterable[PriceRule] = SHIPPED_PRICES,
) -> list[ModelPrice]:
    """
    Insert the rules whose model has no row yet, valid since always; never
    change a row. Takes the models so that a migration can pass its own.
    """
    known = set(model_price_model.objects.values_list("model_name", flat=True))
    added = [rule for rule in rules if rule.model_name not in known]
    rows = model_price_model.objects.bulk_create(
        model_price_model(
            model_name=rule.model_name,
            match_pattern=rule.pattern.pattern,
            note="Shipped with the app (Langfuse's default model prices).",
        )
        for rule in added
    )
    unit_price_model.objects.bulk_create(
        unit_price_model(model_price_id=row.pk, usage_key=key, price=value)
        for row, rule in zip(rows, added, strict=True)
        for key, value in rule.prices.items()
    )
    return rows


@transaction.atomic
def model_prices_seed(*, actor: Actor) -> int:
    """
    Add the shipped models the table does not have yet (a newer release
    ships more); audited. Returns how many were added.
    """
    rows = shipped_prices_insert(ModelPrice, UnitPrice)
    for row in rows:
        audit_log_write(
            actor=actor,
            action="price.create",
            obj=row,
            tenant=None,
            after=_snapshot(row),
            note="seeded from the shipped price file",
        )
    return len(rows)
