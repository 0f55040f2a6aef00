from django.db import migrations

from billing.scope_usage import RenewLedgerUpdateFunctions


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0018_price_table"),
    ]

    operations = [RenewLedgerUpdateFunctions()]
