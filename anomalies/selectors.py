"""
Reads behind the anomaly views and the detection write path.

A finding's top contributors are what made its day: the most expensive
models (from its cost summary) and traces (from the ledger). Detection
records a day's findings at once, so ``top_contributors_for`` reads them for
all of a day's findings in a few queries: the per-finding read
(``top_contributors``) scanned the tenant's whole day in the ledger once per
finding, 313 s for 1130 findings on a 10M-row day.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal

from django.db import connection
from django.db.models import F, Q, Window
from django.db.models.functions import RowNumber

from anomalies.detectors import Finding
from billing.models import CostSummary, UsageRecord
from billing.utc_days import day_bounds

TOP_MODELS = 3
TOP_TRACES = 5

SCOPE_FIELDS = {
    "project": "project_id",
    "agent": "agent_id",
    "epic": "epic_id",
    "user": "user_id",
}

# (tenant_id, scope_type, project_id, scope_id): a scope as summaries key it.
ScopeKey = tuple[int, str, str, str]

# Scopes of the day's missing-data findings looked up per query: an OR of
# exact keys (one index probe each), kept well under SQLite's 999 parameters.
LAST_SUMMARY_BATCH = 200


def _scope_key(finding: Finding) -> ScopeKey:
    return (finding.tenant_id, finding.scope_type, finding.project_id, finding.scope_id)


def _scope_filter(finding: Finding) -> dict:
    fields = {SCOPE_FIELDS[finding.scope_type]: finding.scope_id}
    if finding.project_id:
        fields["project_id"] = finding.project_id
    return fields


def _top_models(model_breakdown: dict) -> list[list[str]]:
    # A stable sort: equal costs keep the breakdown's order, as stored.
    models = sorted(
        ((model, Decimal(row["cost"])) for model, row in model_breakdown.items()),
        key=lambda item: item[1],
        reverse=True,
    )[:TOP_MODELS]
    return [[model, str(cost)] for model, cost in models]


def top_contributors(finding: Finding, day: date) -> dict:
    """
    The models and traces that made the day's cost; for missing data, the
    models of the scope's last summary (what stopped arriving). The reference
    answer for one finding, which the tests and bench/admin.py hold the
    set-based ``top_contributors_for`` (what detection uses) to.
    """
    summaries = CostSummary.objects.for_tenant(finding.tenant_id).filter(
        scope_type=finding.scope_type,
        project_id=finding.project_id,
        scope_id=finding.scope_id,
    )
    summary = (
        summaries.filter(pk=finding.summary_id).first()
        if finding.summary_id
        else summaries.order_by("-period_start").first()
    )
    start, end = day_bounds(day)
    traces = (
        UsageRecord.objects.for_tenant(finding.tenant_id)
        .filter(trace_timestamp__gte=start, trace_timestamp__lt=end)
        .filter(**_scope_filter(finding))
        # trace_id breaks ties in cost, so that the top traces (and the
        # cause, the first of them) do not depend on the query plan.
        .order_by("-cost", "trace_id")
        .values_list("trace_id", "cost")[:TOP_TRACES]
    )
    return {
        "models": _top_models(summary.model_breakdown if summary else {}),
        "traces": [[trace_id, str(cost)] for trace_id, cost in traces],
    }


def top_contributors_for(findings: Iterable[Finding], day: date) -> dict[Finding, dict]:
    """
    ``top_contributors`` of each finding of one day, the same results, read
    set-based: the summaries by id in one query (missing data: the scopes'
    last summaries, in a query per LAST_SUMMARY_BATCH scopes) and the top
    traces of every flagged scope in one pass over the day's ledger.
    """
    findings = list(dict.fromkeys(findings))
    if not findings:
        return {}
    breakdowns = _breakdowns_for(findings)
    traces = _top_traces_for({_scope_key(f) for f in findings}, day)
    return {
        finding: {
            "models": _top_models(breakdowns.get(finding) or {}),
            "traces": traces.get(_scope_key(finding), []),
        }
        for finding in findings
    }


def _breakdowns_for(findings: list[Finding]) -> dict[Finding, dict]:
    """The model breakdown each finding's top models come from."""
    summary_ids = {f: f.summary_id for f in findings if f.summary_id}
    last = _last_summary_ids({_scope_key(f) for f in findings if not f.summary_id})
    summary_ids.update(
        {f: last[_scope_key(f)] for f in findings if _scope_key(f) in last}
    )
    rows = CostSummary.objects.filter(pk__in=set(summary_ids.values())).values_list(
        "pk", "tenant_id", "scope_type", "project_id", "scope_id", "model_breakdown"
    )
    summaries = {pk: (tuple(key), breakdown) for pk, *key, breakdown in rows}
    breakdowns = {}
    for finding, summary_id in summary_ids.items():
        key, breakdown = summaries.get(summary_id, (None, None))
        # A summary of another scope is no summary of this finding's, as the
        # per-finding read filters by both.
        if key == _scope_key(finding):
            breakdowns[finding] = breakdown
    return breakdowns


