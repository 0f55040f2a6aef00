"""
Incidents in a real browser (Chromium via Playwright).

An operator of one tenant finds Incidents first in the admin's Cost
anomalies app, resolves an incident through the intermediate page and reads
on the incident's page that every member anomaly was resolved with it; the
incident list fits a 1400 px screen. Data comes from the real detection
write path (``anomalies_record``), which groups the findings into incidents,
so every audit row is one the services wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, time, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from playwright.sync_api import Page, expect
from pytest_django.live_server_helper import LiveServer

from anomalies.detectors import Finding
from anomalies.models import AnomalyStatus, CostAnomaly, Incident, ResolutionReason
from anomalies.services import anomalies_record
from billing.audit import Actor
from billing.models import AuditLog, CostSummary, Membership, Tenant
from tests.factories import (
    TenantFactory,
    UserFactory,
    staff_with_role,
)

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/anomalies/incident/"
HISTORY_DAYS = 28
TENANT_A = "Acme Robotics"
TENANT_B = "Globex Analytics"
NOTE = "Load test traffic from the staging agents, not customer usage."


def anomaly_day() -> datetime:
    """Yesterday, 00:00 UTC: the last complete day, as detection would flag it."""
    yesterday = timezone.now().astimezone(UTC).date() - timedelta(days=1)
    return datetime.combine(yesterday, time.min, tzinfo=UTC)


# A scope: (scope type, project id, scope id).
Scope = tuple[str, str, str]


def daily_cost(
    tenant: Tenant, scope: Scope, day: datetime, cost: Decimal
) -> CostSummary:
    scope_type, project, scope_id = scope
    return CostSummary.objects.create(
        tenant=tenant,
        scope_type=scope_type,
        project_id=project,
        scope_id=scope_id,
        period_start=day,
        period_end=day + timedelta(days=1),
        trace_count=10,
        cost=cost,
        model_breakdown={"gpt-4o": {"cost": str(cost), "input": 1}},
        computed_at=timezone.now(),
    )


def detect(tenant: Tenant, spikes: dict[Scope, Decimal]) -> None:
    """
    Give each scope 28 days of a steady $2.00 then its spike on the last
    day, and record the spikes through the detection service: a flagged
    project and its flagged agents become one incident.
    """
    day = anomaly_day()
    findings = []
    for scope, cost in spikes.items():
        for age in range(1, HISTORY_DAYS):
            daily_cost(tenant, scope, day - timedelta(days=age), Decimal(2))
        spike = daily_cost(tenant, scope, day, cost)
        findings.append(
            Finding(
                anomaly_type="spike_vs_baseline",
                tenant_id=tenant.pk,
                scope_type=scope[0],
                project_id=scope[1],
                scope_id=scope[2],
                summary_id=spike.pk,
                observed=spike.cost,
                expected=Decimal("2.00"),
            )
        )
    anomalies_record(day=day.date(), findings=findings, actor=Actor.job("detect"))


@pytest.fixture
def operator_incidents() -> tuple[AbstractBaseUser, Incident, Incident]:
    """
    An operator of tenant A, A's incident of project "web" and two of its
    agents (the costliest), and one of a single agent in "search"; tenant
    B's incident, which A's operator must never see.
    """
    tenant = TenantFactory(name=TENANT_A)
    detect(
        tenant,
        {
            ("project", "", "web"): Decimal("72.00"),
            ("agent", "web", "support-bot"): Decimal("40.00"),
            ("agent", "web", "research-bot"): Decimal("30.00"),
            ("agent", "search", "ingest-bot"): Decimal("20.00"),
        },
    )
    detect(
        TenantFactory(name=TENANT_B),
        {("agent", "web", "billing-bot"): Decimal("90.00")},
    )
    web = Incident.objects.filter(tenant=tenant, anomalies__scope_id="web")[0]
    search = Incident.objects.filter(tenant=tenant).exclude(pk=web.pk).get()
    return staff_with_role(tenant, Membership.Role.OPERATOR), web, search


def test_operator_resolves_an_incident_and_sees_its_members_resolved(
    page: Page,
    live_server: LiveServer,
    login: Callable[[AbstractBaseUser], None],
    operator_incidents: tuple[AbstractBaseUser, Incident, Incident],
) -> None:
    operator, web, search = operator_incidents
    assert web.anomaly_count == 3

    login(operator)
    # Incidents come first in the app, before the anomalies they group.
    models = page.locator(".app-anomalies tr[class^=model-]")
    expect(models.first).to_have_class("model-incident")
    expect(models.nth(1)).to_have_class("model-costanomaly")
    models.first.get_by_role("link", name="Incidents").click()
    page.wait_for_url(f"**{CHANGELIST}")

    # The review queue: the costliest incident first, nothing of tenant B.
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("$70.00")  # the project: $72 vs $2
    expect(rows.first.locator("td.field-members")).to_have_text("3")
    expect(page.locator("body")).not_to_contain_text(TENANT_B)
    expect(page.locator("body")).not_to_contain_text("billing-bot")

    page.check(f"input.action-select[value='{web.pk}']")
    page.select_option("select[name=action]", label="Resolve selected incidents")
    page.get_by_role("button", name="Go").click()

    # The intermediate page: the incident, how many members change, the form.
    expect(page.locator("body.review-confirmation")).to_be_visible()
    changeable = page.locator("#review-changeable tbody tr")
    expect(changeable).to_have_count(1)
    expect(changeable).to_contain_text("3 of 3")
    page.select_option("select[name=reason]", label="False positive")
    page.fill("textarea[name=note]", NOTE)
    page.get_by_role("button", name="Resolve 1 incident").click()

    expect(page.locator("ul.messagelist li.success")).to_have_text(
        "Resolved 1 incident and 3 anomalies in it (False positive)."
    )
    for member in CostAnomaly.objects.filter(incident=web):
        assert member.status == AnomalyStatus.RESOLVED
        assert member.resolution_reason == ResolutionReason.FALSE_POSITIVE
        assert member.resolution_note == NOTE
        assert member.resolved_by_id == operator.pk
    assert set(search.anomalies.values_list("status", flat=True)) == {"open"}

    # The incident's page: every member resolved, and the review in its
    # timeline; the only button left reopens it.
    page.locator("#result_list").get_by_role("link", name=web.title).click()
    members = page.locator("#incident-members tbody tr")
    expect(members).to_have_count(3)
    for n in range(3):
        expect(members.nth(n).locator("td.status")).to_have_text("Resolved")
    timeline = page.locator("#audit-timeline li")
    expect(timeline).to_have_count(
        AuditLog.objects.filter(
            object_type="anomalies.incident", object_id=str(web.pk)
        ).count()
    )
    expect(timeline.filter(has_text=NOTE)).to_contain_text("open → resolved")
    expect(page.locator("a.review-button")).to_have_count(1)
    expect(page.locator("a.review-reopen")).to_be_visible()

    # A member's page names its incident.
    members.first.locator("a").click()
    expect(page.locator("#anomaly-incident")).to_contain_text(
        f"Part of incident: {web.title} (3 anomalies)"
    )


def test_the_incident_list_fits_a_1400_pixel_screen(
    page: Page,
    live_server: LiveServer,
    login: Callable[[AbstractBaseUser], None],
    operator_incidents: tuple[AbstractBaseUser, Incident, Incident],
) -> None:
    # A superuser sees the tenant column too: the widest list there is.
    superuser = UserFactory(is_superuser=True)

    login(superuser)
    page.goto(f"{live_server.url}{CHANGELIST}")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)

    widths = page.evaluate(
        """() => {
            const table = document.querySelector('#result_list');
            return {
                table: table.scrollWidth,
                area: table.closest('.results').clientWidth,
                page: document.documentElement.scrollWidth,
                window: window.innerWidth,
            };
        }"""
    )
    assert widths["table"] <= widths["area"], widths
    assert widths["page"] <= widths["window"], widths
