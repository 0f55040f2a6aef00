"""
The RQ cron schedule: ``manage.py rqcron billing_project.cron``.

Running two schedulers is safe: each scheduled function claims its tick in
Redis (``billing.schedule``), so a tick's jobs are enqueued once, and every
sync takes its tenant's advisory lock.
"""

from rq import cron

from anomalies.jobs import enqueue_daily_analytics
from billing.jobs import reconcile_all_tenants, sync_all_tenants

# Every minute: new usage, billed once it has settled.
cron.register(sync_all_tenants, "default", interval=60)
# Late data, in tiers (billing.sync.RECONCILE_TIERS): hourly the last day,
# daily the last week, weekly the 35 days Stripe still accepts. Each bills
# what the minute syncs missed; the unique keys make overlaps free.
cron.register(reconcile_all_tenants, "default", args=("hourly",), cron="17 * * * *")
cron.register(reconcile_all_tenants, "default", args=("daily",), cron="37 3 * * *")
cron.register(reconcile_all_tenants, "default", args=("weekly",), cron="47 4 * * 0")
# 02:00 UTC: roll up yesterday, then detect anomalies and reconcile the last
# week with Stripe (dependent jobs).
cron.register(enqueue_daily_analytics, "default", cron="0 2 * * *")
