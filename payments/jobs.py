"""Scheduled jobs of the payments app."""
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

import payments.tasks  # noqa: F401  (registers the payment tasks and their outbox subscriptions)
from ops.outbox import outbox_relay
from ops.registry import job
from ops.runner import JobContext, JobError
from orders.jobs import positive_int_param
from orders.services import enrollment_heal_missing
from payments import services as sync_services
from payments.health import gateway_health_record

SYNC_CONCURRENCY = 8


@job("payment_gateway_health", queue="default", time_limit=timedelta(minutes=2))
def payment_gateway_health(ctx: JobContext) -> dict:
    """Razorpay API reachable with valid credentials, with latency (stored for /health/)."""
    result = gateway_health_record(dry_run=ctx.dry_run)
    ctx.add(result["status"])
    return result


@job("payment_sync", queue="default", time_limit=timedelta(minutes=25))
def payment_sync(ctx: JobContext) -> dict:
    """Reconcile pending payments with Razorpay, heal missing enrollments, write the period's payment report."""
    if not settings.RAZORPAY_KEY_ID or not settings.RAZORPAY_KEY_SECRET:
        raise JobError("RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET are not set: no payment can be reconciled")
    concurrency = positive_int_param(ctx, "concurrency", SYNC_CONCURRENCY)
    started = timezone.now()
    # Events a broker outage left unpublished go first: they are older than anything found now.
    relayed = 0 if ctx.dry_run else outbox_relay()
    counts = sync_services.payment_sync_pending(
        dry_run=ctx.dry_run, concurrency=concurrency, now=started, on_progress=ctx.progress,
    )
    counts["outbox_relayed"] = relayed
    counts["enrollments_healed"] = enrollment_heal_missing(now=started, dry_run=ctx.dry_run)
    for key, n in counts.items():
        ctx.add(key, n)
    if ctx.dry_run:
        return {"dry_run": True, **counts}
    report = sync_services.payment_report_write(
        period_end=timezone.now(), sync_counts=counts, job_run_id=ctx.run.pk,
    )
    return {"report_id": report.pk, "counts_by_status": report.counts_by_status, "amounts": report.amounts,
            "top_failure_reasons": report.top_failure_reasons, **counts}
