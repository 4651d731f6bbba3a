"""Runs one job: lock, ledger row, checked parameters, the body, follow-ups, after-run hooks.

`run_job` is what the Celery task, `runjob` and the demo call.
"""
from __future__ import annotations

import logging
import time
import traceback as tb
from datetime import date

from django.utils import timezone

from ops.runtime import ledger
from ops.runtime.alerts import alerts_after_run
from ops.runtime.context import JobContext, ProgressCallback
from ops.runtime.dispatch import enqueue_job
from ops.runtime.errors import JobError, JobSkipped
from ops.runtime.heartbeat import heartbeat_start, heartbeat_stop
from ops.runtime.locks import try_acquire
from ops.runtime.models import JobRun
from ops.runtime.params import read_params
from ops.runtime.registry import Job, after_run_hooks, get_job

log = logging.getLogger("ops.jobs")


def _chunk_of(params: dict) -> int:
    chunk = params.get("chunk", 0)
    return chunk if isinstance(chunk, int) and not isinstance(chunk, bool) and chunk >= 0 else 0


def run_job(
    name: str,
    *,
    trigger: str = JobRun.Trigger.MANUAL,
    dry_run: bool = False,
    day: date | None = None,
    params: dict | None = None,
    task_id: str = "",
    requested_by: str = "",
    on_progress: ProgressCallback | None = None,
    raise_errors: bool = False,
    enqueue_followups: bool = True,
) -> JobRun:
    """Run job `name` now in this process, under its lock, and return its ledger row."""
    job = get_job(name)
    params = dict(params or {})
    if day is not None:
        params["date"] = day.isoformat()

    lock = try_acquire(job.name)
    if lock is None:
        return ledger.run_skipped(
            job.name, trigger=trigger, reason=ledger.LOCK_HELD, dry_run=dry_run, params=params, task_id=task_id,
            requested_by=requested_by,
        )

    with lock:
        run = ledger.run_open(
            job.name, trigger=trigger, dry_run=dry_run, params=params, task_id=task_id, requested_by=requested_by,
        )
        ctx = JobContext(
            job=job, run=run, trigger=trigger, dry_run=dry_run, date=day, chunk=_chunk_of(params),
            on_progress=on_progress,
        )
        error: BaseException | None = None
        heartbeat_start(run.pk, ctx.counts)
        try:
            ctx.params = read_params(job.name, job.params, params)
            result = job.func(ctx) or {}
            run.status = JobRun.Status.SUCCESS
            run.result = result
            if ctx.continuation is not None or ctx.chunk:
                # The runtime's own account of the chunks: which one this was, and what comes next.
                run.result = {**result, "chunk": ctx.chunk, "next_chunk": (
                    "none" if ctx.continuation is None else "capped" if ctx.last_chunk else "queued"
                )}
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
            heartbeat_stop(run.pk)
            run.finished_at = timezone.now()
            run.duration_ms = int((time.monotonic() - ctx.started) * 1000)
            run.counts = dict(ctx.counts)
            ledger.run_close(run)

    _log_outcome(job, run, trigger)
    if not dry_run:
        alerts_after_run(run)
    for hook in after_run_hooks():
        try:
            hook(run)
        except Exception:  # a hook never changes the run's outcome
            log.exception("after-run hook %r failed for run %s of %s", hook, run.pk, job.name)

    if run.status == JobRun.Status.SUCCESS and not dry_run and enqueue_followups:
        try:
            _enqueue_followups(job, ctx)
        except Exception as exc:  # the broker is down: the run stands, its follow-ups wait for their next turn
            log.warning("job=%s run=%s: follow-ups not queued: %s", job.name, run.pk, exc)

    if error is not None and raise_errors:
        raise error
    return run


def _log_outcome(job: Job, run: JobRun, trigger: str) -> None:
    counts = " ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))
    log.log(
        logging.ERROR if run.status == JobRun.Status.FAILED else logging.INFO,
        "job=%s run=%s trigger=%s status=%s dry_run=%s duration_ms=%s %s%s",
        job.name, run.pk, trigger, run.status, run.dry_run, run.duration_ms, counts,
        f" error={run.error!r}" if run.error else "",
    )


def _enqueue_followups(job: Job, ctx: JobContext) -> None:
    if ctx.continuation is not None:
        if ctx.last_chunk:
            # The backlog waits for the next scheduled run, which starts again at chunk 0.
            log.warning("job=%s run=%s: more work left after %s chunks; the next scheduled run goes on",
                        job.name, ctx.run.pk, job.max_chunks)
        else:
            enqueue_job(
                job.name, trigger=JobRun.Trigger.CONTINUATION,
                params={**ctx.continuation["params"], "chunk": ctx.chunk + 1},
                countdown=ctx.continuation["countdown"],
            )
    for follower in job.then:
        enqueue_job(follower, trigger=JobRun.Trigger.CHAIN)
