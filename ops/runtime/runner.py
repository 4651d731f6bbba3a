"""Runs one job: lock, ledger row, checked parameters, the body, follow-ups, after-run hooks.

`run_job` is what the Celery task, `runjob` and the demo call. A body that fans out
(`ctx.fan_out`) leaves its run open; `run_chunk` (the task `ops.job_chunk`, on any
worker) runs each part and the one that ends the last part closes the run, after the
job's closing step when it has one (`registry.job_close`).
"""
from __future__ import annotations

import logging
import time
import traceback as tb
from collections import Counter
from datetime import date

from django.utils import timezone

from checkout.celery import app
from ops.runtime import ledger
from ops.runtime.alerts import alerts_after_run
from ops.runtime.context import JobContext, ProgressCallback
from ops.runtime.dispatch import enqueue_job
from ops.runtime.errors import ChunkTakenOver, JobError, JobSkipped
from ops.runtime.heartbeat import chunk_key, heartbeat_start, heartbeat_stop
from ops.runtime.locks import try_acquire
from ops.runtime.models import JobChunk, JobRun
from ops.runtime.params import read_params
from ops.runtime.registry import Job, after_run_hooks, get_job

log = logging.getLogger("ops.jobs")

# The Celery task that runs one chunk of a run that fanned out (declared in ops.runtime.tasks).
CHUNK_TASK = "ops.job_chunk"


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
        if ledger.chunks_open(job.name):
            return ledger.run_skipped(
                job.name, trigger=trigger, reason=ledger.CHUNKS_OPEN, dry_run=dry_run, params=params,
                task_id=task_id, requested_by=requested_by,
            )
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
            if ctx.parts is not None and ctx.continuation is not None:
                raise JobError("a run that fans out to chunks does not also ask for a follow-up")
            if ctx.parts is not None and not (ctx.parts and not dry_run) and job.close is not None:
                # Nothing went to chunks: the closing step follows the body at once, under the lock.
                result = {**result, **(job.close(ctx) or {})}
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
            _failed(run, exc)
        finally:
            heartbeat_stop(run.pk)
            run.counts = dict(ctx.counts)
            if run.status == JobRun.Status.SUCCESS and ctx.parts and not dry_run:
                run.status = JobRun.Status.RUNNING
                chunks = ledger.run_fan_out(run, ctx.parts)
            else:
                run.finished_at = timezone.now()
                run.duration_ms = int((time.monotonic() - ctx.started) * 1000)
                ledger.run_close(run)

    if run.status == JobRun.Status.RUNNING:
        log.info("job=%s run=%s trigger=%s fanned out to %s chunks", job.name, run.pk, trigger, len(chunks))
        for chunk in chunks:
            _enqueue_chunk(job, chunk.pk)
        run.refresh_from_db()  # closed already where tasks run in-process (the demo)
        return run
    _run_closed(job, run, ctx if enqueue_followups else None)
    if error is not None and raise_errors:
        raise error
    return run


def _failed(run: JobRun, exc: Exception, during: str = "") -> None:
    """Mark the run failed with the exception (call it in the except block: the traceback is the current one,
    kept unless the failure is a JobError, whose message is the whole story)."""
    run.status = JobRun.Status.FAILED
    run.error = f"{during}{type(exc).__name__}: {exc}"[:4000]
    if not isinstance(exc, JobError):
        run.traceback = tb.format_exc()[-20000:]


def _run_closed(job: Job, run: JobRun, ctx: JobContext | None) -> None:
    """What follows a closed run: its log line, alerts, after-run hooks, and on success its follow-ups
    (`ctx` None: none are queued)."""
    trigger = run.trigger
    dry_run = run.dry_run
    _log_outcome(job, run, trigger)
    if not dry_run:
        alerts_after_run(run)
    for hook in after_run_hooks():
        try:
            hook(run)
        except Exception:  # a hook never changes the run's outcome
            log.exception("after-run hook %r failed for run %s of %s", hook, run.pk, job.name)

    if run.status == JobRun.Status.SUCCESS and not dry_run and ctx is not None:
        try:
            _enqueue_followups(job, ctx)
        except Exception as exc:  # the broker is down: the run stands, its follow-ups wait for their next turn
            log.warning("job=%s run=%s: follow-ups not queued: %s", job.name, run.pk, exc)


def _log_outcome(job: Job, run: JobRun, trigger: str) -> None:
    counts = " ".join(f"{k}={v}" for k, v in sorted(run.counts.items()))
    log.log(
        logging.ERROR if run.status == JobRun.Status.FAILED else logging.INFO,
        "job=%s run=%s trigger=%s status=%s dry_run=%s duration_ms=%s %s%s",
        job.name, run.pk, trigger, run.status, run.dry_run, run.duration_ms, counts,
        f" error={run.error!r}" if run.error else "",
    )


def _enqueue_chunk(job: Job, chunk_pk: int) -> None:
    try:
        limit = int(job.time_limit.total_seconds())
        app.tasks[CHUNK_TASK].apply_async(
            kwargs={"chunk_id": chunk_pk}, queue=job.queue, time_limit=limit + 60, soft_time_limit=limit,
        )
    except Exception as exc:  # the broker is down: the sweep sends a chunk left pending again
        log.warning("job=%s chunk=%s not queued: %s", job.name, chunk_pk, exc)


