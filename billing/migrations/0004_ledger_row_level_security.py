from django.db import migrations

from billing.rls import EnableRowLevelSecurity


class Migration(migrations.Migration):
    dependencies = [("billing", "0003_ledger")]

    operations = [
        EnableRowLevelSecurity("usagerecord"),
        EnableRowLevelSecurity("usageadjustment"),
        EnableRowLevelSecurity("stripereport"),
        EnableRowLevelSecurity("synccursor"),
        EnableRowLevelSecurity("syncrun"),
    ]
