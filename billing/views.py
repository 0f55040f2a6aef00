"""The project's own pages outside the admin and the API: the health check."""

from __future__ import annotations

import hmac
from dataclasses import asdict

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from billing.api_auth import bearer_token
from billing.health import health_report


@require_GET
def health(request: HttpRequest) -> JsonResponse:
    """
    200 while this instance can serve, 503 when its database is down. With
    the monitoring token (``Authorization: Bearer <HEALTH_TOKEN>``), also the
    queues, the outbox's oldest unsent report and each tenant's sync lag.
    """
    raw = bearer_token(request)
    expected = settings.HEALTH_TOKEN
    # Bytes: compare_digest refuses a str that is not ASCII.
    if raw is not None and not (
        expected and hmac.compare_digest(raw.encode(), expected.encode())
    ):
        return JsonResponse({"detail": "Invalid monitoring token."}, status=401)
    detail = raw is not None
    report = health_report(detail=detail)
    body = {
        "status": report.status,
        "database": asdict(report.database),
        "redis": None if report.redis is None else asdict(report.redis),
    }
    if detail:
        body |= {
            "queues": report.queues,
            "oldest_unreported_seconds": report.oldest_unreported_seconds,
            "tenants": report.tenants,
        }
    response = JsonResponse(body, status=200 if report.serving else 503)
    response["Cache-Control"] = "no-store"
    return response
