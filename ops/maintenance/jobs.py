"""Database upkeep and dependency health jobs.

Chains: db_backup -> db_optimize -> db_monitor, and db_cleanup -> db_monitor. The
runtime starts a `then` job only after a successful, non-dry run, so a failed
step stops its chain; the step also raises an alert saying what did not run.
"""
from __future__ import annotations

import logging
from datetime import timedelta
from functools import wraps

from django.conf import settings

from checkout.timezones import local_today
from ops.maintenance import backups, checks, upkeep
from ops.runtime import params
from ops.runtime.alerts import alert_clear, alert_raise
from ops.runtime.context import JobContext
from ops.runtime.errors import JobError, JobSkipped
from ops.runtime.registry import chain_after, job

log = logging.getLogger(__name__)

SUNDAY = 6


def alerts_on_failure(func):
    """A failed step alerts, naming the chained jobs that will not run because of it."""

    @wraps(func)
    def run(ctx: JobContext):
        try:
            result = func(ctx)
        except JobSkipped:
            raise
        except Exception as exc:
            if not ctx.dry_run:
                stopped = chain_after(ctx.job.name)
                alert_raise(
                    job=ctx.job.name,
                    summary=f"failed: {exc}" + (f"; not run: {', '.join(stopped)}" if stopped else ""),
                    detail={"run_id": ctx.run.pk, "not_run": stopped},
                )
            if isinstance(exc, backups.BackupError):
                raise JobError(str(exc), retryable=True) from exc
            raise
        if not ctx.dry_run:
            alert_clear(job=ctx.job.name)
        return result

    return run


def _restore_check_due(ctx: JobContext) -> bool:
    if ctx.params["restore_check"] is not None:
        return ctx.params["restore_check"]
    mode = settings.BACKUP_RESTORE_CHECK
    return mode == "daily" or (mode == "weekly" and local_today().weekday() == SUNDAY)


@job("db_backup", queue="maintenance", time_limit=timedelta(hours=2), then=("db_optimize",),
     params={"restore_check": params.flag()})
@alerts_on_failure
def db_backup(ctx: JobContext) -> dict:
    """Back up the database (verified, optionally restored into a scratch database), then apply the retention."""
    restore_check = _restore_check_due(ctx)
    if ctx.dry_run:
        prune = backups.backups_to_prune()
        return {"restore_check": restore_check, "would_prune": [b.filename for b in prune]}
    backup = backups.backup_create(restore_check=restore_check)
    pruned = backups.backup_prune()
    ctx.add("backups", 1)
    ctx.add("bytes", backup.size_bytes or 0)
    ctx.add("pruned", pruned["backups_pruned"])
    return {
        "backup_id": backup.pk, "file": backup.filename, "bytes": backup.size_bytes,
        "sha256": backup.sha256, "toc_entries": backup.toc_entries,
        "restore_check": backup.restore_check or None, **pruned,
    }


@job("db_optimize", queue="maintenance", time_limit=timedelta(hours=1), then=("db_monitor",))
@alerts_on_failure
def db_optimize(ctx: JobContext) -> dict:
    """VACUUM (ANALYZE) the hot tables, outside any transaction."""
    report = upkeep.database_optimize(dry_run=ctx.dry_run)
    ctx.add("tables", len(report["tables"]))
    return report


@job("db_cleanup", queue="maintenance", time_limit=timedelta(minutes=30), then=("db_monitor",))
@alerts_on_failure
def db_cleanup(ctx: JobContext) -> dict:
    """Delete old ledger rows, task results, webhook events, resolved dead letters, health results and backups."""
    # Half the time limit, then a follow-up run continues: no run nears the hard limit.
    budget = ctx.job.time_limit / 2
    deleted, finished = upkeep.database_cleanup(
        dry_run=ctx.dry_run, budget=budget,
        on_batch=lambda table, total: ctx.progress(total, None, table),
    )
    for table, n in deleted.items():
        ctx.add(table, n)
    pruned = backups.backup_prune(dry_run=ctx.dry_run)
    ctx.add("backups_pruned", pruned["backups_pruned"])
    if not finished:
        ctx.continue_later()
    return {"deleted" if not ctx.dry_run else "would_delete": deleted, "finished": finished, **pruned}


@job("db_monitor", queue="maintenance", time_limit=timedelta(minutes=10))
def db_monitor(ctx: JobContext) -> dict:
    """Database and table sizes, dead tuples, connections, long queries; alert on thresholds."""
    snapshot, breaches = upkeep.database_snapshot_take(dry_run=ctx.dry_run)
    ctx.add("tables", len(snapshot.tables))
    ctx.add("breaches", len(breaches))
    if not ctx.dry_run:
        if breaches:
            alert_raise(job="db_monitor", summary="; ".join(breaches), detail={"snapshot_id": snapshot.pk})
        else:
            alert_clear(job="db_monitor")
    return {
        "snapshot_id": snapshot.pk, "database_bytes": snapshot.database_bytes,
        "connections": snapshot.connections, "max_connections": snapshot.max_connections,
        "long_queries": len(snapshot.long_queries), "breaches": breaches,
    }


def _health_result(check) -> dict:
    return {"service": check.service, "status": check.status, "latency_ms": check.latency_ms, **check.detail}


@job("email_service_health", queue="default", time_limit=timedelta(minutes=5))
def email_service_health(ctx: JobContext) -> dict:
    """The SMTP server answers (connect, EHLO, NOOP) within the timeout."""
    if ctx.dry_run:
        raise JobSkipped("a health check stores its result; nothing to preview")
    return _health_result(checks.email_service_check())


@job("cache_health", queue="default", time_limit=timedelta(minutes=5))
def cache_health(ctx: JobContext) -> dict:
    """Redis answers: round trip, memory, evictions."""
    if ctx.dry_run:
        raise JobSkipped("a health check stores its result; nothing to preview")
    check = checks.cache_check()
    if check is None:
        raise JobSkipped("no Redis configured (REDIS_URL is empty)")
    return _health_result(check)
