"""
The OpenAPI document, as the app serves it, against the API it describes.

schemathesis loads /api/v1/openapi.json from a live server and, for every
operation, sends requests generated from the document (examples, coverage
of each parameter's edges, random fuzzing) with schema-valid (positive) and
schema-violating (negative) data, as an operator of a tenant that has
anomalies, incidents and usage. Every response must be no server error and
match the document (status code, content type, headers, body schema);
negative data must be refused with a 4xx, positive data accepted (2xx, or
a documented 401/403/404/409); decimals are written out plainly, and
another tenant's rows are never found. Then stateful workflows follow the
links schemathesis infers between operations (a list's ids into a read or
a review), and a few edge dates the generators seldom draw are sent as
given. Runs are derandomized: the same requests every time.
"""

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.openapi.checks import RejectedPositiveData

from anomalies.detectors import Finding
from anomalies.models import CostAnomaly, Incident
from anomalies.services import anomalies_record, anomaly_acknowledge, anomaly_resolve
from billing.audit import Actor
from tests.factories import TenantFactory, ledger_write, trace_usage

# A live server answers from its own thread and connection: the data must be
# committed. Fresh sequences give the same ids, hence the same requests.
pytestmark = pytest.mark.django_db(transaction=True, reset_sequences=True)

# Requests per operation and generation mode in the fuzzing phase; the
# examples and coverage phases add their own (a few dozen per operation).
FUZZ_EXAMPLES = 40
STATEFUL_SCENARIOS = 25
STATEFUL_STEPS = 6

DAY = datetime(2026, 11, 20, tzinfo=UTC)
JOB = Actor.job("openapi-test")
# [model, input, output, cached, "cost", price source]
GPT = ["gpt-4o", 1000, 100, 50, "0.0100", "price_table"]
HAIKU = ["claude-3-5-haiku-20241022", 10, 5, 0, "0.0005", "price_table"]

# A 400 for input the document calls valid, by a rule no OpenAPI document
# can state: a cursor is opaque (only a next link's is valid), and query
# parameters cannot depend on one another (an order, a longest range, one of
# two ways to name a period). Only these rejections of positive data are
# not failures; any other 400 for schema-valid input is.
UNSTATABLE_RULES = {
    ("query.cursor", "Not a cursor from a next link."),
    ("query.date_to", "date_to is before date_from."),
    ("query.end", "end is before start."),
    ("query.end", "A period is at most 366 days."),
    ("query.period", "Give period=YYYY-MM, or start and end (YYYY-MM-DD)."),
    ("query.period", "Give either period or start and end, not both."),
}

# "Money is a decimal string" (the document's description): 12.50, never
# 1.25E+1 or 0E-10, which the schema's bare "type: string" lets through.
DECIMAL_FIELDS = {"observed", "expected", "ratio", "impact", "cost"}
PLAIN_DECIMAL = re.compile(r"-?\d+(\.\d+)?")


