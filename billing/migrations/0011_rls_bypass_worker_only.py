"""
Split the database roles (issue 11, item 3): the RLS bypass setting now
counts only for members of the billing_rls_bypass group (the worker role)
and for the tables' owner, never for the web role that sets it itself. Every
table with the tenant_isolation policy gets the expression of billing.rls;
the memberships also get a SELECT-only policy for the signed-in user's own
rows. Postgres only; SQLite has no RLS.
"""

from django.db import migrations

from billing.rls import CreateOwnMembershipsPolicy, RenewTenantPolicies

# The policy as migrations 0002 to 0007 created it: anyone could bypass.
PREVIOUS_POLICY = (
    "current_setting('app.rls_bypass', true) = 'on' "
    "OR tenant_id = ANY (string_to_array("
    "NULLIF(current_setting('app.tenant_ids', true), ''), ',')::bigint[])"
)


class Migration(migrations.Migration):
    dependencies = [("billing", "0010_abandoned_runs_scope_mapping")]

    operations = [
        RenewTenantPolicies(previous=PREVIOUS_POLICY),
        CreateOwnMembershipsPolicy("membership"),
    ]
