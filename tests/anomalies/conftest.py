from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from billing.models import CostSummary

TODAY = datetime(2026, 11, 20, tzinfo=UTC)


@pytest.fixture
def summary():
    """Write one scope's daily summary: summary(tenant, 'agent', 'bot', cost, ...)."""

    def make(tenant, scope_type, scope_id, cost, *, day=TODAY, project=""):
        return CostSummary.objects.create(
            tenant=tenant,
            scope_type=scope_type,
            project_id=project,
            scope_id=scope_id,
            period_start=day,
            period_end=day + timedelta(days=1),
            trace_count=10,
            cost=Decimal(str(cost)),
            model_breakdown={"gpt-4o": {"cost": str(cost), "input": 1, "output": 1}},
            computed_at=timezone.now(),
        )

    return make
