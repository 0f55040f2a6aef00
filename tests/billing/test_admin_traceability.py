"""From a Stripe report to the traces it billed, and from a trace to its report."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import ModelPrice, StripeReport, UsageRecord
from billing.stripe_sink import reports_create
from tests.factories import ledger_write, trace_usage

pytestmark = pytest.mark.django_db

LANGFUSE = ["acme-distilled", 10, 5, 0, "0.0020", "langfuse"]
# Written before the price table was stored: no rule id.
OLD_GPT = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]


@pytest.fixture
def gpt_price():
    return ModelPrice.objects.get(model_name="gpt-4o")


@pytest.fixture
def report(tenant, gpt_price):
    at = timezone.now() - timedelta(days=1)
    usage = {"input": 1000, "output": 100, "cache_read_input_tokens": 50}
    gpt = [*OLD_GPT, usage, gpt_price.pk, at.isoformat()]
    ledger_write(
        tenant,
        trace_usage("trace-a", {"o1": gpt, "o2": OLD_GPT}, at=at),
        trace_usage("trace-b", {"o1": gpt, "o2": LANGFUSE}, at=at),
    )
    assert reports_create(tenant=tenant).reports == 1
    return StripeReport.objects.get()


def test_a_report_lists_the_ledger_rows_and_traces_it_carried(
    client, superuser, report
):
    client.force_login(superuser)
    page = client.get(
        reverse("admin:billing_stripereport_change", args=[report.pk])
    ).content.decode()
    for record in UsageRecord.objects.all():
        assert record.trace_id in page
        assert reverse("admin:billing_usagerecord_change", args=[record.pk]) in page
    # The "all rows" link of a large report: the records it carried.
    listed = client.get(
        reverse("admin:billing_usagerecord_changelist"),
        {"report__id__exact": report.pk},
    )
    assert listed.status_code == 200
    assert len(listed.context["cl"].result_list) == 2


def test_a_record_shows_its_report_and_the_price_rule_of_each_observation(
    client, superuser, report, gpt_price
):
    client.force_login(superuser)
    record = UsageRecord.objects.get(trace_id="trace-b")
    page = client.get(
        reverse("admin:billing_usagerecord_change", args=[record.pk])
    ).content.decode()
    assert report.identifier in page
    assert reverse("admin:billing_stripereport_change", args=[report.pk]) in page
    # The price table's row that priced it, linked.
    assert reverse("admin:billing_modelprice_change", args=[gpt_price.pk]) in page
    assert f"gpt-4o (pattern {gpt_price.match_pattern})" in page
    assert "Langfuse cost" in page  # priced by Langfuse, not by us

    older = UsageRecord.objects.get(trace_id="trace-a")
    page = client.get(
        reverse("admin:billing_usagerecord_change", args=[older.pk])
    ).content.decode()
    assert "Our price table" in page  # an entry from before rules were stored
