"""
Cost over time (issue 12, item 6): the SVG chart from plain numbers, the
selectors over the scope usage the ledger's triggers keep, and the admin page
with its CSV, scoped to the user's tenants.
"""

import csv
import io
import xml.etree.ElementTree as ET
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser

import pytest
import time_machine
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from billing.charts import daily_cost_chart, usd
from billing.cost_history import (
    Dimension,
    cost_breakdown_list,
    cost_daily_list,
    cost_period,
    cost_totals,
)
from billing.models import CostSummary
from tests.factories import MembershipFactory, UserFactory, ledger_write, trace_usage

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"
DAY = date(2026, 11, 20)
# The page's "today" in the page tests: the last 30 days end on it.
NOW = datetime(2026, 11, 25, 12, tzinfo=UTC)
TODAY = NOW.date()
URL = "admin:billing_costsummary_over_time"


# --- the chart ----------------------------------------------------------------


def parse(svg) -> ET.Element:
    return ET.fromstring(str(svg))  # noqa: S314 (our own SVG, under test)


def bars(root) -> dict[str, ET.Element]:
    """{date: bar rect}"""
    return {
        group.get("data-date"): next(
            r for r in group.iter(f"{SVG}rect") if "bar" in r.get("class").split()
        )
        for group in root.iter(f"{SVG}g")
        if group.get("class") == "day"
    }


def text_of(root, css_class) -> str:
    return next(t for t in root.iter(f"{SVG}text") if t.get("class") == css_class).text


def points(*costs, start=DAY):
    return [(start + timedelta(days=i), Decimal(c)) for i, c in enumerate(costs)]


def test_bar_heights_are_proportional_to_the_costs():
    root = parse(daily_cost_chart(points("10", "20", "5", "0", "12.5")))

    heights = {day: float(rect.get("height")) for day, rect in bars(root).items()}
    tallest = max(heights.values())
    assert tallest > 100
    costs = dict(points("10", "20", "5", "0", "12.5"))
    for day, height in heights.items():
        expected = tallest * float(costs[date.fromisoformat(day)]) / 20
        assert height == pytest.approx(expected, abs=0.01)
    # Bars stand on one baseline.
    bottoms = {
        round(float(r.get("y")) + float(r.get("height")), 2)
        for r in bars(root).values()
    }
    assert len(bottoms) == 1


def test_labels_give_the_peak_as_money_and_the_first_and_last_dates():
    root = parse(daily_cost_chart(points("1234.5678", "1", "2")))

    assert text_of(root, "y-max") == "$1,234.57"
    assert text_of(root, "x-first") == "2026-11-20"
    assert text_of(root, "x-last") == "2026-11-22"
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert titles == [
        "2026-11-20: $1,234.57",
        "2026-11-21: $1.00",
        "2026-11-22: $2.00",
    ]
    assert root.get("role") == "img"
    assert root.get("aria-label") == (
        "Daily cost: 3 days from 2026-11-20 to 2026-11-22, total $1,237.57, "
        "highest $1,234.57 on 2026-11-20"
    )


def test_the_marked_day_has_its_own_class_and_label():
    root = parse(daily_cost_chart(points("3", "7", "1"), marked=date(2026, 11, 21)))

    marked = {day for day, r in bars(root).items() if "marked" in r.get("class")}
    assert marked == {"2026-11-21"}
    assert bars(root)["2026-11-20"].get("fill") != bars(root)["2026-11-21"].get("fill")
    assert text_of(root, "marked-label") == "2026-11-21: $7.00"
    assert "marked 2026-11-21" in root.get("aria-label")


def test_no_days_draws_an_empty_chart():
    root = parse(daily_cost_chart([]))

    assert bars(root) == {}
    assert root.get("role") == "img"
    assert root.get("aria-label") == "Daily cost: no data"


