"""The billing admin, one module per concern; importing it registers them."""

from billing.admin import (
    api_tokens,
    audit_log,
    costs,
    ledger,
    prices,
    reconciliations,
    reports,
    runs,
    tenants,
)

__all__ = [
    "api_tokens",
    "audit_log",
    "costs",
    "ledger",
    "prices",
    "reconciliations",
    "reports",
    "runs",
    "tenants",
]
