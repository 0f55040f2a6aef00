from billing.models.ledger import (
    StripeReport,
    SyncCursor,
    SyncRun,
    UsageAdjustment,
    UsageRecord,
)
from billing.models.tenants import AuditLog, Membership, Tenant

__all__ = [
    "AuditLog",
    "Membership",
    "StripeReport",
    "SyncCursor",
    "SyncRun",
    "Tenant",
    "UsageAdjustment",
    "UsageRecord",
]
