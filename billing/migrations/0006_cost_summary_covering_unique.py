"""
Cost summaries: the scope key's unique index also carries the cost, and the
tenant has no index of its own.

The baseline rule reads, for each of a day's ~100k scopes, its previous 28
days' cost; through a plain unique index that is one heap fetch per day
(2.8M at 100k scopes, half of detection's time). With the cost in the index
they are index-only scans. Postgres only (INCLUDE); the model declares the
plain constraint, which SQLite gets, and its name and keys are the same.
"""

import django.db.models.deletion
from django.db import migrations, models

from billing.table_operations import PostgresTableOperation

CONSTRAINT = "cost_summary_unique_scope_period"
KEY = "(tenant_id, scope_type, project_id, scope_id, period_start)"


class IncludeCostInScopeKey(PostgresTableOperation):
    def forwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"ALTER TABLE {quote(table)} DROP CONSTRAINT {CONSTRAINT}, "
            f"ADD CONSTRAINT {CONSTRAINT} UNIQUE {KEY} INCLUDE (cost)"
        ]

    def backwards_sql(self, table: str, quote) -> list[str]:
        return [
            f"ALTER TABLE {quote(table)} DROP CONSTRAINT {CONSTRAINT}, "
            f"ADD CONSTRAINT {CONSTRAINT} UNIQUE {KEY}"
        ]

    def describe(self) -> str:
        return f"Include the cost in {CONSTRAINT} (Postgres only)"


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_cost_summaries")]

    operations = [
        migrations.AlterField(
            model_name="costsummary",
            name="tenant",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                to="billing.tenant",
            ),
        ),
        IncludeCostInScopeKey("costsummary"),
    ]
