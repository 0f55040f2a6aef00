"""From a Stripe report to the traces it billed, and from a trace to its report."""

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from billing.models import StripeReport, UsageRecord
from billing.stripe_sink import reports_create
from tests.factories import ledger_write, trace_usage

pytestmark = pytest.mark.django_db

GPT = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]
LANGFUSE = ["acme-distilled", 10, 5, 0, "0.0020", "langfuse"]


@pytest.fixture
def report(tenant):
    at = timezone.now() - timedelta(days=1)
    ledger_write(
        tenant,
        trace_usage("trace-a", {"o1": GPT}, at=at),
        trace_usage("trace-b", {"o1": GPT, "o2": LANGFUSE}, at=at),
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
    client, superuser, report
):
    client.force_login(superuser)
    record = UsageRecord.objects.get(trace_id="trace-b")
    page = client.get(
        reverse("admin:billing_usagerecord_change", args=[record.pk])
    ).content.decode()
    assert report.identifier in page
    assert reverse("admin:billing_stripereport_change", args=[report.pk]) in page
    assert "gpt-4o (pattern" in page  # the price table's entry
    assert "Langfuse cost" in page  # priced by Langfuse, not by us