def test_days_without_cost_draw_flat_bars_and_still_have_titles():
    root = parse(daily_cost_chart(points("0", "0"), marked=DAY))

    assert [float(r.get("height")) for r in bars(root).values()] == [0, 0]
    assert text_of(root, "y-max") == "$0.00"
    assert len(list(root.iter(f"{SVG}title"))) == 2


def test_every_text_is_escaped():
    hostile = '<script>alert(1)</script>" onload="x'
    svg = str(daily_cost_chart(points("1"), label=hostile))

    assert "<script" not in svg
    assert 'onload="x' not in svg
    assert parse(svg).get("aria-label").startswith(hostile)


def test_money_is_shown_as_money():
    assert usd(Decimal("1234.5678")) == "$1,234.57"
    assert usd(Decimal("0.0050000000")) == "$0.01"
    assert usd(Decimal("-2.5")) == "-$2.50"


# --- the selectors --------------------------------------------------------------

GPT = ["gpt-4o", 1000, 100, 50, "{cost}", "price_table"]
HAIKU = ["claude-3-5-haiku-20241022", 10, 5, 0, "{cost}", "price_table"]


def entry(model, cost):
    return [model[0], *model[1:4], cost, model[5]]


trace, merge = trace_usage, ledger_write


def at(day, hour=9):
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def test_daily_costs_zero_fill_and_count_each_trace_once(tenant, other_tenant):
    merge(
        tenant,
        trace(
            "t1",
            {"o1": entry(GPT, "1.50"), "o2": entry(HAIKU, "0.25")},
            at=at(DAY),
            project_id="web",
            agent_id="bot",
            epic_id="E1",
            user_id="u1",
        ),
        trace("t2", {"o1": entry(GPT, "2")}, at=at(DAY, 23), project_id="web"),
        trace(
            "t3",
            {"o1": entry(GPT, "4")},
            at=at(DAY + timedelta(days=2)),
            project_id="api",
        ),
        # Outside the period, and another tenant's: not counted.
        trace(
            "t4",
            {"o1": entry(GPT, "100")},
            at=at(DAY - timedelta(days=1)),
            project_id="web",
        ),
    )
    merge(
        other_tenant, trace("x", {"o1": entry(GPT, "50")}, at=at(DAY), project_id="web")
    )

    daily = cost_daily_list(
        tenant_ids=[tenant.pk], start=DAY, end=DAY + timedelta(days=3)
    )

    assert [(d.day, d.cost, d.traces) for d in daily] == [
        (DAY, Decimal("3.75"), 2),
        (DAY + timedelta(days=1), Decimal(0), 0),
        (DAY + timedelta(days=2), Decimal(4), 1),
        (DAY + timedelta(days=3), Decimal(0), 0),
    ]
    totals = cost_totals(daily=daily)
    assert (totals.cost, totals.traces, totals.days) == (Decimal("7.75"), 3, 4)
    assert totals.average_per_day == Decimal("1.9375")
    assert totals.peak.day == DAY + timedelta(days=2)

    both = cost_daily_list(tenant_ids=[tenant.pk, other_tenant.pk], start=DAY, end=DAY)
    assert both[0].cost == Decimal("53.75")


def test_no_usage_gives_zero_days_and_no_peak(tenant):
    daily = cost_daily_list(tenant_ids=[tenant.pk], start=DAY, end=DAY)
    assert [(d.cost, d.traces) for d in daily] == [(Decimal(0), 0)]
    assert cost_totals(daily=daily).peak is None
    breakdown = cost_breakdown_list(
        tenant_ids=[tenant.pk], start=DAY, end=DAY, dimension=Dimension.PROJECT
    )
    assert (breakdown.rows, breakdown.other, breakdown.cost) == ([], None, 0)


def test_the_period_is_the_last_days_up_to_today():
    assert cost_period(days=30, end=TODAY) == (TODAY - timedelta(days=29), TODAY)
    with time_machine.travel(NOW, tick=False):
        assert cost_period(days=1) == (TODAY, TODAY)


