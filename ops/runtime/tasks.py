"""Celery side of the runtime: a task per job, the background-task decorator,
retries with capped full-jitter backoff, dead letters after the last retry, and
the runtime's own periodic tasks (outbox relay, alert evaluation).

Nothing here sleeps: a retry is `task.retry(countdown=...)`, so the worker is
free while it waits. The task of each job is made when the job is registered:
this module watches the registry.
"""
from __future__ import annotations

import logging
import random
import time
import traceback as tb
from datetime import date
from functools import wraps
from typing import Callable

from celery.exceptions import Ignore, Retry
from celery.signals import worker_init, worker_process_init
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from checkout.celery import VISIBILITY_TIMEOUT, app
from ops.runtime import locks, metrics, registry
from ops.runtime.alerts import alerts_evaluate
from ops.runtime.dispatch import TASK_QUEUES
from ops.runtime.errors import JobError
from ops.runtime.ledger import HOLDER_DIED
from ops.runtime.models import DeadLetter, JobChunk, JobRun
from ops.runtime.outbox import outbox_relay
from ops.runtime.registry import Job
from ops.runtime.runner import CHUNK_TASK, run_chunk, run_job
from ops.runtime.sweep import WORKER_LOST_PREFIX

log = logging.getLogger(__name__)


@worker_init.connect
@worker_process_init.connect
def _keep_lock_connections(**_) -> None:
    # A worker runs many jobs: keep its lock connection instead of opening one per run.
    locks.keep_lock_connections()


def backoff_countdown(retries: int, base: float = 2.0, cap: float = 30.0, rng=random) -> float:
    """Full jitter: uniform in [0, min(cap, base ** (retries + 1))] seconds.

    retries is how many retries already happened (0 before the first), so the
    ceilings run 2, 4, 8, 16, 30, 30... with the defaults.
    """
    ceiling = min(cap, base ** (retries + 1))
    return rng.uniform(0, ceiling)


def _note_failure(task, exc: BaseException, *, final: bool) -> bool:
    """Upsert the task's dead-letter row: retrying while attempts remain, dead after; False when the
    row could not be written (the database is what failed, most often)."""
    request = task.request
    now = timezone.now()
    attempts = request.retries + 1
    fields = {
        "task_name": task.name,
        "queue": (request.delivery_info or {}).get("routing_key", "") or TASK_QUEUES.get(task.name, ""),
        "args": list(request.args or []),
        "kwargs": dict(request.kwargs or {}),
        "state": DeadLetter.State.DEAD if final else DeadLetter.State.RETRYING,
        "attempts": attempts,
        "error": f"{type(exc).__name__}: {exc}"[:4000],
        "traceback": "".join(tb.format_exception(exc))[-20000:],
        "last_failed_at": now,
    }
    task_id = request.id or f"local-{time.time_ns()}"
    recorded = True
    try:
        with transaction.atomic():
            updated = DeadLetter.objects.filter(task_id=task_id).update(**fields)
            if not updated:
                DeadLetter.objects.create(task_id=task_id, first_failed_at=now, **fields)
    except Exception:  # the database may be what failed; the log line still tells
        log.exception("could not record failure of task %s %s", task.name, task_id)
        recorded = False
    log.log(
        logging.ERROR if final else logging.WARNING,
        "task=%s id=%s attempt=%s %s: %s", task.name, task_id, attempts,
        "will retry" if not final else "dead" if recorded else "dead but not recorded, will retry",
        fields["error"],
    )
    return recorded


def _note_recovered(task) -> None:
    if task.request.retries and task.request.id:
        DeadLetter.objects.filter(
            task_id=task.request.id, state=DeadLetter.State.RETRYING
        ).update(state=DeadLetter.State.RECOVERED, resolved_at=timezone.now())


def _bury(task, exc: BaseException, *, base: float, cap: float) -> None:
    """Make the task a dead letter. When its row cannot be written (the database is down), the task
    is retried instead, past its retries: acknowledged with no row, it would be lost without a trace."""
    if not _note_failure(task, exc, final=True):
        countdown = backoff_countdown(task.request.retries, base, cap)
        raise task.retry(exc=exc, countdown=countdown, max_retries=task.request.retries + 1)