def _decimals(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key in DECIMAL_FIELDS and isinstance(item, str):
                yield key, item
            else:
                yield from _decimals(item)
    elif isinstance(value, list):
        for item in value:
            yield from _decimals(item)


@schemathesis.check
def decimals_are_plain(ctx, response, case):
    """Every decimal in a successful response is written out, no exponent."""
    if response.status_code != 200:
        return None
    bad = sorted(
        {
            f"{key}={value}"
            for key, value in _decimals(response.json())
            if not PLAIN_DECIMAL.fullmatch(value)
        }
    )
    if bad:
        raise AssertionError(f"Decimals in exponent notation: {', '.join(bad)}")
    return None


_trace = partial(trace_usage, at=DAY.replace(hour=9))
_ledger = ledger_write


def _finding(tenant, kind, scope_type, scope_id, observed, project=""):
    return Finding(
        kind,
        tenant.pk,
        scope_type,
        project,
        scope_id,
        None,
        Decimal(observed),
        Decimal(5),
    )


@pytest.fixture
def api_data(empty_cache, make_token):
    """
    An operator's token of a tenant with usage, anomalies (open, acknowledged,
    resolved; on two days) grouped into incidents; and another tenant's rows,
    whose ids the token must not reach.
    """
    tenant, other = TenantFactory(), TenantFactory()
    _ledger(
        tenant,
        _trace("t1", {"o1": GPT, "o2": HAIKU}, project_id="web", agent_id="bot"),
        _trace("t2", {"o1": GPT}, project_id="web", agent_id="bot", user_id="bob"),
        _trace("t3", {"o1": HAIKU}, project_id="api", agent_id="etl", epic_id="E-1"),
    )
    _ledger(other, _trace("x1", {"o1": GPT}, project_id="web"))
    anomalies_record(
        day=DAY.date(),
        findings=[
            _finding(tenant, "high_cost", "agent", "bot", 50, project="web"),
            _finding(tenant, "spike_vs_baseline", "project", "web", 60),
            _finding(tenant, "suspiciously_low", "agent", "etl", "0.5", project="api"),
            _finding(tenant, "missing_data", "user", "bob", 0),
        ],
        actor=JOB,
    )
    anomalies_record(
        day=DAY.date() - timedelta(days=1),
        findings=[_finding(tenant, "high_cost", "agent", "bot", 40, project="web")],
        actor=JOB,
    )
    anomalies_record(
        day=DAY.date(),
        findings=[_finding(other, "high_cost", "project", "web", 70)],
        actor=JOB,
    )
    first, second = CostAnomaly.objects.filter(tenant=tenant).order_by("pk")[:2]
    anomaly_resolve(anomaly_id=first.pk, actor=JOB, reason="expected", note="launch")
    anomaly_acknowledge(anomaly_id=second.pk, actor=JOB)
    return {
        "token": make_token(tenant, role="operator"),
        "tenant_id": tenant.pk,
        # Path parameter name: ids of the token's tenant and of the other.
        "ids": {
            "anomaly_id": sorted(CostAnomaly.objects.values_list("pk", flat=True)),
            "incident_id": sorted(Incident.objects.values_list("pk", flat=True)),
        },
        "foreign": {
            "anomaly_id": set(
                CostAnomaly.objects.filter(tenant=other).values_list("pk", flat=True)
            ),
            "incident_id": set(
                Incident.objects.filter(tenant=other).values_list("pk", flat=True)
            ),
        },
    }


def _tenant_isolation(api_data):
    """A check: another tenant's row is not found, usage is the token's."""

    def other_tenants_are_invisible(ctx, response, case):
        for name, ids in api_data["foreign"].items():
            if (case.path_parameters or {}).get(name) in ids and (
                response.status_code in (200, 409)
            ):
                raise AssertionError(
                    f"Another tenant's {name} answered {response.status_code}"
                )
        usage = case.path == "/api/v1/usage" and response.status_code == 200
        if usage and response.json()["tenant_id"] != api_data["tenant_id"]:
            raise AssertionError("Usage of another tenant")
        return None

    return other_tenants_are_invisible


@pytest.fixture
def api_schema(request, live_server, api_data):
    """The document the live server serves, with the token on every request."""
    # schemathesis 4.32.5's lazy loader reads and rewrites the test's
    # `_nodeid` (to label each operation), which pytest 9.2's nodes no longer
    # have; the operations are still reported as labelled subtests.
    request.node._nodeid = request.node.nodeid
    config = schemathesis.Config.from_dict(
        {
            "seed": 20261120,
            "base-url": live_server.url,
            "headers": {"Authorization": f"Bearer {api_data['token']}"},
            "generation": {"mode": "all", "deterministic": True, "database": "none"},
        }
    )
    schema = schemathesis.openapi.from_url(
        f"{live_server.url}/api/v1/openapi.json", config=config
    )

    @schema.hook
    def map_path_parameters(context, path_parameters):
        # A drawn id is almost never a row's: send most valid ones to the
        # rows (the tenant's, and another tenant's, which must be a 404).
        for name, value in (path_parameters or {}).items():
            ids = api_data["ids"].get(name)
            if ids and type(value) is int and 1 <= value < 2**63:
                index = value % (len(ids) + 1)
                path_parameters[name] = ids[index] if index < len(ids) else value
        return path_parameters

    @schema.hook
    def filter_failure(context, failure, case, response):
        if not isinstance(failure, RejectedPositiveData):
            return True
        try:
            errors = {(e["field"], e["message"]) for e in response.json()["errors"]}
        except (ValueError, KeyError, TypeError):
            return True
        return not errors & UNSTATABLE_RULES

    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_as_documented(case, api_data):
    case.call_and_validate(additional_checks=[_tenant_isolation(api_data)])


def test_workflows_across_operations_answer_as_documented(api_schema, api_data):
    # Each scenario starts from the same rows (a review changes them), so
    # that a replayed scenario sees the responses it saw the first time.
    anomalies, incidents = list(CostAnomaly.objects.all()), list(Incident.objects.all())

    def fields(model):
        return [f.name for f in model._meta.concrete_fields if not f.primary_key]

    isolation = _tenant_isolation(api_data)

    class Workflow(api_schema.as_state_machine()):
        def setup(self):
            Incident.objects.bulk_update(incidents, fields(Incident))
            CostAnomaly.objects.bulk_update(anomalies, fields(CostAnomaly))

        def validate_response(self, response, case, additional_checks=None, **kw):
            checks = [*(additional_checks or []), isolation]
            super().validate_response(response, case, additional_checks=checks, **kw)

    Workflow.run(
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        )
    )


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/api/v1/usage", {"period": "0001-01"}),
        ("/api/v1/usage", {"period": "9999-12"}),
        ("/api/v1/usage", {"start": "9999-12-31", "end": "9999-12-31"}),
        ("/api/v1/usage", {"start": "0001-01-01", "end": "0001-01-01"}),
        ("/api/v1/cost-anomalies", {"date_from": "0001-01-01", "limit": 200}),
        ("/api/v1/cost-anomalies", {"date_to": "9999-12-31", "limit": 1}),
        ("/api/v1/incidents", {"date_from": "9999-12-31", "date_to": "9999-12-31"}),
    ],
)
def test_the_first_and_last_days_are_valid_input(api_schema, api_data, path, query):
    """Edges the generated dates seldom reach: valid input, so a 200."""
    auth = {"Authorization": f"Bearer {api_data['token']}"}
    case = api_schema[path]["GET"].Case(query=query, headers=auth)
    response = case.call_and_validate(additional_checks=[_tenant_isolation(api_data)])
    assert response.status_code == 200, response.text