def test_breakdown_lists_the_top_rows_and_sums_the_rest(tenant):
    costs = {"a": "5", "b": "3", "c": "1", "d": "0.5"}
    merge(
        tenant,
        *[
            trace(f"t-{p}-{i}", {"o1": entry(GPT, cost)}, at=at(DAY), project_id=p)
            for p, cost in costs.items()
            for i in range(2)
        ],
    )

    breakdown = cost_breakdown_list(
        tenant_ids=[tenant.pk], start=DAY, end=DAY, dimension=Dimension.PROJECT, top=2
    )

    assert [(r.name, r.cost, r.traces) for r in breakdown.rows] == [
        ("a", Decimal(10), 2),
        ("b", Decimal(6), 2),
    ]
    assert breakdown.other_count == 2
    assert (breakdown.other.cost, breakdown.other.traces) == (Decimal(3), 4)
    assert (breakdown.cost, breakdown.traces) == (Decimal(19), 8)
    # The project breakdown adds up to the daily totals.
    daily = cost_daily_list(tenant_ids=[tenant.pk], start=DAY, end=DAY)
    assert cost_totals(daily=daily).cost == breakdown.cost


def test_breakdown_by_model_agent_and_user(tenant, other_tenant):
    merge(
        tenant,
        trace(
            "t1",
            {"o1": entry(GPT, "2"), "o2": entry(HAIKU, "1")},
            at=at(DAY),
            project_id="web",
            agent_id="bot",
            user_id="u1",
        ),
        trace(
            "t2", {"o1": entry(GPT, "4")}, at=at(DAY), project_id="api", agent_id="bot"
        ),
        # A trace without usage: a trace of its scopes, no model of theirs.
        trace("t3", {}, at=at(DAY), project_id="web", user_id="u2"),
    )
    merge(
        other_tenant, trace("x", {"o1": entry(GPT, "9")}, at=at(DAY), project_id="web")
    )

    def listed(dimension, tenant_ids=(tenant.pk,)):
        breakdown = cost_breakdown_list(
            tenant_ids=tenant_ids, start=DAY, end=DAY, dimension=dimension
        )
        return [
            (r.tenant_id, r.project_id, r.name, r.cost, r.traces)
            for r in breakdown.rows
        ]

    # A trace that used two models counts under both.
    assert listed(Dimension.MODEL) == [
        (None, "", "gpt-4o", Decimal(6), 2),
        (None, "", "claude-3-5-haiku-20241022", Decimal(1), 1),
    ]
    # Agents are scoped within their project.
    assert listed(Dimension.AGENT) == [
        (tenant.pk, "api", "bot", Decimal(4), 1),
        (tenant.pk, "web", "bot", Decimal(3), 1),
    ]
    assert listed(Dimension.USER) == [
        (tenant.pk, "", "u1", Decimal(3), 1),
        (tenant.pk, "", "u2", Decimal(0), 1),
    ]
    # Two tenants' "web" projects are two rows; models are shared.
    both = (tenant.pk, other_tenant.pk)
    assert listed(Dimension.PROJECT, both) == [
        (other_tenant.pk, "", "web", Decimal(9), 1),
        (tenant.pk, "", "api", Decimal(4), 1),
        (tenant.pk, "", "web", Decimal(3), 2),
    ]
    assert listed(Dimension.MODEL, both)[0] == (None, "", "gpt-4o", Decimal(15), 3)


# --- the page --------------------------------------------------------------------


@pytest.fixture
def frozen():
    with time_machine.travel(NOW, tick=False):
        yield


