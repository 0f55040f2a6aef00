"""The billing admin, one module per concern; importing it registers them."""

from billing.admin import audit_log, costs, ledger, reports, runs, tenants

__all__ = ["audit_log", "costs", "ledger", "reports", "runs", "tenants"]
