"""
Who did what: the actor passed to every service, and the one audit writer.

Service functions call ``audit_log_write`` in the same transaction as the
change they make (Zulip's RealmAuditLog pattern); views, admin actions,
commands and jobs never write audit rows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import models

from billing.models import AuditLog, Tenant


@dataclass(frozen=True)
class Actor:
    kind: str  # one of AuditLog.ActorKind
    user: AbstractBaseUser | None = None
    correlation_id: str = ""
    api_token_id: int | None = None

    @classmethod
    def staff(cls, user: AbstractBaseUser, correlation_id: str = "") -> Actor:
        return cls(AuditLog.ActorKind.STAFF, user, correlation_id)

    @classmethod
    def api(cls, token_id: int, correlation_id: str = "") -> Actor:
        return cls(AuditLog.ActorKind.API, None, correlation_id, token_id)

    @classmethod
    def job(cls, correlation_id: str = "") -> Actor:
        return cls(AuditLog.ActorKind.JOB, None, correlation_id)

    @classmethod
    def system(cls) -> Actor:
        return cls(AuditLog.ActorKind.SYSTEM)


def audit_log_write(
    *,
    actor: Actor,
    action: str,
    obj: models.Model,
    tenant: Tenant | None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
    note: str = "",
) -> AuditLog:
    return AuditLog.objects.create(
        tenant=tenant,
        actor=actor.user,
        actor_kind=actor.kind,
        api_token_id=actor.api_token_id,
        action=action,
        object_type=obj._meta.label_lower,
        object_id=str(obj.pk),
        before=before or {},
        after=after or {},
        note=note,
        correlation_id=actor.correlation_id,
    )