@pytest.fixture
def usage(tenant, other_tenant):
    """Two tenants' usage in the last 30 days; the other's is costlier."""
    merge(
        tenant,
        trace(
            "t1",
            {"o1": entry(GPT, "1234.5678")},
            at=at(TODAY - timedelta(days=2)),
            project_id="web",
            user_id='=HYPERLINK("http://evil")',
        ),
        trace("t2", {"o1": entry(HAIKU, "0.005")}, at=at(TODAY), project_id="api"),
        trace(
            "t3",
            {"o1": entry(GPT, "7")},
            at=at(TODAY - timedelta(days=60)),
            project_id="old",
        ),
    )
    merge(
        other_tenant,
        trace(
            "x1",
            {"o1": entry(GPT, "99")},
            at=at(TODAY - timedelta(days=1)),
            project_id="secret-project",
        ),
    )
    return tenant, other_tenant


@pytest.fixture
def member():
    def make(tenant, role):
        user = UserFactory()
        user.user_permissions.add(
            *Permission.objects.filter(codename__in=["view_costsummary", "view_tenant"])
        )
        MembershipFactory(user=user, tenant=tenant, role=role)
        return user

    return make


class Tables(HTMLParser):
    """The text of each cell of each table with an id, by table id."""

    def __init__(self, html):
        super().__init__()
        self.tables, self._table, self._cell = {}, None, None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def get(client, **params):
    return client.get(reverse(URL), params)


def csv_of(response) -> list[list[str]]:
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    text = b"".join(response.streaming_content).decode()
    return list(csv.reader(io.StringIO(text)))


def as_csv(cell: str) -> str:
    """A page cell as its CSV cell: money and counts without $ and commas."""
    return cell.replace("$", "").replace(",", "").removesuffix("%")


def test_superuser_sees_every_tenant(client, superuser, usage, frozen):
    tenant, other = usage
    client.force_login(superuser)

    response = get(client)

    assert response.status_code == 200
    html = response.content.decode()
    assert tenant.name in html
    assert other.name in html
    assert response.context["totals"]["cost"] == "$1,333.57"
    assert 'role="img"' in html
    daily = Tables(html).tables["cost-daily-table"]
    assert len(daily) == 31  # header and 30 days
    assert daily[1][0] == (TODAY - timedelta(days=29)).isoformat()
    assert daily[-1] == [TODAY.isoformat(), "$0.01", "1"]


@pytest.mark.parametrize("role", ["viewer", "operator"])
def test_staff_see_only_their_tenant(client, usage, member, role, frozen):
    tenant, other = usage
    client.force_login(member(tenant, role))

    for params in ({}, {"tenant": tenant.pk}):
        response = get(client, **params)
        assert response.status_code == 200
        html = response.content.decode()
        assert response.context["totals"]["cost"] == "$1,234.57"
        assert other.name not in html
        assert "secret-project" not in html
        assert "$99.00" not in html

    assert get(client, tenant=other.pk).status_code == 404
    assert get(client, tenant="x").status_code == 404
    assert get(client, tenant="\u00b2").status_code == 404  # a digit to isdigit()
    assert get(client, tenant=other.pk, format="csv").status_code == 404
    breakdown = csv_of(get(client, format="csv", table="breakdown"))
    assert "secret-project" not in str(breakdown)
    assert other.name not in str(breakdown)


def test_staff_without_tenants_see_no_costs(client, usage, frozen):
    user = UserFactory()
    user.user_permissions.add(Permission.objects.get(codename="view_costsummary"))
    client.force_login(user)

    response = get(client)

    assert response.status_code == 200
    assert response.context["totals"]["cost"] == "$0.00"
    assert response.context["tenant_choices"] == []
    assert "secret-project" not in response.content.decode()
    assert get(client, tenant=usage[0].pk).status_code == 404


def test_without_the_view_permission_there_is_no_page(client, tenant, staff_user):
    MembershipFactory(user=staff_user, tenant=tenant, role="operator")
    client.force_login(staff_user)
    assert get(client).status_code == 403


