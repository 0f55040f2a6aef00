"""
Provider data is hostile: any string Langfuse stores, cut pages, malformed
and unpriceable usage. Whatever comes, every trace seen ends up in the
ledger (billed, held unpriced or skipped with a reason), one bad trace never
blocks a page, and Stripe equals the ledger's billable total to the unit.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.utils import timezone

from billing.audit import Actor
from billing.emulators.base import Faults
from billing.models import AuditLog, ModelPrice, SyncCursor, SyncRun, UsageRecord
from billing.price_table import model_price_save, price_table_load
from billing.sync import sync_tenant
from billing.tenancy import tenant_context
from tests.billing.sync.conftest import iso

HOSTILE = [
    "nul\x00inside",
    "\x00",
    "lone \ud800 surrogate",
    "<script>alert(1)</script>'; DROP TABLE billing_usagerecord; --",
    "x" * 5000,
    "emoji 🧾 and RTL \u202e text",
]


def _records(tenant):
    return UsageRecord.objects.for_tenant(tenant)


def _generation(trace_id, start, *, n=0, model="gpt-4o-mini", usage=None, **extra):
    return {
        "id": f"{trace_id}-gen-{n}",
        "traceId": trace_id,
        "type": "GENERATION",
        "startTime": iso(start),
        "endTime": iso(start + timedelta(seconds=2)),
        "updatedAt": iso(start + timedelta(seconds=2)),
        "model": model,
        "usageDetails": usage if usage is not None else {"input": 1000, "output": 100},
        **extra,
    }


def _assert_every_trace_accounted(world, tenant, trace_ids):
    stored = set(_records(tenant).values_list("trace_id", flat=True))
    assert len(stored) == len(set(trace_ids))
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_hostile_strings_are_stored_normalised_and_billed(world):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=20)
    observations = []
    for n, text in enumerate(HOSTILE):
        trace_id = f"trace-{n}-{text}"
        observations.append(
            _generation(
                trace_id,
                start,
                userId=text,
                name=text,
                traceName=text,
                model=f"gpt-4o-mini{text}" if n == 0 else "gpt-4o-mini",
                metadata={"project_id": text, "epic": {"nested": text}},
                usageDetails={"input": 1000, "output": 100, f"odd{text}": 0},
            )
        )
    world.langfuse.add_observations(tenant.langfuse_public_key, observations)
    normal = world.trace(tenant)

    run = sync_tenant(tenant_id=tenant.pk)
    again = sync_tenant(tenant_id=tenant.pk)

    assert run.status == again.status == SyncRun.Status.SUCCEEDED
    assert SyncCursor.objects.get(tenant=tenant).watermark == again.window_end
    _assert_every_trace_accounted(world, tenant, [*HOSTILE, normal])
    for record in _records(tenant):
        for text in (record.trace_id, record.user_id, record.agent_id):
            assert "\x00" not in text and len(text) <= 200
    # Long or unstorable ids keep a digest: distinct ids never collapse.
    assert _records(tenant).filter(trace_id__contains="~").count() == 4
    nul = _records(tenant).get(trace_id__startswith="trace-0-nul")
    assert nul.user_id == "nul\ufffdinside"
    # The NUL-suffixed model is not ours: held unpriced, not billed as 0.
    assert nul.status == "unpriced"
    assert _records(tenant).filter(status="reported").count() == len(HOSTILE)


@pytest.fixture
def poison_trigger(transactional_db):
    """A failure nobody foresaw: Postgres refuses one trace's row."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            CREATE FUNCTION test_poison() RETURNS trigger AS $$
            BEGIN
                IF NEW.trace_id = 'poison' AND NEW.status <> 'skipped' THEN
                    RAISE EXCEPTION 'unstorable' USING ERRCODE = '22021';
                END IF;
                RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER test_poison BEFORE INSERT ON billing_usagerecord
                FOR EACH ROW EXECUTE FUNCTION test_poison();
            """
        )
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "DROP TRIGGER test_poison ON billing_usagerecord;"
            "DROP FUNCTION test_poison();"
        )


def test_a_trace_that_cannot_be_stored_is_skipped_and_the_page_bills(
    world, poison_trigger
):
    tenant = world.tenant("acme")
    good = [world.trace(tenant) for _ in range(5)]
    world.trace(tenant, trace_id="poison")

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    poison = _records(tenant).get(trace_id="poison")
    assert poison.status == "skipped"
    assert poison.skip_reason == "could not be stored (DataError)"
    assert set(
        _records(tenant).filter(status="reported").values_list("trace_id", flat=True)
    ) == set(good)
    assert run.skip_reasons == {"could not be stored (DataError)": 1}
    assert SyncCursor.objects.get(tenant=tenant).watermark == run.window_end
    _assert_every_trace_accounted(world, tenant, [*good, "poison"])


def test_cut_json_pages_are_retried_like_a_5xx(world):
    tenant = world.tenant("acme")
    traces = [
        world.trace(tenant, start=timezone.now() - timedelta(minutes=10 + n))
        for n in range(30)
    ]
    # Seeded so that the first answer is cut and the retry is whole.
    world.langfuse.faults = Faults(rate_cut_body=0.5, seed=1)

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert run.langfuse_calls == 2
    assert run.billed == len(traces)
    _assert_every_trace_accounted(world, tenant, traces)


def test_cut_pages_every_time_fail_the_run_and_three_make_the_tenant_stuck(
    world, fast_backoff
):
    tenant = world.tenant("acme")
    world.trace(tenant)
    world.langfuse.faults = Faults(rate_cut_body=1.0)

    runs = [sync_tenant(tenant_id=tenant.pk) for _ in range(3)]

    assert [r.status for r in runs] == [SyncRun.Status.FAILED] * 3
    assert runs[-1].error == "langfuse: HTTP 200 with an unreadable body after 5 tries"
    assert [r.consecutive_failures for r in runs] == [1, 2, 3]
    tenant.refresh_from_db()
    assert tenant.sync_problem == ("stuck: 3 runs in a row failed: " + runs[-1].error)
    assert AuditLog.objects.filter(action="tenant.sync_problem").count() == 1

    world.langfuse.faults = Faults()
    recovered = sync_tenant(tenant_id=tenant.pk)
    tenant.refresh_from_db()
    assert (recovered.status, recovered.consecutive_failures) == ("succeeded", 0)
    assert tenant.sync_problem == ""
    assert AuditLog.objects.filter(action="tenant.sync_recovered").count() == 1


def test_a_trace_with_only_malformed_observations_is_skipped_not_lost(world):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=10)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            _generation(
                "all-bad", start, n=0, usageDetails={"input": 10, "output": -1}
            ),
            _generation("all-bad", start, n=1, usageDetails={"input": -3}),
        ],
    )
    good = world.trace(tenant)

    run = sync_tenant(tenant_id=tenant.pk)

    bad = _records(tenant).get(trace_id="all-bad")
    assert bad.status == "skipped"
    assert bad.skip_reason.endswith("negative token count")
    assert run.skip_reasons == {"negative token count": 1}
    _assert_every_trace_accounted(world, tenant, ["all-bad", good])


@pytest.mark.parametrize(
    ("model", "langfuse_cost"),
    [
        ("local-llama-3-8b-ft", None),  # unknown model, no Langfuse cost
        ("local-llama-3-8b-ft", 0.0),  # Langfuse had no price either
        (None, None),  # no model at all, with token usage
    ],
)
def test_usage_without_any_price_is_held_unpriced_never_billed_as_zero(
    world, model, langfuse_cost
):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=10)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [_generation("held", start, model=model, totalCost=langfuse_cost)],
    )
    span = world.trace(tenant, generations=[])  # no usage at all: stays zero
    normal = world.trace(tenant)

    run = sync_tenant(tenant_id=tenant.pk)

    held = _records(tenant).get(trace_id="held")
    assert held.status == "unpriced"
    assert held.report is None
    assert held.skip_reason.startswith("observation held-gen-0: ")
    assert held.input_tokens == 1000
    assert run.skip_reasons == {"held unpriced: no price and no Langfuse cost": 1}
    assert _records(tenant).get(trace_id=span).status == "reported"
    assert _records(tenant).get(trace_id=span).cost == 0
    assert _records(tenant).get(trace_id=normal).status == "reported"
    _assert_every_trace_accounted(world, tenant, ["held", span, normal])


def test_held_usage_is_billed_on_its_own_report_once_a_price_exists(world):

    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=10)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [_generation("held", start, model="acme-ft-1", usage={"input": 2_000_000})],
    )
    world.trace(tenant)
    sync_tenant(tenant_id=tenant.pk)
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    events_before = len(world.stripe.meter_events())

    # The operator adds a price.
    model_price_save(
        price=ModelPrice(model_name="acme-ft-1", match_pattern="^acme-ft-1$"),
        unit_prices={"input": Decimal("0.0000015")},
        actor=Actor.system(),
    )
    run = sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)

    held = _records(tenant).get(trace_id="held")
    assert (held.status, str(held.cost)) == ("reported", "3.0000000000")
    assert held.report.record_count == 1
    assert run.billed == 1
    assert len(world.stripe.meter_events()) == events_before + 1
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)
    with tenant_context([tenant.pk]):
        assert not _records(tenant).filter(status="unpriced").exists()


def test_cache_write_and_reasoning_tokens_are_billed(world):
    def price_for_model(model):
        return price_table_load().price_for(model, start)

    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=10)
    claude = {
        "input": 1000,
        "output": 500,
        "cache_read_input_tokens": 20_000,
        "cache_creation_input_tokens": 8000,
    }
    reasoning = {"input": 1000, "output": 300, "output_reasoning_tokens": 4000}
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            _generation(
                "claude", start, model="claude-3-5-sonnet-20241022", usage=claude
            ),
            _generation("o3", start, model="o3-mini", usage=reasoning),
        ],
    )

    sync_tenant(tenant_id=tenant.pk)

    for trace_id, model, usage in (
        ("claude", "claude-3-5-sonnet-20241022", claude),
        ("o3", "o3-mini", reasoning),
    ):
        record = _records(tenant).get(trace_id=trace_id)
        price = price_for_model(model)
        assert record.cost == price.cost(usage)
        assert record.price_source == "price_table"
    # Without the cache-write and reasoning keys, each would cost less.
    claude_record = _records(tenant).get(trace_id="claude")
    assert claude_record.cost > price_for_model("claude-3-5-sonnet-20241022").cost(
        {k: v for k, v in claude.items() if k != "cache_creation_input_tokens"}
    )
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_an_item_off_the_api_schema_is_one_malformed_observation(world):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=10)
    world.langfuse.add_observations(
        tenant.langfuse_public_key,
        [
            # Fractional counts and a list for metadata: the generated client
            # would refuse the whole page.
            _generation("odd", start, n=0, usageDetails={"input": 1.5}),
            _generation("odd", start, n=1, metadata=["not", "a", "dict"]),
        ],
    )
    good = [world.trace(tenant) for _ in range(3)]

    run = sync_tenant(tenant_id=tenant.pk)
    again = sync_tenant(tenant_id=tenant.pk)

    assert run.status == again.status == SyncRun.Status.SUCCEEDED
    odd = _records(tenant).get(trace_id="odd")
    assert odd.status == "skipped"
    assert "does not match the API schema" in odd.skip_reason
    assert _records(tenant).filter(status="reported").count() == len(good)
    _assert_every_trace_accounted(world, tenant, ["odd", *good])


def test_an_end_a_little_before_the_start_is_clock_skew_not_bad_data(world):
    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=10)
    skewed = _generation("skewed", start)
    skewed["endTime"] = iso(start - timedelta(seconds=2))
    world.langfuse.add_observations(tenant.langfuse_public_key, [skewed])

    sync_tenant(tenant_id=tenant.pk)

    assert _records(tenant).get(trace_id="skewed").status == "reported"
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant) > 0


@pytest.fixture
def fast_backoff(monkeypatch):
    # The retry logic is untouched; only its sleeps are shortened.
    from billing import provider_calls

    monkeypatch.setattr(provider_calls, "TRANSIENT_BACKOFF_BASE", 0.001)


def test_stripe_sends_what_is_in_the_outbox_while_langfuse_is_down(world, fast_backoff):
    tenant = world.tenant("acme")
    world.trace(tenant)
    # Stripe is down for the first run: its report stays pending.
    world.stripe.faults = Faults(rate_5xx=1.0)
    first = sync_tenant(tenant_id=tenant.pk)
    assert first.status == SyncRun.Status.FAILED
    assert world.stripe_total(tenant) == 0

    # Then Langfuse goes down and Stripe comes back: the outbox still goes.
    world.stripe.faults = Faults()
    world.langfuse.faults = Faults(rate_5xx=1.0)
    second = sync_tenant(tenant_id=tenant.pk)

    assert second.status == SyncRun.Status.FAILED
    assert second.error.startswith("langfuse: ")
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant) > 0


def test_a_failure_that_only_changes_its_counts_is_still_the_same_failure(
    world, fast_backoff
):
    tenant = world.tenant("acme")
    world.stripe.faults = Faults(rate_5xx=1.0)
    runs = []
    for n in range(3):
        world.trace(tenant, start=timezone.now() - timedelta(minutes=10 + n))
        runs.append(sync_tenant(tenant_id=tenant.pk))

    # "1 report(s) left pending", "2 report(s)...": one outage going on.
    assert [r.consecutive_failures for r in runs] == [1, 2, 3]
    tenant.refresh_from_db()
    assert tenant.sync_problem.startswith("stuck: 3 runs in a row failed: ")


def test_a_held_change_to_a_billed_trace_bills_only_its_difference(world):

    tenant = world.tenant("acme")
    start = timezone.now() - timedelta(minutes=30)
    billed = _generation("t", start, model="gpt-4o", usage={"input": 1_000_000})
    world.langfuse.add_observations(tenant.langfuse_public_key, [billed])
    sync_tenant(tenant_id=tenant.pk)
    before = world.stripe_total(tenant)
    assert before == 2_500_000  # $2.50 for 1M input tokens of gpt-4o

    # Langfuse revises the observation with a usage key nobody prices.
    revised = {**billed, "usageDetails": {"input": 1_000_000, "acme_units": 10}}
    world.langfuse.add_observations(tenant.langfuse_public_key, [revised])
    sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)
    held = UsageRecord.objects.get(trace_id="t").adjustments.get()
    assert held.status == "unpriced"
    assert world.stripe_total(tenant) == before

    gpt_4o = ModelPrice.objects.get(model_name="gpt-4o")
    model_price_save(
        price=gpt_4o,
        unit_prices={
            **{unit.usage_key: unit.price for unit in gpt_4o.unit_prices.all()},
            "acme_units": Decimal("0.1"),
        },
        actor=Actor.system(),
    )
    sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)

    held.refresh_from_db()
    assert (held.status, str(held.cost)) == ("reported", "1.0000000000")
    assert world.stripe_total(tenant) == before + 1_000_000
    assert world.stripe_total(tenant) == world.ledger_micro_usd(tenant)


def test_entries_stored_before_usage_was_kept_do_not_re_bill_on_re_read(world):
    tenant = world.tenant("acme")
    trace_id = world.trace(tenant, start=timezone.now() - timedelta(hours=2))
    sync_tenant(tenant_id=tenant.pk)
    record = UsageRecord.objects.get(trace_id=trace_id)
    # As the previous release stored them: six items, no usage dict.
    old = {k: v[:6] for k, v in record.observations.items()}
    UsageRecord.objects.filter(pk=record.pk).update(observations=old)
    billed = world.stripe_total(tenant)

    run = sync_tenant(tenant_id=tenant.pk, kind=SyncRun.Kind.RECONCILE)

    assert run.adjustments == 0
    assert world.stripe_total(tenant) == billed


def test_a_lifetime_beyond_ten_thousand_dollars_keeps_billing(world):
    tenant = world.tenant("acme")
    # A tenant that has already been billed $50,000 in micro-USD.
    SyncCursor.objects.create(
        tenant=tenant,
        billed_amount=Decimal("50000000000.4"),
        billed_units=50_000_000_000,
    )
    world.trace(tenant, generations=[("gpt-4o", 1_000_000, 0, 0)])

    run = sync_tenant(tenant_id=tenant.pk)

    assert run.status == SyncRun.Status.SUCCEEDED
    assert world.stripe_total(tenant) == 2_500_000
    assert SyncCursor.objects.get(tenant=tenant).billed_units == 50_002_500_000
