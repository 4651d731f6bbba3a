"""Runs whose worker was lost: failed within a minute of their last heartbeat, and run again when due.

A run's heartbeat (ops.runtime.heartbeat) stops when its process is killed, runs
out of memory or freezes. The leading beat calls `runs_sweep` every few seconds;
it fails every run still "running" whose heartbeat is older than RUN_LOST_AFTER (a
conditional UPDATE, so two sweepers never both act on one run), frees a lease lock
its process held, and queues the job again (trigger retry) when the lost run was
scheduled work rather than a run by hand. An advisory lock frees itself: the server ends a dead client's session
(see ops.runtime.locks for the keepalives that bound how long that takes).
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from ops.runtime.dispatch import enqueue_job
from ops.runtime.models import JobLease, JobRun
from ops.runtime.registry import UnknownJob, get_job

log = logging.getLogger("ops.jobs")

# Six missed heartbeats: long enough for a busy database to delay a few of them.
RUN_LOST_AFTER = timedelta(seconds=30)
WORKER_LOST_PREFIX = "worker lost"
WORKER_LOST = WORKER_LOST_PREFIX + ": no heartbeat since {since} (the process running it died or froze)"
# Runs worth running again once their worker is lost: those the schedule asked for.
REQUEUED_TRIGGERS = (
    JobRun.Trigger.BEAT, JobRun.Trigger.CATCH_UP, JobRun.Trigger.CONTINUATION, JobRun.Trigger.CHAIN,
    JobRun.Trigger.RETRY,
)


def runs_sweep(*, now: datetime | None = None, lost_after: timedelta = RUN_LOST_AFTER) -> dict[str, int]:
    """Fail the runs whose heartbeat stopped, free their leases, queue their jobs again; returns counts."""
    now = now or timezone.now()
    cutoff = now - lost_after
    stale = list(
        JobRun.objects.filter(status=JobRun.Status.RUNNING)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
        .values("pk", "job", "trigger", "dry_run", "params", "host", "pid", "heartbeat_at", "started_at")
    )
    counts = {"lost": 0, "requeued": 0, "leases_freed": 0}
    for run in stale:
        since = run["heartbeat_at"] or run["started_at"]
        failed = JobRun.objects.filter(pk=run["pk"], status=JobRun.Status.RUNNING, heartbeat_at=run["heartbeat_at"]).update(
            status=JobRun.Status.FAILED, finished_at=now, error=WORKER_LOST.format(since=since.isoformat()),
        )
        if not failed:
            continue  # it beat, finished or was swept meanwhile
        counts["lost"] += 1
        counts["leases_freed"] += JobLease.objects.filter(
            job=run["job"], holder__startswith=f"{run['host']}:{run['pid']}:"
        ).delete()[0]
        log.error("job=%s run=%s status=failed reason=worker lost (last heartbeat %s)", run["job"], run["pk"], since)
        if run["trigger"] in REQUEUED_TRIGGERS and not run["dry_run"] and _registered(run["job"]):
            try:
                enqueue_job(run["job"], trigger=JobRun.Trigger.RETRY, params=dict(run["params"] or {}))
            except Exception as exc:  # the broker is down too: the next scheduled run does the work
                log.warning("job=%s run=%s not queued again: %s", run["job"], run["pk"], exc)
                continue
            counts["requeued"] += 1
    return counts


def _registered(name: str) -> bool:
    try:
        get_job(name)
    except UnknownJob:
        return False
    return True