def test_the_period_and_breakdown_are_chosen(client, superuser, usage, frozen):
    client.force_login(superuser)

    response = get(client, days=90, by="project")
    assert response.context["totals"]["cost"] == "$1,340.57"  # "old" is in
    assert len(Tables(response.content.decode()).tables["cost-daily-table"]) == 91

    # An unknown choice shows the default, and says so.
    response = get(client, days=7, by="nonsense")
    assert (response.context["days"], response.context["dimension"]) == (
        30,
        "project",
    )


@pytest.mark.parametrize("by", ["project", "agent", "model", "user"])
@pytest.mark.parametrize("scope", ["one", "all"])
def test_the_csv_is_what_the_page_shows(client, member, usage, frozen, by, scope):
    tenant, _ = usage
    client.force_login(member(tenant, "viewer"))
    params = {"days": 30, "by": by}
    if scope == "one":
        params["tenant"] = tenant.pk

    tables = Tables(get(client, **params).content.decode()).tables

    for table, table_id in [
        ("daily", "cost-daily-table"),
        ("breakdown", "cost-breakdown-table"),
    ]:
        rows = csv_of(get(client, format="csv", table=table, **params))
        page = tables.get(table_id, [])
        if not page:  # nothing to break down: the CSV has its header only
            assert len(rows) == 1
            continue
        assert len(rows) == len(page)
        for page_row, csv_row in zip(page[1:], rows[1:], strict=True):
            # Text the CSV neutralised is the page's text after the quote.
            assert [as_csv(c) for c in page_row] == [
                as_csv(c.removeprefix("'")) for c in csv_row
            ]
        assert "cost_usd" in rows[0]


def test_the_breakdown_csv_names_money_and_neutralises_formulas(
    client, superuser, usage, frozen
):
    tenant, _ = usage
    client.force_login(superuser)

    response = get(client, tenant=tenant.pk, by="user", format="csv", table="breakdown")

    assert f"cost-{tenant.slug}-" in response["Content-Disposition"]
    rows = csv_of(response)
    assert rows[0] == ["user", "cost_usd", "share_percent", "traces"]
    assert rows[1] == ['\'=HYPERLINK("http://evil")', "1234.57", "100.0", "1"]
    assert rows[-1] == ["Total", "1234.57", "100.0", "1"]


def test_query_count_is_constant_in_days_and_scopes(client, superuser, tenant, frozen):
    client.force_login(superuser)
    merge(tenant, trace("t0", {"o1": entry(GPT, "1")}, at=at(TODAY), project_id="p0"))

    def queries(**params):
        get(client, **params)  # warm the session and content types
        with CaptureQueriesContext(connection) as captured:
            assert get(client, **params).status_code == 200
        return len(captured)

    few = queries(days=30, by="agent")
    assert queries(days=90, by="agent") == few

    merge(
        tenant,
        *[
            trace(
                f"t{i}",
                {"o1": entry(GPT, str(i)), "o2": entry(HAIKU, "1")},
                at=at(TODAY - timedelta(days=i % 80)),
                project_id=f"p{i % 30}",
                agent_id=f"a{i}",
                user_id=f"u{i}",
            )
            for i in range(1, 200)
        ],
    )
    assert queries(days=90, by="agent") == few
    assert queries(days=90, by="model") == few


def test_the_page_is_linked_from_the_cost_summaries_and_tenants(
    client, superuser, tenant
):
    client.force_login(superuser)
    page = reverse(URL)

    summaries = client.get(
        reverse("admin:billing_costsummary_changelist"), {"tenant": tenant.pk}
    ).content.decode()
    assert f'href="{page}?tenant={tenant.pk}"' in summaries
    assert "Cost summaries" in summaries

    tenants = client.get(reverse("admin:billing_tenant_changelist")).content.decode()
    assert f'href="{page}?tenant={tenant.pk}"' in tenants


def test_the_plural_is_cost_summaries():
    assert CostSummary._meta.verbose_name_plural == "cost summaries"