def _retry_or_bury(task, exc: BaseException, *, base: float, cap: float, retryable: bool):
    if retryable and task.request.retries < task.max_retries:
        _note_failure(task, exc, final=False)
        countdown = backoff_countdown(task.request.retries, base, cap)
        raise task.retry(exc=exc, countdown=countdown)
    _bury(task, exc, base=base, cap=cap)
    raise exc


# A message whose worker died under it this many times (out of memory, a crash in a C
# extension) is not run again: it goes to the dead letters with the reason. Job tasks count
# the lost runs in their ledger; background tasks count redeliveries in Redis.
MAX_LOST_DELIVERIES = 3


def background_task(
    name: str,
    *,
    queue: str = "default",
    max_retries: int = 3,
    backoff_base: float = 2.0,
    backoff_cap: float = 30.0,
    retry_on: tuple[type[BaseException], ...] = (Exception,),
    time_limit: int = 300,
    **options,
) -> Callable:
    """Declare a background task with the runtime's retry, dead-letter and metrics policy.

    The function takes plain values (ids, strings) and does its work through a service.
    Exceptions in `retry_on` are retried with backoff; others go straight to the dead letters.
    """

    def decorate(func: Callable):
        TASK_QUEUES[name] = queue

        @app.task(
            name=name, bind=True, acks_late=True, max_retries=max_retries,
            time_limit=time_limit, soft_time_limit=max(time_limit - 10, 1), **options,
        )
        @wraps(func)
        def task(self, *args, **kwargs):
            redelivered = bool((self.request.delivery_info or {}).get("redelivered")) and bool(self.request.id)
            if redelivered and metrics.redelivery_count(self.request.id) >= MAX_LOST_DELIVERIES:
                # Poison: the broker keeps giving this message back because its worker dies on it.
                _bury(self, RuntimeError(f"its worker died {MAX_LOST_DELIVERIES} times running it (poison task)"),
                      base=backoff_base, cap=backoff_cap)
                metrics.redelivery_forget(self.request.id)
                raise Ignore()
            started = time.monotonic()
            try:
                result = func(*args, **kwargs)
            except (Retry, Ignore):
                raise
            except Exception as exc:
                metrics.record_task(name, "failed", time.monotonic() - started)
                _retry_or_bury(
                    self, exc, base=backoff_base, cap=backoff_cap,
                    retryable=isinstance(exc, retry_on),
                )
            finally:
                if redelivered:
                    metrics.redelivery_forget(self.request.id)
            metrics.record_task(name, "succeeded", time.monotonic() - started)
            _note_recovered(self)
            return result

        task.retry_policy = {"base": backoff_base, "cap": backoff_cap, "max_retries": max_retries}
        return task

    return decorate


def _lost_deliveries(task_id: str) -> int:
    return JobRun.objects.filter(task_id=task_id, status=JobRun.Status.FAILED).filter(
        Q(error__startswith=WORKER_LOST_PREFIX) | Q(error=HOLDER_DIED)
    ).count()


def _run_of(task_id: str, *, succeeded: bool = False) -> int | None:
    """The run a message of this task id already made (with `succeeded`, one that succeeded), if any."""
    runs = JobRun.objects.filter(task_id=task_id)
    if succeeded:
        runs = runs.filter(status=JobRun.Status.SUCCESS)
    return runs.values_list("pk", flat=True).first()


