"""
Staff who may see cost anomalies may see their incidents: grant
``view_incident`` to every user and group holding ``view_costanomaly``
(the admin lists incidents first, and is otherwise empty for them).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations


def grant(apps, schema_editor):
    # Permissions are created after migrations run; this one is needed now.
    # The historical app config has no models module, which create_permissions
    # reads as "no models": marked as having one for the call.
    app_config = apps.get_app_config("anomalies")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    User = apps.get_model("auth", "User")
    Group = apps.get_model("auth", "Group")
    view_anomaly = Permission.objects.filter(
        content_type__app_label="anomalies", codename="view_costanomaly"
    ).first()
    view_incident = Permission.objects.get(
        content_type__app_label="anomalies", codename="view_incident"
    )
    if view_anomaly is None:
        return
    for user in User.objects.filter(user_permissions=view_anomaly):
        user.user_permissions.add(view_incident)
    for group in Group.objects.filter(permissions=view_anomaly):
        group.permissions.add(view_incident)


class Migration(migrations.Migration):
    dependencies = [
        ("anomalies", "0004_incidents_and_expensive_traces"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, migrations.RunPython.noop)]