def chunk_enqueue(chunk: JobChunk) -> None:
    """Send a pending chunk's task (again): a second message for one chunk is harmless, only one
    attempt can claim it."""
    _enqueue_chunk(get_job(chunk.run.job), chunk.pk)


def run_chunk(chunk_pk: int, *, worker: str = "", task_id: str = "", retries_left: bool = False) -> JobChunk | None:
    """Claim chunk `chunk_pk` and run its part through its job's body in this process; None when
    another attempt holds it or it is over (a second message for it).

    A failing part is handed back for the task's retry while `retries_left`, else it fails its run;
    the exception goes on to the caller either way.
    """
    chunk = ledger.chunk_claim(chunk_pk, worker=worker, task_id=task_id)
    if chunk is None:
        log.info("chunk=%s not claimed: another attempt holds it or it is over", chunk_pk)
        return None
    run = chunk.run
    job = get_job(run.job)
    day = run.params.get("date")
    progress = chunk.progress or {}
    ctx = JobContext(
        job=job, run=run, trigger=run.trigger, date=date.fromisoformat(day) if day else None,
        part=dict(chunk.params), attempt=chunk.attempt, chunk_pk=chunk.pk,
        resume=dict(progress.get("state") or {}), counts=Counter(progress.get("counts") or {}),
    )
    if ctx.resume:
        log.info("job=%s run=%s chunk=%s attempt=%s resumes at %s with %s", job.name, run.pk, chunk.index,
                 chunk.attempt, ctx.resume, dict(ctx.counts))
    heartbeat_start(chunk_key(chunk.pk), ctx.counts)
    try:
        ctx.params = read_params(job.name, job.params, run.params)
        job.func(ctx)
        if ctx.continuation is not None:
            raise JobError("a chunk does not ask for a follow-up: its run's next scheduled turn goes on")
    except JobSkipped:
        pass  # nothing of this part was left to do
    except ChunkTakenOver as exc:
        # A newer attempt holds the chunk: it ends it and counts it; this one leaves it alone.
        heartbeat_stop(chunk_key(chunk.pk))
        log.warning("job=%s run=%s chunk=%s: %s", job.name, run.pk, chunk.index, exc)
        return None
    except Exception as exc:
        heartbeat_stop(chunk_key(chunk.pk))
        message = f"{type(exc).__name__}: {exc}"
        if retries_left and (not isinstance(exc, JobError) or exc.retryable):
            ledger.chunk_release(chunk, message)
        else:
            _chunk_end(job, chunk, JobChunk.Status.FAILED, dict(ctx.counts), message)
        raise
    heartbeat_stop(chunk_key(chunk.pk))
    _chunk_end(job, chunk, JobChunk.Status.DONE, dict(ctx.counts))
    return chunk


def _chunk_end(job: Job, chunk: JobChunk, status: str, counts: dict, error: str = "", lost: bool = False) -> None:
    counted, closed = ledger.chunk_finish(
        chunk, status=status, counts=counts, error=error, lost=lost, closes=job.close is not None,
    )
    log.log(
        logging.INFO if status == JobChunk.Status.DONE else logging.ERROR,
        "job=%s run=%s chunk=%s attempt=%s status=%s %s%s", job.name, chunk.run_id, chunk.index, chunk.attempt,
        status, " ".join(f"{k}={v}" for k, v in sorted(counts.items())),
        "" if counted else " (not counted: the chunk was handed to another attempt)",
    )
    if closed is not None and closed.status == JobRun.Status.RUNNING:
        _close_step(job, closed)
    if closed is not None:
        _run_closed(job, closed, JobContext(job=job, run=closed, trigger=closed.trigger))


def _close_step(job: Job, run: JobRun) -> None:
    """Run the closing step of a run whose chunks are all done, then close the run with its outcome."""
    day = run.params.get("date")
    ctx = JobContext(
        job=job, run=run, trigger=run.trigger, date=date.fromisoformat(day) if day else None,
        counts=Counter(run.counts),
    )
    heartbeat_start(run.pk, ctx.counts)
    try:
        ctx.params = read_params(job.name, job.params, run.params)
        run.result = {**run.result, **(job.close(ctx) or {})}
        run.status = JobRun.Status.SUCCESS
    except Exception as exc:  # the ledger records it; the chunks' work stands
        _failed(run, exc, during="closing step: ")
    finally:
        heartbeat_stop(run.pk)
    run.counts = dict(ctx.counts)
    run.finished_at = timezone.now()
    run.duration_ms = max(int((run.finished_at - run.started_at).total_seconds() * 1000), 0)
    ledger.run_close(run)


def chunk_lost(chunk: JobChunk, error: str) -> None:
    """Fail a chunk whose worker was lost too often (the sweep's call), closing its run if it was the last."""
    _chunk_end(get_job(chunk.run.job), chunk, JobChunk.Status.FAILED, {}, error, lost=True)


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