def _last_summary_ids(scopes: set[ScopeKey]) -> dict[ScopeKey, int]:
    """Each scope's latest summary (any day), by the unique key's index."""
    found: dict[ScopeKey, int] = {}
    ordered = sorted(scopes)
    for at in range(0, len(ordered), LAST_SUMMARY_BATCH):
        wanted = Q()
        for tenant_id, scope_type, project_id, scope_id in ordered[
            at : at + LAST_SUMMARY_BATCH
        ]:
            wanted |= Q(
                tenant_id=tenant_id,
                scope_type=scope_type,
                project_id=project_id,
                scope_id=scope_id,
            )
        latest = (
            CostSummary.objects.filter(wanted)
            .annotate(
                newest=Window(
                    RowNumber(),
                    partition_by=[
                        F("tenant_id"),
                        F("scope_type"),
                        F("project_id"),
                        F("scope_id"),
                    ],
                    order_by=F("period_start").desc(),
                )
            )
            .filter(newest=1)
            .values_list("tenant_id", "scope_type", "project_id", "scope_id", "pk")
        )
        found.update({tuple(key): pk for *key, pk in latest})
    return found


# The record's value of the finding's scope (f.scope_type names the column).
_SCOPE_VALUE = "CASE f.scope_type {} END".format(
    " ".join(f"WHEN '{t}' THEN s.{c}" for t, c in SCOPE_FIELDS.items())
)


def _top_traces_query(
    scopes: list[ScopeKey], start: datetime, end: datetime
) -> tuple[str, list]:
    """
    The TOP_TRACES most expensive records of each of ``scopes`` between
    ``start`` and ``end``, as (id, trace_id, cost, scope key, rank).

    One pass over the day's records: a record is kept when its (tenant,
    scope) pair of any flagged scope type is in that type's VALUES list
    (hashed lookups, so all types cost one scan, not one each), then joined
    to its scopes and ranked per scope. The lists are written out, not read
    from a CTE, so that Postgres may scan in parallel (a CTE scan may not
    be; 2.8 s instead of 5.5 s at 10M rows). The tenants are named for the
    ledger's (tenant, trace_timestamp) index, which finds one day among
    many. Agents and epics are flagged
    within a project; one with no project matches that agent in any
    project, as ``_scope_filter`` does.
    """
    kept, pairs = [], []
    for scope_type, column in SCOPE_FIELDS.items():
        of_type = sorted({(t, i) for t, kind, _, i in scopes if kind == scope_type})
        if of_type:
            values = ", ".join(["(%s, %s)"] * len(of_type))
            kept.append(f"(r.tenant_id, r.{column}) IN (VALUES {values})")
            pairs += [value for pair in of_type for value in pair]
    tenants = sorted({tenant_id for tenant_id, *_ in scopes})
    adapt = connection.ops.adapt_datetimefield_value
    # In the order of their placeholders in the text.
    params = [value for scope in scopes for value in scope]
    params += [adapt(start), adapt(end), *tenants, *pairs, TOP_TRACES]
    sql = f"""
        WITH flagged (tenant_id, scope_type, project_id, scope_id) AS (
            VALUES {", ".join(["(%s, %s, %s, %s)"] * len(scopes))}
        )
        SELECT id, trace_id, cost, f_tenant, f_type, f_project, f_scope
        FROM (
            SELECT s.id, s.trace_id, s.cost, f.tenant_id AS f_tenant,
                   f.scope_type AS f_type, f.project_id AS f_project,
                   f.scope_id AS f_scope,
                   ROW_NUMBER() OVER (
                       PARTITION BY f.tenant_id, f.scope_type, f.project_id,
                                    f.scope_id
                       ORDER BY s.cost DESC, s.trace_id
                   ) AS position
            FROM (
                SELECT r.id, r.tenant_id, r.project_id, r.agent_id, r.epic_id,
                       r.user_id, r.trace_id, r.cost
                FROM billing_usagerecord r
                WHERE r.trace_timestamp >= %s AND r.trace_timestamp < %s
                  AND r.tenant_id IN ({", ".join(["%s"] * len(tenants))})
                  AND ({" OR ".join(kept)})
            ) s
            JOIN flagged f ON f.tenant_id = s.tenant_id
             AND f.scope_id = {_SCOPE_VALUE}
             AND (f.project_id = '' OR f.project_id = s.project_id)
        ) ranked
        WHERE position <= %s
        ORDER BY f_tenant, f_type, f_project, f_scope, position
    """  # noqa: S608 (SQL from module constants; every value is a parameter)
    return sql, params


def _top_traces_for(scopes: set[ScopeKey], day: date) -> dict[ScopeKey, list]:
    start, end = day_bounds(day)
    ordered = sorted(scopes)
    # Postgres takes them all at once (each query scans the day); SQLite
    # (the demo) takes 999 parameters a query, seven a scope at most.
    batch = len(ordered)
    if connection.features.max_query_params:
        batch = (connection.features.max_query_params - 3) // 7
    traces: dict[ScopeKey, list] = defaultdict(list)
    for at in range(0, len(ordered), batch):
        sql, params = _top_traces_query(ordered[at : at + batch], start, end)
        # Through the model, so that costs come back as the ORM's Decimals
        # (SQLite stores them as floats) and read as top_contributors' do.
        for record in UsageRecord.objects.raw(sql, params):
            key = (record.f_tenant, record.f_type, record.f_project, record.f_scope)
            traces[key].append([record.trace_id, str(record.cost)])
    return traces
