"""
How this instance and the billing pipeline are doing, for a load balancer and
for monitoring (``GET /health``).

The load balancer needs one answer: can this instance serve? That is the
database, and the status code says it (200, or 503 when it is down). Redis
down is "degraded", still a 200: the cache is optional and the admin and the
API answer without it; only the jobs wait. Monitoring needs more, and it is
tenants' business, so it comes only with the monitoring token
(``HEALTH_TOKEN``): the depth of each RQ queue, the oldest report still in
the outbox (usage not yet reported to Stripe), and each tenant's sync lag,
with the tenants whose sync stalled. A stalled tenant or an old report makes
the status "degraded" too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime

import django_rq
import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import OuterRef, Subquery
from django.utils import timezone
from redis.exceptions import RedisError

from billing.models import StripeReport, SyncCursor, Tenant
from billing.tenancy import tenant_context

HEALTH_PATH = "/health"
# A sync runs every minute and waits out each tenant's settle window: a
# watermark this far behind means it has stopped moving.
SYNC_STALLED_AFTER = 30 * 60
# A report is sent at the end of the sync that made it; one still pending
# or failed after this long is stuck (Stripe down, or waiting for an
# operator's retry).
UNREPORTED_TOO_OLD = 60 * 60
UNSENT = (StripeReport.Status.PENDING, StripeReport.Status.FAILED)
# The probe's own timeouts: a Redis that hangs must not hang the check.
REDIS_TIMEOUT = 1.0


@dataclass
class Check:
    ok: bool
    ms: float
    error: str = ""


@dataclass
class HealthReport:
    database: Check
    redis: Check | None  # None: no Redis configured (the embedded default)
    queues: dict[str, int] = field(default_factory=dict)
    oldest_unreported_seconds: int | None = None
    tenants: list[dict] = field(default_factory=list)

    @property
    def serving(self) -> bool:
        return self.database.ok

    @property
    def status(self) -> str:
        if not self.serving:
            return "down"
        stalled = any(tenant["stalled"] for tenant in self.tenants)
        old = (self.oldest_unreported_seconds or 0) > UNREPORTED_TOO_OLD
        redis_down = self.redis is not None and not self.redis.ok
        return "degraded" if stalled or old or redis_down else "ok"


def _timed(probe) -> Check:
    began = time.perf_counter()
    try:
        probe()
    except (DatabaseError, RedisError, OSError) as exc:
        # The kind of failure only: a message may name hosts or users.
        return Check(False, _ms(began), type(exc).__name__)
    return Check(True, _ms(began))


def _ms(began: float) -> float:
    return round((time.perf_counter() - began) * 1000, 1)


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _redis() -> None:
    # RQ's Redis, probed with timeouts of its own.
    url = settings.RQ_QUEUES["default"]["URL"]
    with redis.Redis.from_url(
        url, socket_connect_timeout=REDIS_TIMEOUT, socket_timeout=REDIS_TIMEOUT
    ) as probe:
        probe.ping()


def _seconds_since(moment: datetime | None, now: datetime) -> int | None:
    return None if moment is None else max(0, int((now - moment).total_seconds()))


def _pipeline(report: HealthReport) -> None:
    now = timezone.now()
    # Per tenant, so that the (tenant, status) index finds the few reports
    # not sent yet instead of a scan of the whole outbox.
    unreported = (
        StripeReport.objects.filter(tenant=OuterRef("pk"), status__in=UNSENT)
        .order_by("created_at")
        .values("created_at")[:1]
    )
    # Every tenant's rows, named one by one: the web role cannot lift
    # row-level security, and should not need to.
    with tenant_context(list(Tenant.objects.values_list("pk", flat=True))):
        watermarks = dict(SyncCursor.objects.values_list("tenant_id", "watermark"))
        tenants = list(
            Tenant.objects.filter(status=Tenant.Status.ACTIVE, sync_enabled=True)
            .annotate(oldest_unreported=Subquery(unreported))
            .order_by("slug")
            .values_list("pk", "slug", "oldest_unreported")
        )
    for pk, slug, oldest in tenants:
        lag = _seconds_since(watermarks.get(pk), now)
        waiting = _seconds_since(oldest, now)
        report.tenants.append(
            {
                "tenant": slug,
                "sync_lag_seconds": lag,
                "oldest_unreported_seconds": waiting,
                "stalled": lag is None or lag > SYNC_STALLED_AFTER,
            }
        )
        if waiting is not None:
            report.oldest_unreported_seconds = max(
                waiting, report.oldest_unreported_seconds or 0
            )


def health_report(*, detail: bool) -> HealthReport:
    """The instance's checks; with ``detail``, the pipeline's as well."""
    redis_configured = bool(settings.REDIS_URL)
    report = HealthReport(
        database=_timed(_database),
        redis=_timed(_redis) if redis_configured else None,
    )
    if not detail:
        return report
    if report.redis is not None and report.redis.ok:
        report.queues = {
            name: django_rq.get_queue(name).count for name in settings.RQ_QUEUES
        }
    if report.database.ok:
        _pipeline(report)
    return report
