"""The reconciliations in the admin, and the index's warning while a day drifts."""

from datetime import date
from decimal import Decimal

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import Membership, StripeReconciliation
from tests.factories import staff_with_role

pytestmark = pytest.mark.django_db

INDEX = reverse("admin:index")
CHANGELIST = reverse("admin:billing_stripereconciliation_changelist")


def reconciliation(tenant, day, status, **details):
    return StripeReconciliation.objects.create(
        tenant=tenant,
        day=day,
        status=status,
        checked_at=timezone.now(),
        ledger_amount=Decimal(100),
        unreported_amount=Decimal(0),
        reported_amount=Decimal(100),
        sent_value=100,
        stripe_value=100 if status == "match" else 93,
        details=details,
    )


def test_the_index_warns_while_a_day_of_the_user_s_tenants_drifts(
    client, tenant, other_tenant
):
    client.force_login(staff_with_role(tenant, Membership.Role.VIEWER))
    reconciliation(tenant, date(2026, 11, 28), "match")
    reconciliation(other_tenant, date(2026, 11, 28), "drift", missing=["lf-x"])
    assert 'id="stripe-drift"' not in client.get(INDEX).content.decode()

    reconciliation(tenant, date(2026, 11, 27), "drift", missing=["lf-1-20261127-a"])
    page = client.get(INDEX).content.decode()
    assert "1 tenant-day drifts from Stripe" in page
    assert f"{CHANGELIST}?status__exact=drift" in page


def test_the_list_shows_the_user_s_tenant_days_with_their_drift(
    client, tenant, other_tenant
):
    client.force_login(staff_with_role(tenant, Membership.Role.VIEWER))
    mine = reconciliation(tenant, date(2026, 11, 27), "drift", missing=["lf-1-a"])
    theirs = reconciliation(other_tenant, date(2026, 11, 27), "drift")
    response = client.get(CHANGELIST, {"status__exact": "drift"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [mine]
    assert "-7" in response.content.decode()  # Stripe - sent
    detail = reverse("admin:billing_stripereconciliation_change", args=[theirs.pk])
    assert client.get(detail).status_code == 302  # not theirs to see
