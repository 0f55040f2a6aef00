"""
The RQ cron schedule: ``manage.py rqcron billing_project.cron``.

Running two schedulers is safe: every job takes its tenant's advisory lock.
"""

from rq import cron

from anomalies.jobs import enqueue_daily_analytics
from billing.jobs import reconcile_all_tenants, sync_all_tenants

# Every minute: new usage, billed once it has settled.
cron.register(sync_all_tenants, "default", interval=60)
# Hourly: re-read the last day and bill whatever the minute syncs missed.
cron.register(reconcile_all_tenants, "default", cron="17 * * * *")
# 02:00 UTC: roll up yesterday, then detect anomalies (a dependent job).
cron.register(enqueue_daily_analytics, "default", cron="0 2 * * *")
