import json

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from billing.ledger import MergeResult, TraceUsage, ledger_merge
from billing.models import Membership, Tenant
from billing.tenancy import tenant_context


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-1")
    is_staff = True

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.Sequence(lambda n: f"tenant-{n}")
    stripe_customer_id = factory.Sequence(lambda n: f"cus_test{n}")
    langfuse_host = "http://127.0.0.1:1"
    langfuse_public_key = factory.Sequence(lambda n: f"pk-lf-test-{n}")
    langfuse_secret_key = factory.Sequence(lambda n: f"sk-lf-test-secret-{n}")


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.VIEWER


def tenant_form_data(tenant: Tenant, **changes) -> dict:
    """What the tenant's admin form posts unchanged, plus ``changes``."""
    data = {
        "name": tenant.name,
        "slug": tenant.slug,
        "stripe_customer_id": tenant.stripe_customer_id,
        "stripe_meter_event_name": tenant.stripe_meter_event_name,
        "meter_unit": tenant.meter_unit,
        "langfuse_host": tenant.langfuse_host,
        "langfuse_public_key": tenant.langfuse_public_key,
        "langfuse_secret_key": "",
        "settle_seconds": tenant.settle_seconds,
        "sync_concurrency": tenant.sync_concurrency,
        "overlap_seconds": tenant.overlap_seconds,
        "max_running_seconds": tenant.max_running_seconds,
        "scope_mapping": json.dumps(tenant.scope_mapping),
        "anomaly_high_ratio": tenant.anomaly_high_ratio,
        "anomaly_low_ratio": tenant.anomaly_low_ratio,
        "anomaly_min_amount": tenant.anomaly_min_amount,
        "anomaly_min_share": tenant.anomaly_min_share,
        "anomaly_trace_factor": tenant.anomaly_trace_factor,
    }
    if tenant.sync_enabled:
        data["sync_enabled"] = "on"
    return {**data, **changes}


def staff_with_role(tenant: Tenant, role: str, **extra):
    """
    A staff user with a ``role`` in ``tenant`` who may view what `demo` staff
    may: every view_* permission of billing and anomalies.
    """
    user = UserFactory(**extra)
    user.user_permissions.set(
        Permission.objects.filter(
            content_type__app_label__in=["billing", "anomalies"],
            codename__startswith="view_",
        )
    )
    MembershipFactory(user=user, tenant=tenant, role=role)
    return user


def trace_usage(trace_id: str, entries: dict, *, at, problem: str = "", **scopes):
    """A trace as the sync hands it to the ledger: ``entries`` by observation
    id, each ``[model, input, output, cached, "cost", price source]``."""
    usage = TraceUsage(trace_id, at, at, **scopes)
    usage.entries = entries
    usage.problem = problem
    return usage


def ledger_write(tenant: Tenant, *traces: TraceUsage) -> MergeResult:
    """Merge ``traces`` into the tenant's ledger, as a synced page is."""
    with tenant_context([tenant.pk]):
        return ledger_merge(tenant=tenant, traces={t.trace_id: t for t in traces})
