"""Runs whose worker was lost: failed within a minute of their last heartbeat, and run again when due.

A run's heartbeat (ops.runtime.heartbeat) stops when its process is killed, runs
out of memory or freezes. The leading beat calls `runs_sweep` every few seconds;
it fails every run still "running" whose heartbeat is older than RUN_LOST_AFTER (a
conditional UPDATE, so two sweepers never both act on one run), frees a lease lock
its process held, and queues the job again (trigger retry) when the lost run was
scheduled work rather than a run by hand. An advisory lock frees itself: the server ends a dead client's session
(see ops.runtime.locks for the keepalives that bound how long that takes).

Chunks of a run that fanned out are swept the same way: one whose heartbeat stopped is
handed back (pending) and sent again for another worker to take over (from its last
checkpoint, see JobContext.checkpoint), until its workers were
lost CHUNK_MAX_LOST times, when it fails (its run closing failed once no chunk is left);
a chunk still pending long after it was sent (its message lost with a broker, or held by a
killed worker's prefetch) is sent again. A run waiting for its chunks has no heartbeat of
its own and is not lost while it has chunks to do; once they are done, the process running its
closing step beats for it, and a run whose closer died is failed like any other.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.db.models import Q
from django.utils import timezone

from ops.runtime.dispatch import enqueue_job
from ops.runtime.ledger import OPEN_CHUNK
from ops.runtime.models import JobChunk, JobLease, JobRun
from ops.runtime.registry import UnknownJob, get_job
from ops.runtime.runner import chunk_enqueue, chunk_lost

log = logging.getLogger("ops.jobs")

# Six missed heartbeats: long enough for a busy database to delay a few of them.
RUN_LOST_AFTER = timedelta(seconds=30)
WORKER_LOST_PREFIX = "worker lost"
WORKER_LOST = WORKER_LOST_PREFIX + ": no heartbeat since {since} (the process running it died or froze)"
# A chunk whose worker was lost this many times is not redone again: it fails its run.
CHUNK_MAX_LOST = 3
# A chunk still pending this long after it was sent is sent again (only one attempt can claim it).
CHUNK_RESEND_AFTER = timedelta(minutes=5)
# Runs worth running again once their worker is lost: those the schedule asked for.
REQUEUED_TRIGGERS = (
    JobRun.Trigger.BEAT, JobRun.Trigger.CATCH_UP, JobRun.Trigger.CONTINUATION, JobRun.Trigger.CHAIN,
    JobRun.Trigger.RETRY,
)


def runs_sweep(*, now: datetime | None = None, lost_after: timedelta = RUN_LOST_AFTER,
               resend_after: timedelta = CHUNK_RESEND_AFTER) -> dict[str, int]:
    """Fail the runs whose heartbeat stopped, free their leases, queue their jobs again; hand lost
    chunks to other workers (chunks_sweep); returns counts."""
    now = now or timezone.now()
    cutoff = now - lost_after
    stale = list(
        JobRun.objects.filter(status=JobRun.Status.RUNNING)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
        .exclude(chunks__status__in=OPEN_CHUNK)
        .values("pk", "job", "trigger", "dry_run", "params", "host", "pid", "heartbeat_at", "started_at")
    )
    counts = {"lost": 0, "requeued": 0, "leases_freed": 0}
    # The chunks' counts are named only when the sweep found some.
    chunk_counts = chunks_sweep(now=now, lost_after=lost_after, resend_after=resend_after)
    counts.update({key: n for key, n in chunk_counts.items() if n})
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


def chunks_sweep(*, now: datetime, lost_after: timedelta, resend_after: timedelta) -> dict[str, int]:
    """Hand back (and send again) the chunks whose worker was lost, fail those lost too often, and
    send again the chunks pending since long before `resend_after`."""
    counts = {"chunks_lost": 0, "chunks_resent": 0}
    stale = JobChunk.objects.filter(status=JobChunk.Status.RUNNING, heartbeat_at__lt=now - lost_after)
    for chunk in stale.select_related("run"):
        since = chunk.heartbeat_at.isoformat()
        error = WORKER_LOST.format(since=since) + f" on {chunk.worker or chunk.host}"
        if not _registered(chunk.run.job):
            continue
        counts["chunks_lost"] += 1
        log.error("job=%s run=%s chunk=%s attempt=%s: worker lost (last heartbeat %s)",
                  chunk.run.job, chunk.run_id, chunk.index, chunk.attempt, since)
        if chunk.lost + 1 >= CHUNK_MAX_LOST:
            chunk_lost(chunk, error)
            continue
        handed_back = JobChunk.objects.filter(
            pk=chunk.pk, status=JobChunk.Status.RUNNING, attempt=chunk.attempt, heartbeat_at=chunk.heartbeat_at,
        ).update(status=JobChunk.Status.PENDING, lost=chunk.lost + 1, error=error, queued_at=now)
        if handed_back:
            counts["chunks_resent"] += 1
            chunk_enqueue(chunk)
    waiting = JobChunk.objects.filter(status=JobChunk.Status.PENDING, queued_at__lt=now - resend_after)
    for chunk in waiting.select_related("run"):
        if _registered(chunk.run.job) and JobChunk.objects.filter(
            pk=chunk.pk, status=JobChunk.Status.PENDING, queued_at=chunk.queued_at,
        ).update(queued_at=now):
            counts["chunks_resent"] += 1
            chunk_enqueue(chunk)
    return counts


def _registered(name: str) -> bool:
    try:
        get_job(name)
    except UnknownJob:
        return False
    return True
