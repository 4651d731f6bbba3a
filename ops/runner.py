"""Runs one job: lock, ledger row, context for the job body, follow-ups.

`run_job` is what the Celery task, `runjob` and the demo call. A job body is a
plain function `func(ctx) -> dict | None`; it reports what it did through
`ctx.add(...)` and may ask for a follow-up chunk with `ctx.continue_later(...)`.
"""
from __future__ import annotations

import logging
import os
import socket
import time
import traceback as tb
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Callable
from zoneinfo import ZoneInfo

from django.conf import settings
from django.utils import timezone

from ops.locks import try_acquire
from ops.models import JobRun
from ops.registry import Job, get_job

log = logging.getLogger("ops.jobs")

ProgressCallback = Callable[[int, int | None, str], None]


# The reason recorded when the job's lock is taken; `runjob` exits 3 on it.
LOCK_HELD = "another run of this job holds its lock"


class JobSkipped(Exception):
    """Raised by a job body that decides not to run (the reason is recorded)."""


class JobError(Exception):
    """A clear, expected failure (the message is the whole story; no traceback needed)."""


def local_zone() -> ZoneInfo:
    return ZoneInfo(settings.CHECKOUT_TIME_ZONE)


def local_today() -> date:
    return timezone.now().astimezone(local_zone()).date()


def local_day_bounds(day: date) -> tuple[datetime, datetime]:
    """[start, end) of a local calendar day as aware datetimes (23 or 25 h long across DST)."""
    zone = local_zone()
    start = datetime.combine(day, datetime.min.time(), tzinfo=zone)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=zone)
    return start, end


@dataclass
class JobContext:
    job: Job
    run: JobRun
    trigger: str
    dry_run: bool = False
    date: date | None = None
    params: dict = field(default_factory=dict)
    counts: Counter = field(default_factory=Counter)
    on_progress: ProgressCallback | None = None
    continuation: dict | None = None

    @property
    def log(self) -> logging.Logger:
        return logging.getLogger(f"ops.jobs.{self.job.name}")

    def add(self, key: str, n: int = 1) -> None:
        """Count something the run did (deleted=…, captured=…); stored in the ledger."""
        self.counts[key] += n

    def progress(self, done: int, total: int | None = None, label: str = "") -> None:
        if self.on_progress is not None:
            self.on_progress(done, total, label)

    def continue_later(self, countdown: float = 0, **params) -> None:
        """Ask for a follow-up run (any worker may take it) once this one has released the lock."""
        self.continuation = {"countdown": countdown, "params": params}


def _record_skip(job: Job, trigger: str, dry_run: bool, params: dict, task_id: str, reason: str) -> JobRun:
    now = timezone.now()
    run = JobRun.objects.create(
        job=job.name, trigger=trigger, dry_run=dry_run, params=params, status=JobRun.Status.SKIPPED,
        started_at=now, finished_at=now, duration_ms=0, error=reason,
        host=socket.gethostname(), pid=os.getpid(), task_id=task_id or "",
    )
    log.info("job=%s run=%s status=skipped reason=%s", job.name, run.pk, reason)
    return run


def record_skip(name: str, *, trigger: str, reason: str, params: dict | None = None, task_id: str = "") -> JobRun:
    """A ledger row for a run that was not made (too late to catch up, chain stopped...)."""
    return _record_skip(get_job(name), trigger, False, params or {}, task_id, reason)


def run_job(
    name: str,
    *,
    trigger: str = JobRun.Trigger.MANUAL,
    dry_run: bool = False,
    day: date | None = None,
    params: dict | None = None,
    task_id: str = "",
    on_progress: ProgressCallback | None = None,
    raise_errors: bool = False,
    enqueue_followups: bool = True,
) -> JobRun:
    """Run job `name` now in this process, under its lock, and return its ledger row."""
    job = get_job(name)
    params = dict(params or {})
    if day is not None:
        params["date"] = day.isoformat()

    lock = try_acquire(job.name, lease=job.time_limit)
    if lock is None:
        return _record_skip(job, trigger, dry_run, params, task_id, LOCK_HELD)

    with lock:
        # Holding the lock proves that no other run of the job is alive: a row still
        # "running" belongs to a process that died mid-run.
        JobRun.objects.filter(job=job.name, status=JobRun.Status.RUNNING).update(
            status=JobRun.Status.FAILED, finished_at=timezone.now(),
            error="the process running it died (its lock was found free)",
        )
        run = JobRun.objects.create(
            job=job.name, trigger=trigger, dry_run=dry_run, params=params,
            status=JobRun.Status.RUNNING, started_at=timezone.now(),
            host=socket.gethostname(), pid=os.getpid(), task_id=task_id or "",
        )
        ctx = JobContext(
            job=job, run=run, trigger=trigger, dry_run=dry_run, date=day,
            params=params, on_progress=on_progress,
        )
        started = time.monotonic()
        error: BaseException | None = None
        try:
            result = job.func(ctx) or {}
            run.status = JobRun.Status.SUCCESS
            run.result = result
        except JobSkipped as exc:
            run.status = JobRun.Status.SKIPPED
            run.error = str(exc)
        except Exception as exc:  # the ledger records every failure; the caller decides on retries
            error = exc
            run.status = JobRun.Status.FAILED
            run.error = f"{type(exc).__name__}: {exc}"[:4000]
            if not isinstance(exc, JobError):
                run.traceback = tb.format_exc()[-20000:]
        finally:
            run.finished_at = timezone.now()
            run.duration_ms = int((time.monotonic() - started) * 1000)
            run.counts = dict(ctx.counts)
            run.save(update_fields=[
                "status", "result", "error", "traceback", "finished_at", "duration_ms", "counts",
            ])

    counts = " ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))
    log.log(
        logging.ERROR if run.status == JobRun.Status.FAILED else logging.INFO,
        "job=%s run=%s trigger=%s status=%s dry_run=%s duration_ms=%s %s%s",
        job.name, run.pk, trigger, run.status, dry_run, run.duration_ms, counts,
        f" error={run.error!r}" if run.error else "",
    )

    if not dry_run:
        from ops.alerts import alerts_after_run

        alerts_after_run(run)

    if run.status == JobRun.Status.SUCCESS and not dry_run and enqueue_followups:
        from ops.tasks import enqueue_job

        if ctx.continuation is not None:
            enqueue_job(
                job.name, trigger=JobRun.Trigger.CONTINUATION,
                params=ctx.continuation["params"], countdown=ctx.continuation["countdown"],
            )
        for follower in job.then:
            enqueue_job(follower, trigger=JobRun.Trigger.CHAIN)

    if error is not None and raise_errors:
        raise error
    return run
