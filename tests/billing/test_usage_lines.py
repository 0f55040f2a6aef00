"""The ledger's usage lines, kept in step with records and adjustments by triggers."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Count, Q, Sum

from billing.ledger import TraceUsage, ledger_merge
from billing.models import StripeReport, UsageAdjustment, UsageLine, UsageRecord
from billing.tenancy import tenant_context
from billing.usage_lines import adjustment_lines_sql, record_lines_sql

pytestmark = pytest.mark.django_db

AT = datetime(2026, 11, 20, 9, tzinfo=UTC)
GPT = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]
HAIKU = ["claude-3-5-haiku-20241022", 10, 5, 0, "0.0005", "price_table"]


def trace(trace_id, entries, **scopes):
    usage = TraceUsage(trace_id, AT, AT, **scopes)
    usage.entries = entries
    return usage


def merge(tenant, *traces):
    with tenant_context([tenant.pk]):
        return ledger_merge(tenant=tenant, traces={t.trace_id: t for t in traces})


def lines(**filters):
    return {
        (line.model, line.adjustment_id): line
        for line in UsageLine.objects.filter(**filters)
    }


def report(tenant):
    return StripeReport.objects.create(
        tenant=tenant,
        identifier=f"r-{StripeReport.objects.count()}",
        event_name="llm_cost",
        stripe_customer_id="cus_1",
        unit="cents",
        value=1,
        amount=Decimal("0.01"),
        day=AT.date(),
        timestamp=AT,
    )


def test_a_record_has_one_line_per_model_and_counts_its_trace_once(tenant):
    merge(tenant, trace("t1", {"o1": GPT, "o2": HAIKU, "o3": GPT}, agent_id="bot"))

    record = UsageRecord.objects.get()
    got = lines(usage_record=record)
    assert set(got) == {("gpt-4o", None), ("claude-3-5-haiku-20241022", None)}
    gpt = got["gpt-4o", None]
    assert (gpt.input_tokens, gpt.output_tokens, gpt.cached_tokens) == (2000, 200, 100)
    assert gpt.cost == Decimal("0.0200")
    assert (gpt.agent_id, gpt.trace_timestamp) == ("bot", record.trace_timestamp)
    assert sum(line.counts_trace for line in got.values()) == 1
    totals = UsageLine.objects.aggregate(cost=Sum("cost"), input=Sum("input_tokens"))
    assert (totals["cost"], totals["input"]) == (record.cost, record.input_tokens)


def test_a_record_without_usage_still_counts_its_trace(tenant):
    merge(tenant, trace("spans-only", {}))

    (line,) = UsageLine.objects.all()
    assert (line.model, line.counts_trace, line.cost) == ("", True, Decimal(0))


def test_a_pending_record_that_absorbs_news_gets_new_lines(tenant):
    merge(tenant, trace("t1", {"o1": GPT}))
    merge(tenant, trace("t1", {"o2": HAIKU}, epic_id="E1"))

    got = lines()
    assert set(got) == {("gpt-4o", None), ("claude-3-5-haiku-20241022", None)}
    assert {line.epic_id for line in got.values()} == {"E1"}


def test_reporting_leaves_the_lines_alone_and_skipping_removes_them(tenant):
    merge(tenant, trace("t1", {"o1": GPT}), trace("t2", {"o1": GPT}))
    before = set(UsageLine.objects.values_list("pk", flat=True))

    UsageRecord.objects.filter(trace_id="t1").update(
        status="reported", report=report(tenant)
    )
    assert set(UsageLine.objects.values_list("pk", flat=True)) == before

    broken = trace("t2", {})
    broken.problem = "malformed observation o2: no usage"
    merge(tenant, broken)
    assert UsageRecord.objects.get(trace_id="t2").status == "skipped"
    assert list(UsageLine.objects.values_list("usage_record__trace_id", flat=True)) == [
        "t1"
    ]


def test_a_late_change_adds_adjustment_lines_under_the_records_scopes(tenant):
    merge(tenant, trace("t1", {"o1": GPT}, project_id="web", user_id="u1"))
    UsageRecord.objects.update(status="reported", report=report(tenant))

    merge(tenant, trace("t1", {"o1": [*GPT[:4], "0.0150", "price_table"]}))

    adjustment = UsageAdjustment.objects.get()
    (line,) = UsageLine.objects.filter(adjustment=adjustment)
    assert (line.model, line.cost, line.counts_trace) == (
        "gpt-4o",
        Decimal("0.0050"),
        False,
    )
    assert (line.project_id, line.user_id) == ("web", "u1")
    assert UsageLine.objects.filter(counts_trace=True).count() == 1


def test_deleting_ledger_rows_deletes_their_lines(tenant):
    merge(tenant, trace("t1", {"o1": GPT}))
    UsageRecord.objects.all().delete()
    assert not UsageLine.objects.exists()


def test_the_set_based_fill_writes_what_the_triggers_wrote(tenant, other_tenant):
    merge(tenant, trace("t1", {"o1": GPT, "o2": HAIKU}), trace("t2", {}))
    merge(other_tenant, trace("t3", {"o1": GPT}, agent_id="x"))
    UsageRecord.objects.filter(trace_id="t1").update(
        status="reported", report=report(tenant)
    )
    merge(tenant, trace("t1", {"o3": HAIKU}))
    columns = [f.attname for f in UsageLine._meta.concrete_fields if f.name != "id"]
    by_triggers = set(UsageLine.objects.values_list(*columns))

    UsageLine.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(record_lines_sql(connection.vendor))
        cursor.execute(adjustment_lines_sql(connection.vendor))

    assert set(UsageLine.objects.values_list(*columns)) == by_triggers
    assert UsageLine.objects.count() == len(by_triggers) == 5
    assert UsageLine.objects.aggregate(
        adjustments=Count("pk", filter=Q(adjustment__isnull=False))
    ) == {"adjustments": 1}


def test_the_app_role_writes_lines_only_within_its_tenant(tenant, as_app_role):
    as_app_role()
    merge(tenant, trace("t1", {"o1": GPT}))

    assert not UsageLine.objects.exists()  # no tenant context: RLS hides them
    with tenant_context([tenant.pk]):
        assert UsageLine.objects.get().tenant_id == tenant.pk


def test_a_line_per_entry_and_model_is_enforced(tenant):
    merge(tenant, trace("t1", {"o1": GPT}))
    line = UsageLine.objects.get()
    line.pk = None
    with pytest.raises(Exception, match="usage_line_unique_record_model"):
        line.save()
