"""
The price table in the database (issue 15, item 3): seeded from the shipped
file, read for pricing with each row's validity, edited by superusers in the
admin through one audited service.
"""

from datetime import UTC, datetime
from decimal import Decimal
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction
from django.urls import reverse

from billing.audit import Actor
from billing.models import AuditLog, ModelPrice, UnitPrice
from billing.price_table import (
    model_price_save,
    model_prices_seed,
    price_table_load,
)
from billing.pricing import SHIPPED_PRICES
from tests.factories import UserFactory, staff_with_role

pytestmark = pytest.mark.django_db

DEC_1 = datetime(2026, 12, 1, tzinfo=UTC)
NOV_1 = datetime(2026, 11, 1, tzinfo=UTC)
ADMIN = Actor.system()


def new_price(name="acme-ft", **fields) -> ModelPrice:
    return ModelPrice(model_name=name, match_pattern=f"(?i)^{name}$", **fields)


def test_migrations_seed_every_shipped_rule():
    table = price_table_load()

    assert [r.model_name for r in table.rules] == [r.model_name for r in SHIPPED_PRICES]
    for stored, shipped in zip(table.rules, SHIPPED_PRICES, strict=True):
        assert stored.pattern.pattern == shipped.pattern.pattern
        assert dict(stored.prices) == dict(shipped.prices)
        assert (stored.valid_from, stored.valid_to) == (None, None)
        assert stored.id is not None


def test_seeding_again_adds_only_missing_models_and_keeps_edits():
    gpt = ModelPrice.objects.get(model_name="gpt-4o")
    model_price_save(price=gpt, unit_prices={"input": Decimal("0.000003")}, actor=ADMIN)
    ModelPrice.objects.filter(model_name="o3-mini").delete()

    assert model_prices_seed(actor=ADMIN) == 1
    assert model_prices_seed(actor=ADMIN) == 0

    assert ModelPrice.objects.filter(model_name="o3-mini").exists()
    assert dict(price_table_load().price_for("gpt-4o", DEC_1).prices) == {
        "input": Decimal("0.000003")
    }
    seeded = AuditLog.objects.get(action="price.create")
    assert (seeded.tenant, seeded.after["model_name"]) == (None, "o3-mini")


def test_a_new_period_prices_usage_from_its_start():
    gpt = ModelPrice.objects.get(model_name="gpt-4o")
    gpt.valid_to = DEC_1
    model_price_save(
        price=gpt,
        unit_prices={u.usage_key: u.price for u in gpt.unit_prices.all()},
        actor=ADMIN,
    )
    later = model_price_save(
        price=new_price("gpt-4o", valid_from=DEC_1),
        unit_prices={"input": Decimal("0.000002"), "output": Decimal("0.000008")},
        actor=ADMIN,
    )

    table = price_table_load()
    assert table.price_for("gpt-4o", NOV_1).id == gpt.pk
    assert table.price_for("gpt-4o", DEC_1).id == later.pk
    assert table.price_for("GPT-4o", DEC_1).prices["output"] == Decimal("0.000008")


def test_a_change_is_audited_with_what_changed():
    price = model_price_save(
        price=new_price(), unit_prices={"input": Decimal("0.000001")}, actor=ADMIN
    )
    price.note = "negotiated"
    model_price_save(
        price=price,
        unit_prices={"input": Decimal("0.000001"), "output": Decimal("0.000004")},
        actor=ADMIN,
        note="output priced",
    )
    # Saving without a change writes nothing.
    model_price_save(
        price=price,
        unit_prices={"input": Decimal("0.000001"), "output": Decimal("0.000004")},
        actor=ADMIN,
    )

    created, changed = AuditLog.objects.filter(object_id=str(price.pk)).order_by("id")
    assert created.action == "price.create"
    assert created.after["prices"] == {"input": "0.000001"}
    assert changed.action == "price.change"
    assert changed.before == {"note": "", "prices": {"input": "0.000001"}}
    assert changed.after == {
        "note": "negotiated",
        "prices": {"input": "0.000001", "output": "0.000004"},
    }
    assert changed.note == "output priced"
    assert changed.tenant is None


@pytest.mark.parametrize(
    ("fields", "unit_prices", "error"),
    [
        ({"match_pattern": "(unclosed"}, {"input": "1"}, "match_pattern"),
        ({"valid_from": DEC_1, "valid_to": NOV_1}, {"input": "1"}, "valid_to"),
        ({}, {}, "No prices"),
        ({}, {"input": "-1"}, "Bad price"),
        ({}, {"total": "1", "input": "1"}, "A total price goes alone"),
        # The shipped gpt-4o row is valid since always: any period overlaps.
        ({"model_name": "gpt-4o", "valid_from": DEC_1}, {"input": "1"}, "Overlaps"),
    ],
)
def test_a_price_that_could_not_price_is_refused_and_nothing_is_stored(
    fields, unit_prices, error
):
    price = new_price()
    for name, value in fields.items():
        setattr(price, name, value)
    count = ModelPrice.objects.count()

    with pytest.raises(ValidationError, match=error) as refused:
        model_price_save(
            price=price,
            unit_prices={k: Decimal(v) for k, v in unit_prices.items()},
            actor=ADMIN,
        )

    if error.islower():  # a field name
        assert error in refused.value.message_dict
    assert ModelPrice.objects.count() == count
    assert not AuditLog.objects.filter(action__startswith="price.").exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="Postgres only")
