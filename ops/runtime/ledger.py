"""Writes of the run ledger: a row for every run of a job, skipped and dry runs included."""
from __future__ import annotations

import logging
import os
import socket

from django.utils import timezone

from ops.runtime.models import JobRun

log = logging.getLogger("ops.jobs")

# The reason recorded when the job's lock is taken; `runjob` exits 3 on it.
LOCK_HELD = "another run of this job holds its lock"
HOLDER_DIED = "the process running it died (its lock was found free)"


def _where() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def run_skipped(job: str, *, trigger: str, reason: str, dry_run: bool = False, params: dict | None = None,
                task_id: str = "", requested_by: str = "") -> JobRun:
    """A ledger row for a run that was not made (lock held, too late to catch up, chain stopped...)."""
    now = timezone.now()
    run = JobRun.objects.create(
        job=job, trigger=trigger, dry_run=dry_run, params=params or {}, status=JobRun.Status.SKIPPED,
        started_at=now, finished_at=now, duration_ms=0, error=reason, task_id=task_id or "",
        requested_by=requested_by, **_where(),
    )
    log.info("job=%s run=%s status=skipped reason=%s", job, run.pk, reason)
    return run


def run_open(job: str, *, trigger: str, dry_run: bool, params: dict, task_id: str = "",
             requested_by: str = "") -> JobRun:
    """The row of a run starting now. Call it holding the job's lock: a row of the job still
    "running" then belongs to a process that died mid-run, and is failed first."""
    JobRun.objects.filter(job=job, status=JobRun.Status.RUNNING).update(
        status=JobRun.Status.FAILED, finished_at=timezone.now(), error=HOLDER_DIED,
    )
    now = timezone.now()
    return JobRun.objects.create(
        job=job, trigger=trigger, dry_run=dry_run, params=params, status=JobRun.Status.RUNNING,
        started_at=now, heartbeat_at=now, task_id=task_id or "", requested_by=requested_by, **_where(),
    )


def run_close(run: JobRun) -> None:
    """Store how the run ended (status, result, error, counts, duration) on its row."""
    run.save(update_fields=["status", "result", "error", "traceback", "finished_at", "duration_ms", "counts"])
