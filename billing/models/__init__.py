from billing.models.costs import AnalyticsRun, CostSummary, ScopeType
from billing.models.ledger import (
    StripeReport,
    SyncCursor,
    SyncRun,
    UsageAdjustment,
    UsageLine,
    UsageRecord,
)
from billing.models.tenants import AuditLog, Membership, Tenant

__all__ = [
    "AnalyticsRun",
    "AuditLog",
    "CostSummary",
    "Membership",
    "ScopeType",
    "StripeReport",
    "SyncCursor",
    "SyncRun",
    "Tenant",
    "UsageAdjustment",
    "UsageLine",
    "UsageRecord",
]
