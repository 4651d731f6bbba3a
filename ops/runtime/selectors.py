"""Reads of the job runtime: per-job statistics from the run ledger."""
from __future__ import annotations

from datetime import datetime

from django.db import connection
from django.db.models import Avg, Count, Q

from ops.runtime.models import JobRun
from ops.runtime.registry import all_jobs

_FINISHED = (JobRun.Status.SUCCESS, JobRun.Status.FAILED)


def _p95_ms(since: datetime | None) -> dict[str, int]:
    """Nearest-rank p95 of finished runs' durations per job, computed in SQL (PostgreSQL and SQLite)."""
    where, params = "status IN (%s, %s) AND duration_ms IS NOT NULL", list(_FINISHED)
    if since is not None:
        where += " AND started_at >= %s"
        params.append(since)
    sql = f"""
        WITH ranked AS (
            SELECT job, duration_ms,
                   CUME_DIST() OVER (PARTITION BY job ORDER BY duration_ms) AS rank
            FROM {JobRun._meta.db_table} WHERE {where}
        )
        SELECT job, MIN(duration_ms) FROM ranked WHERE rank >= 0.95 GROUP BY job
    """
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return dict(cursor.fetchall())


def job_stats(*, since: datetime | None = None) -> dict[str, dict]:
    """Per job (every registered job, and any other job in the ledger), from the run ledger:

    total, succeeded, failed, skipped, success_rate (succeeded / finished, None
    before any finished run), mean_ms and p95_ms (durations of finished runs).
    `since` limits the window. Last runs, schedules and lateness are the job
    status's (ops.runtime.status).
    """
    runs = JobRun.objects.all()
    if since is not None:
        runs = runs.filter(started_at__gte=since)
    rows = runs.values("job").annotate(
        total=Count("id"),
        succeeded=Count("id", filter=Q(status=JobRun.Status.SUCCESS)),
        failed=Count("id", filter=Q(status=JobRun.Status.FAILED)),
        skipped=Count("id", filter=Q(status=JobRun.Status.SKIPPED)),
        mean_ms=Avg("duration_ms", filter=Q(status__in=_FINISHED)),
    ).order_by()
    p95 = _p95_ms(since)

    stats = {
        name: {
            "total": 0, "succeeded": 0, "failed": 0, "skipped": 0, "success_rate": None,
            "mean_ms": None, "p95_ms": None,
        }
        for name in all_jobs()
    }
    for row in rows:
        finished = row["succeeded"] + row["failed"]
        stats[row["job"]] = {
            "total": row["total"],
            "succeeded": row["succeeded"],
            "failed": row["failed"],
            "skipped": row["skipped"],
            "success_rate": row["succeeded"] / finished if finished else None,
            "mean_ms": float(row["mean_ms"]) if row["mean_ms"] is not None else None,
            "p95_ms": p95.get(row["job"]),
        }
    return dict(sorted(stats.items()))
