from billing.models.api_tokens import ApiToken
from billing.models.costs import (
    AnalyticsRun,
    CostSummary,
    DailyScopeUsage,
    DailyTraceCost,
    ScopeType,
)
from billing.models.ledger import (
    StripeReport,
    SyncCursor,
    SyncRun,
    UsageAdjustment,
    UsageRecord,
)
from billing.models.prices import ModelPrice, UnitPrice
from billing.models.reconciliation import StripeReconciliation
from billing.models.tenants import AuditLog, Membership, Tenant

__all__ = [
    "AnalyticsRun",
    "ApiToken",
    "AuditLog",
    "CostSummary",
    "DailyScopeUsage",
    "DailyTraceCost",
    "Membership",
    "ModelPrice",
    "ScopeType",
    "StripeReconciliation",
    "StripeReport",
    "SyncCursor",
    "SyncRun",
    "Tenant",
    "UnitPrice",
    "UsageAdjustment",
    "UsageRecord",
]
