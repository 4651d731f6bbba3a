"""Scheduled jobs of the payments app: payment_sync, order_cleanup, and the payment side's health.

Given `chunk_rows`, payment_sync and order_cleanup split their work into id ranges (payments,
orders) handed to chunk tasks that workers on any host take; the gateway's rate limit is one
for all of them (payments.ratelimit, in Redis). payment_sync's closing step re-drives what is
left undone and writes the report of the whole run; order_cleanup's puts order statuses in
line with payments outside the ranges. Both store their progress with every transaction of a range,
so a range taken over from a lost worker goes on from there with the counts already committed.
"""
from collections import Counter
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from ops.runtime import params
from ops.runtime.context import JobContext
from ops.runtime.errors import JobError, JobSkipped
from ops.runtime.outbox import outbox_relay
from ops.runtime.batches import id_ranges
from ops.runtime.registry import job, job_close
from orders.services import effects_redrive
from payments.health import gateway_health_record, webhooks_check
from payments.services.order_cleanup import (
    BATCH, PHASES, order_cleanup_overdue, order_sync_payment_status, overdue_orders,
)
from payments.services.refunds import refunds_redrive
from payments.services.reports import payment_report_write
from payments.services.settle import payment_sync_pending, payments_to_sync

SYNC_CONCURRENCY = 8
# Threads calling the gateway at once; the shared rate limit (RAZORPAY_RATE_LIMIT) still applies.
MAX_CONCURRENCY = 64
# chunk_rows: 0 runs the job in one process; else the run fans out to chunks of about that many rows.
CHUNK_ROWS = params.integer(0, low=0, high=10_000_000)


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


def _credentials() -> None:
    if not settings.RAZORPAY_KEY_ID or not settings.RAZORPAY_KEY_SECRET:
        raise JobError("RAZORPAY_KEY_ID and RAZORPAY_KEY_SECRET are not set: no payment can be reconciled")


@job("payment_sync", queue="default", time_limit=timedelta(minutes=25), params={
    "concurrency": params.integer(SYNC_CONCURRENCY, low=1, high=MAX_CONCURRENCY),
    "chunk_rows": CHUNK_ROWS,
})
def payment_sync(ctx: JobContext) -> dict:
    """Reconcile pending payments with Razorpay, re-drive customer effects and refunds not done, write the
    payment report."""
    _credentials()
    if ctx.part is not None:
        return _sync_part(ctx)
    started = timezone.now()
    # Events a broker outage left unpublished go first: they are older than anything found now.
    ctx.add("outbox_relayed", 0 if ctx.dry_run else outbox_relay())
    if ctx.params["chunk_rows"] and not ctx.dry_run:
        ranges = id_ranges(payments_to_sync(started), ctx.params["chunk_rows"])
        ctx.fan_out([{"after_id": lo, "last_id": hi, "now": started.isoformat()} for lo, hi in ranges])
        return {}
    ctx.counts.update(payment_sync_pending(
        dry_run=ctx.dry_run, concurrency=ctx.params["concurrency"], now=started, on_progress=ctx.progress,
    ))
    return payment_sync_close(ctx, started=started)


def _sync_part(ctx: JobContext) -> dict:
    """One id range of the payments found pending when the run started, with the run's clock.

    Each applied chunk of answers stores the payment id reached and the counts so far with its
    transaction: an attempt taking the range over from a lost worker starts after that id, with
    those counts (the payments before it are settled, or released for the next run).
    """
    before = Counter(ctx.counts)  # what earlier attempts committed (empty on a first attempt)

    def checkpoint(last_id: int, counts: Counter) -> None:
        ctx.counts.clear()
        ctx.counts.update(before)
        ctx.counts.update(counts)
        ctx.checkpoint(after_id=last_id)

    counts = payment_sync_pending(
        concurrency=ctx.params["concurrency"], now=datetime.fromisoformat(ctx.part["now"]),
        id_range=(ctx.resume.get("after_id", ctx.part["after_id"]), ctx.part["last_id"]), checkpoint=checkpoint,
    )
    ctx.counts.clear()
    ctx.counts.update(before)
    ctx.counts.update(counts)
    return {}


@job_close("payment_sync")
def payment_sync_close(ctx: JobContext, *, started: datetime | None = None) -> dict:
    """After the payments: re-drive what is left undone, write the report of the whole run."""
    started = started or ctx.run.started_at
    # Customer effects not done in time (enrollments, confirmations, expiry emails, emails) are re-driven.
    ctx.counts.update(effects_redrive(now=started, dry_run=ctx.dry_run))
    # Refunds the gateway has not answered for (a timeout, a crash) are asked again, never made twice.
    ctx.counts.update(refunds_redrive(now=started, dry_run=ctx.dry_run))
    counts = dict(ctx.counts)
    if ctx.dry_run:
        return {"dry_run": True, **counts}
    report = payment_report_write(period_end=timezone.now(), sync_counts=counts, job_run_id=ctx.run.pk)
    return {"report_id": report.pk, "counts_by_status": report.counts_by_status, "amounts": report.amounts,
            "top_failure_reasons": report.top_failure_reasons, **counts}


@job("order_cleanup", queue="default", time_limit=timedelta(minutes=50), params={
    "concurrency": params.integer(4, low=1, high=MAX_CONCURRENCY),
    "batch_size": params.integer(BATCH, low=1, high=10_000),
    "chunk_rows": CHUNK_ROWS,
})
def order_cleanup(ctx: JobContext) -> dict:
    """Orders pending past ORDER_TTL: release their payments, expire them (email once), close orphans."""
    options = ctx.params
    if ctx.part is not None:
        return _cleanup_part(ctx)
    now = timezone.now()
    if options["chunk_rows"] and not ctx.dry_run:
        ranges = id_ranges(overdue_orders(now), options["chunk_rows"])
        ctx.fan_out([{"after_id": lo, "last_id": hi, "now": now.isoformat()} for lo, hi in ranges])
        return {}
    counts = order_cleanup_overdue(
        dry_run=ctx.dry_run, concurrency=options["concurrency"], batch_size=options["batch_size"], now=now,
    )
    for key, n in counts.items():
        ctx.add(key, n)
    return {"dry_run": ctx.dry_run, **counts}


def _cleanup_part(ctx: JobContext) -> dict:
    """One id range of the orders found overdue when the run started, with the run's clock.

    Every transaction that commits work stores the step reached and the counts so far with it: an
    attempt taking the range over from a lost worker starts at that step, with those counts (each step
    finds only what is still to do, so what the lost attempt committed is neither redone nor uncounted).
    """
    before = Counter(ctx.counts)  # what earlier attempts committed (empty on a first attempt)

    def counted(counts: Counter) -> None:
        ctx.counts.clear()
        ctx.counts.update(before)
        ctx.counts.update(counts)

    def checkpoint(phase: str, counts: Counter) -> None:
        counted(counts)
        ctx.checkpoint(phase=phase)

    counted(order_cleanup_overdue(
        concurrency=ctx.params["concurrency"], batch_size=ctx.params["batch_size"],
        now=datetime.fromisoformat(ctx.part["now"]), id_range=(ctx.part["after_id"], ctx.part["last_id"]),
        checkpoint=checkpoint, start_phase=ctx.resume.get("phase", PHASES[0]),
    ))
    return {}


@job_close("order_cleanup")
def order_cleanup_close(ctx: JobContext) -> dict:
    """After the ranges: orders outside them whose status disagrees with their payments are put in line."""
    ctx.counts.update(order_sync_payment_status(batch_size=ctx.params["batch_size"]))
    return dict(ctx.counts)
