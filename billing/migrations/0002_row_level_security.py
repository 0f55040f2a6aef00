from django.db import migrations

from billing.append_only import MakeAppendOnly
from billing.rls import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_initial")]

    operations = [
        EnableRowLevelSecurity("membership"),
        EnableRowLevelSecurity("auditlog"),
        MakeAppendOnly("auditlog"),
    ]