def test_postgres_refuses_overlapping_periods_of_one_model():
    with pytest.raises(IntegrityError, match="no_overlap"), transaction.atomic():
        ModelPrice.objects.create(
            model_name="gpt-4o", match_pattern="^gpt-4o$", valid_from=DEC_1
        )


def test_a_unit_price_is_never_negative():
    price = ModelPrice.objects.get(model_name="gpt-4o")
    with pytest.raises(IntegrityError), transaction.atomic():
        UnitPrice.objects.create(model_price=price, usage_key="x", price=-1)


def test_the_web_role_saves_a_price_and_its_audit_row(as_app_role):
    as_app_role()

    price = model_price_save(
        price=new_price(), unit_prices={"input": Decimal("0.000001")}, actor=ADMIN
    )

    assert AuditLog.objects.get(object_id=str(price.pk)).tenant is None


def form_data(price: ModelPrice | None = None, **fields) -> dict:
    units = list(price.unit_prices.all()) if price else []
    data = {
        "model_name": price.model_name if price else "acme-ft",
        "match_pattern": price.match_pattern if price else "(?i)^acme-ft$",
        "valid_from_0": "",
        "valid_from_1": "",
        "valid_to_0": "",
        "valid_to_1": "",
        "note": "",
        "unit_prices-TOTAL_FORMS": str(len(units) + 2),
        "unit_prices-INITIAL_FORMS": str(len(units)),
        "unit_prices-MIN_NUM_FORMS": "0",
        "unit_prices-MAX_NUM_FORMS": "1000",
    }
    for n, unit in enumerate(units):
        data[f"unit_prices-{n}-id"] = str(unit.pk)
        data[f"unit_prices-{n}-model_price"] = str(price.pk)
        data[f"unit_prices-{n}-usage_key"] = unit.usage_key
        data[f"unit_prices-{n}-price"] = str(unit.price)
    data.update(fields)
    return data


def test_a_superuser_adds_a_price_in_the_admin_and_it_is_audited(client):
    client.force_login(UserFactory(is_superuser=True))

    response = client.post(
        reverse("admin:billing_modelprice_add"),
        form_data(
            **{
                "unit_prices-0-usage_key": "input",
                "unit_prices-0-price": "0.0000015",
                "unit_prices-1-usage_key": "output",
                "unit_prices-1-price": "0.000006",
            }
        ),
    )

    assert response.status_code == 302, response.context and [
        response.context["adminform"].form.errors,
        response.context["inline_admin_formsets"][0].formset.non_form_errors(),
    ]
    price = ModelPrice.objects.get(model_name="acme-ft")
    assert {u.usage_key: u.price for u in price.unit_prices.all()} == {
        "input": Decimal("0.0000015"),
        "output": Decimal("0.000006"),
    }
    audit = AuditLog.objects.get(action="price.create", object_id=str(price.pk))
    assert audit.actor.is_superuser
    listed = client.get(reverse("admin:billing_modelprice_changelist")).content
    assert b"input $1.50/M, output $6.00/M" in listed


def test_the_admin_shows_why_a_price_is_refused(client):
    client.force_login(UserFactory(is_superuser=True))
    gpt = ModelPrice.objects.get(model_name="gpt-4o")

    overlapping = client.post(
        reverse("admin:billing_modelprice_add"),
        form_data(
            gpt, model_name="gpt-4o", valid_from_0="2026-12-01", valid_from_1="00:00:00"
        ),
    )
    total_with_more = client.post(
        reverse("admin:billing_modelprice_change", args=[gpt.pk]),
        form_data(
            gpt,
            **{"unit_prices-5-usage_key": "total", "unit_prices-5-price": "1"},
        ),
    )

    assert overlapping.status_code == 200
    assert "Overlaps the prices of gpt-4o" in overlapping.content.decode()
    assert total_with_more.status_code == 200
    assert "A total price goes alone" in total_with_more.content.decode()
    assert ModelPrice.objects.filter(model_name="gpt-4o").count() == 1
    assert not AuditLog.objects.filter(action__startswith="price.").exists()


def test_staff_read_prices_but_only_superusers_change_them(client, tenant):
    client.force_login(staff_with_role(tenant, "admin"))
    gpt = ModelPrice.objects.get(model_name="gpt-4o")

    assert client.get(reverse("admin:billing_modelprice_changelist")).status_code == 200
    page = client.get(reverse("admin:billing_modelprice_change", args=[gpt.pk]))
    assert page.status_code == 200
    assert b'name="model_name"' not in page.content  # read-only
    assert client.get(reverse("admin:billing_modelprice_add")).status_code == 403
    posted = client.post(
        reverse("admin:billing_modelprice_change", args=[gpt.pk]),
        form_data(gpt, note="cheaper"),
    )
    assert posted.status_code == 403
    assert ModelPrice.objects.get(pk=gpt.pk).note != "cheaper"


def test_nobody_deletes_a_price(client):
    client.force_login(UserFactory(is_superuser=True))
    gpt = ModelPrice.objects.get(model_name="gpt-4o")

    response = client.post(
        reverse("admin:billing_modelprice_delete", args=[gpt.pk]), {"post": "yes"}
    )

    assert response.status_code == 403
    assert ModelPrice.objects.filter(pk=gpt.pk).exists()


def test_seed_prices_command_adds_what_is_missing():
    ModelPrice.objects.filter(model_name__in=["o3-mini", "gpt-4o"]).delete()
    out = StringIO()

    call_command("seed_prices", stdout=out)

    assert out.getvalue() == "2 model price(s) added from the shipped file.\n"
    assert AuditLog.objects.filter(action="price.create").count() == 2
