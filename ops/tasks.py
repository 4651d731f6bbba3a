"""Celery side of the runtime: a task per job, the background-task decorator,
retries with capped full-jitter backoff, and dead letters after the last retry.

Nothing here sleeps: a retry is `task.retry(countdown=...)`, so the worker is
free while it waits.
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
from django.db import transaction
from django.utils import timezone

from checkout.celery import app
from ops import locks, metrics
from ops.models import DeadLetter, JobRun
from ops.registry import Job, get_job

log = logging.getLogger(__name__)


@worker_init.connect
@worker_process_init.connect
def _keep_lock_connections(**_) -> None:
    # A worker runs many jobs: keep its lock connection instead of opening one per run.
    locks.keep_lock_connections()


# Task name -> queue, filled as tasks are declared; `route_task` is the app's router.
TASK_QUEUES: dict[str, str] = {}


def route_task(name, args, kwargs, options, task=None, **kw):
    queue = TASK_QUEUES.get(name)
    return {"queue": queue} if queue else None


def backoff_countdown(retries: int, base: float = 2.0, cap: float = 30.0, rng=random) -> float:
    """Full jitter: uniform in [0, min(cap, base ** (retries + 1))] seconds.

    retries is how many retries already happened (0 before the first), so the
    ceilings run 2, 4, 8, 16, 30, 30... with the defaults.
    """
    ceiling = min(cap, base ** (retries + 1))
    return rng.uniform(0, ceiling)


def _note_failure(task, exc: BaseException, *, final: bool) -> None:
    """Upsert the task's dead-letter row: retrying while attempts remain, dead after."""
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
    try:
        with transaction.atomic():
            updated = DeadLetter.objects.filter(task_id=task_id).update(**fields)
            if not updated:
                DeadLetter.objects.create(task_id=task_id, first_failed_at=now, **fields)
    except Exception:  # the database may be what failed; the log line still tells
        log.exception("could not record failure of task %s %s", task.name, task_id)
    log.log(
        logging.ERROR if final else logging.WARNING,
        "task=%s id=%s attempt=%s %s: %s", task.name, task_id, attempts,
        "dead" if final else "will retry", fields["error"],
    )


def _note_recovered(task) -> None:
    if task.request.retries and task.request.id:
        DeadLetter.objects.filter(
            task_id=task.request.id, state=DeadLetter.State.RETRYING
        ).update(state=DeadLetter.State.RECOVERED, resolved_at=timezone.now())


def _retry_or_bury(task, exc: BaseException, *, base: float, cap: float, retryable: bool):
    if retryable and task.request.retries < task.max_retries:
        _note_failure(task, exc, final=False)
        countdown = backoff_countdown(task.request.retries, base, cap)
        raise task.retry(exc=exc, countdown=countdown)
    _note_failure(task, exc, final=True)
    raise exc


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
            metrics.record_task(name, "succeeded", time.monotonic() - started)
            _note_recovered(self)
            return result

        task.retry_policy = {"base": backoff_base, "cap": backoff_cap, "max_retries": max_retries}
        return task

    return decorate


def register_job_task(job: Job) -> None:
    """Make the Celery task `jobs.<name>` that runs the job through run_job."""
    limit = int(job.time_limit.total_seconds())

    def run(self, trigger: str = JobRun.Trigger.BEAT, dry_run: bool = False,
            date: str | None = None, params: dict | None = None):
        from ops.runner import run_job

        if self.request.retries:
            trigger = JobRun.Trigger.RETRY
        day = _parse_day(date)
        try:
            ledger = run_job(
                job.name, trigger=trigger, dry_run=dry_run, day=day, params=params,
                task_id=self.request.id or "", raise_errors=True,
            )
        except Exception as exc:
            _retry_or_bury(self, exc, base=job.backoff_base, cap=job.backoff_cap, retryable=True)
        _note_recovered(self)
        return {"run_id": ledger.pk, "status": ledger.status, "counts": ledger.counts}

    run.__name__ = f"job_{job.name}"
    run.__doc__ = job.description
    TASK_QUEUES[job.task_name] = job.queue
    app.task(
        run, name=job.task_name, bind=True, acks_late=True,
        max_retries=job.max_retries, time_limit=limit + 60, soft_time_limit=limit,
    )


def _parse_day(value: str | None) -> date | None:
    return date.fromisoformat(value) if value else None


def job_task(name: str):
    return app.tasks[get_job(name).task_name]


def enqueue_job(
    name: str,
    *,
    trigger: str = JobRun.Trigger.MANUAL,
    dry_run: bool = False,
    day: date | None = None,
    params: dict | None = None,
    countdown: float = 0,
    expires: float | None = None,
) -> str:
    """Queue a run of the job on its queue; returns the Celery task id.

    `expires` (seconds): a run still queued after that is dropped by the worker.
    """
    params = dict(params or {})
    date_param = params.pop("date", None) or (day.isoformat() if day else None)
    result = job_task(name).apply_async(
        kwargs={"trigger": trigger, "dry_run": dry_run, "date": date_param, "params": params},
        countdown=countdown or None, expires=expires,
    )
    return result.id


def requeue_dead_letter(letter: DeadLetter) -> str:
    """Send a dead task again with its original arguments; the row remembers the new task id."""
    task = app.tasks[letter.task_name]
    kwargs = dict(letter.kwargs)
    if letter.task_name.startswith("jobs."):
        kwargs["trigger"] = JobRun.Trigger.RETRY
    result = task.apply_async(args=letter.args, kwargs=kwargs)
    DeadLetter.objects.filter(pk=letter.pk).update(
        state=DeadLetter.State.REQUEUED, requeued_at=timezone.now(), requeued_task_id=result.id,
    )
    return result.id


@background_task("ops.outbox_relay", queue="default", max_retries=0)
def outbox_relay_task() -> int:
    """Publish outbox events whose publication after commit did not go through."""
    from ops.outbox import outbox_relay

    return outbox_relay()
