"""
Which metadata key names a scope is a tenant setting (issue 11, item 4):
a tenant that tags ``epic_id`` gets epic summaries, and each run says how
many traces had no value for each scope.
"""

from datetime import UTC, datetime, time, timedelta

import pytest
from django.core.exceptions import ValidationError

from billing.audit import Actor
from billing.models import CostSummary, UsageRecord
from billing.rollup import rollup_day
from billing.services import tenant_update
from billing.sync import sync_tenant
from billing.tenancy import tenant_context
from tests.billing.sync.conftest import iso, noon


def _traces(world, tenant, count=4, epic_key="epic_id"):
    start = noon(1)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            {
                "id": f"{tenant.slug}-{n}",
                "traceId": f"{tenant.slug}-trace-{n}",
                "type": "GENERATION",
                "startTime": iso(start + timedelta(minutes=n)),
                "endTime": iso(start + timedelta(minutes=n, seconds=2)),
                "updatedAt": iso(start + timedelta(minutes=n, seconds=2)),
                "model": "gpt-4o-mini",
                "usageDetails": {"input": 1000, "output": 100},
                "userId": "u-1",
                "traceName": "triage",
                "tags": ["team:support", f"sprint:{n % 2}"],
                "metadata": {"projectId": "web", epic_key: f"EPIC-{n % 2}"},
            }
            for n in range(count)
        ],
    )
    return start.date()


def _epic_summaries(tenant, day):
    with tenant_context([tenant.pk]):
        return dict(
            CostSummary.objects.filter(
                tenant=tenant,
                scope_type="epic",
                period_start=datetime.combine(day, time.min, tzinfo=UTC),
            ).values_list("scope_id", "trace_count")
        )


def test_a_tenant_mapping_epic_id_gets_epic_summaries(world):
    mapped = world.tenant("acme", scope_mapping={"epic": ["metadata.epic_id"]})
    day = _traces(world, mapped)

    run = sync_tenant(tenant_id=mapped.pk)
    rollup_day(day=day)

    assert run.scopes_missing == {}
    assert _epic_summaries(mapped, day) == {"EPIC-0": 2, "EPIC-1": 2}


def test_the_defaults_cover_common_spellings_and_a_mapping_any_other(world):
    default = world.tenant("acme")
    mapped = world.tenant("globex", scope_mapping={"epic": ["metadata.jira_epic"]})
    day = _traces(world, default, epic_key="jira_epic")
    _traces(world, mapped, epic_key="jira_epic")

    default_run = sync_tenant(tenant_id=default.pk)
    mapped_run = sync_tenant(tenant_id=mapped.pk)
    rollup_day(day=day)

    # The defaults read projectId and the trace name, not jira_epic.
    assert default_run.scopes_missing == {"epic": 4}
    assert _epic_summaries(default, day) == {}
    assert mapped_run.scopes_missing == {}
    assert _epic_summaries(mapped, day) == {"EPIC-0": 2, "EPIC-1": 2}
    record = UsageRecord.objects.filter(tenant=mapped).first()
    assert (record.project_id, record.agent_id, record.user_id) == (
        "web",
        "triage",
        "u-1",
    )


def test_scopes_can_come_from_tags_and_trace_fields(world):
    tenant = world.tenant(
        "acme",
        scope_mapping={"epic": ["tag:sprint:"], "project": ["tag:team:"]},
    )
    _traces(world, tenant, count=2)

    sync_tenant(tenant_id=tenant.pk)

    records = UsageRecord.objects.filter(tenant=tenant).order_by("trace_id")
    assert [(r.project_id, r.epic_id) for r in records] == [
        ("support", "0"),
        ("support", "1"),
    ]


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"team": ["metadata.team"]}, "Unknown scope 'team'"),
        ({"epic": []}, "needs a non-empty list of sources"),
        ({"epic": ["meta.epic"]}, "Source 'meta.epic' of 'epic' is not"),
        (["epic"], "must be an object"),
    ],
)
def test_a_bad_mapping_is_refused_with_a_clear_message(world, mapping, message):
    tenant = world.tenant("acme")

    with pytest.raises(ValidationError, match=message):
        tenant_update(tenant=tenant, actor=Actor.system(), scope_mapping=mapping)