def register_job_task(job: Job) -> None:
    """Make the Celery task `jobs.<name>` that runs the job through run_job."""
    limit = int(job.time_limit.total_seconds())
    if limit + 60 >= VISIBILITY_TIMEOUT:
        raise ImproperlyConfigured(
            f"job {job.name}: a time limit of {limit} s does not fit the broker's visibility timeout "
            f"({VISIBILITY_TIMEOUT} s): a run still going would be delivered again"
        )

    def run(self, trigger: str = JobRun.Trigger.BEAT, dry_run: bool = False,
            date: str | None = None, params: dict | None = None, requested_by: str = ""):
        if self.request.retries:
            trigger = JobRun.Trigger.RETRY
        redelivered = bool((self.request.delivery_info or {}).get("redelivered")) and bool(self.request.id)
        try:
            lost = _lost_deliveries(self.request.id) if redelivered else 0
            # A first delivery of a message whose task id already has a run is a copy: a slot sent again by
            # a beat that took the lead from one which died before the broker confirmed it (ops.runtime.scheduler).
            # A redelivery is a copy only once a run of it succeeded (its worker died before acknowledging).
            ran = _run_of(self.request.id, succeeded=redelivered) if (
                self.request.id and (redelivered or not self.request.retries)) else None
        except Exception as exc:  # these need the database: without it the run is retried, not dropped
            _retry_or_bury(self, exc, base=job.backoff_base, cap=job.backoff_cap, retryable=True)
        if ran is not None:
            log.info("job=%s task %s ran already (run %s): this copy of its message is dropped", job.name,
                     self.request.id, ran)
            return {"run_id": ran, "status": "duplicate", "counts": {}}
        if lost >= MAX_LOST_DELIVERIES:
            # Poison: every delivery of this message killed its worker. Stop here, say why.
            exc = RuntimeError(f"its worker died {MAX_LOST_DELIVERIES} times running it (poison task)")
            _bury(self, exc, base=job.backoff_base, cap=job.backoff_cap)
            raise Ignore()
        day = _parse_day(date)
        try:
            ledger = run_job(
                job.name, trigger=trigger, dry_run=dry_run, day=day, params=params,
                task_id=self.request.id or "", requested_by=requested_by, raise_errors=True,
            )
        except Exception as exc:
            retryable = not isinstance(exc, JobError) or exc.retryable
            _retry_or_bury(self, exc, base=job.backoff_base, cap=job.backoff_cap, retryable=retryable)
        _note_recovered(self)
        return {"run_id": ledger.pk, "status": ledger.status, "counts": ledger.counts}

    run.__name__ = f"job_{job.name}"
    run.__doc__ = job.description
    TASK_QUEUES[job.task_name] = job.queue
    # A JobError is the whole story (a bad parameter, a missing credential): the worker logs it in one
    # line, with no traceback.
    app.task(
        run, name=job.task_name, bind=True, acks_late=True, throws=(JobError,),
        max_retries=job.max_retries, time_limit=limit + 60, soft_time_limit=limit,
    )


@app.task(name=CHUNK_TASK, bind=True, acks_late=True, throws=(JobError,), max_retries=3)
def job_chunk(self, chunk_id: int):
    """Run one chunk of a run that fanned out, on whichever worker took the message (any host).

    The chunk's row is claimed first: a second message for it (a redelivery, the sweep's resend)
    finds it taken or over and does nothing. A failing part is retried with the job's backoff, then
    fails its run and goes to the dead letters.
    """
    try:
        name = JobChunk.objects.filter(pk=chunk_id).values_list("run__job", flat=True).first()
    except Exception as exc:  # the database is away: retried, not dropped
        _retry_or_bury(self, exc, base=2.0, cap=30.0, retryable=True)
    if name is None:
        return {"chunk_id": chunk_id, "claimed": False}
    job = registry.get_job(name)
    try:
        chunk = run_chunk(
            chunk_id, worker=self.request.hostname or "", task_id=self.request.id or "",
            retries_left=self.request.retries < self.max_retries,
        )
    except Exception as exc:
        retryable = not isinstance(exc, JobError) or exc.retryable
        _retry_or_bury(self, exc, base=job.backoff_base, cap=job.backoff_cap, retryable=retryable)
    _note_recovered(self)
    return {"chunk_id": chunk_id, "claimed": chunk is not None}


def _parse_day(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def _forget_job_task(job: Job) -> None:
    app.tasks.pop(job.task_name, None)
    TASK_QUEUES.pop(job.task_name, None)


def _on_registry(event: str, job: Job) -> None:
    if event == "registered":
        register_job_task(job)
    else:
        _forget_job_task(job)


registry.watch(_on_registry)


@background_task("ops.outbox_relay", queue="default", max_retries=0)
def outbox_relay_task() -> int:
    """Publish outbox events whose publication after commit did not go through."""
    return outbox_relay()


@background_task("ops.alerts_evaluate", queue="default", max_retries=0)
def alerts_evaluate_task() -> dict:
    """Evaluate every job's alert rules (a job that stopped running cannot evaluate itself)."""
    return alerts_evaluate()
