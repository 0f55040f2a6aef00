"""
Every billing changelist runs as many queries for 100 rows as for 10:
related rows come in the list's own query, never one
lookup per row. Checked as a superuser and as a staff user of one tenant.
"""

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.models import (
    AnalyticsRun,
    AuditLog,
    CostSummary,
    Membership,
    StripeReport,
    SyncCursor,
    SyncRun,
    Tenant,
    UsageAdjustment,
    UsageRecord,
)
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

User = get_user_model()

AT = datetime(2026, 11, 20, 12, tzinfo=UTC)

# Builds rows number start..start+count-1 of a model for ``tenant``; returns
# the tenants it had to create (a tenant and its cursor are one per tenant),
# which the staff user then joins so that every row is on their list.
Builder = Callable[[Tenant, int, int], list[Tenant]]


def _tenants(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    return [TenantFactory() for _ in range(count)]


def _users(start: int, count: int) -> list:
    # Without a password: hashing one takes longer than the whole list.
    return User.objects.bulk_create(
        User(username=f"member-{i}") for i in range(start, start + count)
    )


def _memberships(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    Membership.objects.bulk_create(
        Membership(tenant=tenant, user=user) for user in _users(start, count)
    )
    return []


def _audit_log(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    AuditLog.objects.bulk_create(
        AuditLog(
            tenant=tenant,
            actor=actor,
            actor_kind=AuditLog.ActorKind.STAFF,
            action="tenant.update",
            object_type="billing.tenant",
            object_id=str(tenant.pk),
            note=f"change {actor.pk}",
        )
        for actor in _users(start, count)
    )
    return []


def _record(tenant: Tenant, i: int) -> UsageRecord:
    return UsageRecord(
        tenant=tenant,
        trace_id=f"trace-{i}",
        trace_timestamp=AT + timedelta(minutes=i),
        last_activity_at=AT + timedelta(minutes=i),
        cost=Decimal("0.01"),
        content_hash=f"h{i}",
    )


def _usage_records(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    UsageRecord.objects.bulk_create(
        _record(tenant, i) for i in range(start, start + count)
    )
    return []


def _usage_adjustments(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    records = UsageRecord.objects.bulk_create(
        _record(tenant, i) for i in range(start, start + count)
    )
    UsageAdjustment.objects.bulk_create(
        UsageAdjustment(
            tenant=tenant,
            usage_record=record,
            trace_timestamp=record.trace_timestamp,
            content_hash=f"a{record.trace_id}",
            cost=Decimal("0.001"),
        )
        for record in records
    )
    return []


def _stripe_reports(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    StripeReport.objects.bulk_create(
        StripeReport(
            tenant=tenant,
            identifier=f"lf-{tenant.pk}-{i}",
            event_name="llm_usage",
            stripe_customer_id="cus_1",
            unit="micro_usd",
            value=i,
            amount=i,
            day=date(2026, 11, 20),
            timestamp=AT,
            status=StripeReport.Status.FAILED,
        )
        for i in range(start, start + count)
    )
    return []


def _sync_runs(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    SyncRun.objects.bulk_create(
        SyncRun(tenant=tenant, kind="sync", started_at=AT + timedelta(minutes=i))
        for i in range(start, start + count)
    )
    return []


def _sync_cursors(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    tenants = [TenantFactory() for _ in range(count)]
    SyncCursor.objects.bulk_create(SyncCursor(tenant=t, watermark=AT) for t in tenants)
    return tenants


def _cost_summaries(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    CostSummary.objects.bulk_create(
        CostSummary(
            tenant=tenant,
            scope_type="project",
            scope_id=f"p{i}",
            period_start=AT,
            period_end=AT + timedelta(days=1),
            computed_at=AT,
        )
        for i in range(start, start + count)
    )
    return []


def _analytics_runs(tenant: Tenant, start: int, count: int) -> list[Tenant]:
    AnalyticsRun.objects.bulk_create(
        AnalyticsRun(
            kind="rollup",
            tenant=tenant,
            period_start=AT,
            period_end=AT + timedelta(days=1),
            started_at=AT + timedelta(minutes=i),
        )
        for i in range(start, start + count)
    )
    return []


BUILDERS: dict[str, Builder] = {
    "tenant": _tenants,
    "membership": _memberships,
    "auditlog": _audit_log,
    "usagerecord": _usage_records,
    "usageadjustment": _usage_adjustments,
    "stripereport": _stripe_reports,
    "syncrun": _sync_runs,
    "synccursor": _sync_cursors,
    "costsummary": _cost_summaries,
    "analyticsrun": _analytics_runs,
}
# Analytics runs span tenants: only superusers see them (test_admin_roles).
SUPERUSER_ONLY = {"analyticsrun"}


def _staff_admin_of(tenant: Tenant):
    user = UserFactory()
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="billing")
    )
    # The role that is offered the most actions, so their checks are counted.
    MembershipFactory(user=user, tenant=tenant, role=Membership.Role.ADMIN)
    return user


def _queries(client, url: str, rows: int) -> list[str]:
    with CaptureQueriesContext(connection) as context:
        response = client.get(url)
    assert response.status_code == 200
    assert response.context["cl"].result_count >= rows
    return [query["sql"] for query in context.captured_queries]


@pytest.mark.parametrize(
    ("model", "as_superuser"),
    [
        pytest.param(model, as_superuser, id=f"{model}-{who}")
        for model in BUILDERS
        for as_superuser, who in [(True, "superuser"), (False, "staff")]
        if as_superuser or model not in SUPERUSER_ONLY
    ],
)
def test_a_changelist_costs_the_same_queries_for_10_and_100_rows(
    client, tenant, model, as_superuser
):
    user = UserFactory(is_superuser=True) if as_superuser else _staff_admin_of(tenant)
    build = BUILDERS[model]
    url = reverse(f"admin:billing_{model}_changelist")
    client.force_login(user)

    def grow(start: int, count: int) -> None:
        for joined in build(tenant, start, count):
            if not as_superuser:
                MembershipFactory(user=user, tenant=joined)

    grow(0, 10)
    ten = _queries(client, url, 10)
    grow(10, 90)
    hundred = _queries(client, url, 100)

    assert len(hundred) == len(ten), "\n".join(hundred)
