"""
Group the anomalies detected before incidents existed, day by day, so that
history has its incidents (the queue's "Related" and the incident list read
them) without waiting for a re-detection.

It runs the app's own grouping, written for the schema as of this
migration: on a new database there is nothing to group and it never runs.
"""

from django.db import migrations

from billing.tenancy import tenant_context


def group(apps, schema_editor):
    from anomalies.incidents import incidents_group
    from anomalies.models import CostAnomaly

    with tenant_context(all_tenants=True, using=schema_editor.connection.alias):
        days = (
            CostAnomaly.objects.filter(incident__isnull=True)
            .values_list("period_start", flat=True)
            .distinct()
            .order_by("period_start")
        )
        for day in list(days):
            tenants = set(
                CostAnomaly.objects.filter(period_start=day).values_list(
                    "tenant_id", flat=True
                )
            )
            incidents_group(period_start=day, tenant_ids=tenants)


class Migration(migrations.Migration):
    dependencies = [("anomalies", "0005_incident_view_permission")]

    operations = [migrations.RunPython(group, migrations.RunPython.noop)]
