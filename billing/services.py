"""
Every write to tenants, memberships and API tokens; each one writes the
audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from billing.api_tokens import api_tokens_forget, token_new
from billing.audit import Actor, audit_log_write
from billing.models import ApiToken, Membership, Tenant


class InvalidTransition(Exception):
    """The object is not in a state that allows the requested change."""


# Fields a service may set on a tenant; the secret is handled on its own.
TENANT_FIELDS = (
    "name",
    "slug",
    "stripe_customer_id",
    "stripe_meter_event_name",
    "langfuse_host",
    "langfuse_public_key",
    "meter_unit",
    "sync_enabled",
    "settle_seconds",
    "sync_concurrency",
    "overlap_seconds",
    "max_running_seconds",
    "scope_mapping",
    "anomaly_high_ratio",
    "anomaly_low_ratio",
    "anomaly_min_amount",
    "anomaly_min_share",
    "anomaly_trace_factor",
)


def _tenant_snapshot(tenant: Tenant) -> dict[str, Any]:
    snapshot = {field: getattr(tenant, field) for field in TENANT_FIELDS}
    # The audit log is JSON: thresholds as text, 3.000 and 3 alike.
    snapshot.update(
        {
            k: format(v.normalize(), "f")
            for k, v in snapshot.items()
            if isinstance(v, Decimal)
        }
    )
    snapshot["status"] = tenant.status
    # Whether a secret is set is auditable; its value never is.
    snapshot["langfuse_secret_key"] = "set" if tenant.langfuse_secret_key else ""
    return snapshot


def _changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in after.items() if before.get(k) != v}


@transaction.atomic
def tenant_create(
    *, actor: Actor, langfuse_secret_key: str = "", **fields: Any
) -> Tenant:
    unknown = set(fields) - set(TENANT_FIELDS)
    if unknown:
        raise TypeError(f"Unknown tenant fields: {', '.join(sorted(unknown))}")
    tenant = Tenant(**fields)
    if langfuse_secret_key:
        tenant.langfuse_secret_key = langfuse_secret_key
    tenant.full_clean()
    tenant.save()
    audit_log_write(
        actor=actor,
        action="tenant.create",
        obj=tenant,
        tenant=tenant,
        after=_tenant_snapshot(tenant),
    )
    return tenant


@transaction.atomic
def tenant_update(
    *,
    tenant: Tenant,
    actor: Actor,
    langfuse_secret_key: str = "",
    note: str = "",
    **fields: Any,
) -> Tenant:
    """Update settings; an empty ``langfuse_secret_key`` keeps the stored one."""
    unknown = set(fields) - set(TENANT_FIELDS)
    if unknown:
        raise TypeError(f"Unknown tenant fields: {', '.join(sorted(unknown))}")
    tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
    before = _tenant_snapshot(tenant)
    for field, value in fields.items():
        setattr(tenant, field, value)
    secret_changed = bool(langfuse_secret_key)
    if secret_changed:
        tenant.langfuse_secret_key = langfuse_secret_key
    tenant.full_clean()
    tenant.save()
    after = _tenant_snapshot(tenant)
    if secret_changed:
        after["langfuse_secret_key"] = "changed"  # noqa: S105 (a marker, not a key)
    changes = _changed(before, after)
    if changes:
        audit_log_write(
            actor=actor,
            action="tenant.update",
            obj=tenant,
            tenant=tenant,
            before={k: before[k] for k in changes},
            after=changes,
            note=note,
        )
    return tenant


class TenantStatusReason(models.TextChoices):
    """Why a tenant was suspended or activated: a fixed list, so it can be counted."""

    NON_PAYMENT = "non_payment", "Unpaid invoices"
    PAYMENT_RECEIVED = "payment_received", "Payment received"
    CUSTOMER_REQUEST = "customer_request", "The customer asked"
    ABUSE = "abuse", "Abuse or security concern"
    CONTRACT_ENDED = "contract_ended", "Contract ended"
    ISSUE_RESOLVED = "issue_resolved", "The issue is resolved"
    OTHER = "other", "Other (say why in the note)"


# The reasons that make sense for each new status.
STATUS_REASONS: dict[str, tuple[TenantStatusReason, ...]] = {
    Tenant.Status.SUSPENDED: (
        TenantStatusReason.NON_PAYMENT,
        TenantStatusReason.CUSTOMER_REQUEST,
        TenantStatusReason.ABUSE,
        TenantStatusReason.CONTRACT_ENDED,
        TenantStatusReason.OTHER,
    ),
    Tenant.Status.ACTIVE: (
        TenantStatusReason.PAYMENT_RECEIVED,
        TenantStatusReason.CUSTOMER_REQUEST,
        TenantStatusReason.ISSUE_RESOLVED,
        TenantStatusReason.OTHER,
    ),
}


@transaction.atomic
def tenant_set_status(
    *, tenant_id: int, status: str, actor: Actor, reason: str = "", note: str = ""
) -> Tenant:
    """
    Suspend or reactivate a tenant; a no-op transition is refused.

    ``reason`` is one of ``STATUS_REASONS[status]`` (empty for callers that
    have none, such as scripts); it is audited with the new status.
    """
    if status not in Tenant.Status.values:
        raise ValueError(f"Unknown tenant status: {status!r}")
    if reason and reason not in STATUS_REASONS[status]:
        raise ValueError(f"Not a reason to make a tenant {status}: {reason!r}")
    if reason == TenantStatusReason.OTHER and not note.strip():
        raise ValueError("Reason 'other' needs a note that says why.")
    # A conditional UPDATE: two operators clicking at once change it once.
    # (update() skips auto_now: the time is set here.)
    updated = (
        Tenant.objects.filter(pk=tenant_id)
        .exclude(status=status)
        .update(status=status, updated_at=timezone.now())
    )
    tenant = Tenant.objects.get(pk=tenant_id)
    if not updated:
        # Said to the second of two operators who acted at once, too.
        raise InvalidTransition(
            f"Tenant {tenant.name} ({tenant.slug}) is already {status}: left as it is."
        )
    suspending = status == Tenant.Status.SUSPENDED
    previous = Tenant.Status.ACTIVE if suspending else Tenant.Status.SUSPENDED
    # Its API tokens are remembered with the tenant's status.
    tokens = ApiToken.objects.for_tenant(tenant_id).values_list("key_hash", flat=True)
    api_tokens_forget(digests=list(tokens))
    audit_log_write(
        actor=actor,
        action="tenant.suspend" if suspending else "tenant.activate",
        obj=tenant,
        tenant=tenant,
        before={"status": previous},
        after={"status": status, **({"reason": reason} if reason else {})},
        note=note,
    )
    return tenant


@transaction.atomic
def membership_set(*, tenant: Tenant, user: Any, role: str, actor: Actor) -> Membership:
    """Add a user to a tenant or change their role."""
    membership, created = Membership.objects.select_for_update().get_or_create(
        tenant=tenant, user=user, defaults={"role": role}
    )
    before = {} if created else {"role": membership.role}
    if not created and membership.role != role:
        membership.role = role
        membership.full_clean()
        membership.save(update_fields=["role"])
    if created or before["role"] != role:
        audit_log_write(
            actor=actor,
            action="membership.create" if created else "membership.update",
            obj=membership,
            tenant=tenant,
            before=before,
            after={"user": user.get_username(), "role": role},
        )
    return membership


@transaction.atomic
def membership_remove(*, membership_id: int, actor: Actor) -> None:
    membership = (
        Membership.objects.select_for_update()
        .select_related("tenant", "user")
        .get(pk=membership_id)
    )
    audit_log_write(
        actor=actor,
        action="membership.delete",
        obj=membership,
        tenant=membership.tenant,
        before={"user": membership.user.get_username(), "role": membership.role},
    )
    membership.delete()


@transaction.atomic
def tenant_pause_sync(*, tenant_id: int, reason: str, actor: Actor) -> Tenant:
    """Stop syncing a tenant (e.g. Langfuse rejected its keys) until resumed."""
    tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
    if tenant.sync_paused_reason == reason:
        return tenant
    before = {"sync_paused_reason": tenant.sync_paused_reason}
    tenant.sync_paused_reason = reason
    tenant.sync_paused_at = timezone.now()
    tenant.save(update_fields=["sync_paused_reason", "sync_paused_at", "updated_at"])
    audit_log_write(
        actor=actor,
        action="tenant.pause_sync",
        obj=tenant,
        tenant=tenant,
        before=before,
        after={"sync_paused_reason": reason},
    )
    return tenant


@transaction.atomic
def tenant_resume_sync(*, tenant_id: int, actor: Actor, note: str = "") -> Tenant:
    tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
    if not tenant.sync_paused_reason:
        raise InvalidTransition(f"Sync of {tenant.slug} is not paused.")
    before = {"sync_paused_reason": tenant.sync_paused_reason}
    tenant.sync_paused_reason = ""
    tenant.sync_paused_at = None
    tenant.save(update_fields=["sync_paused_reason", "sync_paused_at", "updated_at"])
    audit_log_write(
        actor=actor,
        action="tenant.resume_sync",
        obj=tenant,
        tenant=tenant,
        before=before,
        after={"sync_paused_reason": ""},
        note=note,
    )
    return tenant


@transaction.atomic
def tenant_set_sync_problem(*, tenant_id: int, problem: str, actor: Actor) -> bool:
    """
    Show (or clear, with "") what an operator must look at in a tenant's sync;
    audited when it changes. Returns whether it changed.
    """
    tenant = Tenant.objects.select_for_update().get(pk=tenant_id)
    if tenant.sync_problem == problem:
        return False
    before = {"sync_problem": tenant.sync_problem}
    tenant.sync_problem = problem
    tenant.sync_problem_since = timezone.now() if problem else None
    tenant.save(update_fields=["sync_problem", "sync_problem_since", "updated_at"])
    audit_log_write(
        actor=actor,
        action="tenant.sync_problem" if problem else "tenant.sync_recovered",
        obj=tenant,
        tenant=tenant,
        before=before,
        after={"sync_problem": problem},
    )
    return True


@dataclass(frozen=True)
class CreatedToken:
    token: ApiToken
    raw: str  # shown once, never stored


@transaction.atomic
def api_token_create(
    *, tenant: Tenant, name: str, role: str, actor: Actor
) -> CreatedToken:
    """Create a tenant's API token; the raw value is returned here only."""
    if role not in Membership.Role.values:
        raise ValueError(f"Unknown role: {role!r}")
    new = token_new(tenant_id=tenant.pk)
    token = ApiToken.objects.create(
        tenant=tenant,
        name=name,
        role=role,
        prefix=new.prefix,
        key_hash=new.digest,
        created_by=actor.user,
    )
    audit_log_write(
        actor=actor,
        action="api_token.create",
        obj=token,
        tenant=tenant,
        after={"name": name, "role": role, "prefix": token.prefix},
    )
    return CreatedToken(token, new.raw)


@transaction.atomic
def api_token_revoke(*, token_id: int, actor: Actor, note: str = "") -> ApiToken:
    """Revoke a token for good: requests with it get a 401 from now on."""
    token = ApiToken.objects.select_for_update().get(pk=token_id)
    if token.revoked_at is not None:
        raise InvalidTransition(f"The token {token.prefix}… is already revoked.")
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    api_tokens_forget(digests=[token.key_hash])
    audit_log_write(
        actor=actor,
        action="api_token.revoke",
        obj=token,
        tenant=token.tenant,
        before={"revoked_at": None},
        after={"revoked_at": token.revoked_at.isoformat()},
        note=note,
    )
    return token
