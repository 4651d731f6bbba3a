"""Database upkeep: VACUUM/ANALYZE of the hot tables, pruning of old rows, and size/health snapshots."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

from django.apps import apps
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models import Count, F, Q, Sum
from django.utils import timezone

from checkout import db
from ops.maintenance.models import DbSnapshot, JobRunTally
from ops.runtime.batches import Batch, run_batches
from ops.runtime.models import DeadLetter, JobRun

log = logging.getLogger(__name__)

# Tables written all day: their statistics and dead tuples matter most.
HOT_MODELS = (
    "carts.Cart",
    "orders.Order",
    "orders.Enrollment",
    "payments.Payment",
    "payments.WebhookEvent",
    "ops.JobRun",
    "ops.JobLease",
    "ops.OutboxEvent",
    "ops.DeadLetter",
    "django_celery_results.TaskResult",
    "maintenance.HealthCheck",
)

CLEANUP_BATCH = 5000
# Below this many dead tuples a table's ratio is noise (a small table just updated).
DEAD_TUPLES_FLOOR = 10_000


def hot_tables() -> list[str]:
    return [apps.get_model(label)._meta.db_table for label in HOT_MODELS]


def database_optimize(*, dry_run: bool = False) -> dict:
    """VACUUM (ANALYZE) each hot table on PostgreSQL, ANALYZE + PRAGMA optimize on SQLite.

    VACUUM cannot run inside a transaction block, so it goes through a fresh
    autocommit connection of its own, whatever transaction the caller is in.
    """
    vendor = db.vendor()
    tables = hot_tables()
    if dry_run:
        return {"vendor": vendor, "tables": tables, "timings_ms": {}}
    conn = connections.create_connection(DEFAULT_DB_ALIAS)
    timings = {}
    try:
        conn.ensure_connection()
        conn.set_autocommit(True)
        with conn.cursor() as cursor:
            if db.is_postgres():
                for table in tables:
                    started = time.monotonic()
                    cursor.execute(f"VACUUM (ANALYZE) {conn.ops.quote_name(table)}")
                    timings[table] = int((time.monotonic() - started) * 1000)
            else:
                started = time.monotonic()
                cursor.execute("ANALYZE")
                cursor.execute("PRAGMA optimize")
                timings["*"] = int((time.monotonic() - started) * 1000)
    finally:
        conn.close()
    return {"vendor": vendor, "tables": tables, "timings_ms": timings}


# --- cleanup --------------------------------------------------------------------------


@dataclass(frozen=True)
class Prune:
    """Rows of one model older than a configured age, with an extra condition."""

    name: str
    model: str
    age_setting: str
    field: str
    condition: Callable[[], Q] = Q
    # Called with the rows about to be deleted, in the deleting transaction.
    before_delete: Callable | None = None

    def queryset(self, now):
        model = apps.get_model(self.model)
        cutoff = now - getattr(settings, self.age_setting)
        return model._default_manager.filter(self.condition(), **{f"{self.field}__lt": cutoff})


def job_run_tally_add(runs) -> None:
    """Fold job runs about to be pruned into JobRunTally (dry runs are not counted anywhere)."""
    grouped = (
        runs.filter(dry_run=False).order_by().values_list("job", "status")
        .annotate(n=Count("pk"), finished=Count("duration_ms"), total=Sum("duration_ms"))
    )
    for job, status, n, finished, total in grouped:
        added = {"runs": F("runs") + n, "finished": F("finished") + finished,
                 "duration_ms": F("duration_ms") + (total or 0)}
        if not JobRunTally.objects.filter(job=job, status=status).update(**added):
            JobRunTally.objects.create(job=job, status=status, runs=n, finished=finished, duration_ms=total or 0)


def _prunes() -> tuple[Prune, ...]:
    return (
        Prune("job_runs", "ops.JobRun", "RETENTION_JOB_RUNS", "started_at",
              lambda: ~Q(status=JobRun.Status.RUNNING), before_delete=job_run_tally_add),
        Prune("task_results", "django_celery_results.TaskResult", "RETENTION_TASK_RESULTS", "date_done"),
        Prune("webhook_events", "payments.WebhookEvent", "RETENTION_WEBHOOK_EVENTS", "processed_at"),
        Prune("webhook_rejections", "payments.WebhookRejection", "RETENTION_WEBHOOK_EVENTS", "received_at"),
        Prune("dead_letters", "ops.DeadLetter", "RETENTION_DEAD_LETTERS", "last_failed_at",
              lambda: Q(state__in=[DeadLetter.State.RECOVERED, DeadLetter.State.REQUEUED])),
        Prune("outbox_events", "ops.OutboxEvent", "RETENTION_OUTBOX", "published_at"),
        # A schedule whose claims are all pruned resumes from its beat row's last_run_at.
        Prune("beat_slots", "ops.BeatSlot", "RETENTION_BEAT_SLOTS", "claimed_at"),
        Prune("health_checks", "maintenance.HealthCheck", "RETENTION_HEALTH", "checked_at"),
        Prune("db_snapshots", "maintenance.DbSnapshot", "RETENTION_HEALTH", "taken_at"),
        Prune("cart_snapshots", "carts.CartSnapshot", "RETENTION_HEALTH", "taken_at"),
        Prune("failed_backups", "maintenance.Backup", "RETENTION_JOB_RUNS", "started_at",
              lambda: Q(status="failed")),
    )


def database_cleanup(
    *, dry_run: bool = False, batch: int = CLEANUP_BATCH, budget: timedelta | None = None,
    on_batch: Callable[[str, int], None] | None = None,
) -> tuple[dict[str, int], bool]:
    """Delete old rows of each pruned table in batches by primary key, one transaction per batch.

    Returns (deleted per table, finished). With a time budget, stops between
    batches once it is spent and reports finished=False so the caller can
    continue later; memory stays one batch of ids whatever the table size.
    """
    now = timezone.now()
    deadline = time.monotonic() + budget.total_seconds() if budget is not None else None
    deleted: dict[str, int] = {}
    for prune in _prunes():
        queryset = prune.queryset(now)
        if dry_run:
            deleted[prune.name] = queryset.count()
            continue

        def step(after_id: int, prune=prune, queryset=queryset) -> Batch:
            ids = list(queryset.filter(pk__gt=after_id).order_by("pk").values_list("pk", flat=True)[:batch])
            if not ids:
                return Batch(0, None)
            # Re-applies the age filter: a row touched since the id was read is kept.
            doomed = queryset.filter(pk__in=ids)
            if prune.before_delete is not None:
                doomed = queryset.model._default_manager.filter(
                    pk__in=list(doomed.select_for_update().values_list("pk", flat=True))
                )
                prune.before_delete(doomed)
            # Counted: rows of the pruned table itself, not the rows that cascade with them.
            gone = doomed.delete()[1].get(queryset.model._meta.label, 0)
            return Batch(gone, ids[-1], more=len(ids) == batch)

        progress = run_batches(
            step, deadline=deadline,
            on_batch=None if on_batch is None else lambda p, name=prune.name: on_batch(name, p.rows),
        )
        deleted[prune.name] = progress.rows
        if not progress.done:
            return deleted, False
    return deleted, True


# --- monitor ----------------------------------------------------------------------------


def _pg_snapshot(cursor) -> dict:
    cursor.execute(
        "SELECT pg_database_size(current_database()),"
        " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
        " current_setting('max_connections')::int"
    )
    database_bytes, used, maximum = cursor.fetchone()
    cursor.execute(
        "SELECT relname, pg_total_relation_size(relid), n_live_tup, n_dead_tup,"
        "       last_autovacuum, last_vacuum"
        "  FROM pg_stat_user_tables ORDER BY pg_total_relation_size(relid) DESC LIMIT 50"
    )
    tables = []
    for name, size, live, dead, last_autovacuum, last_vacuum in cursor.fetchall():
        last = max(filter(None, [last_autovacuum, last_vacuum]), default=None)
        tables.append({
            "table": name, "bytes": size, "live_tuples": live, "dead_tuples": dead,
            "dead_ratio": round(dead / (live + dead), 4) if live + dead else 0.0,
            "last_vacuum": last.isoformat() if last else None,
        })
    # Queries only: their text stays out (it can carry customer data); pid and timing suffice.
    cursor.execute(
        "SELECT pid, usename, application_name, state, wait_event_type,"
        "       extract(epoch FROM now() - query_start)"
        "  FROM pg_stat_activity"
        " WHERE state <> 'idle' AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
        "   AND now() - query_start > %s ORDER BY query_start",
        [settings.DB_MONITOR_LONG_QUERY],
    )
    long_queries = [
        {"pid": pid, "user": user, "application": app, "state": state,
         "wait": wait, "seconds": round(float(seconds), 1)}
        for pid, user, app, state, wait, seconds in cursor.fetchall()
    ]
    return {
        "database_bytes": database_bytes, "connections": used, "max_connections": maximum,
        "tables": tables, "long_queries": long_queries,
    }


def _sqlite_snapshot(cursor) -> dict:
    cursor.execute("PRAGMA page_count")
    pages = cursor.fetchone()[0]
    cursor.execute("PRAGMA page_size")
    size = cursor.fetchone()[0]
    cursor.execute("PRAGMA freelist_count")
    free = cursor.fetchone()[0]
    return {
        "database_bytes": pages * size, "connections": None, "max_connections": None,
        "tables": [{"table": "*", "bytes": pages * size, "free_pages": free,
                    "dead_ratio": round(free / pages, 4) if pages else 0.0}],
        "long_queries": [],
    }


def breaches_of(snapshot: dict) -> list[str]:
    """The thresholds a snapshot passes, each as one line for the alert."""
    breaches = []
    if snapshot["max_connections"]:
        ratio = snapshot["connections"] / snapshot["max_connections"]
        if ratio >= settings.DB_MONITOR_CONNECTIONS_RATIO:
            breaches.append(
                f"connections {snapshot['connections']}/{snapshot['max_connections']} "
                f"({ratio:.0%} >= {settings.DB_MONITOR_CONNECTIONS_RATIO:.0%})"
            )
    for table in snapshot["tables"]:
        if (table.get("dead_tuples", 0) >= DEAD_TUPLES_FLOOR
                and table["dead_ratio"] >= settings.DB_MONITOR_DEAD_TUPLE_RATIO):
            breaches.append(
                f"table {table['table']}: {table['dead_ratio']:.0%} dead tuples "
                f"({table['dead_tuples']} dead)"
            )
    if snapshot["long_queries"]:
        pids = ", ".join(str(q["pid"]) for q in snapshot["long_queries"][:10])
        breaches.append(
            f"{len(snapshot['long_queries'])} queries running longer than "
            f"{settings.DB_MONITOR_LONG_QUERY} (pids {pids})"
        )
    return breaches


def database_snapshot_take(*, dry_run: bool = False) -> tuple[DbSnapshot, list[str]]:
    """Measure the database, store the snapshot (unless dry-run) and return it with its breaches."""
    conn = connections[DEFAULT_DB_ALIAS]
    with conn.cursor() as cursor:
        data = _pg_snapshot(cursor) if db.is_postgres() else _sqlite_snapshot(cursor)
    breaches = breaches_of(data)
    snapshot = DbSnapshot(vendor=conn.vendor, breaches=breaches, **data)
    if not dry_run:
        snapshot.save()
    return snapshot, breaches
