"""Scheduled jobs of the payments app: payment_sync, order_cleanup, and the payment side's health."""
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ops.runtime import params
from ops.runtime.context import JobContext
from ops.runtime.errors import JobError, JobSkipped
from ops.runtime.outbox import outbox_relay
from ops.runtime.registry import job
from orders.services import effects_redrive
from payments.health import gateway_health_record, webhooks_check
from payments.services.order_cleanup import BATCH, order_cleanup_overdue
from payments.services.refunds import refunds_redrive
from payments.services.reports import payment_report_write
from payments.services.settle import payment_sync_pending

SYNC_CONCURRENCY = 8
# Threads calling the gateway at once; the shared rate limit (RAZORPAY_RATE_LIMIT) still applies.
MAX_CONCURRENCY = 64


@job("payment_gateway_health", queue="default", time_limit=timedelta(minutes=2))
def payment_gateway_health(ctx: JobContext) -> dict:
    """Razorpay API reachable with valid credentials, with latency (stored for /health/)."""
    result = gateway_health_record(dry_run=ctx.dry_run)
    ctx.add(result["status"])
    return result


@job("webhook_health", queue="default", time_limit=timedelta(minutes=5))
def webhook_health(ctx: JobContext) -> dict:
    """Is the Razorpay webhook pipeline alive: last event age, backlog, signature failures."""
    if ctx.dry_run:
        raise JobSkipped("a health check stores its result; nothing to preview")
    check = webhooks_check()
    return {"service": check.service, "status": check.status, "latency_ms": check.latency_ms, **check.detail}


@job("payment_sync", queue="default", time_limit=timedelta(minutes=25), params={
    "concurrency": params.integer(SYNC_CONCURRENCY, low=1, high=MAX_CONCURRENCY),
})
def payment_sync(ctx: JobContext) -> dict:
    """Reconcile pending payments with Razorpay, re-drive customer effects and refunds not done, write the
    payment report."""
    if not settings.RAZORPAY_KEY_ID or not settings.RAZORPAY_KEY_SECRET:
        raise JobError("RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET are not set: no payment can be reconciled")
    started = timezone.now()
    # Events a broker outage left unpublished go first: they are older than anything found now.
    relayed = 0 if ctx.dry_run else outbox_relay()
    counts = payment_sync_pending(
        dry_run=ctx.dry_run, concurrency=ctx.params["concurrency"], now=started, on_progress=ctx.progress,
    )
    counts["outbox_relayed"] = relayed
    # Customer effects not done in time (enrollments, confirmations, expiry emails, emails) are re-driven.
    counts.update(effects_redrive(now=started, dry_run=ctx.dry_run))
    # Refunds the gateway has not answered for (a timeout, a crash) are asked again, never made twice.
    counts.update(refunds_redrive(now=started, dry_run=ctx.dry_run))
    for key, n in counts.items():
        ctx.add(key, n)
    if ctx.dry_run:
        return {"dry_run": True, **counts}
    report = payment_report_write(period_end=timezone.now(), sync_counts=counts, job_run_id=ctx.run.pk)
    return {"report_id": report.pk, "counts_by_status": report.counts_by_status, "amounts": report.amounts,
            "top_failure_reasons": report.top_failure_reasons, **counts}


@job("order_cleanup", queue="default", time_limit=timedelta(minutes=50), params={
    "concurrency": params.integer(4, low=1, high=MAX_CONCURRENCY),
    "batch_size": params.integer(BATCH, low=1, high=10_000),
})
def order_cleanup(ctx: JobContext) -> dict:
    """Orders pending past ORDER_TTL: release their payments, expire them (email once), close orphans."""
    counts = order_cleanup_overdue(
        dry_run=ctx.dry_run, concurrency=ctx.params["concurrency"], batch_size=ctx.params["batch_size"],
    )
    for key, n in counts.items():
        ctx.add(key, n)
    return {"dry_run": ctx.dry_run, **counts}
