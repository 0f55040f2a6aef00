"""
API tokens: how they look and how a request's token is checked.

A token reads ``lbt_<tenant id>_<secret>``. The tenant id in the clear lets
the lookup run under row-level security scoped to that one tenant (the web
role cannot see every tenant's tokens, and should not); the 256-bit secret is
what proves the claim. Only its SHA-256 digest is stored: a random secret of
that size needs no slow hash, and a leaked table holds nothing usable.

An accepted token is remembered in the cache for ``REMEMBER_FOR`` under its
digest, so that most requests check it without a database transaction (the
usage API's cached answers take under 2 ms). Revoking a token or suspending
its tenant marks it "ask the database" at once and again when that change
commits (``api_tokens_forget``): a request that read the token before the
change cannot bring the old answer back.
Token creation and revocation are services (``billing.services``).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

from django.core.cache import cache
from django.db import connection, transaction
from django.utils import timezone

from billing.cache_health import CACHE_ERRORS, cache_failed, cache_up
from billing.models import ApiToken, Tenant
from billing.tenancy import tenant_context

SCHEME = "lbt"
# Shown in lists to tell tokens apart: the scheme, the tenant and 6 secret
# characters (36 bits: no help to a guesser).
PREFIX_SECRET_CHARS = 6
# last_used_at is a "when was this last seen" for operators, not a log: once
# a minute is precise enough and spares every request a write.
TOUCH_EVERY = timedelta(minutes=1)
# How long an accepted token is taken on the cache's word; its last use is
# recorded when the database is asked again.
REMEMBER_FOR = int(TOUCH_EVERY.total_seconds())


def token_digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def _cache_key(digest: str) -> str:
    return f"api-token:{digest}"


# What a forgotten token's key holds: "the cache's word is not good".
ASK_DATABASE = "ask-database"


@dataclass(frozen=True)
class NewToken:
    raw: str  # shown once, never stored
    prefix: str
    digest: str


def token_new(*, tenant_id: int) -> NewToken:
    raw = f"{SCHEME}_{tenant_id}_{secrets.token_urlsafe(32)}"
    prefix = raw[: len(f"{SCHEME}_{tenant_id}_") + PREFIX_SECRET_CHARS]
    return NewToken(raw, prefix, token_digest(raw))


def token_tenant_id(raw: str) -> int | None:
    """The tenant a token claims, or None when it is not shaped like one."""
    scheme, _, rest = raw.partition("_")
    tenant, _, secret = rest.partition("_")
    # 18 digits: any id Postgres stores as a bigint, and no larger.
    if scheme != SCHEME or not secret or not tenant.isascii():
        return None
    if not tenant.isdigit() or len(tenant) > 18:
        return None
    return int(tenant)


AUTHENTICATE_SQL = """
    SELECT token.id, token.tenant_id, token.role, token.last_used_at, tenant.status
    FROM billing_apitoken token
    JOIN billing_tenant tenant ON tenant.id = token.tenant_id
    WHERE token.key_hash = %s AND token.revoked_at IS NULL
"""


@dataclass(frozen=True)
class ApiClient:
    """Whom an accepted token speaks for: what a request needs, no more."""

    token_id: int
    tenant_id: int
    role: str
    tenant_active: bool


def _lookup(digest: str) -> ApiClient | None:
    # SQL of its own: building the same query with the ORM cost 0.8 ms.
    with connection.cursor() as cursor:
        cursor.execute(AUTHENTICATE_SQL, [digest])
        row = cursor.fetchone()
    if row is None:
        return None
    token_id, tenant_id, role, last_used_at, tenant_status = row
    now = timezone.now()
    if last_used_at is None or now - last_used_at >= TOUCH_EVERY:
        # Waits for a revocation in progress, and then sees it.
        touched = ApiToken.objects.filter(pk=token_id, revoked_at__isnull=True)
        if not touched.update(last_used_at=now):
            return None
    return ApiClient(token_id, tenant_id, role, tenant_status == Tenant.Status.ACTIVE)


def _remembered(key: str) -> ApiClient | str | None:
    if not cache_up():
        return None
    try:
        return cache.get(key)
    except CACHE_ERRORS as exc:
        cache_failed(exc, "API tokens are checked in the database")
        return None


def api_token_authenticate(*, raw: str) -> ApiClient | None:
    """The client an active token ``raw`` names, or None."""
    claimed = token_tenant_id(raw)
    if claimed is None:
        return None
    key = _cache_key(token_digest(raw))
    remembered = _remembered(key)
    if isinstance(remembered, ApiClient):
        return remembered
    # Under row-level security, the claimed tenant's tokens only: a token
    # naming another tenant than its own is not found.
    with tenant_context([claimed]):
        client = _lookup(token_digest(raw))
    if client is not None and remembered is None and cache_up():
        try:
            # add, not set: never over the marker of a token just forgotten.
            cache.add(key, client, REMEMBER_FOR)
        except CACHE_ERRORS as exc:
            cache_failed(exc, "API tokens are checked in the database")
    return client


def api_tokens_forget(*, digests: Iterable[str]) -> None:
    """
    Check these tokens against the database on their next uses: mark them
    "ask the database" for ``REMEMBER_FOR``, now and again when the caller's
    transaction commits. A request that read the token before the change
    committed can then not remember its answer (it adds, and the marker is
    there), nor outlive the marker.
    """
    markers = {_cache_key(digest): ASK_DATABASE for digest in digests}
    if not markers:
        return

    def forget() -> None:
        # Tried even while the cache seems down: the marker is what makes
        # a revocation immediate for every process.
        try:
            cache.set_many(markers, REMEMBER_FOR)
        except CACHE_ERRORS as exc:
            cache_failed(
                exc,
                f"revoked or suspended tokens may be accepted from the cache "
                f"for up to {REMEMBER_FOR} s",
            )

    forget()
    transaction.on_commit(forget)
